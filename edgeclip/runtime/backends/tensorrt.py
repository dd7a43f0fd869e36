"""The TensorRT backend: engines built on this device from the bundle's verified graphs, run through the TensorRT
10/11 tensor API (`set_input_shape`, `set_tensor_address`, `execute_async_v3`).

`create` finds the engine in the cache (edgeclip.engines) or builds it, saying why, before the runner is handed
out: the minutes a build can take are never hidden in a constructor or in a first `infer`. Inputs are staged in
pinned host buffers that the runner owns, so they stay referenced until the launch has completed; one execution
context per optimization profile, the tightest profile that takes the batch chosen per call; a batch above the
largest profile is run in chunks of that profile's maximum. Written against the TensorRT API documentation, not yet
run on TensorRT.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip import device
from edgeclip.errors import BackendError, BundleError, InputError
from edgeclip.runtime.backends.base import Runner, RunnerRequest, describe

__all__ = ["TrtRunner", "create", "probe"]

_MiB = 1 << 20


def probe(backend_name: str) -> tuple[bool, str]:
    """Whether TensorRT (10 or newer), a CUDA memory library and a GPU are all here, and why not."""
    from edgeclip.engines.build import tensorrt_ready
    from edgeclip.engines.cuda import cuda_library_name

    ok, why = tensorrt_ready()
    if not ok:
        return False, why
    library = cuda_library_name()
    if library is None:
        return False, f"{why}, but no CUDA memory library: pip install cuda-python"
    return True, f"{why}, GPU memory through {library}"


def create(backend_name: str, request: RunnerRequest) -> Runner:
    """A started TrtRunner for the graph of `request` (its engine found or built first)."""
    runner = TrtRunner(request)
    try:
        runner.activate()
    except BaseException:
        runner.close()
        raise
    return runner


class TrtRunner(Runner):
    """One graph of a bundle as a TensorRT engine on one GPU. `activate()` loads (or builds) the engine and owns the
    stream, the contexts and every buffer until `close()`. Calls are serialized: the staged buffers are shared."""

    backend = "tensorrt"

    def __init__(
        self,
        request: RunnerRequest,
        *,
        options: Any = None,  # edgeclip.engines.BuildOptions; None: the defaults
        engines_root: Path | None = None,  # None: edgeclip.engines.default_engines_root()
        cuda_graph: bool = False,  # replay a captured CUDA graph for batch 1 (the camera path)
        log: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(request.inputs, request.outputs, label=request.path.name, dim_limits=request.dim_limits)
        self.request = request
        self.options = options
        self.engines_root = engines_root
        self.cuda_graph = cuda_graph
        self.log = log
        self.engine_path: Path | None = None
        self._lock = threading.Lock()
        self._engine: Any = None
        self._contexts: dict[int, Any] = {}
        self._buffers: dict[str, tuple[Any, Any]] = {}  # name -> (DeviceBuffer, HostBuffer), grown on demand
        self._graphs: dict[tuple[Any, ...], Any] = {}
        self._cuda: Any = None
        self._stream: Any = None
        self._trt: Any = None
        self._runtime: Any = None
        self._profiles: tuple[Any, ...] = ()
        self._dtypes: dict[str, np.dtype[Any]] = {}

    # ------------------------------------------------------------ start and stop

    def activate(self) -> None:
        """Find or build the engine, deserialize it, check it against the manifest, make the stream."""
        if self._engine is not None:
            return
        from edgeclip.bundle import Bundle
        from edgeclip.engines.build import BuildOptions, engine_for_graph, require_tensorrt
        from edgeclip.engines.cuda import cuda_api
        from edgeclip.engines.profiles import by_tower

        trt = require_tensorrt()
        options = self.options if self.options is not None else BuildOptions()
        bundle = Bundle.open(self.request.bundle_dir, verify=False)  # the runtime verified it when it loaded
        entry = bundle.graph(self.request.tower, self.request.precision, backend="tensorrt")
        if entry.sha256 != self.request.sha256:
            raise BundleError(
                f"{self.label} is not the graph the manifest lists for TensorRT ({entry.file}): load the bundle again"
            )
        built, plan = engine_for_graph(
            bundle, self.request.tower, self.request.precision, root=self.engines_root, options=options, log=self.log
        )
        self.engine_path = built.path
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if runtime is None:
            raise BackendError("TensorRT could not make a runtime here (is the GPU visible? 'edgeclip doctor' checks)")
        if options.version_compatible:
            runtime.engine_host_code_allowed = True  # a version-compatible engine carries its own lean runtime
        if options.dla_core is not None:
            runtime.DLA_core = options.dla_core  # before deserializing: the engine runs on this core
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise BackendError(
                f"TensorRT could not load the engine in {built.path} although its hash is right: rebuild it with "
                f"'edgeclip build {bundle.path} --precision {self.request.precision} --force'"
            )
        self._check_io(trt, engine)
        self._profiles = built.profiles or by_tower(
            options.profiles, self.request.tower, bundle.manifest.contract.text.context_length
        )
        if engine.num_optimization_profiles != len(self._profiles):
            raise BackendError(
                f"the engine in {built.path} has {engine.num_optimization_profiles} profiles, its key says "
                f"{len(self._profiles)}: rebuild it with 'edgeclip build {bundle.path} --force'"
            )
        self._cuda = cuda_api()
        self._stream = self._cuda.stream()
        self._trt = trt
        self._engine = engine
        self._runtime = runtime

    def _check_io(self, trt: Any, engine: Any) -> None:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for kind, specs, mode in (
            ("input", self.inputs, trt.TensorIOMode.INPUT),
            ("output", self.outputs, trt.TensorIOMode.OUTPUT),
        ):
            for spec in specs:
                if spec.name not in names or engine.get_tensor_mode(spec.name) != mode:
                    raise BundleError(
                        f"the engine of {self.label} has no {kind} {spec.name!r} (it has {names}): rebuild it with "
                        "'edgeclip build BUNDLE --force'"
                    )
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(spec.name)))
                if dtype != np.dtype(spec.dtype):
                    raise BundleError(
                        f"the engine of {self.label} takes {spec.name!r} as {dtype}; the manifest says "
                        f"{describe(spec)}: rebuild it with 'edgeclip build BUNDLE --force'"
                    )
                self._dtypes[spec.name] = dtype

    def close(self) -> None:
        with self._lock:
            try:
                if self._cuda is not None:
                    if self._stream is not None:
                        self._cuda.synchronize(self._stream)  # nothing may still read or write the buffers
                    for graph in self._graphs.values():
                        self._cuda.destroy_graph(graph)
                    self._contexts = {}  # contexts go before the engine, the engine before the runtime
                    for dev, host in self._buffers.values():
                        self._cuda.free(dev)
                        self._cuda.free_host(host)
                    if self._stream is not None:
                        self._cuda.destroy_stream(self._stream)
            finally:
                self._graphs, self._buffers, self._contexts = {}, {}, {}
                self._stream = None
                self._engine = None
                self._runtime = None
        super().close()

    # ------------------------------------------------------------ running

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from edgeclip.engines.profiles import largest_batch

        if self._engine is None:
            raise BackendError(f"the TensorRT runner of {self.label} is not active (closed, or activate() not called)")
        first = feeds[self.inputs[0].name]
        length = int(first.shape[1]) if self.request.tower == "text" and first.ndim == 2 else None
        chunk = largest_batch(self._profiles, length)
        if chunk == 0:
            raise InputError(
                f"no optimization profile of the {self.label} engine takes {length} tokens (profiles "
                f"{', '.join(p.text() for p in self._profiles)}): rebuild with --profiles covering it"
            )
        n = int(first.shape[0])
        if n <= chunk:
            return self._run(feeds, n, length)
        # Above the largest profile: chunks of its maximum, so that any batch the graph takes still runs.
        parts = [
            self._run({k: v[i : i + chunk] for k, v in feeds.items()}, min(chunk, n - i), length)
            for i in range(0, n, chunk)
        ]
        return {s.name: np.concatenate([p[s.name] for p in parts]) for s in self.outputs}

    def _run(self, feeds: Mapping[str, np.ndarray], n: int, length: int | None) -> dict[str, np.ndarray]:
        from edgeclip.engines.profiles import profile_for

        index = profile_for(self._profiles, n, length)
        if index is None:
            raise InputError(
                f"no optimization profile of the {self.label} engine takes a batch of {n}"
                f"{f' of {length} tokens' if length else ''} (profiles {', '.join(p.text() for p in self._profiles)})"
                ": rebuild with --profiles covering it"
            )
        with self._lock:
            cuda, stream = self._cuda, self._stream
            context = self._context(index)
            handle = cuda.stream_handle(stream)
            shapes: list[tuple[int, ...]] = []
            for spec in self.inputs:
                array = np.ascontiguousarray(feeds[spec.name], dtype=self._dtypes[spec.name])
                if not context.set_input_shape(spec.name, tuple(array.shape)):
                    raise BackendError(f"TensorRT refused shape {array.shape} for {spec.name!r} of {self.label}")
                dev, host = self._buffer(spec.name, array.nbytes)
                host.array[: array.nbytes] = array.reshape(-1).view(np.uint8)  # staged: kept until the sync below
                cuda.htod(dev, host, array.nbytes, stream)
                context.set_tensor_address(spec.name, dev.ptr)
                shapes.append(tuple(array.shape))
            outputs = []
            for spec in self.outputs:
                shape = tuple(int(d) for d in context.get_tensor_shape(spec.name))
                nbytes = int(np.prod(shape)) * self._dtypes[spec.name].itemsize
                dev, host = self._buffer(spec.name, nbytes)
                context.set_tensor_address(spec.name, dev.ptr)
                outputs.append((spec.name, shape, nbytes, dev, host))
            self._launch(context, handle, stream, (index, *shapes), n)
            for _, _, nbytes, dev, host in outputs:
                cuda.dtoh(host, dev, nbytes, stream)
            cuda.synchronize(stream)  # the launch and the copies are done: the staged buffers may be reused
            return {
                name: host.array[:nbytes].copy().view(self._dtypes[name]).reshape(shape)
                for name, shape, nbytes, _, host in outputs
            }

    def _launch(self, context: Any, handle: int, stream: Any, signature: tuple[Any, ...], n: int) -> None:
        if self.cuda_graph and n == 1:
            graph = self._graphs.get(signature)
            if graph is not None:
                self._cuda.replay(graph, stream)
                return
        if not context.execute_async_v3(handle):
            raise BackendError(f"TensorRT failed to enqueue {self.label} (execute_async_v3 returned False)")
        if self.cuda_graph and n == 1:
            # Captured after a first plain run, as TensorRT asks (shape-dependent setup happens in that run).
            def enqueue() -> None:
                if not context.execute_async_v3(handle):
                    raise BackendError(f"TensorRT failed to enqueue {self.label} while capturing a CUDA graph")

            self._graphs[signature] = self._cuda.capture(stream, enqueue)

    def _context(self, index: int) -> Any:
        context = self._contexts.get(index)
        if context is not None:
            return context
        strategy = getattr(getattr(self._trt, "ExecutionContextAllocationStrategy", None), "ON_PROFILE_CHANGE", None)
        # One context per profile, each holding the activation memory of its own profile only (ON_PROFILE_CHANGE);
        # the default (STATIC) would give every context the largest profile's memory.
        need = _profile_memory(self._engine, index if strategy is not None else None)
        free = next((g.free_bytes for g in device.gpus()), None)
        profile = self._profiles[index].text()
        if free is not None and need is not None and need > free:
            raise BackendError(
                f"profile {index} ({profile}) of the {self.label} engine needs {need / _MiB:.0f} MiB of GPU memory "
                f"for its activations and {free / _MiB:.0f} MiB is free: free GPU memory, or rebuild with smaller "
                "profiles, e.g. 'edgeclip build BUNDLE --profiles image=1:1:1,1:4:8 --force'"
            )
        context = (
            self._engine.create_execution_context(strategy)
            if strategy is not None
            else self._engine.create_execution_context()
        )
        if context is None:
            raise BackendError(
                f"TensorRT could not create a context for profile {index} ({profile}) of {self.label}"
                f"{f' (it needs {need / _MiB:.0f} MiB of GPU memory)' if need else ''}: free GPU memory or rebuild "
                "with smaller profiles (--profiles)"
            )
        if index != 0 and not context.set_optimization_profile_async(index, self._cuda.stream_handle(self._stream)):
            raise BackendError(f"TensorRT refused optimization profile {index} ({profile}) of {self.label}")
        self._contexts[index] = context
        return context

    def _buffer(self, name: str, nbytes: int) -> tuple[Any, Any]:
        held = self._buffers.get(name)
        if held is not None and held[0].nbytes >= nbytes:
            return held
        self._cuda.synchronize(self._stream)
        if held is not None:
            self._cuda.free(held[0])
            self._cuda.free_host(held[1])
            for graph in self._graphs.values():  # captured graphs hold the old addresses
                self._cuda.destroy_graph(graph)
            self._graphs = {}
        size = max(nbytes, 2 * held[0].nbytes if held is not None else nbytes)
        pair = (self._cuda.malloc(size), self._cuda.host(size))
        self._buffers[name] = pair
        return pair


def _profile_memory(engine: Any, index: int | None) -> int | None:
    """The device memory a context of profile `index` needs (None: of the largest profile), by the newest call this
    TensorRT has (the _v2 calls on 10.x and 11.x; 11.x removed the others)."""
    for name in ("get_device_memory_size_for_profile_v2", "get_device_memory_size_for_profile"):
        call = getattr(engine, name, None)
        if call is not None and index is not None:
            return int(call(index))
    for name in ("device_memory_size_v2", "device_memory_size"):
        if hasattr(engine, name):
            return int(getattr(engine, name))
    return None
