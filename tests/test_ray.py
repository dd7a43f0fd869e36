"""--ray on `edgeclip embed` and `edgeclip index`: a local Ray instance gives the single-process output."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edgeclip.cli import main
from edgeclip.scale.ray_embed import pool_size
from edgeclip.search import SearchIndex
from edgeclip.world import eval_set

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray instance for the module (2 CPUs, as the CI machines have)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i, item in enumerate(eval_set("color_shape", n=90)):
        cv2.imwrite(str(folder / f"{i:03d}.png"), item.image[:, :, ::-1])
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_embed_ray_writes_the_single_process_vectors(local_ray: None, photos: Path, tmp_path: Path) -> None:
    images = sorted(str(p) for p in photos.iterdir())
    runner = CliRunner()
    here = runner.invoke(main, ["embed", *images, "--out", str(tmp_path / "here.jsonl"), "--batch", "16"])
    spread = runner.invoke(main, ["embed", *images, "--out", str(tmp_path / "ray.jsonl"), "--batch", "16", "--ray"])
    assert here.exit_code == spread.exit_code == 1  # the broken image, in both
    assert "broken.png" in spread.stderr
    a = (tmp_path / "here.jsonl").read_text().splitlines()
    b = (tmp_path / "ray.jsonl").read_text().splitlines()
    assert len(a) == 90 and a == b  # same paths, same order, bit-identical vectors (JSON floats are exact)


def test_index_ray_equals_index_here(local_ray: None, photos: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    one = runner.invoke(main, ["index", str(photos), "--out", str(tmp_path / "one.index"), "--json"])
    two = runner.invoke(main, ["index", str(photos), "--out", str(tmp_path / "two.index"), "--json", "--ray"])
    assert one.exit_code == two.exit_code == 1
    assert json.loads(one.stdout) | {"index": ""} == json.loads(two.stdout) | {"index": ""}
    a, b = SearchIndex(tmp_path / "one.index").rows, SearchIndex(tmp_path / "two.index").rows
    assert a.path == b.path and a.sha256 == b.sha256
    np.testing.assert_array_equal(a.vector, b.vector)


def test_ray_address_that_does_not_answer(tmp_path: Path, photos: Path) -> None:
    image = str(next(photos.iterdir()))
    start = time.monotonic()
    result = CliRunner().invoke(main, ["embed", image, "--out", str(tmp_path / "x.npy"), "--ray", "127.0.0.1:9"])
    assert result.exit_code == 1 and time.monotonic() - start < 30
    assert "the Ray cluster at 127.0.0.1:9 does not answer" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.npy").exists()
    bad = CliRunner().invoke(main, ["index", str(photos), "--out", str(tmp_path / "i"), "--ray", "nonsense"])
    assert bad.exit_code == 1 and "is not an address" in bad.stderr and not (tmp_path / "i").exists()


def test_pool_size_follows_the_cluster() -> None:
    assert pool_size({"CPU": 2.0}, chunks=10) == (2, 1.0, 0.0)
    assert pool_size({"CPU": 16.0, "GPU": 2.0}, chunks=10) == (2, 1.0, 1.0)
    assert pool_size({"CPU": 8.0}, chunks=3) == (3, 1.0, 0.0)
