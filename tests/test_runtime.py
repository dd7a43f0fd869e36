"""The runtime: runners and their input checks, the backend registry, `edgeclip.load` and `Model`.

Most tests run on a hand-made bundle (two tiny ONNX graphs written with onnx.helper, milliseconds to make); the
parity tests export a tiny random transformers CLIPModel through `bundle_from_checkpoint` once per session and
compare `Model` with transformers itself.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeclip
from edgeclip.bundle import GraphEntry, Manifest, TensorSpec, sha256_file, write_bundle_atomically
from edgeclip.contract import HeadSpec, ImageSpec, ModelContract, TextSpec
from edgeclip.errors import BackendError, BundleError, InputError
from edgeclip.runtime import load
from edgeclip.runtime.backends import BACKENDS, available_backends, resolve_backend
from edgeclip.runtime.backends.onnxruntime import OrtOptions, OrtRunner
from tests.images import encode

TINY_SIZE, TINY_DIM, TINY_CONTEXT, VOCAB = 8, 4, 8, 49408


# ---------------------------------------------------------------- a hand-made bundle


def _weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(3, TINY_DIM)).astype(np.float32), rng.normal(size=(VOCAB, TINY_DIM)).astype(np.float32)


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def image_graph(path: Path, batch: int | str = "batch", seed: int = 0) -> None:
    """pixels (B, 3, S, S) -> per-channel mean -> (B, 3) @ W -> L2-normalized (B, D)."""
    w, _ = _weights(seed)
    nodes = [
        helper.make_node("ReduceMean", ["pixels", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["projected"]),
        helper.make_node("LpNormalization", ["projected"], ["image_embeds"], axis=-1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "image",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [batch, 3, TINY_SIZE, TINY_SIZE])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, [batch, TINY_DIM])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"), numpy_helper.from_array(w, "w")],
    )
    _save(graph, path)


def text_graph(path: Path, seed: int = 0) -> None:
    """input_ids (B, L) -> embedding rows of the non-pad ids summed over L -> L2-normalized (B, D).

    Pads (id 0) add nothing, as in a causal tower pooled at the end token: trailing pads may be cut.
    """
    _, table = _weights(seed)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["rows"]),
        helper.make_node("Equal", ["input_ids", "pad"], ["is_pad"]),
        helper.make_node("Not", ["is_pad"], ["keep"]),
        helper.make_node("Cast", ["keep"], ["keep_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["keep_f", "last"], ["weight"]),
        helper.make_node("Mul", ["rows", "weight"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "axes"], ["summed"], keepdims=0),
        helper.make_node("LpNormalization", ["summed"], ["text_embeds"], axis=-1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch", TINY_DIM])],
        [
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(np.array([-1], np.int64), "last"),
            numpy_helper.from_array(np.array(0, np.int64), "pad"),
            numpy_helper.from_array(table, "table"),
        ],
    )
    _save(graph, path)


def reference_image(pixels: np.ndarray, seed: int = 0) -> np.ndarray:
    w, _ = _weights(seed)
    v = pixels.astype(np.float64).mean(axis=(2, 3)) @ w
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def reference_text(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    _, table = _weights(seed)
    v = (table.astype(np.float64)[ids] * (ids != 0)[..., None]).sum(axis=1)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def contract(logit_scale: float = 100.0) -> ModelContract:
    return ModelContract(
        name="tiny",
        image=ImageSpec(size=TINY_SIZE),
        text=TextSpec(context_length=TINY_CONTEXT),
        head=HeadSpec(embed_dim=TINY_DIM, logit_scale=logit_scale),
    )


def make_bundle(target: Path, *, batch: int | str = "batch", tokenizer_files: bool = False) -> Path:
    """A two-graph fp32 bundle written the way export writes one; optionally with the BPE as files of its own."""

    def fill(tmp: Path) -> Manifest:
        spec = contract()
        files: tuple[str, ...] = ()
        if tokenizer_files:
            from edgeclip.tokenizer import Tokenizer

            saved = Tokenizer(spec.text).save(tmp / "tokenizer")
            files = tuple(f"tokenizer/{f.name}" for f in saved)
            spec = dataclasses.replace(spec, text=dataclasses.replace(spec.text, tokenizer_files=files))
        image_graph(tmp / "image.onnx", batch=batch)
        text_graph(tmp / "text.onnx")
        image_io = (
            (TensorSpec("pixels", "float32", (batch, 3, TINY_SIZE, TINY_SIZE)),),
            (TensorSpec("image_embeds", "float32", (batch, TINY_DIM)),),
        )
        text_io = (
            (TensorSpec("input_ids", "int64", ("batch", "length")),),
            (TensorSpec("text_embeds", "float32", ("batch", TINY_DIM)),),
        )
        graphs = tuple(
            GraphEntry(tower, "fp32", f"{tower}.onnx", *io, sha256_file(tmp / f"{tower}.onnx"), {"min_cosine": 1.0})
            for tower, io in (("image", image_io), ("text", text_io))
        )
        return Manifest(name="tiny", contract=spec, graphs=graphs, tokenizer=files, provenance={"source": "hand-made"})

    write_bundle_atomically(target, fill)
    return target


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(autouse=True)
def _label_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLIP_CACHE", str(tmp_path / "cache"))


def _specs(tower: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    if tower == "image":
        return (TensorSpec("pixels", "float32", ("batch", 3, TINY_SIZE, TINY_SIZE)),), (
            TensorSpec("image_embeds", "float32", ("batch", TINY_DIM)),
        )
    return (TensorSpec("input_ids", "int64", ("batch", "length")),), (
        TensorSpec("text_embeds", "float32", ("batch", TINY_DIM)),
    )


# ---------------------------------------------------------------- runners


@pytest.fixture(scope="module")
def text_runner(tmp_path_factory):
    path = tmp_path_factory.mktemp("graphs") / "text.onnx"
    text_graph(path)
    with OrtRunner(path, *_specs("text"), dim_limits={"length": (1, TINY_CONTEXT)}) as runner:
        yield runner
    assert runner.closed


def test_runner_computes_what_the_graph_says(text_runner):
    ids = np.array([[49406, 320, 1125, 49407, 0], [49406, 49407, 0, 0, 0]], np.int64)
    out = text_runner.infer({"input_ids": ids})["text_embeds"]
    assert out.dtype == np.float32 and out.shape == (2, TINY_DIM)
    np.testing.assert_allclose(out, reference_text(ids), atol=1e-6)
    assert text_runner.providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({}, r"text\.onnx needs input input_ids: int64 \(batch, length\); it was not given"),
        (
            {"input_ids": np.zeros((1, 4), np.int64), "mask": np.zeros(1)},
            r"text\.onnx has no input 'mask'; its inputs are input_ids: int64 \(batch, length\)",
        ),
        ({"input_ids": [[1, 2]]}, r"input 'input_ids' of text\.onnx must be a numpy array, got list"),
        (
            {"input_ids": np.zeros((1, 4), np.int32)},
            r"must be int64, got int32: convert it with \.astype\(np\.int64\)",
        ),
        ({"input_ids": np.zeros(4, np.int64)}, r"must have 2 dims \(batch, length\), got shape \(4,\)"),
        ({"input_ids": np.zeros((0, 4), np.int64)}, r"dim 'batch' of input 'input_ids' of text\.onnx is 0; "),
        (
            {"input_ids": np.zeros((1, TINY_CONTEXT + 1), np.int64)},
            rf"dim 'length' of input 'input_ids' of text\.onnx is {TINY_CONTEXT + 1}; this graph takes between 1 "
            rf"and {TINY_CONTEXT}",
        ),
    ],
)
def test_runner_names_bad_feeds(text_runner, feeds, message):
    with pytest.raises(InputError, match=message):
        text_runner.infer(feeds)


def test_runner_checks_fixed_dims_and_shared_dynamic_dims(tmp_path):
    path = tmp_path / "image.onnx"
    image_graph(path)
    runner = OrtRunner(path, *_specs("image"))
    with pytest.raises(InputError, match=r"must have size 8 in dim 2 \(batch, 3, 8, 8\), got shape \(1, 3, 7, 8\)"):
        runner.infer({"pixels": np.zeros((1, 3, 7, 8), np.float32)})
    # Two inputs that share the dynamic dim "batch" must agree on it.
    add = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "add",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["batch", 2])],
    )
    _save(add, tmp_path / "add.onnx")
    a, b, c = (TensorSpec(n, "float32", ("batch", 2)) for n in "abc")
    pair = OrtRunner(tmp_path / "add.onnx", (a, b), (c,))
    with pytest.raises(InputError, match=r"dim 'batch' is 2 in input 'a' but 3 in input 'b'"):
        pair.infer({"a": np.zeros((2, 2), np.float32), "b": np.zeros((3, 2), np.float32)})
    np.testing.assert_array_equal(
        pair.infer({"a": np.ones((2, 2), np.float32), "b": np.ones((2, 2), np.float32)})["c"], 2
    )


def test_runner_refuses_a_manifest_that_disagrees_with_the_graph(tmp_path):
    path = tmp_path / "text.onnx"
    text_graph(path)
    wrong = (TensorSpec("input_ids", "int32", ("batch", "length")),)
    with pytest.raises(BundleError, match=r"text\.onnx has inputs \{'input_ids': 'int64'\}, but the bundle manifest"):
        OrtRunner(path, wrong, _specs("text")[1])


def test_runner_errors_from_onnxruntime_and_closing(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(BackendError, match=r"ONNX Runtime \(onnxruntime\) could not load .*broken\.onnx"):
        OrtRunner(bad, *_specs("text"))
    path = tmp_path / "text.onnx"
    text_graph(path)
    runner = OrtRunner(path, *_specs("text"))
    with pytest.raises(BackendError, match=r"ONNX Runtime failed to run text\.onnx"):
        runner.infer({"input_ids": np.array([[VOCAB + 5]], np.int64)})  # an id past the table
    runner.close()
    with pytest.raises(BackendError, match=r"the runner of text\.onnx was closed"):
        runner.infer({"input_ids": np.array([[1]], np.int64)})


def test_ort_options_map_to_session_options():
    so = OrtOptions(intra_op_threads=2, inter_op_threads=1, graph_optimization="basic").session_options()
    import onnxruntime as ort

    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    with pytest.raises(InputError, match=r"intra_op_threads must be a whole number >= 0 .*got -1"):
        OrtOptions(intra_op_threads=-1)
    with pytest.raises(InputError, match=r"graph_optimization must be one of disable, basic, extended, all"):
        OrtOptions(graph_optimization="max")  # type: ignore[arg-type]


def test_missing_provider_is_refused_not_replaced(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    path = tmp_path / "text.onnx"
    text_graph(path)
    options = OrtOptions(providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    with pytest.raises(BackendError, match=r"has no CUDAExecutionProvider .*use backend 'onnxruntime'"):
        OrtRunner(path, *_specs("text"), backend="onnxruntime-cuda", options=options)


# ---------------------------------------------------------------- the registry


def test_available_backends_cover_every_name_with_a_reason():
    import onnxruntime as ort

    found = available_backends()
    assert set(found) == set(BACKENDS) == {"onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt",
                                           "torch", "torch-cuda"}  # fmt: skip
    assert all(isinstance(ok, bool) and reason for ok, reason in found.values())
    assert found["onnxruntime"] == (True, f"CPUExecutionProvider of onnxruntime {ort.__version__}")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert found["onnxruntime-cuda"][0] is False and "has no CUDAExecutionProvider" in found["onnxruntime-cuda"][1]
        assert resolve_backend("auto") == "onnxruntime"


def test_backend_choice_errors():
    with pytest.raises(InputError, match=r"unknown backend 'cuda'; choose one of: auto, onnxruntime, "):
        resolve_backend("cuda")


def test_a_backend_whose_module_is_missing_is_not_built(monkeypatch):
    from edgeclip.runtime import backends

    gone = dataclasses.replace(backends.SPECS["tensorrt"], module="edgeclip.runtime.backends.not_written_yet")
    monkeypatch.setitem(backends.SPECS, "tensorrt", gone)
    ok, why = backends.probe("tensorrt")
    assert ok is False and why == (
        "edgeclip's tensorrt backend is not built in this installation (edgeclip.runtime.backends.not_written_yet is "
        "missing)"
    )
    with pytest.raises(BackendError, match=r"backend 'tensorrt' is not available: edgeclip's tensorrt backend is not"):
        resolve_backend("tensorrt")


def test_auto_with_nothing_available_says_why(monkeypatch):
    from edgeclip.runtime import backends

    monkeypatch.setattr(backends, "probe", lambda name: (False, f"no {name} here"))
    with pytest.raises(BackendError, match=r"no runtime backend is available here; tensorrt: no tensorrt here; "):
        resolve_backend("auto")


def test_a_failing_backend_is_reported_not_replaced(tiny_bundle, monkeypatch):
    from edgeclip.runtime import loader

    def fail(*args, **kwargs):
        raise BackendError("the provider crashed")

    monkeypatch.setattr(loader, "create_runner", fail)
    with pytest.raises(BackendError, match=r"backend 'auto' chose 'onnxruntime', .* it failed: the provider crashed"):
        load(tiny_bundle)
    with pytest.raises(BackendError, match=r"^the provider crashed$"):
        load(tiny_bundle, backend="onnxruntime")


# ---------------------------------------------------------------- load


def test_load_without_a_path_is_the_built_in_model(monkeypatch, tmp_path):
    with load() as model:
        assert model.contract.name == "tiny" and model.bundle.path == edgeclip.runtime.builtin_bundle_path()
    monkeypatch.setattr(edgeclip.runtime, "builtin_bundle_path", lambda: tmp_path / "gone")
    with pytest.raises(BundleError, match=r"the built-in bundle is missing from this installation .*--bundle DIR"):
        load()


def test_load_errors(tiny_bundle, tmp_path):
    with pytest.raises(BundleError, match=r"no bundle at .*nowhere: the directory does not exist"):
        load(tmp_path / "nowhere")
    with pytest.raises(
        BundleError, match=r"has no int8 graph of the image tower; it has fp32; add one with .edgeclip quantize"
    ):
        load(tiny_bundle, precision="int8")
    with pytest.raises(
        InputError,
        match=r"unknown precision 'fp64'; give one of fp32, fp16, int8, or per tower as 'image=int8,text=fp16'",
    ):
        load(tiny_bundle, precision="fp64")
    with pytest.raises(InputError, match=r"precision 'image=int8,image=fp32' names image more than once"):
        load(tiny_bundle, precision="image=int8,image=fp32")
    with pytest.raises(BackendError, match=r"backend 'tensorrt' is not available: "):
        load(tiny_bundle, backend="tensorrt")


def test_load_picks_backend_and_precision(tiny_bundle):
    with edgeclip.load(tiny_bundle) as model:
        assert model.backend == resolve_backend("auto")
        assert model.precisions == {"image": "fp32", "text": "fp32"}
        assert model.contract == contract()
        assert model.bundle.path == tiny_bundle
        assert "backend=" in repr(model)
    assert model.runner("image").closed


def test_load_turns_spinning_off_on_request(tiny_bundle):
    """`spinning=False` reaches every ONNX Runtime session of the model; None keeps ONNX Runtime's default (on)."""
    key = "session.intra_op.allow_spinning"
    for spinning, entry in ((None, "1"), (False, "0"), (True, "1")):
        with load(tiny_bundle, backend="onnxruntime", spinning=spinning) as m:
            for tower in ("image", "text"):
                runner = m.runner(tower)
                assert runner.options.allow_spinning is (spinning is not False)
                assert runner._session.get_session_options().get_session_config_entry(key) == entry
    with pytest.raises(InputError, match=r"spinning must be True, False or None \(the backend's default\), got 'no'"):
        load(tiny_bundle, spinning="no")


