"""The model contract: what a model expects of its inputs and how its outputs are read.

One typed contract per model, written into the bundle manifest at export and read by every runtime backend, so
that export and runtime can never disagree. Plain data, no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from edgeclip.errors import BundleError
from edgeclip.schema import Node

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

ResizeRule = Literal["shortest", "squash"]
CropRounding = Literal["round", "floor"]
Interpolation = Literal["bicubic"]
ChannelOrder = Literal["RGB"]
Pooling = Literal["eot", "argmax", "last"]
TextCleaning = Literal["clip", "whitespace", "none"]
Activation = Literal["softmax", "sigmoid"]

# Bounds of what a contract read from disk may hold. Each is far beyond any CLIP model, and each keeps a damaged
# value from turning into a runaway allocation or a meaningless score.
MAX_IMAGE_SIZE = 16384  # one float32 input of 16384 px is already 3 GiB (CLIP models take 224 to 896)
MAX_CONTEXT_LENGTH = 65536  # every text is padded to it (CLIP: 77, SigLIP: 64, the longest text towers: 8192)
# CLIP clamps its learned temperature at 100 and SigLIP's is about 120; at 1e4 a cosine difference of 0.001 is
# already a factor e^10 between two labels, so a larger scale is not a trained model's, only a damaged file's.
MAX_LOGIT_SCALE = 1e4
MAX_LOGIT_BIAS = 1e4
_FIX = "fix the manifest or export the bundle again"


@dataclass(frozen=True)
class ImageSpec:
    """How pixels become the tensor the image graph takes: (B, 3, size, size) float32, NCHW."""

    size: int = 224
    # "shortest": resize the shortest side to `size`, then center crop (OpenAI, open_clip).
    # "squash": resize both sides to `size`, ignoring the aspect ratio.
    resize: ResizeRule = "shortest"
    # How the center crop's offset into the resized image is rounded: "round" half to even (torchvision's
    # CenterCrop: OpenAI, open_clip), "floor" (transformers' CLIPImageProcessor). They differ by a pixel when the
    # resized long side exceeds the crop by 4k + 3 pixels. Written to a manifest only when "floor".
    crop: CropRounding = "round"
    # Bicubic as PIL does it: antialiased when shrinking (the pipeline CLIP models were trained with).
    interpolation: Interpolation = "bicubic"
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    channel_order: ChannelOrder = "RGB"


@dataclass(frozen=True)
class TextSpec:
    """How text becomes the int64 ids the text graph takes: (B, context_length)."""

    context_length: int = 77
    vocab_size: int = 49408
    sot_id: int = 49406
    eot_id: int = 49407
    pad_id: int = 0
    # "eot": the first position holding eot_id (integer ops only); "argmax": the position of the largest id
    # (OpenAI's rule, the same where eot_id is the largest id); "last": the last position.
    pooling: Pooling = "eot"
    lower_case: bool = True
    # "clip": ftfy.fix_text, HTML unescaped twice, runs of whitespace folded: the reference CLIP cleaning.
    clean: TextCleaning = "clip"
    causal: bool = True
    # Tokenizer files inside the bundle, relative to it; empty: the CLIP BPE vocabulary shipped with edgeclip.
    tokenizer_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class HeadSpec:
    """How two embeddings become a score."""

    embed_dim: int = 512
    logit_scale: float = 100.0  # already exponentiated: scores are logit_scale * cosine (+ logit_bias)
    logit_bias: float | None = None  # sigmoid-loss models (SigLIP) have one
    activation: Activation = "softmax"


@dataclass(frozen=True)
class ModelContract:
    name: str
    image: ImageSpec = field(default_factory=ImageSpec)
    text: TextSpec = field(default_factory=TextSpec)
    head: HeadSpec = field(default_factory=HeadSpec)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.image.crop == "round":  # the default, as every file before the field existed holds it
            del data["image"]["crop"]
        return data

    @classmethod
    def from_dict(cls, data: Any, *, hint: str = _FIX) -> ModelContract:
        """The contract in `data` (as `to_dict` writes it), every field checked by type and range: a bad one is a
        BundleError naming it (`contract.text.context_length must be ...`), closed by `hint`."""
        return contract_from_node(Node.root(data, error=BundleError, hint=hint, path="contract"))


def contract_from_node(node: Node) -> ModelContract:
    """The contract at `node` of a JSON document (a manifest's "contract")."""
    return ModelContract(
        name=node.get("name").string(),
        image=_image_spec(node.get("image")),
        text=_text_spec(node.get("text")),
        head=_head_spec(node.get("head")),
    )


# A field a file leaves out takes the dataclass default (files written before the field existed); a field the
# dataclass does not have is refused, so a typo is never silently ignored.


def _defaults(node: Node, cls: type) -> Any:
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(node.mapping()) - set(known))
    if unknown:
        node.refuse(f"has unknown fields {', '.join(map(repr, unknown))} (known: {', '.join(known)})")
    return cls()


