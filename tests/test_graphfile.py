"""Graphs with their weights beside them (`NAME.onnx` + `NAME.onnx.data`): written, hashed, checked and run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeclip.bundle import MANIFEST_NAME, Bundle, GraphEntry, Manifest, TensorSpec, write_bundle_atomically
from edgeclip.contract import HeadSpec, ImageSpec, ModelContract, TextSpec
from edgeclip.errors import BundleError
from edgeclip.fileio import sha256_files
from edgeclip.graphfile import externalize

WIDTH = 64


def _graph(path: Path, seed: int = 0) -> np.ndarray:
    """A one-MatMul graph (x @ W, W of WIDTH x WIDTH) written with its weights inside; returns W."""
    weight = np.random.default_rng(seed).standard_normal((WIDTH, WIDTH)).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return weight


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_externalize_moves_the_weights_out_and_computes_the_same(tmp_path: Path) -> None:
    path = tmp_path / "g.onnx"
    weight = _graph(path)
    x = np.random.default_rng(1).standard_normal((3, WIDTH)).astype(np.float32)
    before = _run(path, x)
    assert externalize(path) == "g.onnx.data"
    assert (tmp_path / "g.onnx.data").stat().st_size >= weight.nbytes
    assert path.stat().st_size < 1024  # the graph file keeps the structure only
    assert (tmp_path / "g.onnx.data").stat().st_mode & 0o777 == path.stat().st_mode & 0o777  # not private
    np.testing.assert_array_equal(_run(path, x), before)
    np.testing.assert_array_equal(before, x @ weight)
    # Again on a graph that already has external weights: rewritten, not appended to.
    size = (tmp_path / "g.onnx.data").stat().st_size
    assert externalize(path) == "g.onnx.data"
    assert (tmp_path / "g.onnx.data").stat().st_size == size
    np.testing.assert_array_equal(_run(path, x), before)


def test_a_graph_without_large_tensors_stays_one_file(tmp_path: Path) -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "r.onnx"))
    assert externalize(tmp_path / "r.onnx") == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.onnx"]


def _bundle(target: Path) -> Path:
    """A bundle whose two graphs (one-MatMul stand-ins) keep their weights in data files."""

    def fill(tmp: Path) -> Manifest:
        graphs = []
        for tower, inp in (("image", ("pixels", "float32")), ("text", ("input_ids", "int64"))):
            file = f"{tower}.onnx"
            _graph(tmp / file, seed=len(tower))
            data = externalize(tmp / file)
            graphs.append(
                GraphEntry(
                    tower=tower,
                    precision="fp32",
                    file=file,
                    inputs=(TensorSpec(*inp, ("batch", "length")),),
                    outputs=(TensorSpec(f"{tower}_embeds", "float32", ("batch", 16)),),
                    sha256=sha256_files(tmp / file, tmp / data),
                    data=data,
                )
            )
        contract = ModelContract(name="ext", image=ImageSpec(size=32), text=TextSpec(), head=HeadSpec(embed_dim=16))
        return Manifest(name="ext", contract=contract, graphs=tuple(graphs))

    write_bundle_atomically(target, fill)
    return target


def test_a_bundle_lists_checks_and_sizes_both_files(tmp_path: Path) -> None:
    bundle = Bundle.open(_bundle(tmp_path / "b"))
    entry = bundle.graph("image")
    assert entry.data == "image.onnx.data"
    assert [p.name for p in bundle.files(entry)] == ["image.onnx", "image.onnx.data"]
    assert bundle.graph_bytes(entry) == sum(p.stat().st_size for p in bundle.files(entry))
    manifest = json.loads((tmp_path / "b" / MANIFEST_NAME).read_text())
    assert manifest["graphs"][0]["data"] == "image.onnx.data"


def test_a_tampered_data_file_is_refused_with_both_names(tmp_path: Path) -> None:
    path = _bundle(tmp_path / "b")
    with open(path / "text.onnx.data", "r+b") as f:
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(
        BundleError, match=r"graph file text\.onnx \(with its weights in text\.onnx\.data\) in bundle .* was modified"
    ):
        Bundle.open(path)


def test_a_missing_data_file_is_refused_by_name(tmp_path: Path) -> None:
    path = _bundle(tmp_path / "b")
    (path / "image.onnx.data").unlink()
    with pytest.raises(
        BundleError,
        match=r"image graph \(fp32\) as image\.onnx with its weights in image\.onnx\.data, but image\.onnx"
        r"\.data is missing",
    ):
        Bundle.open(path, verify=False)


def test_a_data_file_that_links_out_of_the_bundle_is_refused(tmp_path: Path) -> None:
    path = _bundle(tmp_path / "b")
    outside = tmp_path / "elsewhere.data"
    os.replace(path / "image.onnx.data", outside)
    os.symlink(outside, path / "image.onnx.data")
    with pytest.raises(BundleError, match=r"graphs\[0\]\.data names image\.onnx\.data, a symbolic link to .*outside"):
        Bundle.open(path)


@pytest.mark.parametrize("name", ["../x.data", "/abs.data", "a\\b.data"])
def test_a_data_name_outside_the_bundle_is_refused(tmp_path: Path, name: str) -> None:
    path = _bundle(tmp_path / "b")
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    manifest["graphs"][0]["data"] = name
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"graphs\[0\]\.data names the file .*not a plain path inside the bundle"):
        Bundle.open(path)
