"""TensorRT engines of the built-in model on a real GPU, against fp32 ONNX Runtime on the CPU. They need TensorRT 10+
and a CUDA GPU; the default run deselects them (markers `tensorrt` and `gpu`), and they skip where either is missing.
Not yet run anywhere: no machine with TensorRT has been at hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgeclip.runtime
from edgeclip.bundle import Bundle
from edgeclip.engines import cache
from edgeclip.engines.build import tensorrt_ready
from tests.images import make_photo

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]

BUILTIN = edgeclip.runtime.builtin_bundle_path()
TEXTS = ["a red cube", "a small blue sphere on the left", "two green cylinders", "nothing at all", "a"]
FP16_BAR = 0.999


@pytest.fixture(autouse=True)
def _needs_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ok, why = tensorrt_ready()
    if not ok:
        pytest.skip(why)
    monkeypatch.setenv("EDGECLIP_ENGINES", str(tmp_path / "engines"))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(axis=1))


def _photos(n: int) -> list[np.ndarray]:
    return [make_photo(160 + 7 * i, 120 + 5 * i, seed=i) for i in range(n)]


def _reference(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    with edgeclip.runtime.load(BUILTIN, backend="onnxruntime", precision="fp32") as model:
        return model.encode_image(images), model.encode_text(TEXTS)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_matches_onnxruntime_fp32(precision: str) -> None:
    images = _photos(40)  # batch 40 > the throughput profile's 32: run in chunks
    want_image, want_text = _reference(images)
    with edgeclip.runtime.load(BUILTIN, backend="tensorrt", precision=precision) as model:
        assert model.backend == "tensorrt"
        got_image, got_text = model.encode_image(images), model.encode_text(TEXTS)
        one = model.encode_image(images[:1])  # the batch-1 latency profile
    bar = 0.9999 if precision == "fp32" else FP16_BAR
    assert _cos(got_image, want_image).min() >= bar
    assert _cos(got_text, want_text).min() >= bar
    assert _cos(one, want_image[:1]).min() >= bar


def test_tensorrt_int8_passes_the_bundles_gate() -> None:
    bundle = Bundle.open(BUILTIN, verify=False)
    images = _photos(32)
    want_image, want_text = _reference(images)
    with edgeclip.runtime.load(BUILTIN, backend="tensorrt", precision="int8") as model:
        got = {"image": model.encode_image(images), "text": model.encode_text(TEXTS)}
    for tower, want in (("image", want_image), ("text", want_text)):
        gate = bundle.graph(tower, "int8", backend="tensorrt").gate
        # The gate was measured on ONNX Runtime at export; TensorRT's int8 kernels may round differently.
        assert _cos(got[tower], want).mean() >= float(gate["mean_cosine"]) - 0.005, tower


def test_engines_are_cached_and_a_corrupt_one_is_rebuilt(tmp_path: Path) -> None:
    images = _photos(2)
    with edgeclip.runtime.load(BUILTIN, backend="tensorrt", precision="fp16") as model:
        first = model.encode_image(images)
    root = tmp_path / "engines"
    bundle = Bundle.open(BUILTIN, verify=False)
    entries = cache.entries(root, bundle.manifest.name)
    assert len(entries) == 2 and all(key is not None for _, key in entries)
    engine = next(path for path, key in entries if key is not None and key.tower == "image") / cache.ENGINE_FILE
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    with edgeclip.runtime.load(BUILTIN, backend="tensorrt", precision="fp16") as model:
        again = model.encode_image(images)
    assert _cos(first, again).min() >= 0.99999
    assert cache.lookup(root, bundle.manifest.name, next(k for p, k in entries if k and k.tower == "image")).hit


def test_tensorrt_cuda_graph_batch_1_gives_the_plain_result(tmp_path: Path) -> None:
    from edgeclip.runtime.backends.tensorrt import TrtRunner
    from edgeclip.runtime.loader import runner_request

    bundle = Bundle.open(BUILTIN, verify=False)
    entry = bundle.graph("image", "fp16", backend="tensorrt")
    shape = [1 if isinstance(d, str) else d for d in entry.inputs[0].shape]
    feed = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    outs = []
    for graph in (False, True):
        runner = TrtRunner(runner_request(bundle, entry), engines_root=tmp_path / "engines", cuda_graph=graph)
        with runner:
            runner.activate()
            for _ in range(3):  # plain, capture, replay
                outs.append(runner.infer({runner.inputs[0].name: feed})[runner.outputs[0].name])
    assert all(np.allclose(o, outs[0], atol=1e-3) for o in outs)