# ---------------------------------------------------------------- Model


def photos(n: int, size: int = TINY_SIZE, seed: int = 0) -> list[np.ndarray]:
    from tests.images import make_photo

    return [make_photo(size, size, seed=seed + i, jpeg_quality=None) for i in range(n)]


def pixels_of(images: list[np.ndarray], spec: ImageSpec) -> np.ndarray:
    """What any CLIP preprocessing makes of images already at the model's size: scale, normalize, NCHW."""
    x = np.stack(images).astype(np.float64) / 255.0
    x = (x - np.array(spec.mean)) / np.array(spec.std)
    return x.transpose(0, 3, 1, 2).astype(np.float32)  # (B, 3, S, S)


def reference_ids(texts: list[str], context: int) -> np.ndarray:
    from tests.reference import load_by_path

    return load_by_path("open_clip", "tokenizer.py").tokenize(texts, context_length=context).numpy()


def count_calls(runner) -> list[int]:
    """Wrap `runner.infer` to record the batch size of each call."""
    calls: list[int] = []
    inner = runner.infer

    def infer(feeds):
        calls.append(len(next(iter(feeds.values()))))
        return inner(feeds)

    runner.infer = infer
    return calls


@pytest.fixture(scope="module")
def model(tiny_bundle):
    with load(tiny_bundle, backend="onnxruntime") as m:
        yield m


