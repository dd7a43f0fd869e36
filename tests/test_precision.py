"""fp16 and int8 graphs: the conversion rules, the accuracy gate, adding precisions to bundles, and picking them.

The rules are checked on the graphs themselves (which nodes stay float32, Q/DQ pairs per consumer, symmetric
scales with zero points of 0, per-channel weight axes); the gate against a deliberately broken graph.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper
from PIL import Image

import edgeclip
from edgeclip.bundle import Bundle, sha256_file
from edgeclip.cli import main
from edgeclip.errors import BundleError, EdgeClipError, InputError
from edgeclip.precision import fp16 as fp16_module
from edgeclip.precision import int8 as int8_module
from edgeclip.precision.gate import GateThresholds
from edgeclip.precision.variants import PrecisionOptions, quantize_bundle
from edgeclip.runtime import best_precision, builtin_bundle_path

SHIPPED = builtin_bundle_path()


def _fp32_only(source: Path, target: Path) -> Path:
    """A copy of the bundle at `source` with its fp32 graphs only."""
    data = json.loads((source / "edgeclip.json").read_text())
    data["graphs"] = [g for g in data["graphs"] if g["precision"] == "fp32"]
    target.mkdir(parents=True)
    for name in [f for g in data["graphs"] for f in (g["file"], g.get("data")) if f]:
        shutil.copy2(source / name, target / name)
    (target / "edgeclip.json").write_text(json.dumps(data))
    return target


@pytest.fixture(scope="module")
def builtin_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fp32_only(SHIPPED, tmp_path_factory.mktemp("bundles") / "tiny-fp32")


BUILTIN = SHIPPED  # read-only uses: its fp32 graphs
LOOSE = GateThresholds(min_mean_cosine=0.5, min_agreement=0.0)  # random weights: the rules matter, not accuracy


def _run(path: Path, feed: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: feed})[0]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _ids(n: int, length: int, seed: int = 0) -> np.ndarray:
    ids = np.random.default_rng(seed).integers(1, 49000, (n, length)).astype(np.int64)
    ids[:, 0], ids[:, length // 2] = 49406, 49407
    return ids


def _types(model: onnx.ModelProto) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    return types | {i.name: i.data_type for i in graph.initializer}


@pytest.fixture(scope="module")
def vit_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random ViT CLIP, saved as an OpenAI-layout state dict."""
    from edgeclip.models.clip import CLIP
    from edgeclip.models.config import CLIPConfig, TextConfig, VisionConfig

    torch.manual_seed(0)
    vision = VisionConfig(image_size=32, layers=2, width=64, patch_size=8)  # one head: what OpenAI files imply
    model = CLIP(CLIPConfig(embed_dim=16, vision=vision, text=TextConfig(width=32, heads=2, layers=2)))
    source = tmp_path_factory.mktemp("vit") / "vit.pt"
    torch.save(model.state_dict(), source)
    return source


