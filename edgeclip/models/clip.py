"""The CLIP model: an image tower, a text tower and a learned logit scale, with OpenAI's parameter names."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from edgeclip.models.config import CLIPConfig
from edgeclip.models.text import TextTransformer
from edgeclip.models.vision import ModifiedResNet, VisionTransformer


class CLIP(TextTransformer):
    """CLIP whose state dict is key for key an OpenAI / open_clip one: `visual.*`, the text keys, `logit_scale`."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__(config.text, config.embed_dim)
        self.config = config
        self.visual: ModifiedResNet | VisionTransformer
        if config.vision.is_resnet:
            self.visual = ModifiedResNet(config.vision, config.embed_dim)
        else:
            self.visual = VisionTransformer(config.vision, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # log of the scale
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """OpenAI's `initialize_parameters`: text tower normals; ResNet attention pool and zeroed last BN."""
        self.initialize_text_parameters()
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features**-0.5
            for linear in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(linear.weight, std=std)
            # Each residual branch starts as the identity.
            for stage in (self.visual.layer1, self.visual.layer2, self.visual.layer3, self.visual.layer4):
                for name, param in stage.named_parameters():
                    if name.endswith("bn3.weight"):
                        nn.init.zeros_(param)

    def encode_image(self, pixels: Tensor) -> Tensor:
        """(B, 3, S, S) float pixels, normalized as the contract says -> (B, embed_dim) features, not normalized."""
        return self.visual(pixels)

    def forward(self, pixels: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled cosine similarities: (logits_per_image (B_img, B_txt), logits_per_text (B_txt, B_img))."""
        image = self.encode_image(pixels)
        text = self.encode_text(ids)
        image = image / image.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * image @ text.t()
        return logits_per_image, logits_per_image.t()
