"""ONNX Runtime runners: CPU, CUDA execution provider, TensorRT execution provider.

`OrtOptions` (with `CudaOptions` and `TensorrtOptions` for the GPU providers) is the one typed place where options
become `SessionOptions` and provider options (ONNX Runtime's string-keyed options ignore typos silently). A session
that comes up on another provider than the one asked for is refused, not used: ONNX Runtime itself would fall back
to the CPU with only a log line. `create` starts the session, then hands it to an `OrtRunner`; on a GPU provider the
runner binds its inputs and outputs (IO binding) so that ONNX Runtime copies each of them once.

The TensorRT provider builds its engines from the graph it is given, whose precision the bundle already fixed: its
fp16 and int8 flags stay off (they would let TensorRT lower the float32 islands of an fp16 graph). Its engines and
timing cache live under edgeclip's engines directory, `engines/<bundle>/onnxruntime-tensorrt/`, beside the engines of
edgeclip's own TensorRT backend.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnxruntime as ort

from edgeclip.errors import BackendError, BundleError, InputError
from edgeclip.runtime.backends.base import DimLimits, Runner, RunnerRequest, describe

if TYPE_CHECKING:
    from edgeclip.bundle import TensorSpec

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

# Provider chains per backend name: the first provider must really run the graph; CPU is last only so that the few
# nodes a GPU provider cannot take still run (ONNX Runtime places them node by node).
PROVIDERS: dict[str, tuple[str, ...]] = {
    "onnxruntime": (CPU,),
    "onnxruntime-cuda": (CUDA, CPU),
    "onnxruntime-tensorrt": (TENSORRT, CUDA, CPU),
}

# The CPU provider runs batches in slices of this many rows (OrtOptions.max_rows): as fast, and peak memory stays
# that of a batch of 8 whatever batch the caller passes.
CPU_SLICE = 8

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}  # fmt: skip


_MiB = 1 << 20


@dataclass(frozen=True)
class CudaOptions:
    """The CUDA execution provider's options that edgeclip sets (None: ONNX Runtime's default)."""

    memory_limit_mb: int | None = None  # the provider's memory arena limit
    conv_algo_search: Literal["exhaustive", "heuristic", "default"] = "heuristic"  # exhaustive: slow first calls
    tf32: bool = False  # TensorFloat-32 matmuls round fp32 inputs to 10 bits: off, as the graphs were verified

    def __post_init__(self) -> None:
        # ONNX Runtime would take a typo here and fail (or ignore it) only when a session starts on a GPU.
        limit = self.memory_limit_mb
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise InputError(f"memory_limit_mb must be a whole number of MiB >= 1 (or None), got {limit!r}")
        if self.conv_algo_search not in ("exhaustive", "heuristic", "default"):
            raise InputError(
                f"conv_algo_search must be 'exhaustive', 'heuristic' or 'default', got {self.conv_algo_search!r}"
            )
        if not isinstance(self.tf32, bool):
            raise InputError(f"tf32 must be True or False, got {self.tf32!r}")

    def provider_options(self, device_id: int) -> dict[str, str]:
        """The string-keyed options InferenceSession takes for CUDAExecutionProvider."""
        out = {
            "device_id": str(device_id),
            "cudnn_conv_algo_search": self.conv_algo_search.upper(),
            "use_tf32": "1" if self.tf32 else "0",
            "do_copy_in_default_stream": "1",
        }
        if self.memory_limit_mb is not None:
            out["gpu_mem_limit"] = str(self.memory_limit_mb * _MiB)
        return out


@dataclass(frozen=True)
class TensorrtOptions:
    """The TensorRT execution provider's options that edgeclip sets. Precision is in the graph: fp16 and int8 flags
    are never turned on."""

    workspace_mb: int = 1024  # fits an 8 GB Orin Nano beside the OS and a camera pipeline
    engine_cache_dir: str | None = None  # None: no engine cache (create() points it under the engines directory)
    timing_cache_dir: str | None = None  # None: no timing cache
    builder_optimization_level: int | None = None  # 0-5, None: TensorRT's default (3)

    def __post_init__(self) -> None:
        if isinstance(self.workspace_mb, bool) or not isinstance(self.workspace_mb, int) or self.workspace_mb < 1:
            raise InputError(f"workspace_mb must be a whole number of MiB >= 1, got {self.workspace_mb!r}")
        level = self.builder_optimization_level
        if level is not None and (isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 5):
            raise InputError(f"builder_optimization_level must be 0 to 5 (or None), got {level!r}")

    def provider_options(self, device_id: int) -> dict[str, str]:
        """The string-keyed options InferenceSession takes for TensorrtExecutionProvider."""
        out = {
            "device_id": str(device_id),
            "trt_max_workspace_size": str(self.workspace_mb * _MiB),
            "trt_fp16_enable": "False",
            "trt_int8_enable": "False",
        }
        if self.engine_cache_dir is not None:
            out |= {"trt_engine_cache_enable": "True", "trt_engine_cache_path": self.engine_cache_dir}
        if self.timing_cache_dir is not None:
            out |= {"trt_timing_cache_enable": "True", "trt_timing_cache_path": self.timing_cache_dir}
        if self.builder_optimization_level is not None:
            out["trt_builder_optimization_level"] = str(self.builder_optimization_level)
        return out


@dataclass(frozen=True)
class OrtOptions:
    """How ONNX Runtime runs a graph. None means ONNX Runtime's default."""

    providers: tuple[str, ...] = (CPU,)
    intra_op_threads: int | None = None  # None: one per physical core
    inter_op_threads: int | None = None
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    parallel_execution: bool = False  # CLIP towers are one chain of nodes: sequential is as fast and lighter
    # Idle intra-op threads spin between calls (ONNX Runtime's default): 1.06-1.08x faster on an idle 2-core CPU,
    # but 1.03-1.17x slower while other processes load it (benchmarks/RESULTS.md); outputs are identical either way.
    # False suits CPUs shared with cameras, preprocessing and other processes.
    allow_spinning: bool = True
    device_id: int = 0  # CUDA / TensorRT providers
    trt_cache_dir: str | None = None  # TensorRT provider: keep built engines here (None: `tensorrt`'s, or none)
    cuda: CudaOptions = field(default_factory=CudaOptions)
    tensorrt: TensorrtOptions = field(default_factory=TensorrtOptions)
    io_binding: bool | None = None  # None: on for GPU providers (inputs copied to the GPU once, outputs back once)
    # Keep a float16 graph's weights in float16 (set for fp16 graphs on the CPU provider): for every node it has no
    # fp16 kernel for (on x86 without AVX-512 FP16: all of them), ONNX Runtime's CPU provider would otherwise turn
    # the weights into float32 copies when the session starts (FuseFp16InitializerToFp32Node), so the fp16 graph
    # needed as much memory as the fp32 one. Kept, each weight is cast where it is used, in the order the
    # nodes run, without a precomputed memory pattern (which would hold every cast at once): ViT-B/32's fp16 image
    # graph peaked at 292 MiB instead of 459, 1.18x slower at batch 8 (benchmarks/RESULTS.md). The same casts, so
    # the same numbers up to float32 rounding: the matmuls of weights that are not constants take other kernels
    # (embeddings within 4e-5 of the default session's on ViT-B/32).
    keep_fp16_weights: bool = False
    # Take CPU memory from one arena shared by every session that asks for it (ONNX Runtime's environment
    # allocator), not one arena per session: the image and text sessions of an fp16 bundle then hold one set of
    # transient buffers between them (ViT-B/32 fp16, both towers: 400 MiB peak instead of 440). The shared arena
    # lives as long as the process and keeps what it grew to after its sessions close.
    shared_arena: bool = False
    # Give the memory arena's free chunks back to the system at the end of every run (set for fp32 and int8 graphs
    # on the CPU provider). ONNX Runtime's arena keeps every chunk it ever grew, and its memory pattern allocates a
    # run's activations anew from the second run of a shape on: ViT-B/32 fp32, both towers at batch 32, peaked at
    # 1094 MiB after two runs without, 743 MiB with, at the same speed (benchmarks/RESULTS.md). Not for fp16 graphs
    # with `keep_fp16_weights`: their casts, freed and allocated again every run, fragment the heap (371 -> 410 MiB).
    shrink_arena: bool = False
    # Run a larger batch in slices of at most this many rows (set to CPU_SLICE for the CPU provider): one slice's
    # activations at a time, so peak memory does not grow with the caller's batch size. On a 2-core CPU, 4 x 8
    # images ran as fast as 32 at once (fp32 1.00x, int8 1.07x, fp16 1.01x). Rows are independent in every CLIP
    # graph; a dynamic int8 graph's activation scale is then per slice. None: the whole batch in one run.
    max_rows: int | None = None
    log_severity: int = 3  # 3: errors only; ONNX Runtime's warnings are about graph details users cannot act on

    def __post_init__(self) -> None:
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise InputError(f"{name} must be a whole number >= 0 (0: ONNX Runtime's default), got {value!r}")
        if self.graph_optimization not in _OPT_LEVELS:
            raise InputError(
                f"graph_optimization must be one of {', '.join(_OPT_LEVELS)}, got {self.graph_optimization!r}"
            )
        if self.max_rows is not None and (isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int)
                                          or self.max_rows < 1):  # fmt: skip
            raise InputError(f"max_rows must be a whole number >= 1 or None, got {self.max_rows!r}")
        for flag in ("allow_spinning", "keep_fp16_weights", "shared_arena", "shrink_arena"):
            if not isinstance(getattr(self, flag), bool):
                raise InputError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if not self.providers:
            raise InputError("OrtOptions.providers is empty; name at least one provider, e.g. CPUExecutionProvider")
        if isinstance(self.device_id, bool) or not isinstance(self.device_id, int) or self.device_id < 0:
            raise InputError(f"device_id must be a whole number >= 0, got {self.device_id!r}")

    @property
    def on_gpu(self) -> bool:
        """Whether the main provider runs on a GPU."""
        return self.providers[0] in (CUDA, TENSORRT)

    @property
    def binds_io(self) -> bool:
        """Whether runs go through IO binding (GPU providers, unless `io_binding` says otherwise)."""
        return self.on_gpu if self.io_binding is None else self.io_binding

    def session_options(self) -> ort.SessionOptions:
        """The SessionOptions these options mean (the one place they are mapped)."""
        so = ort.SessionOptions()
        if self.intra_op_threads is not None:
            so.intra_op_num_threads = self.intra_op_threads
        if self.inter_op_threads is not None:
            so.inter_op_num_threads = self.inter_op_threads
        so.graph_optimization_level = _OPT_LEVELS[self.graph_optimization]
        so.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if self.parallel_execution else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        so.log_severity_level = self.log_severity
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        if self.keep_fp16_weights:
            so.execution_order = ort.ExecutionOrder.PRIORITY_BASED  # a weight's cast runs next to its consumer
            so.enable_mem_pattern = False
        if self.shared_arena:
            so.add_session_config_entry("session.use_env_allocators", "1")
        return so

    def run_options(self) -> ort.RunOptions:
        """The RunOptions of every run (the one place they are mapped)."""
        run = ort.RunOptions()
        run.log_severity_level = self.log_severity
        if self.shrink_arena:
            run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return run

    @property
    def disabled_optimizers(self) -> list[str]:
        """The graph transformers InferenceSession is told to skip (ONNX Runtime ignores names it does not know:
        tests/test_runtime.py checks that this one still takes effect)."""
        return ["FuseFp16InitializerToFp32NodeTransformer"] if self.keep_fp16_weights else []

    def provider_list(self) -> list[str | tuple[str, dict[str, str]]]:
        """`providers` with their typed options, as InferenceSession takes them."""
        out: list[str | tuple[str, dict[str, str]]] = []
        for name in self.providers:
            if name == CUDA:
                out.append((name, self.cuda.provider_options(self.device_id)))
            elif name == TENSORRT:
                trt = self.tensorrt
                if self.trt_cache_dir is not None and trt.engine_cache_dir is None:
                    trt = replace(trt, engine_cache_dir=self.trt_cache_dir)
                out.append((name, trt.provider_options(self.device_id)))
            else:
                out.append(name)
        return out


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def probe(backend_name: str) -> tuple[bool, str]:
    """Whether this onnxruntime has the provider `backend_name` needs, and a GPU where it is a GPU provider."""
    from edgeclip import device

    have = available_providers()
    wanted = PROVIDERS[backend_name][0]
    if wanted not in have:
        return False, (
            f"this onnxruntime {ort.__version__} has no {wanted} (it has {', '.join(have)}); "
            "install onnxruntime-gpu on a machine with an NVIDIA GPU"
        )
    if wanted == CPU:
        return True, f"{wanted} of onnxruntime {ort.__version__}"
    gpus, why = device.cuda_devices()
    if not gpus:
        return False, why
    if wanted == TENSORRT:
        lib = device.tensorrt_library()
        if lib is None:
            return False, f"{wanted} is built in, but the TensorRT libraries (libnvinfer) are not found"
        return True, f"{wanted} of onnxruntime {ort.__version__}, {why}, TensorRT from {lib}"
    return True, f"{wanted} of onnxruntime {ort.__version__}, {why}"