def test_encode_image_in_input_order_any_batch(model, tmp_path):
    from PIL import Image

    images = photos(5)
    want = reference_image(pixels_of(images, model.contract.image))
    for batch_size in (None, 1, 2, 5):
        got = model.encode_image(images, batch_size=batch_size)
        assert got.dtype == np.float32 and got.shape == (5, TINY_DIM)
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(model.encode_image(images), axis=1), 1.0, atol=1e-6)
    # One image alone, as a file, as PIL, as an OpenCV (BGR) frame, and a (N, H, W, C) stack.
    paths = []
    for i, img in enumerate(images[:2]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    np.testing.assert_allclose(model.encode_image(images[0]), want[:1], atol=1e-5)
    np.testing.assert_allclose(model.encode_image([str(p) for p in paths]), want[:2], atol=1e-5)
    np.testing.assert_allclose(model.encode_image(paths[1]), want[1:2], atol=1e-5)
    np.testing.assert_allclose(model.encode_image(Image.fromarray(images[2])), want[2:3], atol=1e-5)
    np.testing.assert_allclose(model.encode_image(images[3][..., ::-1], color_order="BGR"), want[3:4], atol=1e-5)
    np.testing.assert_allclose(model.encode_image(np.stack(images)), want, atol=1e-5)
    assert model.encode_image([]).shape == (0, TINY_DIM)


def test_encode_text_matches_the_reference_tokenizer(model):
    texts = ["a photo of a cat", "A DOG!!", "", "the quick brown fox jumps over the lazy dog again and again"]
    want = reference_text(reference_ids(texts, TINY_CONTEXT))
    for batch_size in (None, 1, 3):
        got = model.encode_text(texts, batch_size=batch_size)
        assert got.dtype == np.float32 and got.shape == (4, TINY_DIM)
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(model.encode_text("A DOG!!"), want[1:2], atol=1e-5)
    assert model.encode_text([]).shape == (0, TINY_DIM)


def test_text_padding_after_the_pooled_token_is_cut(model):
    lengths: list[int] = []
    inner = model.runner("text").infer

    def infer(feeds):
        lengths.append(feeds["input_ids"].shape[1])
        return inner(feeds)

    model.runner("text").infer = infer
    try:
        model.encode_text(["a cat", "a"], batch_size=2)  # sot a cat eot | sot a eot pad
        model.encode_text(["a cat with a very long tail indeed"])  # cut at the context length, eot last
    finally:
        del model.runner("text").infer
    assert lengths == [4, TINY_CONTEXT]


def test_bundle_with_its_own_tokenizer_files(model, tmp_path):
    texts = ["a photo of a cat", "two dogs"]
    with load(make_bundle(tmp_path / "with-bpe", tokenizer_files=True)) as m:
        np.testing.assert_array_equal(m.encode_text(texts), model.encode_text(texts))
        assert [f.name for f in m.tokenizer.files] == ["vocab.json", "merges.txt"]


def test_model_input_errors(model, tmp_path):
    with pytest.raises(InputError, match=r"images must be a path, bytes, a PIL image, an HWC uint8 array .*got int"):
        model.encode_image(42)
    with pytest.raises(InputError, match=r"texts must be strings; items \[1\] are not \(first: int\)"):
        model.encode_text(["ok", 7])
    for bad in (0, -2, 1.5, True):
        with pytest.raises(InputError, match=r"batch_size must be a whole number >= 1, got"):
            model.encode_image(photos(1), batch_size=bad)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"definitely not a JPEG")
    with pytest.raises(edgeclip.ImageDecodeError, match=r"broken\.jpg"):
        model.encode_image([photos(1)[0], broken])
    with pytest.raises(InputError, match="top_k \\(--top-k\\) must be a whole number >= 1, got 0"):
        model.classify(photos(1), ["a", "b"], top_k=0)
    with pytest.raises(InputError, match="duplicated labels: 'a'"):
        model.classify(photos(1), ["a", "b", "a"])
    # Labels the tokenizer makes one text (case, spaces, HTML entities) would split one score between two names.
    with pytest.raises(InputError, match=r"labels 'blue' and 'BLUE'; 'fish &amp; chips' and 'fish & chips' are "):
        model.classify(photos(1), ["blue", "red  circle", "BLUE", "fish &amp; chips", "fish & chips"])
    with pytest.raises(InputError, match=r"labels 'red  circle' and 'red circle' are the same text to the model"):
        model.label_bank(["red  circle", "red circle"])


