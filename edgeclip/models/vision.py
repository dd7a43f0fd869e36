"""Image towers: the Vision Transformer and the ModifiedResNet (RN50 family), OpenAI CLIP parameter names."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeclip.errors import InputError
from edgeclip.models.config import VisionConfig
from edgeclip.models.layers import LayerNorm, Transformer


def _check_pixels(pixels: Tensor, size: int) -> None:
    if pixels.dim() != 4 or pixels.shape[1] != 3 or pixels.shape[2] != size or pixels.shape[3] != size:
        raise InputError(
            f"expected pixels of shape (B, 3, {size}, {size}), got {tuple(pixels.shape)}; "
            f"preprocess images to the model's input size {size}"
        )


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int) -> None:
        super().__init__()
        assert isinstance(cfg.layers, int)
        self.image_size = cfg.image_size
        width, grid = cfg.width, cfg.image_size // cfg.patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width, eps=cfg.ln_eps)
        self.transformer = Transformer(width, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps)
        self.ln_post = LayerNorm(width, eps=cfg.ln_eps)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))

    def forward(self, pixels: Tensor) -> Tensor:
        _check_pixels(pixels, self.image_size)
        x = self.conv1(pixels.to(self.conv1.weight.dtype))  # (B, D, G, G)
        x = x.flatten(2).transpose(1, 2)  # (B, G*G, D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, N, D)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class Bottleneck(nn.Module):
    """ResNet bottleneck whose strided convolutions are replaced by stride-1 convolutions after an avgpool."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != out:
            # Keys "-1" (the pool, no weights), "0", "1" as in OpenAI's checkpoints.
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride) if stride > 1 else nn.Identity()),
                        ("0", nn.Conv2d(inplanes, out, 1, bias=False)),
                        ("1", nn.BatchNorm2d(out)),
                    ]
                )
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean of the feature map queries all positions (and itself)."""

    def __init__(self, grid: int, width: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width) / width**0.5)
        self.k_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        # sum / count rather than mean: the dynamo ONNX exporter cannot take ReduceMean from opset 18 down to 17.
        mean = x.sum(dim=1, keepdim=True) / x.shape[1]  # (B, 1, C)
        x = torch.cat([mean, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, N, C)
        B, N, C = x.shape
        h = self.heads
        # Only the first token's output is kept, so only its query is computed.
        q = self.q_proj(x[:, :1]).view(B, 1, h, C // h).transpose(1, 2)  # (B, H, 1, C/H)
        k = self.k_proj(x).view(B, N, h, C // h).transpose(1, 2)  # (B, H, N, C/H)
        v = self.v_proj(x).view(B, N, h, C // h).transpose(1, 2)  # (B, H, N, C/H)
        y = F.scaled_dot_product_attention(q, k, v).reshape(B, C)  # (B, C)
        return self.c_proj(y)


class ModifiedResNet(nn.Module):
    """OpenAI's ResNet: a 3-conv stem with an avgpool, anti-aliased strided blocks, attention pooling."""

    def __init__(self, cfg: VisionConfig, embed_dim: int) -> None:
        super().__init__()
        assert isinstance(cfg.layers, tuple)
        self.image_size = cfg.image_size
        width = cfg.width
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, cfg.layers[0])
        self.layer2 = self._make_layer(width * 2, cfg.layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, cfg.layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, cfg.layers[3], stride=2)
        self.attnpool = AttentionPool2d(cfg.image_size // 32, width * 32, cfg.heads, embed_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, pixels: Tensor) -> Tensor:
        _check_pixels(pixels, self.image_size)
        x = pixels.to(self.conv1.weight.dtype)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 32 * width, S/32, S/32)
        return self.attnpool(x)
