"""The runner interface every backend implements, after Polygraphy's runners.

`infer` checks the feeds against the graph's TensorSpecs from the manifest (names, dtype, rank, fixed dims, limits
of dynamic dims) so that every backend fails the same readable way; `infer_impl` computes. A runner is a context
manager that owns its session and device memory.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeclip.errors import BackendError, InputError

if TYPE_CHECKING:
    from edgeclip.bundle import TensorSpec
    from edgeclip.contract import ImageSpec

# Inclusive (low, high) bounds of a dynamic dim, by its name in the manifest; high None: unbounded.
DimLimits = Mapping[str, tuple[int, int | None]]
# A batch of images (paths, bytes, PIL images, HWC uint8 arrays) and their color order ("RGB" | "BGR") -> (B, D)
# embeddings, preprocessed and run on the runner's own device (see `Runner.image_pipeline`).
ImagePipeline = Callable[[Sequence[Any], str], np.ndarray]


@dataclass(frozen=True)
class RunnerRequest:
    """Everything a backend needs to start one graph of a bundle: each backend module's `create(backend, request)`
    takes one of these, so that a backend that compiles (TensorRT) can key its cache by the graph it was given."""

    path: Path  # the graph file (ONNX) in the bundle
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    bundle_dir: Path
    tower: str  # "image" | "text"
    precision: str  # "fp32" | "fp16" | "int8"
    sha256: str  # of the graph file, from the manifest
    threads: int | None = None  # CPU threads per graph (None: the backend's default)
    # Whether idle CPU threads spin between calls (None: the backend's default; ONNX Runtime's CPU provider only)
    spinning: bool | None = None
    dim_limits: DimLimits = field(default_factory=dict)


def describe(spec: TensorSpec) -> str:
    """`pixels: float32 (batch, 3, 224, 224)`, for messages."""
    return f"{spec.name}: {spec.dtype} ({', '.join(str(d) for d in spec.shape)})"


class Runner(abc.ABC):
    """One graph on one backend: `infer(feeds) -> outputs`, both dicts of numpy arrays keyed by tensor name."""

    backend: str = "?"

    def __init__(
        self,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        label: str,
        dim_limits: DimLimits | None = None,
    ) -> None:
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.label = label  # what messages call the graph, e.g. "image.onnx"
        self.dim_limits = dict(dim_limits or {})
        self.closed = False

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check `feeds` against the graph's inputs, run it, and return every output by name."""
        self.check_feeds(feeds)
        results = self.infer_impl(feeds)
        missing = [s.name for s in self.outputs if s.name not in results]
        if missing:
            raise BackendError(f"{self.backend} returned no output {missing} for {self.label} (a backend bug)")
        return results

    @abc.abstractmethod
    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on feeds that `check_feeds` accepted."""

    def close(self) -> None:
        """Release the session and any device memory. Safe to call twice."""
        self.closed = True

    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def image_pipeline(self, spec: ImageSpec) -> ImagePipeline | None:
        """For an image graph on a GPU: a function that preprocesses images on that GPU and runs the graph on them,
        so that frames are uploaded once as uint8 and never resized on the CPU. None (the default): the runner takes
        host arrays that edgeclip's CPU preprocessor made."""
        return None

    @property
    def slice_rows(self) -> int | None:
        """The rows the backend runs at once (None: any batch in one run). Callers that prepare inputs for a batch
        (decode, resize, tokenize) do it this many at a time, so that their buffers stay that small too."""
        return None

    @property
    def max_batch(self) -> int | None:
        """The largest batch the graph takes (a fixed first dim, or the limit of a dynamic one), None: no limit."""
        first = self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else None
        if isinstance(first, int):
            return first
        if isinstance(first, str) and first in self.dim_limits:
            return self.dim_limits[first][1]
        return None

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Raise InputError naming the first feed that does not fit the graph's inputs."""
        if not isinstance(feeds, Mapping):
            raise InputError(f"{self.label} takes a dict of numpy arrays by input name, got {type(feeds).__name__}")
        expected = {s.name for s in self.inputs}
        unknown = sorted(set(feeds) - expected)
        if unknown:
            raise InputError(
                f"{self.label} has no input {', '.join(map(repr, unknown))}; its inputs are "
                f"{'; '.join(describe(s) for s in self.inputs)}"
            )
        sizes: dict[str, tuple[int, str]] = {}  # dynamic dim name -> (size, the input that set it)
        for spec in self.inputs:
            if spec.name not in feeds:
                raise InputError(f"{self.label} needs input {describe(spec)}; it was not given")
            self._check_one(spec, feeds[spec.name], sizes)

    def _check_one(self, spec: TensorSpec, array: object, sizes: dict[str, tuple[int, str]]) -> None:
        where = f"input {spec.name!r} of {self.label}"
        if not isinstance(array, np.ndarray):
            raise InputError(f"{where} must be a numpy array, got {type(array).__name__}")
        if array.dtype != np.dtype(spec.dtype):
            raise InputError(
                f"{where} must be {spec.dtype}, got {array.dtype}: convert it with .astype(np.{spec.dtype})"
            )
        shape_text = f"({', '.join(str(d) for d in spec.shape)})"
        if array.ndim != len(spec.shape):
            raise InputError(f"{where} must have {len(spec.shape)} dims {shape_text}, got shape {array.shape}")
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if isinstance(want, int):
                if got != want:
                    raise InputError(
                        f"{where} must have size {want} in dim {axis} {shape_text}, got shape {array.shape}"
                    )
                continue
            low, high = self.dim_limits.get(want, (1, None))
            if got < low or (high is not None and got > high):
                bounds = f"at least {low}" if high is None else f"between {low} and {high}"
                raise InputError(f"dim {want!r} of {where} is {got}; this graph takes {bounds}")
            if want in sizes and sizes[want][0] != got:
                size, other = sizes[want]
                raise InputError(f"dim {want!r} is {size} in input {other!r} but {got} in input {spec.name!r}")
            sizes[want] = (got, spec.name)