def test_encode_image_files_skips_and_reports_bad_images(model, tmp_path):
    from PIL import Image

    images = photos(3)
    paths: list[object] = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    paths.insert(1, tmp_path / "bad.png")
    paths.append(tmp_path / "missing.png")
    done: list[int] = []
    result = model.encode_image_files(paths, batch_size=2, on_progress=done.append)
    assert result.rows == (0, 2, 3)
    assert [i for i, _ in result.failed] == [1, 4]
    assert "bad.png" in result.failed[0][1] and "missing.png" in result.failed[1][1]
    assert sum(done) == 5
    np.testing.assert_allclose(result.vectors, reference_image(pixels_of(images, model.contract.image)), atol=1e-5)


def test_batches_are_preprocessed_on_several_threads_with_the_same_results(model, tiny_bundle, tmp_path):
    from edgeclip.preprocess import default_threads

    assert model.preprocess_threads == default_threads() and model.preprocessor.threads == default_threads()
    images = photos(5)
    paths: list[object] = [tmp_path / "missing.png", *(encode(img) for img in images), b"not an image"]
    with load(tiny_bundle, backend="onnxruntime", threads=0) as default:  # 0: ONNX Runtime's default
        assert default.preprocess_threads == default_threads()
        np.testing.assert_array_equal(default.encode_image(images), model.encode_image(images))
    one = load(tiny_bundle, backend="onnxruntime", threads=1)
    three = load(tiny_bundle, backend="onnxruntime", threads=3, preprocess="fast")
    one_fast = load(tiny_bundle, backend="onnxruntime", threads=1, preprocess="fast")
    with one, three, one_fast:
        assert (one.preprocess_threads, three.preprocessor.threads) == (1, 3)
        a, b = one.encode_image_files(paths, batch_size=4), model.encode_image_files(paths, batch_size=4)
        assert a.rows == b.rows == (1, 2, 3, 4, 5) and [i for i, _ in a.failed] == [i for i, _ in b.failed] == [0, 6]
        np.testing.assert_array_equal(a.vectors, b.vectors)
        np.testing.assert_array_equal(three.encode_image(images), one_fast.encode_image(images))