def options_for(backend_name: str, request: RunnerRequest) -> OrtOptions:
    """The OrtOptions `create` starts the graph of `request` with on `backend_name`."""
    tensorrt = TensorrtOptions()
    if backend_name == "onnxruntime-tensorrt":
        from edgeclip.engines.cache import bundle_dir, default_engines_root

        home = bundle_dir(default_engines_root(), request.bundle_dir.name) / "onnxruntime-tensorrt"
        tensorrt = TensorrtOptions(
            engine_cache_dir=str(home / trt_cache_name(request)), timing_cache_dir=str(home / f"timing-{_gpu_tag()}")
        )
    on_cpu = backend_name == "onnxruntime"
    fp16_on_cpu = on_cpu and request.precision == "fp16"
    return OrtOptions(
        providers=PROVIDERS[backend_name],
        intra_op_threads=request.threads,
        allow_spinning=True if request.spinning is None else request.spinning,
        tensorrt=tensorrt,
        keep_fp16_weights=fp16_on_cpu,
        shared_arena=fp16_on_cpu,
        shrink_arena=on_cpu and not fp16_on_cpu,
        max_rows=CPU_SLICE if on_cpu else None,
    )


def trt_cache_name(request: RunnerRequest) -> str:
    """The folder of the TensorRT provider's engines for the graph of `request` on this device.

    ONNX Runtime names cached engines by the graph's structure, not its weights, and does not check the TensorRT
    version or the GPU they were built with (its documentation asks users to clear the cache when any of those
    changes): the folder is keyed by all three, so a re-exported graph or another device never loads a stale engine.
    """
    from edgeclip import device

    library = device.tensorrt_library()  # the provider loads libnvinfer itself: its file names the version
    trt = device.tensorrt_version() or (Path(library).resolve().name if library else "unknown")
    return f"{request.tower}-{request.precision}-{request.sha256[:12]}-trt{trt}-{_gpu_tag()}"


