"""The modules each tower's graph is exported from, and example inputs with their dynamic axes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeclip.errors import InputError

if TYPE_CHECKING:
    from edgeclip.models.clip import CLIP

# tower -> (input name, output name) of its graph
IO = {
    "image": ("pixels", "image_embeds"),
    "text": ("input_ids", "text_embeds"),
}


class _ImageTower(nn.Module):
    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: Tensor) -> Tensor:
        return F.normalize(self.model.encode_image(pixels), dim=-1)


class _TextTower(nn.Module):
    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return F.normalize(self.model.encode_text(input_ids), dim=-1)


def tower_module(model: CLIP, tower: str) -> nn.Module:
    """The module a tower's graph is exported from: inputs -> L2-normalized embeddings, in eval mode."""
    if tower not in IO:
        raise InputError(f"unknown tower {tower!r}; the towers are: {', '.join(IO)}")
    module = _ImageTower(model) if tower == "image" else _TextTower(model)
    return module.eval()


def example_input(model: CLIP, tower: str) -> tuple[Tensor, dict[int, Any]]:
    # Batch 2 in the example: torch.export specializes sizes 0 and 1, so a batch-1 example would fix the batch.
    batch = torch.export.Dim("batch", min=1)
    if tower == "image":
        size = model.config.vision.image_size
        return torch.randn(2, 3, size, size), {0: batch}
    text = model.config.text
    ids = torch.randint(0, min(text.vocab_size, text.eot_id), (2, text.context_length))
    if text.eot_id < text.vocab_size:
        ids[0, 3], ids[1, -1] = text.eot_id, text.eot_id
    return ids, {0: batch, 1: torch.export.Dim("length", min=1, max=text.context_length)}