def test_fixed_batch_graph_is_filled_up(tmp_path):
    bundle = make_bundle(tmp_path / "fixed", batch=2)
    images = photos(3)
    with load(bundle) as m:
        assert m.runner("image").max_batch == 2
        calls = count_calls(m.runner("image"))
        got = m.encode_image(images)
        assert calls == [2, 2]
        np.testing.assert_allclose(got, reference_image(pixels_of(images, m.contract.image)), atol=1e-5)
        with pytest.raises(InputError, match=r"batch_size 3 is above the image graph's limit of 2"):
            m.encode_image(images, batch_size=3)


def test_classify_scores_by_hand(model):
    images = photos(2)
    labels, templates = ["cat", "dog", "red car"], ["a photo of a {}.", "{} drawing"]
    prompts = [t.replace("{}", label) for label in labels for t in templates]
    text = reference_text(reference_ids(prompts, TINY_CONTEXT)).reshape(3, 2, TINY_DIM).mean(axis=1)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    logits = 100.0 * reference_image(pixels_of(images, model.contract.image)) @ text.T
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    found = model.classify(images, labels, templates=templates, top_k=2)
    assert len(found) == 2
    for row, c in zip(probs, found, strict=True):
        order = np.argsort(-row)[:2]
        assert c.labels == tuple(labels[j] for j in order)
        np.testing.assert_allclose(c.scores, row[order], rtol=1e-4, atol=1e-6)
    assert len(model.classify(images[0], labels, templates=templates, top_k=10)[0].labels) == 3


