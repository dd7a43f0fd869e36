"""The CLIP text transformer: causal attention over token ids, pooled at the end-of-text token."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgeclip.errors import InputError
from edgeclip.models.config import TextConfig
from edgeclip.models.layers import LayerNorm, Transformer


class TextTransformer(nn.Module):
    """Text tower whose parameters sit at the top level, as in OpenAI's checkpoints (`token_embedding`, ...).

    `CLIP` extends this class rather than holding it as a child so that its keys need no prefix.
    """

    def __init__(self, cfg: TextConfig, embed_dim: int) -> None:
        super().__init__()
        self.text_config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps)
        self.ln_final = LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, embed_dim))
        self.initialize_text_parameters()

    def initialize_text_parameters(self) -> None:
        """OpenAI's initialisation: scaled normals, residual projections shrunk with depth."""
        width, layers = self.transformer.width, self.transformer.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in self.transformer.blocks():
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def pool_index(self, ids: Tensor) -> Tensor:
        """The position each sequence is pooled at, (B,) int64, computed with integer ops only."""
        cfg = self.text_config
        # ArgMax on int32: what ONNX Runtime implements (not int64), and exact, unlike a float cast.
        if cfg.pooling == "eot":
            return (ids == cfg.eot_id).to(torch.int32).argmax(dim=-1)  # first eot: argmax returns the first max
        return ids.to(torch.int32).argmax(dim=-1)  # OpenAI's rule: eot is the largest id

    def encode_text(self, ids: Tensor) -> Tensor:
        """(B, L) int64 token ids, L <= context_length -> (B, embed_dim) features, not normalized."""
        context = self.positional_embedding.shape[0]
        if ids.dim() != 2 or ids.shape[1] > context:
            raise InputError(
                f"expected token ids of shape (B, L) with L <= {context}, got {tuple(ids.shape)}; "
                f"tokenize with context length {context}"
            )
        dtype = self.text_projection.dtype
        x = self.token_embedding(ids).to(dtype) + self.positional_embedding[: ids.shape[1]].to(dtype)  # (B, L, D)
        x = self.ln_final(self.transformer(x, causal=True))
        x = x[torch.arange(x.shape[0], device=x.device), self.pool_index(ids)]  # (B, D)
        return x @ self.text_projection
