"""PyTorch CLIP models. Importing this package stays torch-free (the configs are plain data); the torch classes
load on first access, so `edgeclip.models.config` can be used by the light runtime."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from edgeclip.models.config import PRESETS, CLIPConfig, TextConfig, VisionConfig, preset

if TYPE_CHECKING:
    from edgeclip.models.clip import CLIP
    from edgeclip.models.loss import clip_loss

__all__ = ["CLIP", "PRESETS", "CLIPConfig", "TextConfig", "VisionConfig", "clip_loss", "preset"]

_LAZY = {"CLIP": "edgeclip.models.clip", "clip_loss": "edgeclip.models.loss"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