def test_label_bank_cached_across_models(tiny_bundle, tmp_path):
    labels = ["cat", "dog"]
    with load(tiny_bundle) as first:
        calls = count_calls(first.runner("text"))
        a = first.classify(photos(1), labels)
        assert calls  # the bank was built
        calls.clear()
        first.classify(photos(1), labels)
        assert calls == []  # memory
    with load(tiny_bundle) as second:  # a fresh model, as in a second run: the disk cache
        calls = count_calls(second.runner("text"))
        assert second.classify(photos(1), labels) == a
        assert calls == []
        second.classify(photos(1), labels, templates="imagenet")
        assert sum(calls) == 2 * 80


def test_concurrent_calls_match_serial(model):
    images = photos(6, seed=10)
    texts = ["a cat", "two dogs", "a red car", "a tree"]
    labels = ["cat", "dog", "car"]
    serial_images = [model.encode_image(img) for img in images]
    serial_texts = [model.encode_text(t) for t in texts]
    serial_classes = [model.classify(img, labels) for img in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            got_images = list(pool.map(model.encode_image, images))
            got_texts = list(pool.map(model.encode_text, texts))
            got_classes = list(pool.map(lambda img: model.classify(img, labels), images))
            for got, want in zip(got_images + got_texts, serial_images + serial_texts, strict=True):
                np.testing.assert_array_equal(got, want)
            assert got_classes == serial_classes


def test_runtime_never_imports_torch_or_onnx(tiny_bundle, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, json
        import numpy as np
        import edgeclip
        m = edgeclip.load({str(tiny_bundle)!r})
        frame = np.zeros((20, 30, 3), np.uint8)
        m.encode_image([frame, frame]); m.encode_text(["a cat"]); m.classify(frame, ["cat", "dog"])
        from edgeclip.cli import main
        heavy = sorted(n for n in ("torch", "onnx", "transformers", "onnxscript") if n in sys.modules)
        print(json.dumps(heavy))
        """
    )
    env = {"EDGECLIP_CACHE": str(tmp_path / "cache"), "PATH": ""}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


# ---------------------------------------------------------------- parity with transformers


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """A tiny random transformers CLIPModel, saved as an HF directory and exported by edgeclip."""
    from edgeclip.export import bundle_from_checkpoint
    from tests.reference import hf_clip

    hf = hf_clip()
    source = tmp_path_factory.mktemp("hf") / "tiny-hf"
    hf.save_pretrained(source)
    report = bundle_from_checkpoint(source, tmp_path_factory.mktemp("exported") / "tiny-hf")
    return hf, report.path


@pytest.mark.slow  # the export alone takes 30 to 70 s on the 2-core CI machines
def test_model_matches_transformers(exported):
    import torch

    hf, path = exported
    size, context = hf.config.vision_config.image_size, hf.config.text_config.max_position_embeddings
    texts = ["a photo of a cat", "a dog", "", "a very long caption that goes on and on past the context length"]
    images = [*photos(2, size=size), *photos(1, size=size, seed=9)]
    with load(path) as m:
        assert m.contract.head.logit_scale == pytest.approx(float(hf.logit_scale.detach().exp()), rel=1e-6)
        pixels = pixels_of(images, m.contract.image)
        ids = reference_ids(texts, context)
        with torch.no_grad():
            want = hf(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(pixels))
        got_image, got_text = m.encode_image(images, batch_size=2), m.encode_text(texts, batch_size=3)
        np.testing.assert_allclose(got_image, want.image_embeds.numpy(), atol=2e-5)
        np.testing.assert_allclose(got_text, want.text_embeds.numpy(), atol=2e-5)
        # Zero-shot with one bare template: the texts are the labels; transformers' logits give the probabilities.
        labels = [t for t in texts if t]
        keep = [texts.index(t) for t in labels]
        probs = torch.softmax(want.logits_per_image[:, keep], dim=-1).numpy()
        found = m.classify(images, labels, templates=["{}"], top_k=len(labels))
        for row, c in zip(probs, found, strict=True):
            np.testing.assert_allclose(c.scores, np.sort(row)[::-1], atol=1e-4)
            assert c.labels[0] == labels[int(np.argmax(row))]


def test_a_large_batch_is_prepared_as_many_rows_as_the_cpu_provider_runs(model, tmp_path):
    # The CPU provider runs 8 rows at a time: the files of a batch of 32 are decoded and resized 8 at a time too
    # (their pixels never all held at once), with the embeddings of one batch of 32.
    from PIL import Image

    from edgeclip.runtime.backends.onnxruntime import CPU_SLICE

    assert model.runner("image").slice_rows == CPU_SLICE == 8
    images = photos(11)
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    done: list[int] = []
    result = model.encode_image_files(paths, batch_size=32, on_progress=done.append)
    assert done == [8, 3] and result.rows == tuple(range(11))
    np.testing.assert_allclose(result.vectors, model.encode_image(images, batch_size=11), atol=1e-6)


def test_texts_cut_to_the_context_are_named_in_a_warning(tiny_bundle):
    import warnings

    with load(tiny_bundle) as m:
        context = m.contract.text.context_length
        long = " ".join(["red"] * (context + 5))
        with pytest.warns(RuntimeWarning, match=rf"1 text\(s\) longer than the model's context of {context} tokens"):
            m.encode_text([long, "a cat"])
        exact = " ".join(["red"] * (context - 2))  # sot + ids + eot: fills the context exactly, nothing cut
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            m.encode_text([exact, "a cat"])
