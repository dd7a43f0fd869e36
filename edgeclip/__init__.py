"""edgeclip: run CLIP models on the edge, with the answers PyTorch gives.

`import edgeclip` stays light: it never imports torch or onnx. Heavy modules load inside the calls that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeclip.errors import BackendError, BundleError, CheckpointError, EdgeClipError, ImageDecodeError, InputError

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BundleError",
    "CheckpointError",
    "EdgeClipError",
    "ImageDecodeError",
    "InputError",
    "__version__",
    "load",
]

if TYPE_CHECKING:
    from edgeclip.runtime import Model


def load(path: Any = None, backend: str = "auto", precision: str | None = None, **options: Any) -> Model:
    """Load a bundle (None: the built-in model) for inference. See `edgeclip.runtime.load`."""
    from edgeclip.runtime import load as _load

    return _load(path, backend=backend, precision=precision, **options)
