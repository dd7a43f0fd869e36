"""Device memory, pinned host memory, streams and CUDA graphs for the TensorRT runner, through cuda-python
(`cuda.bindings.runtime`) or, where only PyTorch is installed, through PyTorch's CUDA allocator.

Both are imported inside `cuda_api()` only. Every CUDA call's status is checked: a failure is a BackendError naming
the call, never a crash inside a later one.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeclip.errors import BackendError, MissingExtraError

__all__ = ["CudaApi", "DeviceBuffer", "HostBuffer", "cuda_api", "cuda_library_name"]


@dataclass
class DeviceBuffer:
    ptr: int
    nbytes: int
    owner: Any = None  # torch: the tensor that owns the memory


@dataclass
class HostBuffer:
    array: np.ndarray  # uint8, pinned
    owner: Any = None


def cuda_library_name() -> str | None:
    """Which library the runner would use for GPU memory: "cuda-python", "torch" (a CUDA build), or None. Imports
    torch only where cuda-python is absent (a CPU build of torch has no CUDA to offer)."""
    for module in ("cuda.bindings", "cuda.cudart"):
        try:
            if importlib.util.find_spec(module) is not None:
                return "cuda-python"
        except (ImportError, ValueError):  # "cuda" is not a package here
            continue
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        torch: Any = importlib.import_module("torch")
    except Exception:  # a broken torch offers no CUDA either
        return None
    return "torch" if torch.version.cuda is not None else None


class CudaApi:
    """The few CUDA runtime calls the runner makes (cuda-python)."""

    name = "cuda-python"

    def __init__(self, cudart: Any) -> None:
        self.rt = cudart

    def _check(self, result: Any, call: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            _, text = self.rt.cudaGetErrorString(err)
            raise BackendError(f"CUDA call {call} failed: {text.decode() if isinstance(text, bytes) else text}")
        return rest[0] if len(rest) == 1 else rest

    def stream(self) -> Any:
        return self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def destroy_stream(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def synchronize(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def malloc(self, nbytes: int) -> DeviceBuffer:
        ptr = self._check(self.rt.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({nbytes} bytes)")
        return DeviceBuffer(int(ptr), nbytes)

    def free(self, buf: DeviceBuffer) -> None:
        self._check(self.rt.cudaFree(buf.ptr), "cudaFree")

    def host(self, nbytes: int) -> HostBuffer:
        ptr = int(self._check(self.rt.cudaMallocHost(max(nbytes, 1)), f"cudaMallocHost({nbytes} bytes)"))
        array = np.ctypeslib.as_array((ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr))
        return HostBuffer(array, ptr)

    def free_host(self, buf: HostBuffer) -> None:
        self._check(self.rt.cudaFreeHost(buf.owner), "cudaFreeHost")

    def htod(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst.ptr, src.array.ctypes.data, nbytes, kind, stream), "cudaMemcpyAsync")

    def dtoh(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(dst.array.ctypes.data, src.ptr, nbytes, kind, stream), "cudaMemcpyAsync")

    def capture(self, stream: Any, launch: Any) -> Any:
        """A CUDA graph of what `launch()` enqueues on `stream`, instantiated."""
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        try:
            launch()
        finally:
            graph = self._check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        return self._check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate"), graph

    def replay(self, graph: Any, stream: Any) -> None:
        self._check(self.rt.cudaGraphLaunch(graph[0], stream), "cudaGraphLaunch")

    def destroy_graph(self, graph: Any) -> None:
        self._check(self.rt.cudaGraphExecDestroy(graph[0]), "cudaGraphExecDestroy")
        self._check(self.rt.cudaGraphDestroy(graph[1]), "cudaGraphDestroy")


class TorchCudaApi(CudaApi):
    """The same calls through PyTorch's CUDA allocator, pinned memory and streams."""

    name = "torch"

    def __init__(self, torch: Any) -> None:
        self.torch = torch

    def stream(self) -> Any:
        return self.torch.cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.cuda_stream)

    def destroy_stream(self, stream: Any) -> None:
        return None  # PyTorch frees its streams

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def malloc(self, nbytes: int) -> DeviceBuffer:
        try:
            t = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device="cuda")
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
            raise BackendError(f"PyTorch could not allocate {nbytes} bytes of GPU memory: {exc}") from None
        return DeviceBuffer(int(t.data_ptr()), nbytes, t)

    def free(self, buf: DeviceBuffer) -> None:
        buf.owner = None

    def host(self, nbytes: int) -> HostBuffer:
        t = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, pin_memory=True)
        return HostBuffer(t.numpy(), t)

    def free_host(self, buf: HostBuffer) -> None:
        buf.owner = None

    def htod(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            dst.owner[:nbytes].copy_(src.owner[:nbytes], non_blocking=True)

    def dtoh(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            dst.owner[:nbytes].copy_(src.owner[:nbytes], non_blocking=True)

    def capture(self, stream: Any, launch: Any) -> Any:
        graph = self.torch.cuda.CUDAGraph()
        with self.torch.cuda.graph(graph, stream=stream):
            launch()
        return graph

    def replay(self, graph: Any, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            graph.replay()

    def destroy_graph(self, graph: Any) -> None:
        return None


def cuda_api() -> CudaApi:
    """cuda-python's runtime bindings, else PyTorch's CUDA; MissingExtraError naming both where neither is here."""
    for module in ("cuda.bindings.runtime", "cuda.cudart"):  # cuda-python 12.6+, then the older layout
        try:
            return CudaApi(importlib.import_module(module))
        except ImportError:
            continue
    torch: Any = None
    try:
        torch = importlib.import_module("torch")
    except Exception:  # not installed, or broken (missing CUDA libraries raise OSError): no GPU memory from it
        torch = None
    if torch is not None and torch.cuda.is_available():
        return TorchCudaApi(torch)
    raise MissingExtraError(
        "the TensorRT backend needs cuda-python (or PyTorch with CUDA) for GPU memory: pip install 'edgeclip[tensorrt]'"
    )
