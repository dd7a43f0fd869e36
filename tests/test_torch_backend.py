"""The PyTorch backend on the CPU, checked against ONNX Runtime running the same graphs.

Covered: the built-in model (a ResNet image tower, a causal text tower) at fp32 and fp16, and a small random ViT
exported here, at batch 1 and N and text of several lengths; loading through `edgeclip.load`; the errors (an op
the translator does not cover, int8, a manifest that disagrees with the graph, a closed runner).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import edgeclip
from edgeclip.bundle import Bundle
from edgeclip.errors import BackendError, BundleError, InputError
from edgeclip.runtime import builtin_bundle_path, runner_request
from edgeclip.runtime.backends import probe
from edgeclip.runtime.backends import torch as torch_backend
from edgeclip.runtime.torch_graph import OPS, module_from_onnx, onnx_ops

BUILTIN = builtin_bundle_path()
FP32_BAR = 0.99999  # the same fp32 graph on two implementations
FP16_BAR = 0.9999  # the same fp16 graph: both accumulate in fp16 their own way (measured: 0.9999999 here)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _ort(path: Path, feed: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: feed})[0]


def _ids(batch: int, length: int, seed: int = 0) -> np.ndarray:
    """Prompts as the tokenizer makes them: start token, body, end token at a varied place, padding zeros."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, length), np.int64)
    for row, end in enumerate(rng.integers(1, length, batch) if length > 1 else [0] * batch):
        ids[row, : end + 1] = rng.integers(1, 49000, end + 1)
        ids[row, 0] = 49406
        ids[row, end] = 49407
    return ids


def _runner(bundle: Bundle, tower: str, precision: str, **options: object) -> torch_backend.TorchRunner:
    entry = bundle.graph(tower, precision, backend="torch")
    return torch_backend.create("torch", runner_request(bundle, entry), torch_backend.TorchOptions(**options))  # type: ignore[arg-type]


def _feed(tower: str, batch: int, size: int, length: int, seed: int = 0) -> np.ndarray:
    if tower == "image":
        return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)
    return _ids(batch, length, seed)


def _check_same_as_ort(bundle: Bundle, tower: str, precision: str, bar: float) -> None:
    runner = _runner(bundle, tower, precision)
    path = bundle.file(bundle.graph(tower, precision, backend="torch"))
    size = bundle.manifest.contract.image.size
    context = bundle.manifest.contract.text.context_length
    cases = [(1, 0), (5, 0)] if tower == "image" else [(1, 1), (1, 7), (6, 12), (3, context)]
    for batch, length in cases:
        feed = _feed(tower, batch, size, length, seed=batch + length)
        got = runner.infer({runner.inputs[0].name: feed})[runner.outputs[0].name]
        want = _ort(path, feed)
        assert got.shape == want.shape and got.dtype == np.float32
        cos = _cos(got, want)
        assert cos.min() >= bar, (tower, precision, batch, length, cos.min())
        if precision == "fp32":
            assert np.abs(got - want).max() < 1e-5


@pytest.mark.parametrize("tower", ["image", "text"])
@pytest.mark.parametrize(("precision", "bar"), [("fp32", FP32_BAR), ("fp16", FP16_BAR)])
def test_builtin_graphs_match_onnxruntime(tower: str, precision: str, bar: float) -> None:
    _check_same_as_ort(Bundle.open(BUILTIN), tower, precision, bar)


