"""The engine cache key: everything an engine depends on. Engines are not portable: one built for another GPU, compute
capability, TensorRT version, graph, precision or profile set must never be loaded, so each of these is in the key,
and a key that differs says which of them differ.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from edgeclip import device
from edgeclip.engines.profiles import Profile, profiles_text
from edgeclip.errors import BackendError

__all__ = ["EngineKey", "device_key_fields", "key_differences"]

KEY_FORMAT = 1


@dataclass(frozen=True)
class EngineKey:
    """What one engine (one tower of one bundle at one precision) was built from and for."""

    tower: str
    precision: str
    graph_sha256: str  # of the ONNX graph and its weights, as the bundle manifest records it
    profiles: str  # profiles_text(): "1:1:1,1:8:32" or "1:1:1x1:32:32,1:8:32x1:32:32"
    tensorrt: str  # TensorRT version, e.g. "10.3.0"
    gpu: str  # GPU name, e.g. "Orin" or "NVIDIA H200"
    compute_capability: str  # e.g. "8.7"
    jetson_module: str = ""  # "" off Jetson
    dla_core: int | None = None  # None: the GPU
    version_compatible: bool = False
    hardware_compatible: bool = False  # AMPERE_PLUS hardware compatibility
    format: int = KEY_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineKey:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def digest(self) -> str:
        """16 hex digits of the sha256 of the key's canonical JSON."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def dirname(self) -> str:
        """The cache directory of this engine: readable first, unique last, e.g. `image-fp16-3f2a9c1d4e5b6a7c`."""
        return f"{self.tower}-{self.precision}-{self.digest()}"

    def where(self) -> str:
        """`TensorRT 10.3.0 on Orin (sm 8.7, Jetson AGX Orin, DLA 0)`, for messages."""
        extra = [f"sm {self.compute_capability}"]
        if self.jetson_module:
            extra.append(self.jetson_module)
        if self.dla_core is not None:
            extra.append(f"DLA {self.dla_core}")
        return f"TensorRT {self.tensorrt} on {self.gpu} ({', '.join(extra)})"


def device_key_fields(*, gpu_index: int = 0, tensorrt_version: str | None = None) -> dict[str, Any]:
    """The device half of a key for this machine: TensorRT version, GPU name and compute capability, Jetson module.
    BackendError where there is no GPU or no TensorRT (no key can be made, so no engine can be used)."""
    version = tensorrt_version if tensorrt_version is not None else device.tensorrt_version()
    if version is None:
        raise BackendError("TensorRT is not importable here, so no engine can be built or loaded")
    found = device.gpus()
    if not found:
        _, why = device.cuda_devices()
        raise BackendError(f"no CUDA GPU to build or load an engine for: {why}")
    if gpu_index >= len(found):
        raise BackendError(f"there is no GPU {gpu_index}; this machine has {len(found)}")
    gpu = found[gpu_index]
    board = device.jetson()
    return {
        "tensorrt": version,
        "gpu": gpu.name,
        "compute_capability": gpu.sm,
        "jetson_module": board.module if board is not None else "",
    }


def make_key(
    tower: str,
    precision: str,
    graph_sha256: str,
    profiles: Sequence[Profile],
    device_fields: Mapping[str, Any],
    *,
    dla_core: int | None = None,
    version_compatible: bool = False,
    hardware_compatible: bool = False,
) -> EngineKey:
    return EngineKey(
        tower=tower,
        precision=precision,
        graph_sha256=graph_sha256,
        profiles=profiles_text(profiles),
        dla_core=dla_core,
        version_compatible=version_compatible,
        hardware_compatible=hardware_compatible,
        **dict(device_fields),
    )


_WHAT = {
    "graph_sha256": "the ONNX graph",
    "profiles": "the optimization profiles",
    "tensorrt": "the TensorRT version",
    "gpu": "the GPU",
    "compute_capability": "the compute capability",
    "jetson_module": "the Jetson module",
    "dla_core": "the DLA core",
    "version_compatible": "version compatibility",
    "hardware_compatible": "hardware compatibility",
    "precision": "the precision",
    "format": "the cache format",
}


def key_differences(found: EngineKey, wanted: EngineKey) -> list[str]:
    """What differs between an engine's key and the one wanted, in words: `the GPU: built for Orin, this is H200`."""
    out = []
    for name, what in _WHAT.items():
        a, b = getattr(found, name), getattr(wanted, name)
        if a != b:
            if name == "graph_sha256":
                out.append(f"{what}: built from {str(a)[:12]}..., the bundle now has {str(b)[:12]}...")
            else:
                out.append(f"{what}: built for {_show(a)}, this is {_show(b)}")
    return out


def _show(value: Any) -> str:
    if value is None:
        return "the GPU (no DLA)"
    if value == "":
        return "none"
    return str(value)
