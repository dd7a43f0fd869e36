"""The backend registry: which backends exist, which are really available here and why not, and runner creation.

Nothing here imports a backend library at import time; probing imports ONNX Runtime only, and never falls back:
a backend that is asked for and not available is a BackendError with the reason.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edgeclip import device
from edgeclip.errors import BackendError, InputError
from edgeclip.runtime.backends.base import DimLimits, Runner

if TYPE_CHECKING:
    from edgeclip.bundle import TensorSpec

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "BACKEND_CHOICES",
    "BackendSpec",
    "Runner",
    "available_backends",
    "create_runner",
    "cuda_devices",
    "resolve_backend",
]


@dataclass(frozen=True)
class BackendSpec:
    name: str
    device: Literal["cpu", "gpu"]
    precisions: tuple[str, ...]  # the bundle precisions this backend runs fastest, fastest first (precision=None)
    summary: str


_SPECS = (
    # ONNX Runtime's CPU kernels: int8 (its own u8s8 format) is the fastest; fp16 runs, but slower than fp32.
    BackendSpec("onnxruntime", "cpu", ("int8", "fp32", "fp16"), "ONNX Runtime on the CPU"),
    BackendSpec("onnxruntime-cuda", "gpu", ("fp16", "fp32", "int8"), "ONNX Runtime, CUDA execution provider"),
    BackendSpec("onnxruntime-tensorrt", "gpu", ("fp16", "int8", "fp32"), "ONNX Runtime, TensorRT execution provider"),
    BackendSpec("tensorrt", "gpu", ("fp16", "int8", "fp32"), "TensorRT engines built on this device"),
    BackendSpec("torch", "cpu", ("fp32",), "PyTorch (reference)"),
)
SPECS: dict[str, BackendSpec] = {s.name: s for s in _SPECS}
BACKENDS: tuple[str, ...] = tuple(SPECS)
BACKEND_CHOICES: tuple[str, ...] = ("auto", *BACKENDS)
# What "auto" tries, fastest first. torch is a reference, never picked for speed.
AUTO_ORDER: tuple[str, ...] = ("tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda", "onnxruntime")

_NOT_BUILT = {
    "tensorrt": "edgeclip's own TensorRT backend is not built yet; use 'onnxruntime-tensorrt' where ONNX Runtime "
    "has the TensorRT provider",
    "torch": "edgeclip's PyTorch runtime backend is not built yet; use 'onnxruntime' (the same graphs, checked "
    "against PyTorch at export)",
}


def available_backends() -> dict[str, tuple[bool, str]]:
    """Every backend name -> (available here, why or why not)."""
    return {name: _probe(name) for name in BACKENDS}


def resolve_backend(name: str) -> str:
    """The backend `name` stands for ("auto": the fastest available one); BackendError if it is not available."""
    if name not in BACKEND_CHOICES:
        raise InputError(f"unknown backend {name!r}; choose one of: {', '.join(BACKEND_CHOICES)}")
    if name != "auto":
        ok, reason = _probe(name)
        if not ok:
            raise BackendError(f"backend {name!r} is not available: {reason}")
        return name
    reasons = []
    for candidate in AUTO_ORDER:
        ok, reason = _probe(candidate)
        if ok:
            return candidate
        reasons.append(f"{candidate}: {reason}")
    raise BackendError("no runtime backend is available here; " + "; ".join(reasons))


def create_runner(
    backend: str,
    path: Path,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    threads: int | None = None,
    dim_limits: DimLimits | None = None,
) -> Runner:
    """A runner of the graph at `path` on `backend` (a resolved name, not "auto")."""
    if backend.startswith("onnxruntime"):
        from edgeclip.runtime.backends.onnxruntime import PROVIDERS, OrtOptions, OrtRunner

        options = OrtOptions(providers=PROVIDERS[backend], intra_op_threads=threads)
        return OrtRunner(path, inputs, outputs, backend=backend, options=options, dim_limits=dim_limits)
    _, reason = _probe(backend)
    raise BackendError(f"backend {backend!r} cannot run graphs: {reason}")


def _probe(name: str) -> tuple[bool, str]:
    if name in _NOT_BUILT:
        return False, _NOT_BUILT[name]
    if importlib.util.find_spec("onnxruntime") is None:
        return False, "onnxruntime is not installed: pip install 'edgeclip[cpu]' (or 'edgeclip[gpu]' with CUDA)"
    import onnxruntime as ort

    from edgeclip.runtime.backends.onnxruntime import PROVIDERS, available_providers

    have = available_providers()
    wanted = PROVIDERS[name][0]
    if wanted not in have:
        return False, (
            f"this onnxruntime {ort.__version__} has no {wanted} (it has {', '.join(have)}); "
            "install onnxruntime-gpu on a machine with an NVIDIA GPU"
        )
    if SPECS[name].device == "cpu":
        return True, f"{wanted} of onnxruntime {ort.__version__}"
    gpus, why = device.cuda_devices()
    if not gpus:
        return False, why
    if name == "onnxruntime-tensorrt":
        lib = device.tensorrt_library()
        if lib is None:
            return False, f"{wanted} is built in, but the TensorRT libraries (libnvinfer) are not found"
        return True, f"{wanted} of onnxruntime {ort.__version__}, {why}, TensorRT from {lib}"
    return True, f"{wanted} of onnxruntime {ort.__version__}, {why}"


def cuda_devices() -> tuple[int, str]:
    """(number of CUDA devices the NVIDIA driver sees, a description or the reason there are none)."""
    return device.cuda_devices()
