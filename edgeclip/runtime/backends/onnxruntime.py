"""ONNX Runtime runners: CPU, CUDA execution provider, TensorRT execution provider.

`OrtOptions` is the one typed place where options become `SessionOptions` and provider options (ONNX Runtime's
string-keyed options ignore typos silently). A session that comes up on another provider than the one asked for
is refused, not used: ONNX Runtime itself would fall back to the CPU with only a log line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnxruntime as ort

from edgeclip.errors import BackendError, BundleError, InputError
from edgeclip.runtime.backends.base import DimLimits, Runner, describe

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

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}  # fmt: skip


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
    trt_cache_dir: str | None = None  # TensorRT provider: keep built engines here (None: rebuild every session)
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
        if not isinstance(self.allow_spinning, bool):
            raise InputError(f"allow_spinning must be True or False, got {self.allow_spinning!r}")
        if not self.providers:
            raise InputError("OrtOptions.providers is empty; name at least one provider, e.g. CPUExecutionProvider")

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
        return so

    def provider_list(self) -> list[str | tuple[str, dict[str, str]]]:
        """`providers` with their typed options, as InferenceSession takes them."""
        out: list[str | tuple[str, dict[str, str]]] = []
        for name in self.providers:
            if name == CUDA:
                out.append((name, {"device_id": str(self.device_id)}))
            elif name == TENSORRT:
                opts = {"device_id": str(self.device_id)}
                if self.trt_cache_dir is not None:
                    opts |= {"trt_engine_cache_enable": "True", "trt_engine_cache_path": self.trt_cache_dir}
                out.append((name, opts))
            else:
                out.append(name)
        return out


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


class OrtRunner(Runner):
    """One ONNX graph in one InferenceSession. `infer` may be called from several threads at once."""

    def __init__(
        self,
        path: str | Path,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        backend: str = "onnxruntime",
        options: OrtOptions | None = None,
        dim_limits: DimLimits | None = None,
    ) -> None:
        path = Path(path)
        super().__init__(inputs, outputs, label=path.name, dim_limits=dim_limits)
        self.backend = backend
        self.options = options if options is not None else OrtOptions(providers=PROVIDERS[backend])
        missing = [p for p in self.options.providers if p not in available_providers()]
        if missing:
            raise BackendError(
                f"ONNX Runtime {ort.__version__} has no {', '.join(missing)} "
                f"(it has {', '.join(available_providers())}); "
                "install onnxruntime-gpu for the CUDA and TensorRT providers, or use backend 'onnxruntime' (CPU)"
            )
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                str(path), sess_options=self.options.session_options(), providers=self.options.provider_list()
            )
        except Exception as exc:  # ONNX Runtime raises its own pybind classes, all plain Exceptions
            raise BackendError(f"ONNX Runtime ({backend}) could not load {path}: {exc}") from exc
        wanted, got = self.options.providers[0], self._session.get_providers()
        if not got or got[0] != wanted:
            raise BackendError(
                f"ONNX Runtime did not start {wanted} for {path.name} (it runs on {', '.join(got)}): check the CUDA, "
                f"cuDNN and TensorRT libraries of this machine, or use backend 'onnxruntime' for the CPU"
            )
        self._check_graph_io(self._session)
        self._output_names = [s.name for s in self.outputs]

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
        try:
            values = session.run(self._output_names, dict(feeds))
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed to run {self.label}: {exc}") from exc
        return {name: np.asarray(v) for name, v in zip(self._output_names, values, strict=True)}

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
