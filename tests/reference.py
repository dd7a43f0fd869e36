"""Reference CLIP implementations nobody here wrote, loaded by file path, and tiny random models built with them.

OpenAI's `clip` package and `open_clip` import torchvision in their `__init__`, which does not import beside the
CPU torch build: their single files are loaded by path instead.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: on a small shared machine, OpenMP threads spinning against other processes make
    tiny models 10-40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_by_path(package: str, filename: str) -> ModuleType:
    """Module `filename` of installed `package`, without running the package's `__init__`."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"the reference package {package!r} is not installed (pip install --no-deps it)")
    path = Path(spec.origin).parent / filename
    name = f"_reference_{package}_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


@cache
def openai_model_module() -> ModuleType:
    """OpenAI's `clip/model.py` (the openai-clip package)."""
    return load_by_path("clip", "model.py")


# Tiny shapes; widths are multiples of 64 because OpenAI's build_model infers heads as width // 64.
TINY_TEXT = {"context_length": 16, "vocab_size": 100, "transformer_width": 128, "transformer_heads": 2,
             "transformer_layers": 2}  # fmt: skip
TINY_VIT = {"embed_dim": 32, "image_resolution": 32, "vision_layers": 2, "vision_width": 128, "vision_patch_size": 8}
TINY_RESNET = {"embed_dim": 32, "image_resolution": 64, "vision_layers": (1, 2, 1, 1), "vision_width": 16,
               "vision_patch_size": None}  # fmt: skip


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every parameter and BatchNorm statistic off its initial value, so that a wrong copy shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
    return model


def openai_clip(vision: str = "vit", seed: int = 0, vocab_size: int = 100) -> nn.Module:
    """A tiny random CLIP built with OpenAI's own constructor, in eval mode, fp32 (vocab_size 49408: one that
    takes the real CLIP tokenizer's ids)."""
    torch.manual_seed(seed)
    shape = TINY_VIT if vision == "vit" else TINY_RESNET
    model = openai_model_module().CLIP(**shape, **{**TINY_TEXT, "vocab_size": vocab_size})
    return perturb(model, seed).eval()


def hf_clip(act: str = "quick_gelu", eos_token_id: int = 49407, seed: int = 0, **sizes: Any) -> nn.Module:
    """A tiny random transformers CLIPModel. `sizes` overrides the vision/text sizes, e.g. for ViT-B/32 shapes."""
    from transformers import CLIPConfig, CLIPModel

    vision = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8, "hidden_act": act, "layer_norm_eps": 1e-5}  # fmt: skip
    text = {"hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2, "num_attention_heads": 3,
            "max_position_embeddings": 16, "vocab_size": 49408, "hidden_act": act, "layer_norm_eps": 1e-6,
            "eos_token_id": eos_token_id, "bos_token_id": 49406, "pad_token_id": 1}  # fmt: skip
    vision.update(sizes.pop("vision", {}))
    text.update(sizes.pop("text", {}))
    torch.manual_seed(seed)
    config = CLIPConfig(vision_config=vision, text_config=text, projection_dim=sizes.pop("projection_dim", 24))
    return perturb(CLIPModel(config), seed).eval()


def token_ids(lengths: list[int], context: int, vocab: int, seed: int = 0, sot: int | None = None,
              eot: int | None = None) -> torch.Tensor:  # fmt: skip
    """(B, context) int64 prompts as a CLIP tokenizer makes them: sot, body, eot, then padding 0.

    A length over `context` is cut at `context` without an end token, as a plain truncation does. The body uses
    ids below sot, so the end token is the largest id of each row (OpenAI's pooling rule holds).
    """
    sot = vocab - 2 if sot is None else sot
    eot = vocab - 1 if eot is None else eot
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), context, dtype=torch.int64)
    for row, n in enumerate(lengths):
        seq = [sot, *torch.randint(1, sot, (max(n - 2, 0),), generator=gen).tolist(), eot]
        ids[row, : min(n, context)] = torch.tensor(seq[:context])
    return ids
