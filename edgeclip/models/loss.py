"""The CLIP contrastive loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from edgeclip.errors import InputError

MAX_LOGIT_SCALE = 100.0  # CLIP clamps the learned temperature so that training stays stable


def clip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor, labels: Tensor | None = None) -> Tensor:
    """Symmetric cross-entropy over the scaled cosine similarities of B image and B text embeddings.

    `logit_scale` is the learned parameter (the log of the scale); the scale used is exp(logit_scale) clamped at 100.
    `labels`: None for the plain CLIP loss (pair i matches only pair i). Else a (B,) tensor of group ids (pairs
    with the same id, e.g. the same caption, are all positives of each other) or a (B, B) bool positive mask
    (row: image, column: text). With several positives the target is spread evenly over them.
    """
    if image_emb.dim() != 2 or image_emb.shape != text_emb.shape:
        raise InputError(
            f"expected image and text embeddings of the same shape (B, D), got {tuple(image_emb.shape)} and "
            f"{tuple(text_emb.shape)}; pass one caption per image"
        )
    image = F.normalize(image_emb, dim=-1)
    text = F.normalize(text_emb, dim=-1)
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    logits = scale * image @ text.t()  # (B, B): row i, image i against every text
    if labels is None:
        target = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    positives = _positive_mask(labels, logits.shape[0]).to(logits.device)
    per_image = positives.float() / positives.sum(dim=1, keepdim=True)
    per_text = positives.t().float() / positives.t().sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, per_image) + F.cross_entropy(logits.t(), per_text)) / 2


def _positive_mask(labels: Tensor, batch: int) -> Tensor:
    if labels.shape == (batch,):
        return labels[:, None] == labels[None, :]  # (B, B)
    if labels.shape == (batch, batch) and labels.dtype == torch.bool:
        if not bool(labels.any(dim=1).all() and labels.any(dim=0).all()):
            raise InputError("the positive mask has an image or a text without any positive; mark each true pair")
        return labels
    raise InputError(
        f"labels must be (B,) group ids or a (B, B) bool positive mask with B = {batch}, got shape "
        f"{tuple(labels.shape)} and dtype {labels.dtype}"
    )
