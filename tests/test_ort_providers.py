"""ONNX Runtime's GPU providers, on the CPU: edgeclip's typed options as the strings ONNX Runtime takes, the engine and
timing caches of the TensorRT provider, a provider that is asked for and not active (refused), and IO binding.

No GPU is needed: InferenceSession is replaced by a stand-in that reports the providers a real session would, so the
checks run on what `get_providers()` returns. The GPU runs themselves are in scripts/gpu_check.sh's tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort
import pytest

from edgeclip.bundle import Bundle
from edgeclip.errors import BackendError, InputError
from edgeclip.runtime import builtin_bundle_path, runner_request
from edgeclip.runtime.backends import onnxruntime as ort_backend
from edgeclip.runtime.backends.onnxruntime import (
    CPU,
    CUDA,
    TENSORRT,
    CudaOptions,
    OrtOptions,
    OrtRunner,
    TensorrtOptions,
)

BUILTIN = builtin_bundle_path()
MiB = 1 << 20
_REAL_SESSION = ort.InferenceSession


def test_cuda_options_as_provider_options() -> None:
    assert CudaOptions().provider_options(0) == {
        "device_id": "0", "cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0", "do_copy_in_default_stream": "1",
    }  # fmt: skip
    made = CudaOptions(memory_limit_mb=512, conv_algo_search="exhaustive", tf32=True).provider_options(1)
    assert made["gpu_mem_limit"] == str(512 * MiB) and made["device_id"] == "1"
    assert made["cudnn_conv_algo_search"] == "EXHAUSTIVE" and made["use_tf32"] == "1"
    with pytest.raises(
        InputError, match=r"conv_algo_search must be 'exhaustive', 'heuristic' or 'default', got 'fast'"
    ):
        CudaOptions(conv_algo_search="fast")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"memory_limit_mb must be a whole number of MiB >= 1 \(or None\), got 0"):
        CudaOptions(memory_limit_mb=0)


def test_tensorrt_options_as_provider_options() -> None:
    plain = TensorrtOptions().provider_options(0)
    # Precision lives in the graph: TensorRT's own fp16/int8 flags stay off, so an fp16 graph keeps its islands.
    assert plain == {"device_id": "0", "trt_max_workspace_size": str(1024 * MiB), "trt_fp16_enable": "False",
                     "trt_int8_enable": "False"}  # fmt: skip
    cached = TensorrtOptions(engine_cache_dir="e", timing_cache_dir="t", builder_optimization_level=5)
    assert cached.provider_options(2) == plain | {
        "device_id": "2", "trt_engine_cache_enable": "True", "trt_engine_cache_path": "e",
        "trt_timing_cache_enable": "True", "trt_timing_cache_path": "t", "trt_builder_optimization_level": "5",
    }  # fmt: skip
    with pytest.raises(InputError, match=r"builder_optimization_level must be 0 to 5"):
        TensorrtOptions(builder_optimization_level=6)
    with pytest.raises(InputError, match=r"workspace_mb must be a whole number of MiB >= 1"):
        TensorrtOptions(workspace_mb=0)


def test_provider_chain_carries_each_providers_options() -> None:
    options = OrtOptions(providers=(TENSORRT, CUDA, CPU), device_id=1, trt_cache_dir="cache")
    chain = options.provider_list()
    assert [p if isinstance(p, str) else p[0] for p in chain] == [TENSORRT, CUDA, CPU]
    assert chain[0][1]["trt_engine_cache_path"] == "cache" and chain[0][1]["device_id"] == "1"  # type: ignore[index]
    assert chain[1][1] == CudaOptions().provider_options(1)  # type: ignore[index]
    assert options.on_gpu and options.binds_io and not OrtOptions().binds_io


def test_tensorrt_caches_live_under_the_engines_dir_keyed_by_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECLIP_ENGINES", str(tmp_path / "engines"))
    bundle = Bundle.open(BUILTIN)
    requests = [runner_request(bundle, bundle.graph("image", p)) for p in ("fp32", "fp16")]
    options = [ort_backend.options_for("onnxruntime-tensorrt", r) for r in requests]
    engine_dirs = [Path(o.tensorrt.engine_cache_dir or "") for o in options]
    assert all(d.is_relative_to(tmp_path / "engines") and "onnxruntime-tensorrt" in d.parts for d in engine_dirs)
    assert engine_dirs[0] != engine_dirs[1] and requests[0].sha256[:12] in engine_dirs[0].name
    assert engine_dirs[0].name.startswith("image-fp32-") and engine_dirs[0].name.endswith("-nogpu")
    assert options[0].tensorrt.timing_cache_dir == options[1].tensorrt.timing_cache_dir  # shared per device
    assert options[0].providers == (TENSORRT, CUDA, CPU)
    cpu = ort_backend.options_for("onnxruntime", requests[0])
    assert cpu.providers == (CPU,) and cpu.tensorrt.engine_cache_dir is None


class _FakeSession:
    """Stands in for InferenceSession: records what it was given, reports `active` as its providers."""

    made: ClassVar[list[dict[str, Any]]] = []
    active: ClassVar[list[str]] = []

    def __init__(
        self, path: str, sess_options: Any = None, providers: Any = None, disabled_optimizers: Any = None
    ) -> None:
        type(self).made.append({"path": path, "providers": providers})
        self._real = _REAL_SESSION(path, sess_options=sess_options, providers=[CPU])

    def get_providers(self) -> list[str]:
        return list(type(self).active)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.fixture
def fake_gpu_ort(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> type[_FakeSession]:
    monkeypatch.setenv("EDGECLIP_ENGINES", str(tmp_path / "engines"))
    monkeypatch.setattr(ort_backend, "available_providers", lambda: [TENSORRT, CUDA, CPU])
    monkeypatch.setattr(ort_backend.ort, "InferenceSession", _FakeSession)
    _FakeSession.made = []
    return _FakeSession


@pytest.mark.parametrize(("backend", "active"), [("onnxruntime-cuda", [CPU]), ("onnxruntime-tensorrt", [CUDA, CPU])])
def test_a_provider_that_is_not_active_after_start_is_refused(
    fake_gpu_ort: type[_FakeSession], backend: str, active: list[str]
) -> None:
    fake_gpu_ort.active = active
    bundle = Bundle.open(BUILTIN)
    request = runner_request(bundle, bundle.graph("text"))
    wanted = ort_backend.PROVIDERS[backend][0]
    with pytest.raises(BackendError, match=rf"did not start {wanted} for text.onnx \(it runs on {', '.join(active)}\)"):
        ort_backend.create(backend, request)
    # The session was asked for the whole chain, with the typed options.
    asked = fake_gpu_ort.made[-1]["providers"]
    assert [p if isinstance(p, str) else p[0] for p in asked] == list(ort_backend.PROVIDERS[backend])


def test_an_active_gpu_provider_runs_with_io_binding_and_makes_its_cache_dirs(
    fake_gpu_ort: type[_FakeSession],
) -> None:
    fake_gpu_ort.active = [TENSORRT, CUDA, CPU]
    bundle = Bundle.open(BUILTIN)
    request = runner_request(bundle, bundle.graph("text"))
    runner = ort_backend.create("onnxruntime-tensorrt", request)
    assert runner.providers == [TENSORRT, CUDA, CPU] and runner.options.binds_io
    trt = runner.options.tensorrt
    assert trt.engine_cache_dir is not None and Path(trt.engine_cache_dir).is_dir()
    assert trt.timing_cache_dir is not None and Path(trt.timing_cache_dir).is_dir()
    runner.close()


def test_io_binding_gives_the_plain_run_results() -> None:
    bundle = Bundle.open(BUILTIN)
    entry = bundle.graph("text")
    path, specs = bundle.file(entry), (entry.inputs, entry.outputs)
    ids = np.zeros((3, 9), np.int64)
    ids[:, 0], ids[:, 1:4], ids[:, 4] = 49406, 320, 49407
    plain = OrtRunner(path, *specs, options=OrtOptions(io_binding=False)).infer({"input_ids": ids})
    bound = OrtRunner(path, *specs, options=OrtOptions(io_binding=True)).infer({"input_ids": ids})
    np.testing.assert_array_equal(plain["text_embeds"], bound["text_embeds"])


def test_gpu_backends_are_unavailable_here_with_the_reason() -> None:
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    for backend in ("onnxruntime-cuda", "onnxruntime-tensorrt"):
        ok, why = ort_backend.probe(backend)
        assert not ok and f"has no {ort_backend.PROVIDERS[backend][0]}" in why and "onnxruntime-gpu" in why


def test_the_cpu_provider_runs_large_batches_in_slices_with_the_same_results() -> None:
    bundle = Bundle.open(BUILTIN)
    entry = bundle.graph("image")
    path, specs = bundle.file(entry), (entry.inputs, entry.outputs)
    size = bundle.manifest.contract.image.size
    pixels = np.random.default_rng(0).standard_normal((11, 3, size, size)).astype(np.float32)
    whole = OrtRunner(path, *specs, options=OrtOptions()).infer({entry.inputs[0].name: pixels})
    for options in (OrtOptions(max_rows=4, shrink_arena=True), OrtOptions(max_rows=4, io_binding=True)):
        sliced = OrtRunner(path, *specs, options=options).infer({entry.inputs[0].name: pixels})
        np.testing.assert_allclose(sliced["image_embeds"], whole["image_embeds"], rtol=0, atol=1e-6)
    one = OrtRunner(path, *specs, options=OrtOptions()).infer({entry.inputs[0].name: pixels[4:8]})
    np.testing.assert_allclose(sliced["image_embeds"][4:8], one["image_embeds"], rtol=0, atol=1e-6)


def test_what_the_cpu_provider_is_told_per_precision() -> None:
    bundle = Bundle.open(BUILTIN)
    got = {}
    for backend in ("onnxruntime", "onnxruntime-cuda"):
        for precision in ("fp32", "fp16", "int8"):
            options = ort_backend.options_for(backend, runner_request(bundle, bundle.graph("image", precision)))
            got[backend, precision] = (options.max_rows, options.shrink_arena, options.keep_fp16_weights)
    assert got == {
        ("onnxruntime", "fp32"): (ort_backend.CPU_SLICE, True, False),
        ("onnxruntime", "fp16"): (ort_backend.CPU_SLICE, False, True),  # its casts would fragment the heap
        ("onnxruntime", "int8"): (ort_backend.CPU_SLICE, True, False),
        ("onnxruntime-cuda", "fp32"): (None, False, False),  # a GPU runs the whole batch at once
        ("onnxruntime-cuda", "fp16"): (None, False, False),
        ("onnxruntime-cuda", "int8"): (None, False, False),
    }
    with pytest.raises(InputError, match="max_rows must be a whole number >= 1 or None, got 0"):
        OrtOptions(max_rows=0)
