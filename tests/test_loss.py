"""clip_loss against open_clip's ClipLoss, the positives option, and a few training steps of a tiny CLIP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgeclip.errors import InputError
from edgeclip.models.clip import CLIP
from edgeclip.models.config import CLIPConfig, TextConfig, VisionConfig
from edgeclip.models.loss import clip_loss
from tests.reference import load_by_path, one_thread, token_ids


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def _embeddings(batch: int = 6, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=gen), torch.randn(batch, dim, generator=gen)


@pytest.mark.parametrize("log_scale", [math.log(1 / 0.07), 0.0, 7.0])  # 7.0: exp > 100, clamped
def test_matches_open_clip(log_scale: float) -> None:
    open_clip_loss = load_by_path("open_clip", "loss.py").ClipLoss()
    image, text = _embeddings()
    scale = torch.tensor(log_scale)
    # open_clip takes normalized features and the exponentiated, already clamped scale.
    expected = open_clip_loss(F.normalize(image, dim=-1), F.normalize(text, dim=-1), scale.exp().clamp(max=100))
    assert clip_loss(image, text, scale).item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-6)


def test_distinct_labels_are_the_plain_loss() -> None:
    image, text = _embeddings()
    scale = torch.tensor(2.0)
    plain = clip_loss(image, text, scale)
    assert clip_loss(image, text, scale, labels=torch.arange(6)).item() == pytest.approx(plain.item(), abs=1e-6)
    assert clip_loss(image, text, scale, labels=torch.eye(6, dtype=torch.bool)).item() == pytest.approx(
        plain.item(), abs=1e-6
    )


def test_same_caption_pairs_are_positives() -> None:
    image, text = _embeddings()
    scale = torch.tensor(2.0)
    groups = torch.tensor([0, 1, 1, 2, 3, 4])  # pairs 1 and 2 share a caption
    mask = groups[:, None] == groups[None, :]
    with_groups = clip_loss(image, text, scale, labels=groups)
    assert with_groups.item() == pytest.approx(clip_loss(image, text, scale, labels=mask).item(), abs=1e-6)
    # Both texts are positives of both images: swapping the two texts changes nothing with labels...
    swapped = text[[0, 2, 1, 3, 4, 5]]
    assert clip_loss(image, swapped, scale, labels=groups).item() == pytest.approx(with_groups.item(), abs=1e-6)
    # ...whereas the plain loss counts the swapped pairs as negatives.
    assert clip_loss(image, swapped, scale).item() != pytest.approx(clip_loss(image, text, scale).item(), abs=1e-3)


def test_bad_arguments() -> None:
    image, text = _embeddings()
    scale = torch.tensor(2.0)
    with pytest.raises(InputError, match=r"same shape \(B, D\), got \(6, 8\) and \(5, 8\); pass one caption per"):
        clip_loss(image, text[:5], scale)
    with pytest.raises(InputError, match=r"\(B,\) group ids or a \(B, B\) bool positive mask with B = 6, got shape"):
        clip_loss(image, text, scale, labels=torch.arange(5))
    with pytest.raises(InputError, match="an image or a text without any positive"):
        clip_loss(image, text, scale, labels=torch.zeros(6, 6, dtype=torch.bool))


@pytest.mark.parametrize("vision", ["vit", "resnet"])
def test_training_steps_lower_the_loss_and_move_every_parameter(vision: str) -> None:
    torch.manual_seed(0)
    text = TextConfig(context_length=8, vocab_size=40, width=32, heads=2, layers=1, eot_id=39)
    if vision == "vit":
        vcfg = VisionConfig(image_size=16, layers=1, width=32, patch_size=8, head_width=16)
    else:
        vcfg = VisionConfig(image_size=32, layers=(1, 1, 1, 1), width=8, head_width=64)
    model = CLIP(CLIPConfig(embed_dim=16, vision=vcfg, text=text)).train()
    pixels = torch.randn(4, 3, vcfg.image_size, vcfg.image_size)
    ids = token_ids([3, 5, 8, 6], context=8, vocab=40, seed=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)  # no decay: only gradients move
    losses = []
    for _ in range(8):
        loss = clip_loss(model.encode_image(pixels), model.encode_text(ids), model.logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.1, losses
    unmoved = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert unmoved == []
