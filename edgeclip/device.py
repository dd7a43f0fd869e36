"""What this machine's accelerators are, probed without torch, onnx or a CUDA toolkit.

One owner for device facts (GPU names, compute capability, memory, driver, TensorRT, Jetson module, JetPack release
and power mode) so that the runtime's backend probes, the engine cache's keys and `edgeclip doctor` read the same
answers. Everything goes through the NVIDIA driver library (ctypes) and files the system keeps; nothing here raises
for a missing piece: it answers None or an empty tuple with the reason where one is asked for.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "GpuInfo",
    "JetsonInfo",
    "cuda_devices",
    "cuda_driver_version",
    "gpus",
    "jetson",
    "tensorrt_library",
    "tensorrt_version",
]

_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
_CU_DEVICE_ATTRIBUTE_INTEGRATED = 18  # 1 on Jetson: the GPU shares the system memory


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device as the driver describes it."""

    index: int
    name: str
    compute_capability: tuple[int, int]
    total_bytes: int
    free_bytes: int | None  # None: the driver could not open a context to ask
    integrated: bool = False  # Jetson: memory shared with the CPU

    @property
    def sm(self) -> str:
        """`8.7`, as keys and messages write a compute capability."""
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "compute_capability": self.sm,
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
            "integrated": self.integrated,
        }


@dataclass(frozen=True)
class JetsonInfo:
    """A Jetson board: its module, L4T release (which names the JetPack), and power mode."""

    module: str  # e.g. "NVIDIA Jetson Orin Nano Developer Kit"
    l4t: str | None  # e.g. "36.4.0" (JetPack 6.1)
    jetpack: str | None  # the JetPack that ships this L4T, where edgeclip knows it
    power_mode: str | None  # nvpmodel's current mode, e.g. "15W"; None: nvpmodel not found or failed

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "l4t": self.l4t, "jetpack": self.jetpack, "power_mode": self.power_mode}


# L4T release -> JetPack (the releases edgeclip's TensorRT code path is meant for: TensorRT 10.3 and later).
_JETPACK = {"36.3": "6.0", "36.4": "6.1/6.2", "38.2": "7.0", "38.4": "7.1"}


def _driver() -> Any:
    """The NVIDIA driver library (libcuda), initialised, or None."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return None
    return lib


@functools.lru_cache(maxsize=1)
def cuda_devices() -> tuple[int, str]:
    """(number of CUDA devices the NVIDIA driver sees, a description or the reason there are none).

    Through the driver library alone: no CUDA toolkit, no nvidia-smi.
    """
    lib = _driver()
    if lib is None:
        return 0, "no NVIDIA driver here (libcuda not found)"
    count = ctypes.c_int(0)
    status = lib.cuInit(0)
    if status != 0:
        return 0, f"the NVIDIA driver did not initialise (cuInit returned {status})"
    status = lib.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        return 0, f"the NVIDIA driver sees no GPU (cuDeviceGetCount returned {status}, count {count.value})"
    return count.value, f"{count.value} CUDA device{'s' if count.value > 1 else ''}"


def cuda_driver_version() -> str | None:
    """The newest CUDA version the installed driver supports, e.g. "12.6" (cuDriverGetVersion), or None."""
    lib = _driver()
    if lib is None:
        return None
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0 or version.value <= 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def gpus() -> tuple[GpuInfo, ...]:
    """Every CUDA device with its name, compute capability and memory (free memory is asked in the device's
    primary context, which the driver shares with any CUDA program in this process)."""
    count, _ = cuda_devices()
    lib = _driver() if count else None
    if lib is None:
        return ()
    return tuple(info for i in range(count) if (info := _gpu(lib, i)) is not None)


def _gpu(lib: Any, index: int) -> GpuInfo | None:
    dev = ctypes.c_int(0)
    if lib.cuDeviceGet(ctypes.byref(dev), index) != 0:
        return None
    name = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(name, 256, dev)
    major, minor, integrated = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
    lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
    lib.cuDeviceGetAttribute(ctypes.byref(integrated), _CU_DEVICE_ATTRIBUTE_INTEGRATED, dev)
    total = ctypes.c_size_t(0)
    lib.cuDeviceTotalMem_v2(ctypes.byref(total), dev)
    return GpuInfo(
        index=index,
        name=name.value.decode(errors="replace").strip(),
        compute_capability=(major.value, minor.value),
        total_bytes=total.value,
        free_bytes=_free_bytes(lib, dev),
        integrated=bool(integrated.value),
    )


def _free_bytes(lib: Any, dev: ctypes.c_int) -> int | None:
    ctx = ctypes.c_void_p(0)
    if lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) != 0:
        return None
    try:
        if lib.cuCtxPushCurrent_v2(ctx) != 0:
            return None
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        status = lib.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total))
        lib.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p(0)))
        return free.value if status == 0 else None
    finally:
        lib.cuDevicePrimaryCtxRelease_v2(dev)


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


def tensorrt_version() -> str | None:
    """The version of the `tensorrt` Python module, e.g. "10.3.0", or None where it does not import."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt
    except Exception:  # a module whose libraries are missing raises ImportError or OSError, both are "not here"
        return None
    return str(getattr(tensorrt, "__version__", "")) or None


def jetson(root: Path | None = None) -> JetsonInfo | None:
    """The Jetson this runs on, or None on any other machine. `root` stands for "/" (tests pass a fake tree)."""
    root = Path("/") if root is None else root
    model = _read(root / "proc/device-tree/model")
    release = _read(root / "etc/nv_tegra_release")
    if model is None and release is None:
        return None
    model = (model or "").rstrip("\x00").strip()
    if release is None and "jetson" not in model.lower():
        return None
    l4t = parse_l4t(release) if release is not None else None
    jetpack = _JETPACK.get(".".join(l4t.split(".")[:2])) if l4t else None
    return JetsonInfo(module=model or "unknown Jetson module", l4t=l4t, jetpack=jetpack, power_mode=_power_mode())


def parse_l4t(text: str) -> str | None:
    """`# R36 (release), REVISION: 4.0, ...` (the first line of /etc/nv_tegra_release) -> "36.4.0"."""
    found = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return None if found is None else f"{found.group(1)}.{found.group(2)}"


def parse_power_mode(text: str) -> str | None:
    """`NV Power Mode: 15W\\n0` (what `nvpmodel -q` prints) -> "15W"."""
    found = re.search(r"NV Power Mode:\s*(\S+)", text)
    return None if found is None else found.group(1)


def _power_mode() -> str | None:
    exe = shutil.which("nvpmodel")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_power_mode(done.stdout) if done.returncode == 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
