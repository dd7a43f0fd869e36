"""Transformer building blocks shared by the image and text towers (OpenAI CLIP parameter names)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeclip.errors import InputError
from edgeclip.models.config import Activation


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype: the known overflow point of CLIP in fp16."""

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that OpenAI's CLIP models were trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: Activation) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()  # the exact (erf) GELU, as transformers' "gelu" and open_clip's nn.GELU
    raise InputError(f"unknown activation {name!r}; expected 'quick_gelu' or 'gelu'")


class Attention(nn.Module):
    """Multi-head self-attention on packed q/k/v weights, named as torch's nn.MultiheadAttention (OpenAI keys)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise InputError(f"attention width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        # nn.MultiheadAttention's own initialisation, so that models built here train like OpenAI's.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        B, N, D = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, N, 3D)
        qkv = qkv.view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D/H)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=causal)  # (B, H, N, D/H)
        y = y.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.out_proj(y)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: Activation) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = activation(act)  # OpenAI's name for the activation slot (it holds no weights)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: Activation, ln_eps: float) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width, eps=ln_eps)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width, eps=ln_eps)
        self.mlp = MLP(width, round(width * mlp_ratio), act)

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of blocks on batch-first tokens (B, N, D)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, act: Activation, ln_eps: float) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, act, ln_eps) for _ in range(layers)
        )

    def blocks(self) -> list[ResidualAttentionBlock]:
        return [block for block in self.resblocks if isinstance(block, ResidualAttentionBlock)]

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        for block in self.resblocks:
            x = block(x, causal=causal)
        return x
