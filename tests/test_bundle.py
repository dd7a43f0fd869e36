"""The bundle format: manifest round trip, refusals with useful messages, and all-or-nothing writes.

Torch-free: the graph files here are placeholder bytes (the bundle layer hashes files, it never parses ONNX).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeclip.bundle import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    Bundle,
    GraphEntry,
    Manifest,
    TensorSpec,
    sha256_file,
    write_bundle_atomically,
)
from edgeclip.contract import HeadSpec, ImageSpec, ModelContract, TextSpec
from edgeclip.errors import BundleError


def _filler(payload: bytes = b"graph", *, tokenizer: bool = False, raise_in_fill: BaseException | None = None):
    """A fill() that writes two placeholder graphs (and maybe tokenizer files) and returns their manifest."""

    def fill(tmp: Path) -> Manifest:
        graphs = []
        for tower, (inp, dtype, shape) in {
            "image": ("pixels", "float32", ("batch", 3, 32, 32)),
            "text": ("input_ids", "int64", ("batch", "length")),
        }.items():
            (tmp / f"{tower}.onnx").write_bytes(payload + tower.encode())
            if raise_in_fill is not None:
                raise raise_in_fill
            graphs.append(
                GraphEntry(
                    tower=tower,
                    precision="fp32",
                    file=f"{tower}.onnx",
                    inputs=(TensorSpec(inp, dtype, shape),),
                    outputs=(TensorSpec(f"{tower}_embeds", "float32", ("batch", 16)),),
                    sha256=sha256_file(tmp / f"{tower}.onnx"),
                    parity={"max_abs_diff": 1e-7, "min_cosine": 0.9999999},
                )
            )
        files: tuple[str, ...] = ()
        if tokenizer:
            (tmp / "tokenizer").mkdir()
            for name in ("vocab.json", "merges.txt"):
                (tmp / "tokenizer" / name).write_text("{}")
            files = ("tokenizer/vocab.json", "tokenizer/merges.txt")
        contract = ModelContract(
            name="tiny", image=ImageSpec(size=32), text=TextSpec(tokenizer_files=files), head=HeadSpec(embed_dim=16)
        )
        return Manifest(
            name="tiny",
            contract=contract,
            graphs=tuple(graphs),
            tokenizer=files,
            provenance={"source": "model.pt", "opset": 17},
        )

    return fill


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_write_then_open_round_trips_the_manifest(tmp_path: Path) -> None:
    target = tmp_path / "export" / "tiny"
    written = write_bundle_atomically(target, _filler(tokenizer=True))
    bundle = Bundle.open(target)
    assert bundle.manifest == written
    data = json.loads((target / MANIFEST_NAME).read_text())
    assert data["format"] == "edgeclip-bundle" and data["format_version"] == FORMAT_VERSION
    assert Manifest.from_dict(json.loads(json.dumps(written.to_dict()))) == written
    image = bundle.graph("image")
    assert image.inputs[0].shape == ("batch", 3, 32, 32) and bundle.file(image) == target / "image.onnx"
    assert bundle.manifest.contract.text.tokenizer_files == ("tokenizer/vocab.json", "tokenizer/merges.txt")
    assert bundle.tokenizer_dir() == target / "tokenizer"
    assert _siblings(target) == []  # no temp dir left beside it


def test_graph_hash_is_stable_and_follows_the_graphs(tmp_path: Path) -> None:
    write_bundle_atomically(tmp_path / "a", _filler(b"one"))
    write_bundle_atomically(tmp_path / "b", _filler(b"one"))
    write_bundle_atomically(tmp_path / "c", _filler(b"two"))
    a, b, c = (Bundle.open(tmp_path / n).graph_hash() for n in "abc")
    assert a == b != c and len(a) == 16


def test_tampered_graph_is_refused_with_its_name(tmp_path: Path) -> None:
    write_bundle_atomically(tmp_path / "b", _filler())
    with open(tmp_path / "b" / "text.onnx", "ab") as f:
        f.write(b"!")
    with pytest.raises(BundleError, match=r"graph file text\.onnx .* was modified after export.*export the bundle"):
        Bundle.open(tmp_path / "b")
    assert Bundle.open(tmp_path / "b", verify=False).graph("text").file == "text.onnx"


def test_missing_graph_file_is_refused(tmp_path: Path) -> None:
    write_bundle_atomically(tmp_path / "b", _filler())
    (tmp_path / "b" / "image.onnx").unlink()
    with pytest.raises(BundleError, match=r"image graph \(fp32\) as image\.onnx, but image\.onnx is missing"):
        Bundle.open(tmp_path / "b", verify=False)


def _edit_manifest(path: Path, **changes: object) -> None:
    data = json.loads((path / MANIFEST_NAME).read_text())
    data.update(changes)
    (path / MANIFEST_NAME).write_text(json.dumps(data))


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    write_bundle_atomically(tmp_path / "b", _filler())
    _edit_manifest(tmp_path / "b", format_version=FORMAT_VERSION + 1)
    with pytest.raises(BundleError, match=r"unknown bundle format version 2: .*reads format version 1; upgrade"):
        Bundle.open(tmp_path / "b")


def test_foreign_manifest_and_foreign_dirs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"no bundle at .*nowhere: the directory does not exist; make one with"):
        Bundle.open(tmp_path / "nowhere")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"photos is not an edgeclip bundle: it has no edgeclip\.json; make one"):
        Bundle.open(tmp_path / "photos")
    with pytest.raises(BundleError, match=r"cat\.jpg is a file, not a bundle directory"):
        Bundle.open(tmp_path / "photos" / "cat.jpg")
    write_bundle_atomically(tmp_path / "b", _filler())
    _edit_manifest(tmp_path / "b", format="something-else")
    with pytest.raises(BundleError, match=r"not an edgeclip bundle manifest: .*found 'something-else'"):
        Bundle.open(tmp_path / "b")
    (tmp_path / "b" / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match=r"is not valid JSON .*export it again"):
        Bundle.open(tmp_path / "b")


def test_manifest_paths_must_stay_inside_the_bundle(tmp_path: Path) -> None:
    write_bundle_atomically(tmp_path / "b", _filler())
    data = json.loads((tmp_path / "b" / MANIFEST_NAME).read_text())
    data["graphs"][0]["file"] = "../elsewhere.onnx"
    (tmp_path / "b" / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"names the file '\.\./elsewhere\.onnx', which is not a plain path inside"):
        Bundle.open(tmp_path / "b")


def test_missing_precision_lists_those_present(tmp_path: Path) -> None:
    write_bundle_atomically(tmp_path / "b", _filler())
    bundle = Bundle.open(tmp_path / "b")
    with pytest.raises(
        BundleError, match=r"has no int8 graph of the image tower; it has fp32; add one with 'edgeclip quantize"
    ):
        bundle.graph("image", "int8")
    with pytest.raises(BundleError, match=r"has no audio graph; it has graphs of: image, text"):
        bundle.graph("audio")


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failed_fill_leaves_no_temp_dir_and_the_old_bundle_intact(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "b"
    write_bundle_atomically(target, _filler(b"old"))
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(type(error)):
        write_bundle_atomically(target, _filler(b"new", raise_in_fill=error), force=True)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert _siblings(target) == []
    with pytest.raises(RuntimeError):
        write_bundle_atomically(tmp_path / "fresh", _filler(raise_in_fill=RuntimeError("boom")))
    assert not (tmp_path / "fresh").exists() and _siblings(target) == []


def test_existing_bundle_needs_force_and_force_replaces_it(tmp_path: Path) -> None:
    target = tmp_path / "b"
    write_bundle_atomically(target, _filler(b"old"))
    old_hash = Bundle.open(target).graph_hash()
    with pytest.raises(BundleError, match=r"already exists and is not empty; pass --force to replace"):
        write_bundle_atomically(target, _filler(b"new"))
    assert Bundle.open(target).graph_hash() == old_hash
    write_bundle_atomically(target, _filler(b"new"), force=True)
    assert Bundle.open(target).graph_hash() != old_hash
    assert _siblings(target) == []
    (tmp_path / "empty").mkdir()
    write_bundle_atomically(tmp_path / "empty", _filler())  # an empty directory is not "existing"
    Bundle.open(tmp_path / "empty")


def test_force_never_deletes_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(BundleError, match=r"not empty and is not an edgeclip bundle .*--force will not replace it"):
        write_bundle_atomically(tmp_path / "notes", _filler(), force=True)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match=r"file exists and is a file, not a bundle directory"):
        write_bundle_atomically(tmp_path / "file", _filler(), force=True)


def test_malformed_manifests_are_refused(tmp_path: Path) -> None:
    write_bundle_atomically(tmp_path / "b", _filler(tokenizer=True))
    good = json.loads((tmp_path / "b" / MANIFEST_NAME).read_text())
    with pytest.raises(BundleError, match=r"^graphs is missing; fix the manifest or export the bundle again$"):
        Manifest.from_dict({k: v for k, v in good.items() if k != "graphs"})
    twice = dict(good, graphs=[good["graphs"][0], good["graphs"][0]])
    with pytest.raises(BundleError, match=r"the manifest lists two fp32 graphs of the image tower"):
        Manifest.from_dict(twice)
    odd = dict(good, graphs=[dict(good["graphs"][0], precision="int4")])
    with pytest.raises(BundleError, match=r'graphs\[0\]\.precision must be one of "fp32", "fp16", "int8", found "int4'):
        Manifest.from_dict(odd)
    (tmp_path / "b" / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(BundleError, match=r"lists tokenizer file tokenizer/merges\.txt, but it is missing"):
        Bundle.open(tmp_path / "b")


def test_a_manifest_naming_a_file_fill_did_not_write_is_refused(tmp_path: Path) -> None:
    def fill(tmp: Path) -> Manifest:
        manifest = _filler()(tmp)
        (tmp / "text.onnx").unlink()
        return manifest

    with pytest.raises(BundleError, match=r"lists graph file text\.onnx, but export did not write it"):
        write_bundle_atomically(tmp_path / "b", fill)
    assert list(tmp_path.iterdir()) == []


def test_a_written_bundle_is_readable_as_any_new_folder(tmp_path: Path) -> None:
    """The temporary folder is private while it fills; the bundle in place has the usual permissions (umask)."""
    import os

    umask = os.umask(0o022)
    try:
        write_bundle_atomically(tmp_path / "b", _filler())
    finally:
        os.umask(umask)
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o755
