"""edgeclip index / search: the on-disk index, incremental and interrupted runs, exact and approximate search,
the search quality on the built-in world, and every bad input the issue names."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import edgeclip
from edgeclip.cli import main
from edgeclip.search import (
    SearchIndex,
    SearchIndexError,
    build_index,
    exact_top_k,
    local_embedder,
    model_identity,
    store,
)
from edgeclip.world import eval_set
from edgeclip.world.captions import canonical_caption

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> edgeclip.Model:
    return edgeclip.load()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """The built-in world's color-shape evaluation set as PNG files, in two sub-folders."""
    folder = tmp_path_factory.mktemp("world")
    items = eval_set("color_shape")
    for i, item in enumerate(items):
        sub = folder / ("heldout" if item.heldout else "seen")
        sub.mkdir(exist_ok=True)
        cv2.imwrite(str(sub / f"{i:04d}.png"), item.image[:, :, ::-1])
    return folder, items


@pytest.fixture(scope="module")
def world_index(world: tuple[Path, list], model: edgeclip.Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "world.index"
    report = build_index([world[0]], out, model_identity(model), local_embedder(model))
    assert report.rows == report.embedded == len(world[1]) and not report.failed
    return out


def _write(folder: Path, name: str, item_index: int) -> Path:
    image = eval_set("color_shape", n=64)[item_index].image
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image[:, :, ::-1])
    return path


def _index(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["index", *args])
    return result.exit_code, result.stdout, result.stderr


def _by_path(folder: Path) -> dict[str, np.ndarray]:
    rows = SearchIndex(folder).rows
    return dict(zip(rows.path, rows.vector, strict=True))


# ------------------------------------------------------------------------------------------------ search quality


def test_heldout_captions_find_their_images_in_the_top_5(world: tuple[Path, list], world_index: Path, model) -> None:
    """Captions of held-out compositions (pairs training never showed): an image the caption is true of (same
    color, shape, size and position) is in the top 5 for at least 90% of queries."""
    _, items = world
    index = SearchIndex(world_index)
    held = [it for it in items if it.heldout]
    captions = [canonical_caption(it.scene) for it in held]
    hits = index.search(model.encode_text(captions), top_k=5)
    name_to_item = {f"{i:04d}.png": it for i, it in enumerate(items)}

    def attrs(item) -> tuple[str, ...]:
        o = item.scene.objects[0]
        return (o.color, o.shape, o.size, o.position)

    found = [
        any(attrs(name_to_item[Path(h.path).name]) == attrs(it) for h in row)
        for it, row in zip(held, hits, strict=True)
    ]
    assert len(found) == 256
    assert np.mean(found) >= 0.9, f"{np.mean(found):.1%} of held-out captions found in the top 5"


def test_search_cli_json_table_html_and_image_query(world: tuple[Path, list], world_index: Path, tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["search", str(world_index), "a red star", "--top-k", "4", "--json"])
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 4 and set(lines[0]) == {"path", "score"}
    scores = [line["score"] for line in lines]
    assert scores == sorted(scores, reverse=True)
    table = runner.invoke(main, ["search", str(world_index), "a red star", "--top-k", "3"])
    assert table.exit_code == 0 and table.stdout.splitlines()[0].split() == ["score", "path"]
    assert lines[0]["path"] in table.stdout
    page = tmp_path / "page.html"
    assert runner.invoke(main, ["search", str(world_index), "a red star", "--html", str(page)]).exit_code == 0
    text = page.read_text()
    assert text.count('<img src="data:image/jpeg;base64,') == 10 and "a red star" in text
    query = next((world[0] / "seen").iterdir())
    same = runner.invoke(main, ["search", str(world_index), "--image", str(query), "--json", "--top-k", "1"])
    best = json.loads(same.stdout)
    assert best["path"] == str(query.absolute()) and best["score"] > 0.999


