"""Architecture configs as frozen dataclasses, and the presets as data. No torch here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from edgeclip.errors import InputError

Activation = Literal["quick_gelu", "gelu"]


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 224
    # An int: a Vision Transformer of that many blocks. Four ints: a ModifiedResNet (RN50 family) of those stages.
    layers: int | tuple[int, int, int, int] = 12
    width: int = 768
    patch_size: int = 32  # ViT only
    head_width: int = 64  # width of one attention head: heads = width // head_width (ResNet: width * 32 // 64)
    mlp_ratio: float = 4.0
    act: Activation = "quick_gelu"
    ln_eps: float = 1e-5

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.layers, tuple)

    @property
    def heads(self) -> int:
        return self.width * 32 // self.head_width if self.is_resnet else self.width // self.head_width


@dataclass(frozen=True)
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    act: Activation = "quick_gelu"
    ln_eps: float = 1e-5
    eot_id: int = 49407
    # "eot": pool at the first eot_id; "argmax": at the largest id (OpenAI's rule; the same with the CLIP BPE).
    pooling: Literal["eot", "argmax"] = "eot"


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)

    def with_act(self, act: Activation) -> CLIPConfig:
        """The same architecture with another activation (what the weights cannot tell)."""
        return replace(self, vision=replace(self.vision, act=act), text=replace(self.text, act=act))


def _vit(embed: int, size: int, patch: int, width: int, layers: int, text_width: int, text_heads: int,
         act: Activation = "quick_gelu", text_layers: int = 12) -> CLIPConfig:  # fmt: skip
    return CLIPConfig(
        embed_dim=embed,
        vision=VisionConfig(image_size=size, layers=layers, width=width, patch_size=patch, act=act),
        text=TextConfig(width=text_width, heads=text_heads, layers=text_layers, act=act),
    )


def _rn(embed: int, size: int, layers: tuple[int, int, int, int], width: int, text_width: int,
        text_heads: int) -> CLIPConfig:  # fmt: skip
    return CLIPConfig(
        embed_dim=embed,
        vision=VisionConfig(image_size=size, layers=layers, width=width),
        text=TextConfig(width=text_width, heads=text_heads),
    )


# OpenAI's models use QuickGELU; open_clip's LAION-trained ViTs of the same shapes use GELU (the plain names).
PRESETS: dict[str, CLIPConfig] = {
    "RN50": _rn(1024, 224, (3, 4, 6, 3), 64, 512, 8),
    "RN101": _rn(512, 224, (3, 4, 23, 3), 64, 512, 8),
    "RN50x4": _rn(640, 288, (4, 6, 10, 6), 80, 640, 10),
    "ViT-B-32-quickgelu": _vit(512, 224, 32, 768, 12, 512, 8),
    "ViT-B-16-quickgelu": _vit(512, 224, 16, 768, 12, 512, 8),
    "ViT-L-14-quickgelu": _vit(768, 224, 14, 1024, 24, 768, 12),
    "ViT-B-32": _vit(512, 224, 32, 768, 12, 512, 8, act="gelu"),
    "ViT-B-16": _vit(512, 224, 16, 768, 12, 512, 8, act="gelu"),
    "ViT-L-14": _vit(768, 224, 14, 1024, 24, 768, 12, act="gelu"),
}


def preset(name: str) -> CLIPConfig:
    """The config of a named architecture; unknown names get the list of known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown architecture preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


def config_to_dict(config: CLIPConfig) -> dict[str, Any]:
    """A JSON-ready dict of `config` (tuples become lists)."""
    return asdict(config)


def config_from_dict(data: dict[str, Any]) -> CLIPConfig:
    """The inverse of `config_to_dict`; malformed data raises InputError naming the problem."""
    try:
        vision = dict(data["vision"])
        if isinstance(vision.get("layers"), list):
            vision["layers"] = tuple(vision["layers"])  # JSON has no tuples: a list of 4 ints is a ResNet
        return CLIPConfig(
            embed_dim=int(data["embed_dim"]), vision=VisionConfig(**vision), text=TextConfig(**dict(data["text"]))
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"malformed model config {data!r}: {exc!r}; expected the output of config_to_dict") from exc
