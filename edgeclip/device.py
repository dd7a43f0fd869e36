"""What this machine's accelerators are, probed without torch, onnx or a CUDA toolkit.

One owner for device facts (GPU count and names, driver, TensorRT libraries) so that the runtime's backend probes,
the engine cache's keys and `edgeclip doctor` read the same answers.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from pathlib import Path

__all__ = ["cuda_devices", "tensorrt_library"]


@functools.lru_cache(maxsize=1)
def cuda_devices() -> tuple[int, str]:
    """(number of CUDA devices the NVIDIA driver sees, a description or the reason there are none).

    Through the driver library alone: no CUDA toolkit, no nvidia-smi.
    """
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return 0, "no NVIDIA driver here (libcuda not found)"
    count = ctypes.c_int(0)
    status = lib.cuInit(0)
    if status != 0:
        return 0, f"the NVIDIA driver did not initialise (cuInit returned {status})"
    status = lib.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        return 0, f"the NVIDIA driver sees no GPU (cuDeviceGetCount returned {status}, count {count.value})"
    return count.value, f"{count.value} CUDA device{'s' if count.value > 1 else ''}"


@functools.lru_cache(maxsize=1)
def tensorrt_library() -> str | None:
    """The TensorRT runtime library (libnvinfer) that loads here, or None."""
    for name in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so", "nvinfer_10.dll"):
        try:
            ctypes.CDLL(name)
            return name
        except OSError:
            continue
    spec = importlib.util.find_spec("tensorrt_libs")  # the pip wheel keeps the libraries inside the package
    return None if spec is None or spec.origin is None else str(Path(spec.origin).parent)