def _gpu_tag() -> str:
    from edgeclip import device

    gpus = device.gpus()
    return f"sm{gpus[0].sm}" if gpus else "nogpu"


def create(backend_name: str, request: RunnerRequest, options: OrtOptions | None = None) -> OrtRunner:
    """A runner of the graph of `request`: the session is started (and checked) here, then handed to the runner."""
    options = options if options is not None else options_for(backend_name, request)
    for folder in (options.tensorrt.engine_cache_dir, options.tensorrt.timing_cache_dir):
        if folder is not None and TENSORRT in options.providers:
            Path(folder).mkdir(parents=True, exist_ok=True)
    session = start_session(request.path, options, backend=backend_name)
    return OrtRunner(
        request.path, request.inputs, request.outputs, backend=backend_name, options=options,
        dim_limits=request.dim_limits, session=session,
    )  # fmt: skip


def start_session(path: str | Path, options: OrtOptions, *, backend: str) -> ort.InferenceSession:
    """An InferenceSession of the graph at `path` that really runs on the first of `options.providers`."""
    path = Path(path)
    missing = [p for p in options.providers if p not in available_providers()]
    if missing:
        raise BackendError(
            f"ONNX Runtime {ort.__version__} has no {', '.join(missing)} "
            f"(it has {', '.join(available_providers())}); "
            "install onnxruntime-gpu for the CUDA and TensorRT providers, or use backend 'onnxruntime' (CPU)"
        )
    if options.shared_arena:
        _register_shared_arena()
    try:
        session = ort.InferenceSession(
            str(path),
            sess_options=options.session_options(),
            providers=options.provider_list(),
            disabled_optimizers=options.disabled_optimizers,
        )
    except Exception as exc:  # ONNX Runtime raises its own pybind classes, all plain Exceptions
        raise BackendError(f"ONNX Runtime ({backend}) could not load {path}: {exc}") from exc
    wanted, got = options.providers[0], session.get_providers()
    if not got or got[0] != wanted:
        raise BackendError(
            f"ONNX Runtime did not start {wanted} for {path.name} (it runs on {', '.join(got)}): check the CUDA, "
            f"cuDNN and TensorRT libraries of this machine, or use backend 'onnxruntime' for the CPU"
        )
    return session


