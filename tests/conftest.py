"""Test-wide isolation: no test writes into the user's cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Module- and session-scoped fixtures (a model that builds label banks) are set up before any function-scoped
    # fixture: without this they read and wrote the user's own cache, and a bank cached there by another version
    # of edgeclip changed their answers.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGECLIP_CACHE", str(tmp_path_factory.mktemp("session-cache")))
        yield


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGECLIP_CACHE", str(tmp_path / "edgeclip-cache"))
