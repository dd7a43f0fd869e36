"""The PyTorch backend: `torch` (CPU, a reference) and `torch-cuda` (a GPU that has neither TensorRT nor
onnxruntime-gpu).

It runs the bundle's own ONNX graphs, translated op by op into an `nn.Module` (`edgeclip.runtime.torch_graph`),
with the weights read from the graphs' initializers (`NAME.onnx.data` beside each graph). Not a rebuilt PyTorch CLIP
and not weights stored a second time: the graph is what export verified against the checkpoint (and the fp16 graph
what the precision gate passed, its float32 islands where its Cast nodes put them), so every backend runs the same
computation, a bundle stays the same size, and the runtime never imports edgeclip's PyTorch model code. Nothing from
the bundle is executed: a graph is data, read by `onnx.load`.

On `torch-cuda` images are preprocessed on the GPU (`Runner.image_pipeline`, `edgeclip.runtime.gpu_preprocess`).
CUDA graphs (`TorchOptions.cuda_graphs`) and torch.compile (`TorchOptions.compile`) are options, off by default:
they are written for GPUs and not yet measured on one (docs/gpu-torch.md).

torch and onnx are imported when a runner starts, not with this module: probing the backend (`edgeclip info`,
`backend="auto"`) stays cheap.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edgeclip.errors import BackendError, BundleError, InputError
from edgeclip.runtime.backends.base import ImagePipeline, Runner, RunnerRequest, describe

if TYPE_CHECKING:
    import torch

    from edgeclip.contract import ImageSpec
    from edgeclip.runtime.gpu_preprocess import DevicePreprocessor
    from edgeclip.runtime.torch_graph import OnnxModule

__all__ = ["TorchOptions", "TorchRunner", "create", "options_for", "probe"]

_INSTALL_EXTRA = "pip install 'edgeclip[torch]'"
_INSTALL_TORCH = f"{_INSTALL_EXTRA} (with a CUDA build of torch for torch-cuda)"


@dataclass(frozen=True)
class TorchOptions:
    """How the PyTorch backend runs a graph. None means PyTorch's default."""

    device: Literal["cpu", "cuda"] = "cpu"
    device_id: int = 0
    threads: int | None = None  # torch.set_num_threads (process-wide in PyTorch); None: PyTorch's default
    preprocess_on_device: bool | None = None  # images resized on the runner's device; None: on for CUDA
    # TensorFloat-32 rounds fp32 matmul and conv inputs to 10 bits: off, as the graphs were verified. PyTorch's
    # switches are process-wide: a torch-cuda runner sets them when it starts.
    tf32: bool = False
    cuda_graphs: bool = False  # replay a captured CUDA graph per input shape (unmeasured: off by default)
    compile: bool = False  # torch.compile the module (unmeasured: off by default)
    max_cuda_graphs: int = 16  # input shapes captured at most; other shapes run without a graph

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise InputError(f"TorchOptions.device must be 'cpu' or 'cuda', got {self.device!r}")
        for name in ("device_id", "max_cuda_graphs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"TorchOptions.{name} must be a whole number >= 0, got {value!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):  # fmt: skip
            raise InputError(f"TorchOptions.threads must be a whole number >= 1 (or None), got {self.threads!r}")
        if self.cuda_graphs and self.device != "cuda":
            raise InputError("TorchOptions.cuda_graphs needs device='cuda'")

    @property
    def torch_device(self) -> str:
        return f"cuda:{self.device_id}" if self.device == "cuda" else "cpu"

    @property
    def on_device_preprocessing(self) -> bool:
        return self.device == "cuda" if self.preprocess_on_device is None else self.preprocess_on_device


def probe(backend_name: str) -> tuple[bool, str]:
    """Whether PyTorch (and for torch-cuda a GPU it can use) is here. torch is imported only for torch-cuda, and
    only once the NVIDIA driver has shown a GPU."""
    for package, why in (("torch", _INSTALL_TORCH), ("onnx", f"{_INSTALL_EXTRA} (the backend reads the ONNX graphs)")):
        if importlib.util.find_spec(package) is None:
            return False, f"{package} is not installed: {why}"
    version = importlib.metadata.version("torch")
    if backend_name == "torch":
        return True, f"PyTorch {version} on the CPU"
    from edgeclip import device

    gpus, why = device.cuda_devices()
    if not gpus:
        return False, why
    import torch

    if not torch.cuda.is_available():
        return False, (
            f"PyTorch {torch.__version__} cannot use the GPU (built for CUDA {torch.version.cuda}): "
            "install a CUDA build of torch that fits this driver"
        )
    return True, f"PyTorch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}"


def options_for(backend_name: str, request: RunnerRequest) -> TorchOptions:
    """The TorchOptions `create` starts the graph of `request` with on `backend_name`."""
    return TorchOptions(device="cuda" if backend_name == "torch-cuda" else "cpu", threads=request.threads)


def create(backend_name: str, request: RunnerRequest, options: TorchOptions | None = None) -> TorchRunner:
    """A runner of the graph of `request` on PyTorch."""
    if backend_name not in ("torch", "torch-cuda"):
        raise InputError(f"the torch backend runs 'torch' and 'torch-cuda', not {backend_name!r}")
    if request.precision not in ("fp32", "fp16"):
        raise BackendError(
            f"the torch backend runs fp32 and fp16 graphs, not {request.precision} ({request.path.name}): "
            "its Q/DQ nodes are for TensorRT and ONNX Runtime; load with precision='fp16' or 'fp32'"
        )
    return TorchRunner(request, backend=backend_name, options=options or options_for(backend_name, request))


class TorchRunner(Runner):
    """One ONNX graph as a PyTorch module on one device. `infer` may be called from several threads at once."""

    def __init__(self, request: RunnerRequest, *, backend: str = "torch", options: TorchOptions | None = None) -> None:
        import torch

        from edgeclip.runtime.torch_graph import module_from_onnx

        super().__init__(request.inputs, request.outputs, label=request.path.name, dim_limits=request.dim_limits)
        self.backend = backend
        self.options = options if options is not None else TorchOptions()
        if self.options.threads is not None:
            torch.set_num_threads(self.options.threads)
        self.device = torch.device(self.options.torch_device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise BackendError(f"{backend}: PyTorch {torch.__version__} sees no CUDA GPU")
            torch.backends.cuda.matmul.allow_tf32 = self.options.tf32
            torch.backends.cudnn.allow_tf32 = self.options.tf32
        module = module_from_onnx(request.path, self.label)
        self._check_graph_io(module)
        self._module: OnnxModule | None = module.eval().to(self.device)
        self._call: Any = torch.compile(module, dynamic=False) if self.options.compile else module
        self._graphs = _CudaGraphs(module, self.options.max_cuda_graphs) if self.options.cuda_graphs else None
        self._preprocessor: DevicePreprocessor | None = None
        self._lock = threading.Lock()

    def _check_graph_io(self, module: OnnxModule) -> None:
        # The manifest is what validation trusts: a graph that disagrees with it must not run.
        wanted = {s.name: s.dtype for s in (*self.inputs, *self.outputs)}
        found = {n: module.dtypes.get(n) for n in (*module.input_names, *module.output_names)}
        if found != wanted:
            raise BundleError(
                f"{self.label} has inputs and outputs {found}, but the bundle manifest says "
                f"{'; '.join(describe(s) for s in (*self.inputs, *self.outputs))}: the bundle is inconsistent, "
                "export it again"
            )

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        module = self._module  # one read: close() from another thread must not change it mid-call
        if module is None:
            raise BackendError(f"the runner of {self.label} was closed; load the model again")
        tensors = [_to_tensor(feeds[name]).to(self.device) for name in module.input_names]
        with torch.inference_mode():
            outputs = self.forward(tensors)
        return {name: out.cpu().numpy() for name, out in zip(module.output_names, outputs, strict=True)}

    def forward(self, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The graph on tensors already on the runner's device (no checks: `infer` checks numpy feeds)."""
        if self._graphs is not None:
            return self._graphs(tensors)
        result: tuple[torch.Tensor, ...] = self._call(*tensors)
        return result

    def image_pipeline(self, spec: ImageSpec) -> ImagePipeline | None:
        """On a GPU (or where `preprocess_on_device` says): images -> embeddings with preprocessing on the device."""
        if not self.options.on_device_preprocessing:
            return None
        from edgeclip.runtime.gpu_preprocess import DevicePreprocessor

        with self._lock:
            if self._preprocessor is None:
                self._preprocessor = DevicePreprocessor(spec, self.device)
            preprocessor = self._preprocessor
        spec_in = self.inputs[0]

        def pipeline(images: Sequence[Any], color_order: str) -> np.ndarray:
            import torch

            if self._module is None:
                raise BackendError(f"the runner of {self.label} was closed; load the model again")
            limit = self.max_batch
            if limit is not None and len(images) > limit:
                raise InputError(f"a batch of {len(images)} images is above the image graph's limit of {limit}")
            with torch.inference_mode():
                pixels = preprocessor(images, color_order).to(_dtype(spec_in.dtype))
                n, fixed = len(pixels), spec_in.shape[0]
                if isinstance(fixed, int) and n < fixed:  # a graph of fixed batch: fill up, then drop the filler
                    pixels = torch.cat([pixels, pixels[-1:].expand(fixed - n, *pixels.shape[1:])])
                (embeds,) = self.forward([pixels])
                return np.asarray(embeds[:n].float().cpu().numpy(), dtype=np.float32)

        return pipeline

    def close(self) -> None:
        self._module = None
        self._call = None
        self._graphs = None
        self._preprocessor = None
        super().close()


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    import torch

    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _dtype(name: str) -> torch.dtype:
    import torch

    dtype: torch.dtype = getattr(torch, name)
    return dtype


class _CudaGraphs:
    """A captured CUDA graph per input shape, replayed with the inputs copied into its static buffers.

    Written against PyTorch's CUDA graph documentation, not yet run on a GPU (docs/gpu-torch.md). The module's
    first calls of a shape fill its shape values (on the host, uploaded once), so the captured call is device
    work only. One replay at a time: the static buffers are shared.
    """

    def __init__(self, module: OnnxModule, limit: int) -> None:
        self.module = module
        self.limit = limit
        self._graphs: dict[tuple[Any, ...], tuple[list[Any], tuple[Any, ...], Any]] = {}
        self._lock = threading.Lock()

    def __call__(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        key = tuple((tuple(t.shape), t.dtype) for t in inputs)
        with self._lock:
            entry = self._graphs.get(key)
            if entry is None:
                if len(self._graphs) >= self.limit:
                    result: tuple[torch.Tensor, ...] = self.module(*inputs)  # shapes past the limit: no graph
                    return result
                entry = self._capture(inputs)
                self._graphs[key] = entry
            static_in, static_out, graph = entry
            for buffer, value in zip(static_in, inputs, strict=True):
                buffer.copy_(value)
            graph.replay()
            return tuple(o.clone() for o in static_out)

    def _capture(self, inputs: Sequence[torch.Tensor]) -> tuple[list[Any], tuple[Any, ...], Any]:
        import torch

        static_in = [t.clone() for t in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture: kernels chosen, shape values computed
            for _ in range(2):
                self.module(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.module(*static_in)
        return static_in, static_out, graph
