"""The engine cache: `engines/<bundle>/<tower>-<precision>-<key digest>/` holds `engine.plan` and `key.json` (the
full key and the engine file's sha256); `engines/<bundle>/timing/` holds TensorRT timing caches, one per TensorRT
version and GPU.

An engine is loaded only when its key.json says exactly the key wanted and its bytes hash to what key.json says: a
missing, mismatched or corrupt engine is rebuilt with a message that says why, and never loaded. A rebuild writes a
new directory beside the old one and renames it into place only when it is whole (edgeclip.fileio), so an engine
that worked is never lost to a build that failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from edgeclip.engines.keys import EngineKey, key_differences
from edgeclip.fileio import atomic_directory, atomic_write

__all__ = ["CacheDecision", "default_engines_root", "lookup", "lookup_other_profiles", "store", "timing_cache_path"]

ENGINE_FILE = "engine.plan"
KEY_FILE = "key.json"

Status = Literal["hit", "missing", "mismatch", "corrupt"]


def default_engines_root() -> Path:
    """`engines/` in the working directory (DESIGN.md), or $EDGECLIP_ENGINES."""
    return Path(os.environ.get("EDGECLIP_ENGINES") or "engines")


def bundle_dir(root: Path, bundle_name: str) -> Path:
    return Path(root) / _slug(bundle_name)


@dataclass(frozen=True)
class CacheDecision:
    """What the cache holds for a key: an engine to load (`hit`, with its bytes) or the reason to build one."""

    status: Status
    path: Path  # the engine's directory for this key
    reason: str  # for every status but hit: why it is (re)built, in words
    engine: bytes | None = None  # hit: the verified engine bytes

    @property
    def hit(self) -> bool:
        return self.status == "hit"


def lookup(root: Path, bundle_name: str, key: EngineKey) -> CacheDecision:
    """Look for the engine of `key`; read and verify it (key and sha256) where it is."""
    home = bundle_dir(root, bundle_name)
    path = home / key.dirname()
    label = f"the {key.tower} engine ({key.precision}) of bundle {bundle_name!r}"
    if not path.is_dir():
        found = _nearest(home, key)
        if found is None:
            return CacheDecision("missing", path, f"no {label} for {key.where()} in {home} yet: building it")
        other, other_key = found
        why = "; ".join(key_differences(other_key, key)) or "its key differs"
        return CacheDecision(
            "mismatch",
            path,
            f"{label} in {other} was built for another setup ({why}): building one for "
            f"{key.where()} (the old one is kept; an engine is never loaded on another GPU or TensorRT version)",
        )
    record = _read_record(path)
    if record is None:
        return CacheDecision("corrupt", path, f"{path / KEY_FILE} is missing or unreadable: rebuilding {label}")
    stored_key, engine_info = record
    if stored_key != key:
        why = "; ".join(key_differences(stored_key, key)) or "its key differs"
        return CacheDecision("mismatch", path, f"{path / KEY_FILE} does not match ({why}): rebuilding {label}")
    engine_path = path / ENGINE_FILE
    try:
        data = engine_path.read_bytes()
    except OSError as exc:
        return CacheDecision("corrupt", path, f"{engine_path} cannot be read ({exc.strerror}): rebuilding {label}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != engine_info.get("sha256"):
        return CacheDecision(
            "corrupt",
            path,
            f"{engine_path} is corrupt (its sha256 is {digest[:12]}..., {KEY_FILE} says "
            f"{str(engine_info.get('sha256'))[:12]}...): rebuilding {label}; an engine that fails its hash is never "
            "loaded",
        )
    return CacheDecision("hit", path, "", data)


def lookup_other_profiles(root: Path, bundle_name: str, key: EngineKey) -> tuple[EngineKey, CacheDecision] | None:
    """A whole engine that differs from `key` in its profiles only (built with `edgeclip build --profiles`), the
    newest first, with its own key; None where there is none."""
    home = bundle_dir(root, bundle_name)
    if not home.is_dir():
        return None
    found = []
    for path in home.iterdir():
        if path.is_dir() and path.name.startswith(f"{key.tower}-{key.precision}-"):
            record = _read_record(path)
            if record is not None and record[0] != key and replace(record[0], profiles=key.profiles) == key:
                found.append((path.stat().st_mtime, record[0]))
    for _, other in sorted(found, key=lambda item: item[0], reverse=True):
        decision = lookup(root, bundle_name, other)
        if decision.hit:
            return other, decision
    return None


def store(root: Path, bundle_name: str, key: EngineKey, engine: bytes, meta: Mapping[str, Any] | None = None) -> Path:
    """Write the engine of `key` and its key.json as one directory, replacing any old one only when both are whole."""
    path = bundle_dir(root, bundle_name) / key.dirname()
    record = {
        "key": key.to_dict(),
        "engine": {"file": ENGINE_FILE, "sha256": hashlib.sha256(engine).hexdigest(), "bytes": len(engine)},
        "built": dict(meta or {}),
    }
    with atomic_directory(path) as tmp:
        (tmp / ENGINE_FILE).write_bytes(engine)
        (tmp / KEY_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def timing_cache_path(root: Path, bundle_name: str, key: EngineKey) -> Path:
    """The timing cache for the TensorRT version and GPU of `key` (tactic timings do not carry to another)."""
    name = _slug(f"trt{key.tensorrt}-{key.gpu}-sm{key.compute_capability}")
    return bundle_dir(root, bundle_name) / "timing" / f"{name}.cache"


def save_timing_cache(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(data)


def entries(root: Path, bundle_name: str) -> list[tuple[Path, EngineKey | None]]:
    """Every engine directory of the bundle, with its key (None: unreadable), for `edgeclip info`."""
    home = bundle_dir(root, bundle_name)
    if not home.is_dir():
        return []
    out = []
    for path in sorted(p for p in home.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "timing"):
        record = _read_record(path)
        out.append((path, None if record is None else record[0]))
    return out


def _nearest(home: Path, key: EngineKey) -> tuple[Path, EngineKey] | None:
    """The newest engine of the same tower and precision under `home` (what a changed setup replaced), or None."""
    if not home.is_dir():
        return None
    prefix = f"{key.tower}-{key.precision}-"
    found = []
    for path in home.iterdir():
        if path.is_dir() and path.name.startswith(prefix):
            record = _read_record(path)
            if record is not None:
                found.append((path.stat().st_mtime, path, record[0]))
    if not found:
        return None
    _, path, other = max(found, key=lambda item: item[0])
    return path, other


def _read_record(path: Path) -> tuple[EngineKey, dict[str, Any]] | None:
    try:
        record = json.loads((path / KEY_FILE).read_text(encoding="utf-8"))
        key = EngineKey.from_dict(record["key"])
        engine = dict(record["engine"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return key, engine


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "unnamed"