def _image_spec(node: Node) -> ImageSpec:
    d = _defaults(node, ImageSpec)
    return ImageSpec(
        size=node.get("size", d.size).whole(min=1, max=MAX_IMAGE_SIZE),
        resize=node.get("resize", d.resize).choice(get_args(ResizeRule)),
        crop=node.get("crop", d.crop).choice(get_args(CropRounding)),
        interpolation=node.get("interpolation", d.interpolation).choice(get_args(Interpolation)),
        mean=_triple(node.get("mean", list(d.mean)), positive=False),
        std=_triple(node.get("std", list(d.std)), positive=True),
        channel_order=node.get("channel_order", d.channel_order).choice(get_args(ChannelOrder)),
    )


def _triple(node: Node, *, positive: bool) -> tuple[float, float, float]:
    if not isinstance(node.value, (list, tuple)) or len(node.value) != 3:
        node.fail(f"a list of 3 finite numbers{' > 0' if positive else ''} (R, G, B)")
    r, g, b = (item.number(positive=positive) for item in node.items())
    return r, g, b


def _text_spec(node: Node) -> TextSpec:
    d = _defaults(node, TextSpec)
    vocab = node.get("vocab_size", d.vocab_size).whole(min=2)
    ids = {name: _token_id(node.get(name, getattr(d, name)), vocab) for name in ("sot_id", "eot_id", "pad_id")}
    files = node.get("tokenizer_files", list(d.tokenizer_files))
    return TextSpec(
        # At least 2: room for the start and end tokens.
        context_length=node.get("context_length", d.context_length).whole(min=2, max=MAX_CONTEXT_LENGTH),
        vocab_size=vocab,
        **ids,
        pooling=node.get("pooling", d.pooling).choice(get_args(Pooling)),
        lower_case=node.get("lower_case", d.lower_case).flag(),
        clean=node.get("clean", d.clean).choice(get_args(TextCleaning)),
        causal=node.get("causal", d.causal).flag(),
        tokenizer_files=tuple(item.string() for item in files.items()),
    )


def _token_id(node: Node, vocab: int) -> int:
    value = node.value
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < vocab:
        node.fail(f"a whole number from 0 to {vocab - 1}, an id of the vocabulary (vocab_size {vocab})")
    return value


def _head_spec(node: Node) -> HeadSpec:
    d = _defaults(node, HeadSpec)
    bias = node.get("logit_bias", d.logit_bias)
    return HeadSpec(
        embed_dim=node.get("embed_dim", d.embed_dim).whole(min=1),
        logit_scale=node.get("logit_scale", d.logit_scale).number(positive=True, max=MAX_LOGIT_SCALE),
        logit_bias=None if bias.is_null else bias.number(min=-MAX_LOGIT_BIAS, max=MAX_LOGIT_BIAS),
        activation=node.get("activation", d.activation).choice(get_args(Activation)),
    )
