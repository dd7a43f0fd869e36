"""The light runtime: `load(bundle) -> Model` to embed images and text and classify zero-shot.

Needs numpy, a backend (ONNX Runtime; TensorRT or PyTorch where installed), tokenizers and OpenCV; never torch or
onnx unless a backend that needs them is asked for. `loader` opens bundles and starts graphs, `model` is what it
returns, `backends` lists the backends and starts runners.
"""

from __future__ import annotations

from edgeclip.runtime.backends import available_backends, create_runner
from edgeclip.runtime.loader import best_precision, builtin_bundle_path, load, parse_precision, runner_request
from edgeclip.runtime.model import DEFAULT_BATCH, ImageEmbeddings, Model, trim_padding
from edgeclip.runtime.model import _trim_padding as _trim_padding  # the old name, still imported by older code
from edgeclip.zeroshot import Classification

__all__ = [
    "DEFAULT_BATCH",
    "Classification",
    "ImageEmbeddings",
    "Model",
    "available_backends",
    "best_precision",
    "builtin_bundle_path",
    "create_runner",
    "load",
    "parse_precision",
    "runner_request",
    "trim_padding",
]
