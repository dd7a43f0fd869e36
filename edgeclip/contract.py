"""The model contract: what a model expects of its inputs and how its outputs are read.

One typed contract per model, written into the bundle manifest at export and read by every runtime backend, so
that export and runtime can never disagree. Plain data, no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from edgeclip.errors import BundleError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

ResizeRule = Literal["shortest", "squash"]
Pooling = Literal["eot", "argmax", "last"]


@dataclass(frozen=True)
class ImageSpec:
    """How pixels become the tensor the image graph takes: (B, 3, size, size) float32, NCHW."""

    size: int = 224
    # "shortest": resize the shortest side to `size`, then center crop (OpenAI, open_clip).
    # "squash": resize both sides to `size`, ignoring the aspect ratio.
    resize: ResizeRule = "shortest"
    # Bicubic as PIL does it: antialiased when shrinking (the pipeline CLIP models were trained with).
    interpolation: Literal["bicubic"] = "bicubic"
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    channel_order: Literal["RGB"] = "RGB"


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
    clean: Literal["clip", "whitespace", "none"] = "clip"
    causal: bool = True
    # Tokenizer files inside the bundle, relative to it; empty: the CLIP BPE vocabulary shipped with edgeclip.
    tokenizer_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class HeadSpec:
    """How two embeddings become a score."""

    embed_dim: int = 512
    logit_scale: float = 100.0  # already exponentiated: scores are logit_scale * cosine (+ logit_bias)
    logit_bias: float | None = None  # sigmoid-loss models (SigLIP) have one
    activation: Literal["softmax", "sigmoid"] = "softmax"


@dataclass(frozen=True)
class ModelContract:
    name: str
    image: ImageSpec = field(default_factory=ImageSpec)
    text: TextSpec = field(default_factory=TextSpec)
    head: HeadSpec = field(default_factory=HeadSpec)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelContract:
        try:
            return cls(
                name=str(data["name"]),
                image=_spec_from_dict(ImageSpec, data["image"]),
                text=_spec_from_dict(TextSpec, data["text"]),
                head=_spec_from_dict(HeadSpec, data["head"]),
            )
        except (KeyError, TypeError) as exc:
            raise BundleError(f"the model contract in the manifest is incomplete or malformed: {exc!r}") from exc


def _spec_from_dict(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise BundleError(f"unknown fields {sorted(unknown)} in the {cls.__name__} of the manifest")
    # JSON has no tuples: turn lists back into the tuples the frozen dataclasses hold.
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