@functools.cache
def _register_shared_arena() -> None:
    """The CPU arena that sessions with `shared_arena` use (registered once per process, on first use)."""
    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, -1, -1, -1))  # ONNX Runtime's defaults


class OrtRunner(Runner):
    """One ONNX graph in one InferenceSession. `infer` may be called from several threads at once.

    `create` starts the session and passes it in; without one the runner starts it itself (for scripts and tests).
    """

    def __init__(
        self,
        path: str | Path,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        backend: str = "onnxruntime",
        options: OrtOptions | None = None,
        dim_limits: DimLimits | None = None,
        session: ort.InferenceSession | None = None,
    ) -> None:
        path = Path(path)
        super().__init__(inputs, outputs, label=path.name, dim_limits=dim_limits)
        self.backend = backend
        self.options = options if options is not None else OrtOptions(providers=PROVIDERS[backend])
        if session is None:
            session = start_session(path, self.options, backend=backend)
        self._check_graph_io(session)
        self._session: ort.InferenceSession | None = session
        self._output_names = [s.name for s in self.outputs]
        self._run_options = self.options.run_options()

    def _check_graph_io(self, session: ort.InferenceSession) -> None:
        # The manifest is what validation trusts: a graph that disagrees with it must not run.
        for kind, specs, args in (("inputs", self.inputs, session.get_inputs()), ("outputs", self.outputs,
                                  session.get_outputs())):  # fmt: skip
            found = {a.name: _ORT_TYPES.get(a.type, a.type) for a in args}
            wanted = {s.name: s.dtype for s in specs}
            if not all(found.get(name) == dtype for name, dtype in wanted.items()):
                raise BundleError(
                    f"{self.label} has {kind} {found}, but the bundle manifest says "
                    f"{'; '.join(describe(s) for s in specs)}: the bundle is inconsistent, export it again"
                )

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session  # one read: close() from another thread must not change it mid-call
        if session is None:
            raise BackendError(f"the runner of {self.label} was closed; load the model again")
        rows = len(next(iter(feeds.values()))) if feeds else 0
        step = self.options.max_rows
        if step is None or rows <= step:
            values = self._run(session, feeds)
        else:  # slices of the batch, one after the other (OrtOptions.max_rows)
            parts = [self._run(session, {k: v[i : i + step] for k, v in feeds.items()}) for i in range(0, rows, step)]
            values = [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]
        return {name: np.asarray(v) for name, v in zip(self._output_names, values, strict=True)}

    def _run(self, session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            if self.options.binds_io:
                return self._run_bound(session, feeds)
            return list(session.run(self._output_names, dict(feeds), self._run_options))
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed to run {self.label}: {exc}") from exc

    def _run_bound(self, session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        # Each input is copied to the device once and each output allocated there and copied back once; a binding
        # per call keeps calls from several threads apart.
        device = "cuda" if self.options.on_gpu else "cpu"
        binding = session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self._output_names:
            binding.bind_output(name, device, self.options.device_id if device == "cuda" else 0)
        session.run_with_iobinding(binding, self._run_options)
        return list(binding.copy_outputs_to_cpu())

    @property
    def slice_rows(self) -> int | None:
        return self.options.max_rows

    def close(self) -> None:
        self._session = None
        super().close()

    @property
    def providers(self) -> list[str]:
        """The providers the session really runs on, first is the main one."""
        return [] if self._session is None else list(self._session.get_providers())


def describe_build() -> dict[str, Any]:
    """The installed ONNX Runtime: version, device build and providers (for `edgeclip info`)."""
    return {"version": ort.__version__, "device": ort.get_device(), "providers": available_providers()}