@pytest.fixture(scope="module")
def vit_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random ViT CLIP (GELU text, quick-GELU-free), exported by edgeclip, with fp16 graphs added."""
    from edgeclip.export import bundle_from_checkpoint
    from edgeclip.models.clip import CLIP
    from edgeclip.models.config import CLIPConfig, TextConfig, VisionConfig
    from edgeclip.precision.fp16 import fp16_from_fp32

    torch.manual_seed(0)
    vision = VisionConfig(image_size=32, layers=2, width=64, patch_size=8)
    model = CLIP(CLIPConfig(embed_dim=16, vision=vision, text=TextConfig(width=32, heads=2, layers=2)))
    source = tmp_path_factory.mktemp("vit") / "vit.pt"
    torch.save(model.state_dict(), source)
    path = bundle_from_checkpoint(source, tmp_path_factory.mktemp("bundles") / "vit").path
    for tower in ("image", "text"):  # the fp16 graphs, without the gate (random weights: the ops matter here)
        fp16_from_fp32(path / f"{tower}.onnx", path / f"{tower}.fp16.onnx")
    return path


@pytest.mark.parametrize("tower", ["image", "text"])
def test_vit_export_matches_onnxruntime(vit_bundle: Path, tower: str) -> None:
    bundle = Bundle.open(vit_bundle)
    _check_same_as_ort(bundle, tower, "fp32", FP32_BAR)
    # The fp16 graph (not listed in the manifest: run through the translator directly).
    path = vit_bundle / f"{tower}.fp16.onnx"
    feed = _feed(tower, 3, 32, 9)
    with torch.inference_mode():
        (got,) = module_from_onnx(path)(torch.from_numpy(feed))
    assert _cos(got.float().numpy(), _ort(path, feed)).min() >= FP16_BAR


def test_the_translator_covers_every_op_of_the_exports(vit_bundle: Path) -> None:
    graphs = [*BUILTIN.glob("*.onnx"), *vit_bundle.glob("*.onnx")]
    float_graphs = [g for g in graphs if "int8" not in g.name]
    found = set().union(*(onnx_ops(onnx.load(str(g), load_external_data=False)) for g in float_graphs))
    assert found <= set(OPS), found - set(OPS)
    # The two kinds of image tower each bring ops the other lacks: both are exercised above.
    assert {"AveragePool", "Relu", "Gemm"} <= found and {"LayerNormalization", "Sigmoid", "Erf"} <= found


def test_an_op_it_does_not_cover_is_named(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])
    nodes = [helper.make_node("Einsum", ["x"], ["t"], equation="ij->ji"), helper.make_node("HardSwish", ["t"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "odd.onnx")
    with pytest.raises(BackendError, match=r"cannot run odd.onnx: it has ops Einsum, HardSwish that its ONNX trans"):
        module_from_onnx(tmp_path / "odd.onnx")


def test_consts_are_folded_and_shape_values_kept_per_input_shape() -> None:
    module = module_from_onnx(BUILTIN / "text.fp16.onnx")
    kinds = [s.kind for s in module._steps]
    assert "const" not in kinds and {"shape", "data"} <= set(kinds)  # the fp16 weight casts were folded at load
    with torch.inference_mode():
        for length in (5, 9, 5):
            module(torch.from_numpy(_ids(2, length)))
    assert sorted(k[1] for k in module._shape_values) == [(2, 5), (2, 9)]


def test_load_runs_both_towers_on_torch_like_onnxruntime() -> None:
    texts = ["a red cube", "a photo of a small blue sphere on the grass, seen from far away", "x"]
    frames = [np.random.default_rng(i).integers(0, 256, (48 + i, 80, 3), dtype=np.uint8) for i in range(3)]
    with edgeclip.load(backend="torch") as model, edgeclip.load(backend="onnxruntime", precision="fp32") as ref:
        assert model.backend == "torch" and model.precisions == {"image": "fp32", "text": "fp32"}
        assert model.image_pipeline is None  # on the CPU, images go through edgeclip's CPU preprocessor
        want = ref.encode_text(texts)
        assert _cos(model.encode_text(texts), want).min() >= FP32_BAR
        assert _cos(
            model.encode_image(frames, color_order="BGR"), ref.encode_image(frames, color_order="BGR")
        ).min() >= (FP32_BAR)
    with edgeclip.load(backend="torch", precision="fp16") as half:
        assert half.precisions == {"image": "fp16", "text": "fp16"}
        assert _cos(half.encode_text(texts), want).min() > 0.999  # fp16 against fp32: the precision gate's kind of bar


def test_int8_is_refused_with_what_to_do() -> None:
    with pytest.raises(BundleError, match=r"int8 graph of the image tower only for"):
        edgeclip.load(backend="torch", precision="int8")
    bundle = Bundle.open(BUILTIN)
    request = runner_request(bundle, bundle.graph("image", "int8"))
    with pytest.raises(
        BackendError, match=r"runs fp32 and fp16 graphs, not int8 \(image.int8.onnx\).*precision='fp16'"
    ):
        torch_backend.create("torch", request)


def test_a_manifest_that_disagrees_with_the_graph_is_refused(tmp_path: Path) -> None:
    shutil.copytree(BUILTIN, tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "edgeclip.json").read_text())
    entry = next(g for g in manifest["graphs"] if g["tower"] == "text" and g["precision"] == "fp32")
    entry["inputs"][0]["dtype"] = "int32"
    (tmp_path / "b" / "edgeclip.json").write_text(json.dumps(manifest))
    bundle = Bundle.open(tmp_path / "b")
    with pytest.raises(BundleError, match=r"text.onnx has inputs and outputs .*'input_ids': 'int64'.*manifest says"):
        torch_backend.create("torch", runner_request(bundle, bundle.graph("text")))


def test_bad_feeds_and_a_closed_runner() -> None:
    runner = _runner(Bundle.open(BUILTIN), "text", "fp32")
    with pytest.raises(InputError, match=r"must be int64, got int32"):
        runner.infer({"input_ids": np.zeros((1, 4), np.int32)})
    with pytest.raises(InputError, match=r"dim 'length' of input 'input_ids' .* is 40; this graph takes between 1"):
        runner.infer({"input_ids": np.zeros((1, 40), np.int64)})
    runner.close()
    with pytest.raises(BackendError, match=r"was closed; load the model again"):
        runner.infer({"input_ids": _ids(1, 4)})


def test_options_and_probes() -> None:
    assert probe("torch") == (True, f"PyTorch {torch.__version__.split('+')[0]} on the CPU") or probe("torch")[0]
    if not torch.cuda.is_available():
        ok, why = probe("torch-cuda")
        assert not ok and why
    with pytest.raises(InputError, match=r"device must be 'cpu' or 'cuda'"):
        torch_backend.TorchOptions(device="gpu")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"cuda_graphs needs device='cuda'"):
        torch_backend.TorchOptions(cuda_graphs=True)
    with pytest.raises(InputError, match=r"threads must be a whole number >= 1"):
        torch_backend.TorchOptions(threads=0)
    assert torch_backend.TorchOptions(device="cuda").on_device_preprocessing
    assert not torch_backend.TorchOptions().on_device_preprocessing


def test_bench_runs_the_torch_backend_and_times_device_preprocessing(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeclip import bench as lib

    # With preprocessing on the runner's device (what torch-cuda does), the pipeline rows compare both ways.
    monkeypatch.setattr(
        torch_backend, "options_for", lambda name, request: torch_backend.TorchOptions(preprocess_on_device=True)
    )
    config = lib.BenchConfig(
        backend="torch", precisions=("fp32",), batches=(2,), towers=("image",), repeats=1, eager=False, memory=False
    )
    result = lib.bench(config)
    assert [(r.precision, r.batch) for r in result.speed] == [("fp32", 2)]
    assert result.machine["session"]["device"] == "cpu"
    rows = result.pipeline
    assert [(r.batch, r.precision) for r in rows] == [(2, "fp32")]
    assert rows[0].cpu_preprocess_ms > 0 and rows[0].device_preprocess_ms > 0
    assert "preprocessing on the CPU or the device" in lib.table(result)
    assert lib.BenchResult.from_dict(result.to_dict()).pipeline == rows


def _one_node(
    op: str, inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray], **attrs: object
) -> onnx.ModelProto:
    types = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}
    graph_in = [helper.make_tensor_value_info(n, types[a.dtype], a.shape) for n, a in inputs.items()]
    inits = [onnx.numpy_helper.from_array(a, n) for n, a in consts.items()]
    node = helper.make_node(op, [*inputs, *consts], ["y"], **attrs)
    first = next(iter(inputs.values()))
    out_type = TensorProto.INT64 if op == "ArgMax" or first.dtype == np.int64 else TensorProto.FLOAT
    out = [helper.make_tensor_value_info("y", out_type, None)]
    graph = helper.make_graph([node], "g", graph_in, out, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


_R = np.random.default_rng(5)
_X = _R.standard_normal((2, 3, 5, 6)).astype(np.float32)
_I = np.array([[[1, -1], [0, 2]], [[-2, 0], [1, 1]]], np.int64)
OP_CASES = [
    ("GatherND", {"x": _X}, {"i": _I}, {"batch_dims": 0}),
    ("GatherND", {"x": _X}, {"i": np.array([[[1], [-1]], [[0], [2]]], np.int64)}, {"batch_dims": 1}),
    ("Gather", {"x": _X}, {"i": np.array([[-1, 0], [2, 1]], np.int64)}, {"axis": 2}),
    (
        "Slice",
        {"x": _X},
        {"s": np.array([-4, 1]), "e": np.array([2**62, 6]), "a": np.array([2, 3]), "t": np.array([2, 2])},
        {},
    ),
    ("ArgMax", {"x": np.array([[1, 3, 3, 0], [2, 2, 1, 2]], np.float32)}, {}, {"axis": 1, "select_last_index": 1}),
    ("Unsqueeze", {"x": _X[0]}, {"a": np.array([-1, 0], np.int64)}, {}),
    ("Reshape", {"x": _X}, {"s": np.array([0, -1, 6], np.int64)}, {}),
    (
        "Conv",
        {"x": _X},
        {"w": _R.standard_normal((4, 3, 3, 2)).astype(np.float32)},
        {"pads": [0, 1, 2, 0], "strides": [2, 1]},
    ),
    ("AveragePool", {"x": _X}, {}, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 0}),
    ("Div", {"x": np.array([7, -7, 9], np.int64)}, {"d": np.array([2, 2, -4], np.int64)}, {}),
    ("Trilu", {"x": _X}, {"k": np.array(1, np.int64)}, {"upper": 1}),
    ("Expand", {"x": _X[:, :1]}, {"s": np.array([3, 1, 1], np.int64)}, {}),
    ("ReduceL2", {"x": _X}, {"a": np.array([1, -1], np.int64)}, {"keepdims": 0}),
    ("Softmax", {"x": _X}, {}, {"axis": 1}),
]


@pytest.mark.parametrize(("op", "inputs", "consts", "attrs"), OP_CASES, ids=[c[0] for c in OP_CASES])
def test_each_op_means_what_onnxruntime_computes(op: str, inputs: dict, consts: dict, attrs: dict) -> None:
    model = _one_node(op, inputs, consts, **attrs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, inputs)[0]
    from edgeclip.runtime.torch_graph import OnnxModule

    with torch.inference_mode():
        (got,) = OnnxModule(model, op)(*(torch.from_numpy(a) for a in inputs.values()))
    assert got.shape == want.shape and str(got.dtype).endswith(str(want.dtype))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("missing", ["torch", "onnx"])
def test_probe_names_the_extra_when_a_package_is_missing(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    ok, why = torch_backend.probe("torch")
    assert not ok
    assert why.startswith(f"{missing} is not installed: pip install 'edgeclip[torch]'")
