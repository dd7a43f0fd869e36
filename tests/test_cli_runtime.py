"""`edgeclip embed`, `classify` and `info` through click's CliRunner (and once through the installed script).

The commands run on the hand-made bundle of test_runtime; their results are compared with the library calls they
wrap, every bad input is checked for its message and exit status, and no existing output is ever lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgeclip import outputs
from edgeclip.cli import main
from edgeclip.errors import InputError
from edgeclip.runtime import load
from tests.test_runtime import TINY_DIM, photos, tiny_bundle  # noqa: F401  (tiny_bundle: a session fixture)


@pytest.fixture(autouse=True)
def _label_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLIP_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, img in enumerate(photos(3, size=20, seed=5)):
        paths.append(str(folder / f"img{i}.png"))
        Image.fromarray(img).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def bad_image(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("bad") / "broken.jpg"
    path.write_bytes(b"this is not a JPEG")
    return str(path)


@pytest.fixture(scope="module")
def model(tiny_bundle):  # noqa: F811
    with load(tiny_bundle) as m:
        yield m


def run(*args: object):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.stderr
    return result


# ---------------------------------------------------------------- embed


def test_embed_images_to_every_format(tiny_bundle, image_files, model, tmp_path):  # noqa: F811
    want = model.encode_image(image_files)
    result = run("embed", *image_files, "--out", tmp_path / "e.npy", "--bundle", tiny_bundle, "--batch", 2)
    assert result.exit_code == 0, result.stderr
    got = np.load(tmp_path / "e.npy")
    assert got.dtype == np.float32 and got.shape == (3, TINY_DIM)
    np.testing.assert_array_equal(got, want)

    assert run("embed", *image_files, "--out", tmp_path / "e.jsonl", "--bundle", tiny_bundle).exit_code == 0
    rows = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == image_files
    np.testing.assert_array_equal(np.array([r["vector"] for r in rows], np.float32), want)

    import pyarrow.parquet as pq

    assert run("embed", *image_files, "--out", tmp_path / "e.parquet", "--bundle", tiny_bundle).exit_code == 0
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.column("path").to_pylist() == image_files
    np.testing.assert_array_equal(np.array(table.column("vector").to_pylist(), np.float32), want)


def test_embed_texts(tiny_bundle, model, tmp_path):  # noqa: F811
    (tmp_path / "texts.txt").write_bytes("\ufeffa red car\ntwo dogs\n".encode())  # a byte-order mark is not text
    out = tmp_path / "t.jsonl"
    result = run(
        "embed", "--text", "a cat", "--text-file", tmp_path / "texts.txt", "--out", out, "--bundle", tiny_bundle
    )
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    texts = ["a cat", "a red car", "two dogs"]
    assert [r["text"] for r in rows] == texts
    np.testing.assert_array_equal(np.array([r["vector"] for r in rows], np.float32), model.encode_text(texts))


def test_embed_keeps_good_rows_of_a_run_with_a_bad_image(tiny_bundle, image_files, bad_image, model, tmp_path):  # noqa: F811
    out = tmp_path / "e.npy"
    result = run("embed", image_files[0], bad_image, image_files[2], "--out", out, "--bundle", tiny_bundle)
    assert result.exit_code == 1
    assert f"skipped image 2 ({bad_image})" in result.stderr
    assert f"1 of 3 images could not be read; {out} holds the other 2, in input order" in result.stderr
    np.testing.assert_array_equal(np.load(out), model.encode_image([image_files[0], image_files[2]]))


def test_embed_with_only_bad_images_keeps_the_old_file(tiny_bundle, bad_image, tmp_path):  # noqa: F811
    out = tmp_path / "e.npy"
    np.save(out, np.ones((1, 2), np.float32))
    old = out.read_bytes()
    result = run("embed", bad_image, "--out", out, "--bundle", tiny_bundle, "--force")
    assert result.exit_code == 1
    assert f"1 of 1 images could not be read; {out} not written" in result.stderr
    assert out.read_bytes() == old


def test_embed_refuses_to_overwrite_without_force(tiny_bundle, image_files, tmp_path):  # noqa: F811
    out = tmp_path / "e.npy"
    out.write_bytes(b"precious")
    result = run("embed", image_files[0], "--out", out, "--bundle", tiny_bundle)
    assert result.exit_code == 1
    assert f"error: {out} already exists; pass --force to replace it" in result.stderr
    assert out.read_bytes() == b"precious"
    assert run("embed", image_files[0], "--out", out, "--bundle", tiny_bundle, "--force").exit_code == 0
    assert np.load(out).shape == (1, TINY_DIM)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy"]  # no temporary file left


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["IMG", "--text", "a cat"], "give images or texts (--text / --text-file), not both"),
        ([], "nothing to embed: give image files, or texts with --text / --text-file"),
        (["IMG", "--out", "{tmp}/missing/e.npy"], "the directory {tmp}/missing does not exist; create it first"),
        (["IMG", "--out", "{tmp}/e.txt"], "unknown output format '.txt'; name the file with one of .npy, .jsonl"),
        (["IMG", "--out", "{tmp}"], "it is a directory; give a file name such as"),
        (["--text-file", "{tmp}/none.txt"], "--text-file {tmp}/none.txt does not exist"),
        (["--text-file", "{tmp}/blank.txt"], "--text-file {tmp}/blank.txt: line 2 is blank; write one text per line"),
        (["IMG", "--bundle", "{tmp}/nowhere"], "no bundle at {tmp}/nowhere: the directory does not exist"),
        (["IMG", "--no-bundle"], "the built-in bundle is missing from this installation"),
        (["IMG", "--backend", "tensorrt"], "backend 'tensorrt' is not available: "),
        (["IMG", "--precision", "int8"], "has no int8 graph of the image tower; it has fp32"),
    ],
)
def test_embed_errors(tiny_bundle, image_files, tmp_path, args, message, monkeypatch):  # noqa: F811
    monkeypatch.setattr("edgeclip.runtime.builtin_bundle_path", lambda: tmp_path / "no-builtin")
    (tmp_path / "blank.txt").write_text("a cat\n\na dog\n")
    args = [image_files[0] if a == "IMG" else a.format(tmp=tmp_path) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "e.npy")]
    if "--no-bundle" in args:
        args.remove("--no-bundle")
    elif "--bundle" not in args:
        args += ["--bundle", str(tiny_bundle)]
    result = run("embed", *args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message.format(tmp=tmp_path) in result.stderr
    assert not (tmp_path / "e.npy").exists()


def test_a_failing_write_is_an_error_not_a_traceback(tiny_bundle, image_files, tmp_path, monkeypatch):  # noqa: F811
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", full)
    result = run("embed", image_files[0], "--out", tmp_path / "e.npy", "--bundle", tiny_bundle)
    assert result.exit_code == 1
    assert result.stderr == "error: [Errno 28] No space left on device\n"
    assert list(tmp_path.iterdir()) == []


def test_embed_help_documents_bad_images():
    result = run("embed", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # click wraps the help to the terminal width
    assert "An image that cannot be read does not stop the run: it is named on stderr" in text
    assert "the others are written (in input order, the unreadable ones left out) and the exit status is 1" in text


# ---------------------------------------------------------------- outputs


def test_parquet_without_pyarrow_is_refused_before_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(InputError, match=r"\.parquet needs pyarrow, which is not installed; pip install"):
        outputs.check_output(tmp_path / "e.parquet")


@pytest.mark.parametrize("suffix", [".npy", ".jsonl", ".parquet"])
def test_a_crash_while_writing_leaves_the_old_file(tmp_path, monkeypatch, suffix):
    out = tmp_path / f"e{suffix}"
    out.write_bytes(b"old")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs.os, "fsync", crash)  # every format fsyncs once it has written everything
    with pytest.raises(KeyboardInterrupt):
        outputs.write_embeddings(out, np.ones((2, 3), np.float32), ["a", "b"], force=True)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_written_files_have_normal_permissions(tmp_path):
    import os

    out = outputs.write_embeddings(tmp_path / "e.npy", np.ones((1, 2), np.float32), ["a"])
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------- classify


def test_classify_json_and_table(tiny_bundle, image_files, model):  # noqa: F811
    labels = ["cat", "dog", "red car"]
    want = model.classify(image_files, labels, top_k=2)
    result = run(
        "classify", *image_files, "--labels", "cat, dog,red car", "--top-k", 2, "--bundle", tiny_bundle, "--json"
    )
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in rows] == image_files
    for row, c in zip(rows, want, strict=True):
        assert row["labels"] == list(c.labels) and row["scores"] == pytest.approx(list(c.scores))
        assert row["scores"] == sorted(row["scores"], reverse=True)

    table = run("classify", *image_files, "--labels", "cat,dog,red car", "--bundle", tiny_bundle)
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["image", "label", "score"]
    assert len(lines) == 1 + 3 * 3  # top-k 5 > 3 labels: all of them
    assert lines[1].startswith(image_files[0]) and f"{want[0].scores[0]:.4f}" in lines[1]


def test_classify_with_templates_and_labels_file(tiny_bundle, image_files, model, tmp_path):  # noqa: F811
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    (tmp_path / "t.txt").write_text("a photo of a {}.\nart of the {}\n")
    result = run("classify", image_files[0], "--labels-file", tmp_path / "labels.txt", "--templates",
                 tmp_path / "t.txt", "--bundle", tiny_bundle, "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    (c,) = model.classify(image_files[0], ["cat", "dog"], templates=["a photo of a {}.", "art of the {}"])
    assert json.loads(result.stdout)["labels"] == list(c.labels)


def test_classify_reports_bad_images_and_goes_on(tiny_bundle, image_files, bad_image):  # noqa: F811
    result = run("classify", bad_image, image_files[1], "--labels", "a,b", "--bundle", tiny_bundle, "--json")
    assert result.exit_code == 1
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [image_files[1]]
    assert f"skipped image 1 ({bad_image})" in result.stderr
    assert "1 of 2 images could not be read" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the labels with exactly one of --labels"),
        (["--labels", "a", "--labels-file", "{tmp}/l.txt"], "give the labels with exactly one of --labels"),
        (["--labels", "cat,,dog"], "blank or non-text labels at positions 2 ('') (counting from 1)"),
        (["--labels", "cat,dog,cat"], "duplicated labels: 'cat'; give each label once"),
        (["--labels-file", "{tmp}/l.txt"], "l.txt: line 2 is blank; write one label per line"),
        (["--labels", "a,b", "--top-k", "0"], "top_k (--top-k) must be a whole number >= 1, got 0"),
        (["--labels", "a,b", "--templates", "{tmp}/t.txt"], "line 1 of {tmp}/t.txt ('a photo') has no {{}}"),
        (["--labels", "a,b", "--templates", "fancy"], "templates 'fancy': no such file, and not a shipped"),
    ],
)
def test_classify_errors(tiny_bundle, image_files, tmp_path, args, message):  # noqa: F811
    (tmp_path / "l.txt").write_text("cat\n\ndog\n")
    (tmp_path / "t.txt").write_text("a photo\n")
    args = [a.format(tmp=tmp_path) for a in args]
    result = run("classify", image_files[0], *args, "--bundle", tiny_bundle)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message.format(tmp=tmp_path) in result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------- info


def test_info(tiny_bundle):  # noqa: F811
    from edgeclip.runtime.backends import BACKENDS

    plain = run("info")
    assert plain.exit_code == 0, plain.stderr
    assert "backends:" in plain.stdout and all(name in plain.stdout for name in BACKENDS)
    assert "tiny" in plain.stdout  # with no --bundle: the built-in model's contract
    report = json.loads(run("info", "--bundle", tiny_bundle, "--json").stdout)
    assert report["backends"]["onnxruntime"]["available"] is True
    assert report["auto_backend"] in BACKENDS
    assert report["onnxruntime"]["providers"]
    assert report["bundle"]["contract"]["head"]["embed_dim"] == TINY_DIM
    assert [g["parity"] for g in report["bundle"]["graphs"]] == [{"min_cosine": 1.0}] * 2
    text = run("info", "--bundle", tiny_bundle).stdout
    assert "image fp32 image.onnx: min_cosine=1" in text and "embed dim 4" in text


def test_info_with_a_broken_bundle(tmp_path):
    result = run("info", "--bundle", tmp_path)
    assert result.exit_code == 1
    assert f"error: {tmp_path} is not an edgeclip bundle: it has no edgeclip.json" in result.stderr


# ---------------------------------------------------------------- the installed script


def test_console_script(tiny_bundle, image_files, tmp_path):  # noqa: F811
    script = Path(sys.executable).parent / "edgeclip"
    if not script.exists():
        pytest.skip("the edgeclip script is not installed beside this Python")
    env = {"EDGECLIP_CACHE": str(tmp_path / "cache"), "PATH": str(script.parent)}
    out = tmp_path / "e.npy"
    ok = subprocess.run([script, "embed", *image_files, "--out", out, "--bundle", tiny_bundle], capture_output=True,
                        text=True, env=env, timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert np.load(out).shape == (3, TINY_DIM)
    again = subprocess.run([script, "embed", image_files[0], "--out", out, "--bundle", tiny_bundle],
                           capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert again.returncode == 1
    assert again.stderr.startswith("error: ") and "already exists" in again.stderr and "Traceback" not in again.stderr


# ---------------------------------------------------------------- --preprocess


@pytest.fixture(scope="module")
def large_jpegs(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("large")
    paths = []
    for i, img in enumerate(photos(2, size=40, seed=9)):
        paths.append(str(folder / f"frame{i}.jpg"))
        Image.fromarray(img).resize((1920, 1080), Image.Resampling.BICUBIC).save(paths[-1], quality=90)
    return paths


def test_fast_preprocessing_through_embed(tiny_bundle, large_jpegs, bad_image, tmp_path):  # noqa: F811
    from edgeclip.cli.options import PREPROCESS_MODES
    from edgeclip.preprocess import MODES

    assert PREPROCESS_MODES == MODES
    files = [large_jpegs[0], bad_image, large_jpegs[1]]
    out = {}
    for mode in MODES:
        result = run("embed", *files, "--out", tmp_path / f"{mode}.npy", "--bundle", tiny_bundle, "--preprocess", mode)
        assert result.exit_code == 1 and "broken.jpg" in result.stderr  # the bad file skipped and named, both modes
        out[mode] = np.load(tmp_path / f"{mode}.npy")
    with load(tiny_bundle, preprocess="fast") as fast:
        np.testing.assert_array_equal(out["fast"], fast.encode_image(large_jpegs))
    assert not np.array_equal(out["fast"], out["exact"])  # 1080p frames: fast mode really ran its own path
    assert (out["fast"] * out["exact"]).sum(axis=1).min() > 0.999


def test_bad_preprocess_mode(tiny_bundle, image_files):  # noqa: F811
    result = run("classify", image_files[0], "--labels", "a,b", "--bundle", tiny_bundle, "--preprocess", "quick")
    assert result.exit_code == 2 and "'quick' is not one of 'exact', 'fast'" in result.stderr
    with pytest.raises(InputError, match=r"preprocessing mode must be 'exact' or 'fast', got 'FAST'"):
        load(tiny_bundle, preprocess="FAST")


def test_a_file_name_that_is_not_utf8_is_written_escaped(tiny_bundle, image_files, tmp_path):  # noqa: F811
    """A Latin-1 name (old archives) used to crash the .jsonl/.parquet writers after all the work was done."""
    latin1 = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    Path(os.fsdecode(latin1)).write_bytes(Path(image_files[0]).read_bytes())
    out = tmp_path / "v.jsonl"
    result = run("embed", os.fsdecode(latin1), image_files[1], "--bundle", tiny_bundle, "--out", out)
    assert result.exit_code == 0, result.stderr
    keys = [json.loads(line)["path"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert keys == [f"{tmp_path}/caf\\xe9.png", image_files[1]]
    classified = run("classify", os.fsdecode(latin1), "--labels", "a,b", "--bundle", tiny_bundle, "--json")
    assert classified.exit_code == 0 and json.loads(classified.stdout)["image"] == f"{tmp_path}/caf\\xe9.png"


def test_output_cut_short_by_its_reader_ends_quietly(tmp_path, monkeypatch):
    """`edgeclip classify ... | head`: the pipe closes; no 'error: [Errno 32] Broken pipe', exit 0."""
    from edgeclip.cli.options import handle_errors

    stdout = (tmp_path / "stdout").open("w")  # its descriptor is the one pointed at /dev/null
    monkeypatch.setattr(sys, "stdout", stdout)

    @handle_errors
    def writes_to_a_closed_pipe() -> None:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(SystemExit) as caught:
        writes_to_a_closed_pipe()
    assert caught.value.code == 0


def test_classify_table_stays_aligned_for_wide_characters_and_control_characters(tiny_bundle, image_files, tmp_path):  # noqa: F811
    wide = tmp_path / "日本 ü.png"
    wide.write_bytes(Path(image_files[0]).read_bytes())
    result = run("classify", image_files[1], wide, "--labels", "red\tsquare,blue circle", "--bundle", tiny_bundle)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5 and "red\\tsquare" in result.stdout and "\t" not in result.stdout
    import unicodedata

    def columns(text: str) -> int:
        return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)

    score_at = {columns(line[: line.rindex(" ")]) for line in lines[1:]}  # where each row's score starts
    assert len(score_at) == 1, lines


def test_images_from_a_list_file_or_standard_input(tiny_bundle, image_files, model, tmp_path):  # noqa: F811
    """Lists longer than a command line: `find ... | edgeclip embed --images-from - --out v.npy`."""
    listing = tmp_path / "list.txt"
    listing.write_bytes(("\n".join(image_files[1:]) + "\n\n").encode())  # an editor's extra newline at the end
    out = tmp_path / "v.jsonl"
    result = run("embed", image_files[0], "--images-from", listing, "--out", out, "--bundle", tiny_bundle)
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == image_files
    piped = CliRunner().invoke(
        main, ["classify", "--images-from", "-", "--labels", "a,b", "--json", "--bundle", str(tiny_bundle)],
        input="\n".join(image_files) + "\n",
    )  # fmt: skip
    assert piped.exit_code == 0, piped.stderr
    assert [json.loads(line)["image"] for line in piped.stdout.splitlines()] == image_files
    listing.write_text(f"{image_files[0]}\n\n{image_files[1]}\n")
    blank = run("embed", "--images-from", listing, "--out", tmp_path / "w.npy", "--bundle", tiny_bundle)
    assert blank.exit_code == 1 and "line 2 is blank" in blank.stderr and not (tmp_path / "w.npy").exists()
    missing = run("classify", "--images-from", tmp_path / "nope.txt", "--labels", "a,b", "--bundle", tiny_bundle)
    assert missing.exit_code != 0 and "nope.txt" in missing.stderr