def test_exact_top_k_matches_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    queries = rng.standard_normal((3, 16)).astype(np.float32)
    scores, ids = exact_top_k(vectors, queries, 7)
    full = queries @ vectors.T
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1, kind="stable")[:, :7])
    np.testing.assert_allclose(scores, np.take_along_axis(full, ids, axis=1))


def test_approximate_index_recall_against_exact(tmp_path: Path) -> None:
    """The FAISS IVF index of a large index: built with --ann, used by default, recall@10 against exact >= 0.9."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((50, 32))
    vectors = (centers[rng.integers(50, size=6000)] + 0.4 * rng.standard_normal((6000, 32))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    folder = tmp_path / "big.index"
    folder.mkdir()
    identity = store.IndexManifest("synthetic", "0" * 16, "fp32", 32)
    manifest = store.write_manifest(folder, identity)
    n = len(vectors)
    rows = store.Rows(
        [f"/v/{i}" for i in range(n)],
        np.full(n, -1),
        np.full(n, np.nan),
        np.zeros(n, np.int64),
        np.zeros(n, np.int64),
        ["0" * 64] * n,
        vectors,
    )
    manifest = store.write_manifest(
        folder, store.replace(manifest, segments=(store.write_segment(folder, rows),), rows=n)
    )
    from edgeclip.search.index import _update_ann

    manifest = _update_ann(folder, manifest, True)
    index = SearchIndex(folder)
    assert index.has_approx() and manifest.ann["params"]["nlist"] >= 16
    assert manifest.ann["params"]["recall_at_10"] >= 0.9  # measured at build time, on 100 of the rows
    assert _update_ann(folder, manifest, None, had=True) == manifest  # up to date: not built again
    queries = vectors[:200] + 0.1 * rng.standard_normal((200, 32)).astype(np.float32)
    approx = index.search(queries, 10)
    exact = index.search(queries, 10, mode="exact")
    recall = np.mean([len({h.path for h in a} & {h.path for h in e}) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.9, recall
    # The approximate scores are the exact cosines of the rows it returns.
    assert approx[0][0].score == pytest.approx(float(queries[0] @ vectors[int(approx[0][0].path[3:])]), abs=1e-5)


# ------------------------------------------------------------------------------------------------ incremental


def test_second_run_embeds_only_new_and_changed_files_and_drops_deleted(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for i in range(5):
        _write(photos, f"sub/{i}.png", i)
    out = tmp_path / "p.index"
    code, stdout, stderr = _index(str(photos), "--out", str(out), "--json")
    assert code == 0, stderr
    assert json.loads(stdout) | {} == json.loads(stdout) and json.loads(stdout)["embedded"] == 5
    before = _by_path(out)
    code, stdout, _ = _index(str(photos), "--out", str(out), "--json")
    assert json.loads(stdout)["embedded"] == 0 and json.loads(stdout)["unchanged"] == 5
    (photos / "sub/0.png").unlink()  # deleted
    _write(photos, "sub/1.png", 20)  # changed bytes
    os.utime(photos / "sub/2.png", ns=(1, 1))  # touched: time changed, bytes did not
    _write(photos, "new/5.png", 5)  # new
    code, stdout, _ = _index(str(photos), "--out", str(out), "--json")
    figures = json.loads(stdout)
    assert code == 0
    assert (figures["embedded"], figures["reused"], figures["unchanged"], figures["dropped"]) == (2, 1, 2, 3)
    after = _by_path(out)
    assert sorted(Path(p).name for p in after) == ["1.png", "2.png", "3.png", "4.png", "5.png"]
    two, three = str((photos / "sub/2.png").absolute()), str((photos / "sub/3.png").absolute())
    np.testing.assert_array_equal(after[two], before[two])
    np.testing.assert_array_equal(after[three], before[three])
    assert not np.array_equal(
        after[str((photos / "sub/1.png").absolute())], before[str((photos / "sub/1.png").absolute())]
    )
    rows = SearchIndex(out).rows
    assert rows.sha256[rows.path.index(two)] == edgeclip.fileio.sha256_file(two)


_SLOW_RUN = """
import sys, time
import edgeclip
from edgeclip.search import build_index, local_embedder, model_identity
model = edgeclip.load()
embed = local_embedder(model)
def slow(paths, on_progress):
    result = embed(paths, on_progress)
    print("segment", flush=True)
    time.sleep(0.4)
    return result
