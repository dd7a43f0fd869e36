"""The backend registry: one table of the backends, each with the module that owns its probe and its runners.

A backend module has `probe(backend_name) -> (available, why)` and `create(backend_name, request) -> Runner`
(`request` a `RunnerRequest`). Nothing here imports a backend module at import time; a module that does not import
(not built, or its library missing) makes its backends unavailable with the reason, never a crash. Nothing falls
back: a backend that is asked for and not available is a BackendError with the reason.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from edgeclip import device
from edgeclip.errors import BackendError, InputError
from edgeclip.runtime.backends.base import DimLimits, Runner, RunnerRequest

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "BACKEND_CHOICES",
    "SPECS",
    "BackendSpec",
    "DimLimits",
    "Runner",
    "RunnerRequest",
    "available_backends",
    "backend_module",
    "create_runner",
    "cuda_devices",
    "probe",
    "resolve_backend",
]


@dataclass(frozen=True)
class BackendSpec:
    name: str
    device: Literal["cpu", "gpu"]
    precisions: tuple[str, ...]  # the bundle precisions this backend runs fastest, fastest first (precision=None)
    summary: str
    module: str  # the module with `probe(name)` and `create(name, request)`


_ORT = "edgeclip.runtime.backends.onnxruntime"
_TRT = "edgeclip.runtime.backends.tensorrt"
_TORCH = "edgeclip.runtime.backends.torch"
_SPECS = (
    # ONNX Runtime's CPU kernels: int8 (its own u8s8 format) is the fastest; fp16 runs, but slower than fp32.
    BackendSpec("onnxruntime", "cpu", ("int8", "fp32", "fp16"), "ONNX Runtime on the CPU", _ORT),
    BackendSpec("onnxruntime-cuda", "gpu", ("fp16", "fp32", "int8"), "ONNX Runtime, CUDA execution provider", _ORT),
    BackendSpec(
        "onnxruntime-tensorrt", "gpu", ("fp16", "int8", "fp32"), "ONNX Runtime, TensorRT execution provider", _ORT
    ),
    BackendSpec("tensorrt", "gpu", ("fp16", "int8", "fp32"), "TensorRT engines built on this device", _TRT),
    # PyTorch runs the bundle's own fp32 and fp16 graphs (edgeclip.runtime.backends.torch says how).
    BackendSpec("torch", "cpu", ("fp32", "fp16"), "PyTorch on the CPU (reference)", _TORCH),
    BackendSpec("torch-cuda", "gpu", ("fp16", "fp32"), "PyTorch on a CUDA GPU, preprocessing on the GPU", _TORCH),
)
SPECS: dict[str, BackendSpec] = {s.name: s for s in _SPECS}
BACKENDS: tuple[str, ...] = tuple(SPECS)
BACKEND_CHOICES: tuple[str, ...] = ("auto", *BACKENDS)
# What "auto" tries, fastest first. torch (CPU) is a reference, never picked for speed; torch-cuda serves GPUs that
# have neither TensorRT nor onnxruntime-gpu.
AUTO_ORDER: tuple[str, ...] = ("tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime")

# What to install when a backend module's import fails on a missing library, by the library's top-level name.
_INSTALL = {
    "onnxruntime": "pip install 'edgeclip[cpu]' (or 'edgeclip[gpu]' with CUDA)",
    "torch": "pip install 'edgeclip[torch]' (with a CUDA build of torch for torch-cuda)",
    "onnx": "pip install onnx",
    "tensorrt": "install TensorRT 10 or newer (JetPack's, or NVIDIA's wheels)",
}


def available_backends() -> dict[str, tuple[bool, str]]:
    """Every backend name -> (available here, why or why not)."""
    return {name: probe(name) for name in BACKENDS}


def resolve_backend(name: str) -> str:
    """The backend `name` stands for ("auto": the fastest available one); BackendError if it is not available."""
    if name not in BACKEND_CHOICES:
        raise InputError(f"unknown backend {name!r}; choose one of: {', '.join(BACKEND_CHOICES)}")
    if name != "auto":
        ok, reason = probe(name)
        if not ok:
            raise BackendError(f"backend {name!r} is not available: {reason}")
        return name
    reasons = []
    for candidate in AUTO_ORDER:
        ok, reason = probe(candidate)
        if ok:
            return candidate
        reasons.append(f"{candidate}: {reason}")
    raise BackendError("no runtime backend is available here; " + "; ".join(reasons))


def create_runner(backend: str, request: RunnerRequest) -> Runner:
    """A started runner of the graph of `request` on `backend` (a resolved name, not "auto")."""
    if backend not in SPECS:
        raise InputError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    module, reason = _module(backend)
    if module is None:
        raise BackendError(f"backend {backend!r} cannot run graphs: {reason}")
    runner: Runner = module.create(backend, request)
    return runner


def probe(name: str) -> tuple[bool, str]:
    """(whether backend `name` is really available here, why or why not). Never raises for a missing piece."""
    module, reason = _module(name)
    if module is None:
        return False, reason
    try:
        ok, why = module.probe(name)
    except Exception as exc:  # a probe that breaks makes its backend unavailable, it must not break `info` or auto
        return False, f"its probe failed ({type(exc).__name__}: {exc})"
    return bool(ok), str(why)


def backend_module(name: str) -> ModuleType:
    """The module that owns backend `name` (BackendError, with the reason, where it does not import)."""
    module, reason = _module(name)
    if module is None:
        raise BackendError(f"backend {name!r} is not available: {reason}")
    return module


def _module(name: str) -> tuple[ModuleType | None, str]:
    spec = SPECS[name]
    try:
        return importlib.import_module(spec.module), ""
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if exc.name == spec.module:
            return None, f"edgeclip's {name} backend is not built in this installation ({spec.module} is missing)"
        if missing in _INSTALL:
            return None, f"{missing} is not installed: {_INSTALL[missing]}"
        return None, f"{spec.module} does not import: {exc}"
    except Exception as exc:  # a library that is there but broken (missing CUDA libraries raise OSError)
        return None, f"{spec.module} does not import ({type(exc).__name__}: {exc})"


def cuda_devices() -> tuple[int, str]:
    """(number of CUDA devices the NVIDIA driver sees, a description or the reason there are none)."""
    return device.cuda_devices()