@pytest.fixture(scope="module")
def vit_bundle(vit_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeclip.export import bundle_from_checkpoint

    return bundle_from_checkpoint(vit_source, tmp_path_factory.mktemp("bundles") / "vit").path


@pytest.fixture(scope="module")
def builtin_variants(builtin_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in model's fp32 bundle with fp16 graphs and the text tower's int8 graphs (defaults: its world)."""
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    quantize_bundle(builtin_fp32, PrecisionOptions(fp16=True, int8=True, int8_towers=("text",)), out=out)
    return out


# ------------------------------------------------------------------ fp16


@pytest.mark.parametrize("tower", ["image", "text"])
@pytest.mark.parametrize("which", ["builtin", "vit"])
def test_fp16_keeps_the_islands_and_the_io_in_float32(which: str, tower: str, vit_bundle: Path, tmp_path: Path) -> None:
    src = (BUILTIN if which == "builtin" else vit_bundle) / f"{tower}.onnx"
    made = fp16_module.fp16_from_fp32(src, tmp_path / "g.onnx")
    model = onnx.load(str(made.path))
    onnx.checker.check_model(model, full_check=True)
    types = _types(model)
    assert [types[v.name] for v in model.graph.input] == [onnx.load(str(src)).graph.input[0].type.tensor_type.elem_type]
    assert [types[v.name] for v in model.graph.output] == [TensorProto.FLOAT]
    nodes = {n.name: n for n in model.graph.node}
    # Every LayerNorm, Softmax and L2 norm, and the projection, read and write float32 only.
    for name in made.islands:
        node = nodes[name]
        assert all(types.get(t) != TensorProto.FLOAT16 for t in (*node.input, *node.output) if t), name
    kinds = {nodes[n].op_type for n in made.islands}
    assert {"Softmax", "ReduceL2"} <= kinds and (
        (tower == "image" and which == "builtin") or "LayerNormalization" in kinds
    )
    assert made.fp16_nodes > len(model.graph.node) // 3  # most of the graph really runs in fp16
    # The last MatMul/Gemm (the projection) is an island, and so is everything after it.
    projection = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")][-1]
    assert projection.name in made.islands
    # Weights of the fp16 region are stored as fp16: the file is smaller.
    halves = [i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT16]
    assert halves


@pytest.mark.parametrize("which", ["builtin", "vit"])
def test_fp16_graph_matches_fp32_on_onnxruntime_cpu(which: str, vit_bundle: Path, tmp_path: Path) -> None:
    bundle = Bundle.open(BUILTIN if which == "builtin" else vit_bundle)
    size = bundle.manifest.contract.image.size
    pixels = np.random.default_rng(0).standard_normal((4, 3, size, size)).astype(np.float32)
    for tower, feed in (("image", pixels), ("text", _ids(4, 20))):
        src = bundle.file(bundle.graph(tower))
        fp16_module.fp16_from_fp32(src, tmp_path / f"{tower}.onnx")
        got, want = _run(tmp_path / f"{tower}.onnx", feed), _run(src, feed)
        assert got.dtype == np.float32
        assert _cos(got, want).min() > 0.9995
        assert np.allclose(np.linalg.norm(got, axis=-1), 1, atol=1e-5)  # normalized in fp32


def test_fp16_storage_of_fp16_published_weights_is_unpacked_first(tmp_path: Path) -> None:
    # The built-in bundle stores its weights as fp16 + Cast; the converter must see them as weights.
    model = onnx.load(str(BUILTIN / "text.onnx"))
    casts = sum(n.op_type == "Cast" and n.input[0].endswith("__fp16") for n in model.graph.node)
    assert casts > 0
    assert fp16_module.unpack_fp16_storage(model) == casts
    assert not any(n.op_type == "Cast" and n.input[0].endswith("__fp16") for n in model.graph.node)
    onnx.checker.check_model(model)


# ------------------------------------------------------------------ int8


def _calibration(bundle: Path, tower: str, n: int = 32) -> list[np.ndarray]:
    b = Bundle.open(bundle)
    if tower == "text":
        return [_ids(16, b.manifest.contract.text.context_length, seed) for seed in range(n // 16)]
    size = b.manifest.contract.image.size
    rng = np.random.default_rng(1)
    return [rng.standard_normal((16, 3, size, size)).astype(np.float32) for _ in range(n // 16)]


@pytest.mark.parametrize(("which", "tower"), [("builtin", "image"), ("vit", "image"), ("vit", "text")])
def test_int8_qdq_is_what_tensorrt_takes(which: str, tower: str, vit_bundle: Path, tmp_path: Path) -> None:
    bundle = BUILTIN if which == "builtin" else vit_bundle
    src = bundle / f"{tower}.onnx"
    made = int8_module.int8_qdq_from_fp32(src, tmp_path / "q.onnx", _calibration(bundle, tower))
    model = onnx.load(str(made.path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert qs and dqs
    for node in qs + dqs:
        zero = inits[node.input[2]]
        assert zero.dtype == np.int8 and not zero.any()  # symmetric int8: zero points of 0
        assert (inits[node.input[1]] > 0).all()
    for q in qs:  # one Q/DQ pair per consumer
        readers = consumers[q.output[0]]
        assert len(readers) == 1 and readers[0].op_type == "DequantizeLinear"
        assert len(consumers[readers[0].output[0]]) == 1
    fp32 = onnx.load(str(src))
    int8_module.unpack_fp16_storage(fp32)
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name not in made.quantized:
            continue
        weight_dq = producer[node.input[1]]
        assert weight_dq.op_type == "DequantizeLinear"
        weight = inits[weight_dq.input[0]]
        axis = next((a.i for a in weight_dq.attribute if a.name == "axis"), 1)
        scales = inits[weight_dq.input[1]]
        # Per output channel: Conv weights (out, in, kh, kw) on axis 0; MatMul weights (in, out) on axis 1;
        # Gemm weights (out, in) with transB on axis 0.
        transposed = any(a.name == "transB" and a.i for a in fp32_nodes[node.name].attribute)
        want = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and transposed) else 1
        assert weight.dtype == np.int8 and axis == want and scales.shape == (weight.shape[want],), node.name
    for name in made.excluded:  # left in float: no Q/DQ before them
        node = next(n for n in model.graph.node if n.name == name)
        assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in node.input)
    # Attention's activation x activation MatMuls and the residual Adds stay float.
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Add"):
            dq_inputs = [i for i in node.input if i in producer and producer[i].op_type == "DequantizeLinear"]
            assert node.op_type == "MatMul" or not dq_inputs
            if node.op_type == "MatMul" and dq_inputs:
                assert node.input[1] in producer and producer[node.input[1]].input[0] in inits


@pytest.mark.parametrize("scheme", ["dynamic-u8s8", "qdq-u8s8", "qoperator-u8s8"])
def test_cpu_int8_schemes_run_and_stay_close(scheme: str, vit_bundle: Path, tmp_path: Path) -> None:
    src = vit_bundle / "image.onnx"
    made = int8_module.int8_cpu_from_fp32(src, tmp_path / "c.onnx", _calibration(vit_bundle, "image"), scheme=scheme)
    feed = _calibration(vit_bundle, "image", 16)[0]
    assert made.quantized and _cos(_run(made.path, feed), _run(src, feed)).mean() > 0.9
    ops = {n.op_type for n in onnx.load(str(made.path)).graph.node}
    expected = {"dynamic-u8s8": "MatMulInteger", "qdq-u8s8": "QuantizeLinear", "qoperator-u8s8": "QLinearMatMul"}
    assert expected[scheme] in ops
    # Weights in 7 bits: on x86 CPUs without VNNI, u8 x s8 products are summed in pairs into a saturating int16,
    # which 8-bit weights overflow (a ViT-B/32's image embeddings fell to cosine 0.99 on an AVX2 CPU); with
    # |w| <= 64, 2 * 255 * 64 = 32640 fits.
    weights = [numpy_helper.to_array(i) for i in onnx.load(str(made.path)).graph.initializer if i.data_type == 3]
    assert max(int(abs(w.astype(int)).max()) for w in weights) == 64


def _unpacked_graph(path: Path) -> onnx.ModelProto:
    model = onnx.load(str(path))
    fp16_module.unpack_fp16_storage(model)
    return model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("tower", ["image", "text"])
def test_attention_blocks_fuse_into_onnxruntime_attention_with_the_same_outputs(tower: str, vit_bundle: Path) -> None:
    from edgeclip.precision.attention import fuse_attention

    plain = _unpacked_graph(vit_bundle / f"{tower}.onnx")
    fused = onnx.ModelProto()
    fused.CopyFrom(plain)
    result = fuse_attention(fused)
    assert (result.fused, result.causal, result.unmatched) == (2, 2 if tower == "text" else 0, 0)
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("Attention") == 2 and "Softmax" not in ops and "Trilu" not in ops
    linear = int8_module.linear_nodes(plain)
    assert len(result.projections) == 2 and all(qkv in linear for qkv, _ in result.projections)
    a, b = _session(plain), _session(fused)
    name = a.get_inputs()[0].name
    feeds = (
        [_ids(1, 5), _ids(3, 16, seed=1), _ids(2, 77, seed=2)] if tower == "text" else _calibration(vit_bundle, tower)
    )
    for feed in feeds:
        np.testing.assert_allclose(b.run(None, {name: feed})[0], a.run(None, {name: feed})[0], atol=2e-6, rtol=1e-5)


def test_attention_that_is_not_the_exported_pattern_is_left_as_it_is(vit_bundle: Path) -> None:
    from edgeclip.precision.attention import fuse_attention

    plain = _unpacked_graph(vit_bundle / "text.onnx")
    first_mask = next(n for n in plain.graph.node if n.op_type == "Trilu")
    first_mask.attribute[0].i = 1  # upper: the first block's mask is no longer causal; the graph still runs
    fused = onnx.ModelProto()
    fused.CopyFrom(plain)
    result = fuse_attention(fused)
    assert (result.fused, result.causal, result.unmatched) == (1, 1, 1)
    assert [n.op_type for n in fused.graph.node].count("Softmax") == 1
    feed = {"input_ids": _ids(2, 12)}
    np.testing.assert_allclose(_session(fused).run(None, feed)[0], _session(plain).run(None, feed)[0], atol=2e-6)


def test_dynamic_int8_runs_attention_as_qattention_and_keeps_excluded_projections_float(
    vit_bundle: Path, tmp_path: Path
) -> None:
    src = vit_bundle / "text.onnx"
    every = int8_module.int8_cpu_from_fp32(src, tmp_path / "q.onnx", [], exclude=[])
    assert every.attention_fused == 2
    assert [n.op_type for n in onnx.load(str(every.path)).graph.node].count("QAttention") == 2
    # By default the first linear layer (here block 0's QKV projection) stays float: so does its Attention node.
    made = int8_module.int8_cpu_from_fp32(src, tmp_path / "k.onnx", [])
    first_qkv = int8_module.linear_nodes(_unpacked_graph(src))[0]
    ops = [n.op_type for n in onnx.load(str(made.path)).graph.node]
    assert (ops.count("QAttention"), ops.count("Attention")) == (1, 1) and first_qkv in made.excluded
    feed = _ids(4, 16)
    for graph in (every.path, made.path):
        assert _cos(_run(graph, feed), _run(src, feed)).min() > 0.99
    # --int8-skip auto's measure of each layer reaches the fused projections too (through the block's output)
    errors = int8_module.local_errors(src, every.path, every.quantized, [feed])
    assert set(errors) == set(every.quantized) and all(np.isfinite(e) for e in errors.values())
    # (block 0's projection reads the float embeddings, exact in both graphs: all its error is its own; without the
    # block's output to judge it by, it would measure 0 and never be left in float)
    assert errors[first_qkv] > 0.001


def test_unknown_skip_names_and_schemes_are_refused(vit_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"--int8-skip names nodes the graph does not have: nope; its linear layers"):
        int8_module.int8_qdq_from_fp32(vit_bundle / "image.onnx", tmp_path / "q.onnx", [], exclude=["nope"])
    with pytest.raises(InputError, match=r"unknown CPU int8 scheme 'fast'"):
        int8_module.int8_cpu_from_fp32(vit_bundle / "image.onnx", tmp_path / "q.onnx", [], scheme="fast")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"--int8-towers takes image and/or text"):
        PrecisionOptions(int8=True, int8_towers=("audio",))


# ------------------------------------------------------------------ bundles and the gate


def test_builtin_bundle_gets_fp16_and_int8_behind_the_gate(builtin_variants: Path) -> None:
    bundle = Bundle.open(builtin_variants)
    graphs = {(g.file, g.precision, g.scheme, g.backends) for g in bundle.manifest.graphs}
    assert ("image.fp16.onnx", "fp16", "fp16-islands", ()) in graphs
    assert ("text.int8.onnx", "int8", "qdq-s8s8", ("tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda")) in graphs
    assert ("text.int8-cpu.onnx", "int8", "dynamic-u8s8", ("onnxruntime",)) in graphs
    for g in bundle.manifest.graphs:
        if g.precision == "fp32":
            continue
        gate = g.gate
        assert gate["passed"] and gate["finite"] and gate["eval_set"] == "world color_shape"
        assert gate["eval_images"] == 1024 and gate["probe_rows"] > 9
        bars = gate["thresholds"]
        assert gate["mean_cosine"] >= bars["min_mean_cosine"] and gate["agreement"] >= bars["min_agreement"]
        if g.precision == "int8":
            assert set(gate["accuracy"]) == {"all", "heldout", "seen"} and gate["accuracy_drop"] <= 0.01
    # The fp32 graphs are the shipped ones, byte for byte.
    for tower in ("image", "text"):
        assert sha256_file(builtin_variants / f"{tower}.onnx") == sha256_file(BUILTIN / f"{tower}.onnx")


def test_precision_picks_the_graph_meant_for_the_backend(builtin_variants: Path) -> None:
    bundle = Bundle.open(builtin_variants)
    with edgeclip.load(builtin_variants, backend="onnxruntime", precision="text=int8") as model:
        assert model.files == {"image": "image.onnx", "text": "text.int8-cpu.onnx"}
        assert model.precisions == {"image": "fp32", "text": "int8"}
        assert model.encode_text(["a red star"]).shape == (1, 128)
    with edgeclip.load(builtin_variants, backend="onnxruntime", precision="fp16") as model:
        assert model.files == {"image": "image.fp16.onnx", "text": "text.fp16.onnx"}
    # Defaults: ONNX Runtime CPU runs its own int8 where there is one, else fp32; GPUs run fp16.
    assert best_precision(bundle, "text", "onnxruntime") == "int8"
    assert best_precision(bundle, "image", "onnxruntime") == "fp32"
    assert best_precision(bundle, "image", "tensorrt") == "fp16"
    assert bundle.graph("text", "int8", backend="tensorrt").file == "text.int8.onnx"
    assert bundle.graph("text", "int8", backend="onnxruntime").file == "text.int8-cpu.onnx"
    with pytest.raises(BundleError, match=r"an int8 graph of the text tower only for onnxruntime.*not for torch") as e:
        bundle.graph("text", "int8", backend="torch")
    assert "pick another precision (fp32, fp16) or backend" in str(e.value)  # not the int8 that was refused


def test_precision_int8_on_a_bundle_without_it_names_what_it_has(builtin_variants: Path, builtin_fp32: Path) -> None:
    with pytest.raises(BundleError, match=r"has no int8 graph of the image tower; it has fp32, fp16; add one with "):
        edgeclip.load(builtin_variants, backend="onnxruntime", precision="int8")
    result = CliRunner().invoke(main, ["classify", str(BUILTIN / "edgeclip.json"), "--labels", "a,b", "--bundle",
                                       str(builtin_fp32), "--precision", "int8"])  # fmt: skip
    assert result.exit_code == 1 and "edgeclip quantize" in result.stderr and "Traceback" not in result.output


def test_a_broken_graph_is_refused_with_figures_and_the_bundle_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "tiny"
    shutil.copytree(BUILTIN, bundle)
    before = {p.name: sha256_file(p) for p in bundle.iterdir()}
    real = int8_module.int8_qdq_from_fp32

    def broken(*args: Any, **kwargs: Any) -> Any:  # the real graph, then every activation scale times 100
        made = real(*args, **kwargs)
        model = onnx.load(str(made.path))
        scales = {n.input[1] for n in model.graph.node if n.op_type == "QuantizeLinear"}
        for init in model.graph.initializer:
            if init.name in scales:
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 100, init.name))
        onnx.save(model, str(made.path))
        return made

    monkeypatch.setattr("edgeclip.precision.variants.int8_qdq_from_fp32", broken)
    options = PrecisionOptions(int8=True, int8_towers=("text",), skip=())
    with pytest.raises(EdgeClipError) as info:
        quantize_bundle(bundle, options)
    message = str(info.value)
    assert "the int8 graph of the text tower (text.int8.onnx) misses its accuracy gate: " in message
    assert "zero-shot agreement 0." in message and "mean cosine" in message and "--int8-skip" in message
    assert "nothing was written, the bundle is as it was" in message
    assert {p.name: sha256_file(p) for p in bundle.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no temporary folder left behind


def test_quantize_refuses_a_tampered_fp32_graph(builtin_fp32: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "tiny"
    shutil.copytree(builtin_fp32, bundle)
    with open(bundle / "image.onnx", "ab") as f:
        f.write(b"\0")
    result = CliRunner().invoke(main, ["quantize", str(bundle), "--fp16"])
    assert result.exit_code == 1 and "was modified after export" in result.stderr
    assert not (bundle / "image.fp16.onnx").exists()


def test_quantize_cli_json_and_both_precisions_at_once(tmp_path: Path) -> None:
    out = tmp_path / "q"
    result = CliRunner().invoke(main, ["quantize", str(BUILTIN), "--out", str(out), "--fp16", "--int8",
                                       "--int8-towers", "text", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # nothing else on stdout (the calibrator's chatter is silenced)
    assert report["added"] == ["image.fp16.onnx", "text.fp16.onnx", "text.int8.onnx", "text.int8-cpu.onnx"]
    assert Bundle.open(out).graph("image").file == "image.onnx"


def _photos(folder: Path, n: int, *, bad: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):  # other sizes than the model's input: preprocessed like any image
        w, h = int(rng.integers(40, 300)), int(rng.integers(40, 300))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    for i in range(bad):
        (folder / f"bad{i}.png").write_bytes(b"not a png")
    return folder


def test_user_calibration_needs_data_and_says_how_much(vit_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"--int8 needs calibration images: --calib DIR, a folder of at least 16"):
        quantize_bundle(vit_bundle, PrecisionOptions(int8=True), out=tmp_path / "o")
    few = _photos(tmp_path / "few", 3, bad=2)
    with pytest.raises(InputError, match=r"3 readable images \(2 unreadable, of 5 image files\); .* at least 16"):
        quantize_bundle(vit_bundle, PrecisionOptions(int8=True, calib=few, int8_towers=("image",)), out=tmp_path / "o")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"0 readable images"):
        quantize_bundle(vit_bundle, PrecisionOptions(int8=True, calib=empty, int8_towers=("image",)))
    with pytest.raises(InputError, match=r"quantizes the text tower too, and that needs captions: --calib-text FILE"):
        quantize_bundle(vit_bundle, PrecisionOptions(int8=True, calib=few))
    assert not (tmp_path / "o").exists()


def test_user_calibration_skips_and_counts_unreadable_images(vit_bundle: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", 24, bad=2)
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(f"a photo of a thing number {i}" for i in range(40)) + "\n")
    options = PrecisionOptions(int8=True, calib=photos, calib_text=captions, int8_gate=LOOSE)
    manifest, report = quantize_bundle(vit_bundle, options, out=tmp_path / "q")
    assert sorted(Path(f).name for f, _ in report.skipped_images) == ["bad0.png", "bad1.png"]
    int8 = [g for g in manifest.graphs if g.precision == "int8"]
    assert len(int8) == 4 and all(g.gate["eval_set"].startswith("held-out calibration images") for g in int8)
    assert {g.gate["calibration"] for g in int8 if g.scheme == "qdq-s8s8"} == {"percentile, 16 samples"}


def test_export_int8_without_calibration_fails_before_exporting(vit_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    result = CliRunner().invoke(main, ["export", str(vit_source), "--out", str(out), "--int8"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: --int8 needs calibration images: --calib DIR" in result.stderr and "loading" not in result.stderr
    assert not out.exists()
    captions = tmp_path / "c.txt"
    captions.write_text("a\nb\n")
    photos = _photos(tmp_path / "photos", 2)
    args = [
        "export",
        str(vit_source),
        "--out",
        str(out),
        "--int8",
        "--calib",
        str(photos),
        "--calib-text",
        str(captions),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "2 readable images" in result.stderr and not out.exists()


def test_the_shipped_bundle_carries_every_precision_behind_its_gate() -> None:
    bundle = Bundle.open(SHIPPED)
    files = {(g.tower, g.precision, g.scheme) for g in bundle.manifest.graphs}
    for tower in ("image", "text"):
        assert {(tower, "fp16", "fp16-islands"), (tower, "int8", "qdq-s8s8"), (tower, "int8", "dynamic-u8s8")} <= files
    assert all(g.gate["passed"] for g in bundle.manifest.graphs if g.precision != "fp32")
    with edgeclip.load(SHIPPED, backend="onnxruntime") as model:  # the fastest gated graphs for the CPU
        assert model.files == {"image": "image.int8-cpu.onnx", "text": "text.int8-cpu.onnx"}


# ---------------------------------------------------------------- fp16 on the CPU provider


def _optimized_initializers(path: Path, options: Any, out: Path) -> dict[int, int]:
    """Element counts per ONNX data type of the initializers in the graph ONNX Runtime optimized from `path`."""
    so = options.session_options()
    so.optimized_model_filepath = str(out)
    cpu = ["CPUExecutionProvider"]
    ort.InferenceSession(str(path), so, providers=cpu, disabled_optimizers=options.disabled_optimizers)
    counts: dict[int, int] = {}
    for init in onnx.load(str(out), load_external_data=False).graph.initializer:
        counts[init.data_type] = counts.get(init.data_type, 0) + int(np.prod(init.dims, dtype=np.int64))
    return counts


def test_fp16_graphs_keep_their_weights_in_fp16_on_the_cpu_provider(tmp_path):
    """ONNX Runtime's CPU provider upcasts an fp16 graph's weights when a session starts unless told not to (it
    ignores optimizer names it does not know, so the effect is checked, not the option)."""
    from edgeclip.runtime import runner_request
    from edgeclip.runtime.backends.onnxruntime import OrtOptions, options_for, start_session

    bundle = Bundle.open(SHIPPED)
    for tower, feed in (
        ("image", np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)),
        ("text", np.array([[49406, 320, 1125, 49407] + [0] * 28] * 2, dtype=np.int64)),
    ):
        entry = bundle.graph(tower, "fp16", backend="onnxruntime")
        request = runner_request(bundle, entry)
        options = options_for("onnxruntime", request)
        assert options.keep_fp16_weights and options.shared_arena
        fp32_request = runner_request(bundle, bundle.graph(tower, "fp32", backend="onnxruntime"))
        assert not options_for("onnxruntime", fp32_request).keep_fp16_weights
        assert not options_for("onnxruntime-cuda", request).keep_fp16_weights  # GPUs run fp16 weights as they are

        path = bundle.file(entry)
        kept = _optimized_initializers(path, options, tmp_path / f"{tower}-kept.onnx")
        upcast = _optimized_initializers(path, OrtOptions(), tmp_path / f"{tower}-upcast.onnx")
        fp16, fp32 = TensorProto.FLOAT16, TensorProto.FLOAT
        moved = upcast.get(fp32, 0) - kept.get(fp32, 0)  # weights the default turns into float32 copies
        assert moved > 0.9 * upcast.get(fp32, 0), (kept, upcast)  # kept: (nearly) none of them
        assert kept.get(fp16, 0) - upcast.get(fp16, 0) >= 0.9 * moved  # they stay float16 instead

        name = entry.inputs[0].name
        default = start_session(path, OrtOptions(), backend="onnxruntime").run(None, {name: feed})[0]
        lean = start_session(path, options, backend="onnxruntime").run(None, {name: feed})[0]
        assert np.isfinite(lean).all()
        np.testing.assert_allclose(lean, default, atol=1e-4)  # the same casts; only float32 rounding differs
