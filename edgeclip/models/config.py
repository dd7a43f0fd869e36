"""Architecture configs as frozen dataclasses, and the presets as data. No torch here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

from edgeclip.errors import InputError
from edgeclip.schema import Node

if TYPE_CHECKING:
    from edgeclip.contract import ModelContract

Activation = Literal["quick_gelu", "gelu"]
TextPooling = Literal["eot", "argmax"]
ACTIVATIONS: tuple[Activation, ...] = get_args(Activation)
POOLINGS: tuple[TextPooling, ...] = get_args(TextPooling)


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
    pooling: TextPooling = "eot"


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


def config_from_dict(data: Any, *, hint: str = "expected the output of config_to_dict") -> CLIPConfig:
    """The inverse of `config_to_dict`; every field is checked by type and range (and the widths against the heads),
    a bad one an InputError naming it (`config.vision.width must be ...`), closed by `hint`."""
    root = Node.root(data, error=InputError, hint=hint, path="config")
    vision, text = root.get("vision"), root.get("text")
    _no_unknown(root, CLIPConfig)
    return CLIPConfig(embed_dim=root.get("embed_dim").whole(min=1), vision=_vision(vision), text=_text(text))


def _no_unknown(node: Node, cls: type) -> Any:
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(node.mapping()) - set(known))
    if unknown:
        node.refuse(f"has unknown fields {', '.join(map(repr, unknown))} (known: {', '.join(known)})")
    return cls()


def _vision(node: Node) -> VisionConfig:
    d = _no_unknown(node, VisionConfig)
    layers_node = node.get("layers", d.layers)
    layers: int | tuple[int, int, int, int]
    if isinstance(layers_node.value, (list, tuple)):  # JSON has no tuples: a list of 4 ints is a ResNet
        if len(layers_node.value) != 4:
            layers_node.fail("a whole number (ViT blocks) or a list of 4 (ResNet stages)")
        a, b, c, e = (item.whole(min=1) for item in layers_node.items())
        layers = (a, b, c, e)
    else:
        layers = layers_node.whole(min=1)
    size = node.get("image_size", d.image_size).whole(min=1)
    width = node.get("width", d.width).whole(min=1)
    patch = node.get("patch_size", d.patch_size)
    head_width = node.get("head_width", d.head_width)
    config = VisionConfig(
        image_size=size,
        layers=layers,
        width=width,
        patch_size=patch.whole(min=1),
        head_width=head_width.whole(min=1),
        mlp_ratio=node.get("mlp_ratio", d.mlp_ratio).number(positive=True),
        act=node.get("act", d.act).choice(ACTIVATIONS),
        ln_eps=node.get("ln_eps", d.ln_eps).number(positive=True, max=1.0),
    )
    if not config.is_resnet and width % config.head_width:
        head_width.refuse(f"is {config.head_width}, which does not divide the width {width}")
    if not config.is_resnet and size % config.patch_size:
        patch.refuse(f"is {config.patch_size}, which does not divide the image size {size}")
    return config


def _text(node: Node) -> TextConfig:
    d = _no_unknown(node, TextConfig)
    vocab = node.get("vocab_size", d.vocab_size).whole(min=2)
    width = node.get("width", d.width).whole(min=1)
    heads = node.get("heads", d.heads)
    eot = node.get("eot_id", d.eot_id)
    if not isinstance(eot.value, int) or isinstance(eot.value, bool) or not 0 <= eot.value < vocab:
        eot.fail(f"a whole number from 0 to {vocab - 1}, an id of the vocabulary (vocab_size {vocab})")
    n_heads = heads.whole(min=1)
    if width % n_heads:
        heads.refuse(f"is {n_heads}, which does not divide the width {width}")
    return TextConfig(
        context_length=node.get("context_length", d.context_length).whole(min=2),
        vocab_size=vocab,
        width=width,
        heads=n_heads,
        layers=node.get("layers", d.layers).whole(min=1),
        mlp_ratio=node.get("mlp_ratio", d.mlp_ratio).number(positive=True),
        act=node.get("act", d.act).choice(ACTIVATIONS),
        ln_eps=node.get("ln_eps", d.ln_eps).number(positive=True, max=1.0),
        eot_id=eot.value,
        pooling=node.get("pooling", d.pooling).choice(POOLINGS),
    )


def contract_from_config(name: str, config: CLIPConfig, image: dict[str, Any] | None = None) -> ModelContract:
    """The model contract of a model trained from scratch (the built-in one included): the runtime's defaults at
    the config's sizes; `image`: ImageSpec fields other than the size (a recipe's "image")."""
    from edgeclip.contract import HeadSpec, ImageSpec, ModelContract, TextSpec

    t = config.text
    return ModelContract(
        name=name,
        image=ImageSpec(size=config.vision.image_size, **(image or {})),
        text=TextSpec(context_length=t.context_length, vocab_size=t.vocab_size, eot_id=t.eot_id, pooling=t.pooling),
        head=HeadSpec(embed_dim=config.embed_dim),
    )