build_index([sys.argv[1]], sys.argv[2], model_identity(model), slow, segment_rows=4)
print("done", flush=True)
"""


def test_kill_9_mid_run_then_resume_redoes_no_finished_work(tmp_path: Path, model) -> None:
    photos = tmp_path / "photos"
    for i in range(24):
        _write(photos, f"{i:02d}.png", i % 64)
    out = tmp_path / "k.index"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_RUN, str(photos), str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    segments = 0
    while segments < 3:
        line = proc.stdout.readline()
        assert line, "the indexing run ended before it could be killed"
        segments += line.startswith("segment")
    time.sleep(0.2)  # inside the sleep after the third segment: its commit is done or under way
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = SearchIndex(out)  # the index reads back whole after kill -9
    done = len(killed)
    assert 8 <= done < 24 and len(killed.rows) == done
    report = build_index([photos], out, model_identity(model), local_embedder(model), segment_rows=4)
    assert (report.unchanged, report.embedded, report.rows) == (done, 24 - done, 24)
    assert not [p for p in out.rglob("*") if ".partial" in p.name]
    code, stdout, stderr = _index(str(photos), "--out", str(out), "--json")
    assert code == 0 and json.loads(stdout)["embedded"] == 0, stderr
    # The same vectors as one uninterrupted run with the same segments (int8 graphs quantize activations per
    # batch, so a vector's last bits depend on its batch: the resumed run must keep the batches a whole run has).
    fresh = tmp_path / "fresh.index"
    build_index([photos], fresh, model_identity(model), local_embedder(model), segment_rows=4)
    resumed, whole = _by_path(out), _by_path(fresh)
    assert resumed.keys() == whole.keys()
    for path, vector in whole.items():
        np.testing.assert_array_equal(resumed[path], vector)


# ------------------------------------------------------------------------------------------------ bad input


def test_unreadable_files_are_skipped_counted_and_listed(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _write(photos, "good.png", 0)
    (photos / "broken.jpg").write_bytes(b"this is not a jpeg")
    (photos / "dangling.png").symlink_to(photos / "nowhere.png")
    out = tmp_path / "u.index"
    code, stdout, stderr = _index(str(photos), "--out", str(out), "--json")
    assert code == 1
    assert json.loads(stdout)["failed"] == 2 and json.loads(stdout)["images"] == 1
    assert "broken.jpg" in stderr and "dangling.png" in stderr and "2 files could not be read" in stderr
    assert "Traceback" not in stderr
    assert [Path(p).name for p in _by_path(out)] == ["good.png"]


def test_index_of_another_precision_or_bundle_is_refused_and_kept(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _write(photos, "a.png", 0)
    out = tmp_path / "m.index"
    assert _index(str(photos), "--out", str(out), "--precision", "fp32")[0] == 0
    manifest_bytes = (out / store.MANIFEST).read_bytes()
    _write(photos, "b.png", 1)
    code, _, stderr = _index(str(photos), "--out", str(out), "--precision", "int8")
    assert code == 1
    assert "at fp32" in stderr and "at int8" in stderr and "do not mix" in stderr
    assert (out / store.MANIFEST).read_bytes() == manifest_bytes
    # An index recorded as made by another bundle (another graph hash): refused by index and search alike.
    data = json.loads(manifest_bytes)
    data["bundle"] = {"name": "other", "graph_hash": "feedfacefeedface"}
    (out / store.MANIFEST).write_text(json.dumps(data))
    code, _, stderr = _index(str(photos), "--out", str(out), "--precision", "fp32")
    assert code == 1 and "'other' (graph hash feedfacefeedface)" in stderr and "'tiny'" in stderr
    result = CliRunner().invoke(main, ["search", str(out), "a red star"])
    assert result.exit_code == 1 and "feedfacefeedface" in result.stderr
    assert len(SearchIndex(out)) == 1


def test_index_records_its_preprocessing_and_refuses_to_mix_modes(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _write(photos, "a.png", 0)
    out = tmp_path / "f.index"
    assert _index(str(photos), "--out", str(out), "--preprocess", "fast")[0] == 0
    manifest_bytes = (out / store.MANIFEST).read_bytes()
    assert json.loads(manifest_bytes)["preprocess"] == "fast"
    _write(photos, "b.png", 1)
    code, _, stderr = _index(str(photos), "--out", str(out))  # the default, exact
    assert code == 1 and "--preprocess fast" in stderr and "--preprocess exact" in stderr
    assert (out / store.MANIFEST).read_bytes() == manifest_bytes and len(SearchIndex(out)) == 1
    code, stdout, stderr = _index(str(photos), "--out", str(out), "--preprocess", "fast", "--json")
    assert code == 0 and json.loads(stdout)["embedded"] == 1, stderr
    result = CliRunner().invoke(main, ["search", str(out), "a red star"])  # text queries: any mode
    assert result.exit_code == 0, result.stderr
    # An index written before the mode was kept reads as exact; a mode that is not one is a damaged manifest.
    data = json.loads((out / store.MANIFEST).read_text())
    del data["preprocess"]
    (out / store.MANIFEST).write_text(json.dumps(data))
    assert store.read_manifest(out).preprocess == "exact"
    (out / store.MANIFEST).write_text(json.dumps(data | {"preprocess": "turbo"}))
    with pytest.raises(SearchIndexError, match="preprocess is 'turbo'"):
        store.read_manifest(out)


def test_query_on_an_empty_index(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "e.index"
    code, stdout, _ = _index(str(empty), "--out", str(out), "--json")
    assert code == 0 and json.loads(stdout)["images"] == 0
    result = CliRunner().invoke(main, ["search", str(out), "a red star"])
    assert result.exit_code == 1 and "is empty (0 images)" in result.stderr and "Traceback" not in result.stderr


def test_folder_that_is_not_an_index(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _write(photos, "a.png", 0)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    code, _, stderr = _index(str(photos), "--out", str(other))
    assert code == 1 and "is not an edgeclip index" in stderr and "nothing was written" in stderr
    assert sorted(p.name for p in other.iterdir()) == ["keep.txt"] and (other / "keep.txt").read_text() == "mine"
    result = CliRunner().invoke(main, ["search", str(other), "a red star"])
    assert result.exit_code == 1 and "is not an edgeclip index" in result.stderr
    (tmp_path / "bad.index").mkdir()
    (tmp_path / "bad.index" / store.MANIFEST).write_text("{not json")
    with pytest.raises(SearchIndexError, match="is damaged"):
        SearchIndex(tmp_path / "bad.index")
    code, _, stderr = _index(str(tmp_path / "missing"), "--out", str(tmp_path / "x.index"))
    assert code == 1 and "does not exist" in stderr and not (tmp_path / "x.index").exists()


# ------------------------------------------------------------------------------------------------ video


def test_videos_are_sampled_every_n_frames(tmp_path: Path, model) -> None:
    pytest.importorskip("edgeclip.stream.sources")
    photos = tmp_path / "media"
    _write(photos, "still.png", 0)
    items = eval_set("color_shape", n=64)
    writer = cv2.VideoWriter(str(photos / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 64))
    assert writer.isOpened()
    for i in range(10):
        writer.write(np.ascontiguousarray(cv2.resize(items[i].image, (64, 64))[:, :, ::-1]))
    writer.release()
    (photos / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "v.index"
    code, stdout, stderr = _index(str(photos), "--out", str(out), "--video-every", "3", "--json")
    assert code == 1 and "broken.mp4" in stderr and json.loads(stdout)["failed"] == 1
    rows = SearchIndex(out).rows
    clip = [i for i, p in enumerate(rows.path) if p.endswith("clip.avi")]
    assert [int(rows.frame[i]) for i in clip] == [0, 3, 6, 9]
    np.testing.assert_allclose([rows.timestamp[i] for i in clip], [0.0, 0.3, 0.6, 0.9])
    result = CliRunner().invoke(main, ["search", str(out), "a red circle", "--json", "--top-k", "5"])
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert any(r.get("frame") in (0, 3, 6, 9) and "timestamp" in r for r in records)
    again = json.loads(_index(str(photos), "--out", str(out), "--video-every", "3", "--json")[1])
    assert again["embedded"] == 0 and again["unchanged"] == 5  # 4 frames and the still image, none read again
    plain = json.loads(_index(str(photos), "--out", str(tmp_path / "p.index"), "--json")[1])
    assert plain["images"] == 1  # without --video-every, videos are not indexed


def test_index_ann_flag_builds_and_search_uses_it(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    photos = tmp_path / "photos"
    for i in range(6):
        _write(photos, f"{i}.png", i)
    out = tmp_path / "a.index"
    code, stdout, _ = _index(str(photos), "--out", str(out), "--ann", "--json")
    figures = json.loads(stdout)
    assert code == 0 and figures["approximate_index"] is True and figures["approximate_recall_at_10"] == 1.0
    runner = CliRunner()
    approx = runner.invoke(main, ["search", str(out), "a red circle", "--json", "--top-k", "6"])
    exact = runner.invoke(main, ["search", str(out), "a red circle", "--json", "--top-k", "6", "--exact"])
    assert approx.exit_code == exact.exit_code == 0
    assert [json.loads(x)["path"] for x in approx.stdout.splitlines()] == [
        json.loads(x)["path"] for x in exact.stdout.splitlines()
    ]
    _write(photos, "6.png", 6)  # a later run without --ann keeps the index's approximate index up to date
    again = json.loads(_index(str(photos), "--out", str(out), "--json")[1])
    assert again["approximate_index"] is True and again["images"] == 7
    dropped = json.loads(_index(str(photos), "--out", str(out), "--no-ann", "--json")[1])
    assert dropped["approximate_index"] is False and not list(out.glob("ann-*"))


def test_search_html_and_caption_bank_keep_an_existing_file_without_force(world_index: Path, tmp_path) -> None:
    runner = CliRunner()
    notes = tmp_path / "notes.html"
    notes.write_text("my notes")
    refused = runner.invoke(main, ["search", str(world_index), "a red star", "--html", str(notes)])
    assert refused.exit_code == 1 and "already exists; pass --force" in refused.stderr
    refused = runner.invoke(main, ["caption", "--captions", "world", "--write-bank", str(notes)])
    assert refused.exit_code == 1 and "already exists; pass --force" in refused.stderr
    assert notes.read_text() == "my notes"
    forced = runner.invoke(main, ["search", str(world_index), "a red star", "--html", str(notes), "--force"])
    assert forced.exit_code == 0 and "<img" in notes.read_text()


def test_a_file_name_that_is_not_utf8_is_skipped_and_named(tmp_path) -> None:
    """Such a name cannot be a parquet string: the file is reported, the others are indexed, and later runs work."""
    folder = tmp_path / "photos"
    _write(folder, "a.png", 0)
    latin1 = Path(os.fsdecode(os.path.join(os.fsencode(folder), b"caf\xe9.png")))
    latin1.write_bytes((folder / "a.png").read_bytes())
    out = tmp_path / "p.index"
    for _ in range(2):
        code, _, err = _index(str(folder), "--out", str(out))
        assert code == 1 and "caf\\xe9.png" in err and "not valid UTF-8" in err and "Traceback" not in err
        assert [Path(p).name for p in SearchIndex(out).rows.path] == ["a.png"]
