"""State-dict conversions, each a pure function `state_dict -> state_dict`, and the architecture read from weights.

The target layout is OpenAI's (which open_clip shares): `visual.*`, `token_embedding.weight`, `transformer.*`, ...
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import Tensor

from edgeclip.errors import CheckpointError
from edgeclip.models.config import Activation, CLIPConfig, TextConfig, VisionConfig
from edgeclip.schema import Node

StateDict = dict[str, Tensor]
Layout = Literal["openai", "hf"]

# What identifies each layout; also what the unknown-layout error tells the user to look for.
OPENAI_KEYS = ("token_embedding.weight", "positional_embedding", "text_projection", "visual.conv1.weight")
HF_KEYS = (
    "text_model.embeddings.token_embedding.weight",
    "vision_model.embeddings.patch_embedding.weight",
    "text_projection.weight",
    "visual_projection.weight",
)
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")  # ints saved beside OpenAI's weights


def unwrap(obj: Any, source: str) -> StateDict:
    """The tensor dict inside a loaded file: the object itself or its `state_dict` entry (training checkpoints)."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source} holds a {type(obj).__name__}, not a state dict of tensors; save the weights with "
            f"torch.save(model.state_dict(), path)"
        )
    others = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if others:
        raise CheckpointError(
            f"{source} holds entries that are not tensors ({', '.join(others[:5])}); expected a state dict of "
            f"tensors, optionally under a 'state_dict' key"
        )
    return {str(k): v for k, v in obj.items()}


def strip_prefix(sd: StateDict, prefix: str = "module.") -> StateDict:
    """Remove a prefix that every key has (DataParallel / DDP checkpoints write `module.`)."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def drop_openai_extras(sd: StateDict) -> StateDict:
    """Drop what OpenAI's files keep beside the weights: `input_resolution` & co. and attention-mask attributes."""
    return {k: v for k, v in sd.items() if k not in _OPENAI_EXTRAS and not k.endswith(".attn_mask")}


def add_bn_counters(sd: StateDict) -> StateDict:
    """Add the BatchNorm `num_batches_tracked` counters that some exporters drop (they never change outputs)."""
    out = dict(sd)
    for key in sd:
        if key.endswith(".running_mean"):
            counter = key[: -len("running_mean")] + "num_batches_tracked"
            out.setdefault(counter, torch.tensor(0, dtype=torch.long))
    return out


def to_float32(sd: StateDict) -> StateDict:
    """Floating tensors in float32 and contiguous (OpenAI's archives are fp16); integer buffers untouched."""
    return {k: v.float().contiguous() if v.is_floating_point() else v for k, v in sd.items()}


def detect_layout(sd: Mapping[str, Any]) -> Layout | None:
    if all(k in sd for k in HF_KEYS):
        return "hf"
    if all(k in sd for k in OPENAI_KEYS[:3]) and any(k.startswith("visual.") for k in sd):
        return "openai"
    return None


_HF_RENAMES = [
    (r"^text_model\.embeddings\.token_embedding\.", "token_embedding."),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.encoder\.layers\.", "transformer.resblocks."),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual.conv1."),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),  # sic: transformers' spelling
    (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
]
_HF_QKV = re.compile(r"^(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def openai_from_hf(sd: StateDict) -> StateDict:
    """Hugging Face CLIPModel keys to OpenAI's: q/k/v packed into in_proj, projections transposed, renames."""
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        if key.endswith("embeddings.position_ids"):
            continue  # an arange buffer older transformers saved
        if key == "visual_projection.weight":
            out["visual.proj"] = value.t()  # Linear (out, in) -> matrix applied as x @ proj
            continue
        if key == "text_projection.weight":
            out["text_projection"] = value.t()
            continue
        for pattern, new in _HF_RENAMES:
            key = re.sub(pattern, new, key)
        match = _HF_QKV.match(key)
        if match:
            qkv.setdefault((match[1], match[3]), {})[match[2]] = value
        else:
            out[key] = value
    for (block, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{block} has {sorted(parts)} attention projections only; q, k and v are needed")
        shapes = {name: tuple(part.shape) for name, part in parts.items()}
        if len(set(shapes.values())) != 1 or len(shapes["q"]) not in (1, 2):
            found = ", ".join(f"{name} {list(shape)}" for name, shape in sorted(shapes.items()))
            raise CheckpointError(
                f"{block}'s q, k and v {'weights' if kind == 'weight' else 'biases'} must have one shape (a matrix, "
                f"or a vector for biases); found {found}"
            )
        out[f"{block}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])  # OpenAI's order
    return out


def _count_blocks(sd: Mapping[str, Any], prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)})


def config_from_state_dict(
    sd: Mapping[str, Tensor], *, text_heads: int | None = None, vision_head_width: int = 64
) -> CLIPConfig:
    """The architecture from weight shapes (as OpenAI's `build_model`), for an OpenAI-layout state dict.

    What shapes cannot tell takes OpenAI's values: heads of width 64 (`text_heads`, `vision_head_width` override
    them), QuickGELU, LayerNorm eps 1e-5, the end token as the largest id.
    """
    try:
        return _config_from_state_dict(sd, text_heads, vision_head_width)
    except KeyError as exc:
        raise CheckpointError(
            f"the state dict lacks {exc.args[0]!r}, which the architecture is read from; "
            f"is it a complete CLIP checkpoint?"
        ) from None
    except (ValueError, IndexError, TypeError, AttributeError):  # a tensor of an unexpected rank
        raise CheckpointError(
            f"the weight shapes do not fit a CLIP architecture ({_shape_summary(sd)}); is it a CLIP checkpoint, "
            "and undamaged?"
        ) from None


_SHAPE_KEYS = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", "positional_embedding",
               "token_embedding.weight", "ln_final.weight", "text_projection")  # fmt: skip


def _shape_summary(sd: Mapping[str, Any]) -> str:
    """The shapes of the tensors the architecture is read from, for an error message."""
    found = [f"{k} {list(getattr(sd[k], 'shape', ()))}" for k in _SHAPE_KEYS if k in sd]
    return ", ".join(found) or "none of the tensors it is read from"


def _config_from_state_dict(sd: Mapping[str, Tensor], text_heads: int | None, vision_head_width: int) -> CLIPConfig:
    vision: VisionConfig
    if "visual.proj" in sd:  # Vision Transformer
        width, _, patch, _ = sd["visual.conv1.weight"].shape
        grid = _grid(sd["visual.positional_embedding"].shape[0], "visual.positional_embedding")
        vision = VisionConfig(
            image_size=patch * grid,
            layers=_count_blocks(sd, "visual.transformer.resblocks."),
            width=width,
            patch_size=patch,
            head_width=vision_head_width,
            mlp_ratio=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
        )
    else:  # ModifiedResNet
        stages = tuple(_count_blocks(sd, f"visual.layer{i}.") for i in (1, 2, 3, 4))
        grid = _grid(sd["visual.attnpool.positional_embedding"].shape[0], "visual.attnpool.positional_embedding")
        vision = VisionConfig(
            image_size=32 * grid,
            layers=stages,  # type: ignore[arg-type]  # a 4-tuple by construction
            width=sd["visual.layer1.0.conv1.weight"].shape[0],
            head_width=vision_head_width,
        )
    text_width = sd["ln_final.weight"].shape[0]
    vocab = sd["token_embedding.weight"].shape[0]
    text = TextConfig(
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=vocab,
        width=text_width,
        heads=text_heads if text_heads is not None else max(text_width // 64, 1),
        layers=_count_blocks(sd, "transformer.resblocks."),
        mlp_ratio=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
        eot_id=vocab - 1,
    )
    return CLIPConfig(embed_dim=sd["text_projection"].shape[1], vision=vision, text=text)


def _grid(positions: int, key: str) -> int:
    grid = math.isqrt(positions - 1)
    if grid * grid + 1 != positions:
        raise CheckpointError(f"{key} has {positions} rows, not a square grid plus one class token")
    return grid


def shape_mismatches(expected: CLIPConfig, found: CLIPConfig) -> list[str]:
    """The shape-determining fields where `expected` (a preset) and `found` (read from weights) differ."""
    fields = ["embed_dim", "vision.image_size", "vision.layers", "vision.width", "text.context_length",
              "text.vocab_size", "text.width", "text.layers", "text.mlp_ratio"]  # fmt: skip
    if not found.vision.is_resnet:
        fields += ["vision.patch_size", "vision.mlp_ratio"]
    out = []
    for name in fields:
        a, b = _get(expected, name), _get(found, name)
        if a != b and not (isinstance(a, float) and isinstance(b, float) and math.isclose(a, b)):
            out.append(f"{name} is {a} in the preset but {b} in the weights")
    return out


def _get(config: CLIPConfig, dotted: str) -> Any:
    obj: Any = config
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


HF_ACTIVATIONS: tuple[Activation, ...] = ("quick_gelu", "gelu")  # the hidden_act values edgeclip's CLIP runs
CLIP_EOT_ID = TextConfig.eot_id  # <|endoftext|> of the CLIP BPE, transformers' default eos_token_id
HF_CONFIG_HINT = "fix the file, or save the model again with save_pretrained(path)"


def with_hf_config(config: CLIPConfig, hf: Any, *, source: str = "config.json") -> CLIPConfig:
    """Fill in from a transformers `config.json` what the weights cannot tell: heads, activation, eps, end token.

    Every field read is checked by type and range against the weights (`source` names the file in the messages);
    a field left out takes transformers' default, as transformers reads it. The sizes the file states (widths,
    layers, patch, image size, context, vocabulary, projection) must be the weights' own: a config.json that
    describes another model is refused, as transformers refuses to load it (or, for the number of layers, loads
    fewer layers than the weights hold). `text_config_dict` / `vision_config_dict`, which configs saved by older
    transformers carry, replace `text_config` / `vision_config` as transformers reads them.
    """
    root = Node.root(hf, error=CheckpointError, source=source, hint=HF_CONFIG_HINT)
    vision, text = _tower_node(root, "vision"), _tower_node(root, "text")
    image_size = _check_hf_sizes(config, root, vision, text)
    # transformers' CLIP defaults, for config.json files that leave them out.
    v_heads = _heads(vision.get("num_attention_heads", 12), config.vision.width, "vision")
    t_heads = _heads(text.get("num_attention_heads", 8), config.text.width, "text")
    eos_node = text.get("eos_token_id", CLIP_EOT_ID)
    eos = eos_node.whole(min=0)
    # eos 2 marks configs older than transformers PR #24773, which pool at the largest id.
    if eos != 2 and eos >= config.text.vocab_size:
        eos_node.fail(f"an id of the vocabulary, below the {config.text.vocab_size} rows of the token embedding")
    return replace(
        config,
        vision=replace(
            config.vision,
            image_size=image_size,
            head_width=config.vision.width // v_heads,
            act=_activation(vision),
            ln_eps=vision.get("layer_norm_eps", 1e-5).number(positive=True, max=1.0),
        ),
        text=replace(
            config.text,
            heads=t_heads,
            act=_activation(text),
            ln_eps=text.get("layer_norm_eps", 1e-5).number(positive=True, max=1.0),
            pooling="argmax" if eos == 2 else "eot",
            eot_id=_legacy_eot(config.text.vocab_size) if eos == 2 else eos,
        ),
    )


def _legacy_eot(vocab_size: int) -> int:
    """The end token of a legacy config (eos_token_id 2): the CLIP BPE's <|endoftext|> (49407), where tokens added
    to the vocabulary come after it, else the last id. transformers pools these models at the largest id, which is
    <|endoftext|> in any prompt without added tokens ("argmax" pooling does the same in every case)."""
    return min(CLIP_EOT_ID, vocab_size - 1)


def _tower_node(root: Node, tower: str) -> Node:
    """`{tower}_config`, or `{tower}_config_dict` where the file has one: transformers builds the tower's config
    from the `_dict` alone (its defaults for what the `_dict` leaves out), whatever `{tower}_config` says."""
    legacy = f"{tower}_config_dict"
    node = root.get(legacy) if root.has(legacy) and not root.get(legacy).is_null else root.get(f"{tower}_config")
    node.mapping()
    return node


def _activation(node: Node) -> Activation:
    found = node.get("hidden_act", "quick_gelu")
    if isinstance(found.value, str) and found.value not in HF_ACTIVATIONS:
        raise CheckpointError(
            f"{found.source}: {found.path} is {found.value!r}: edgeclip's CLIP runs {' and '.join(HF_ACTIVATIONS)} "
            "only (the activations of OpenAI's and open_clip's CLIP models); this model cannot be converted"
        )
    return found.choice(HF_ACTIVATIONS)


def _check_hf_sizes(config: CLIPConfig, root: Node, vision: Node, text: Node) -> int:
    """Refuse sizes in config.json that the weights contradict; the image size to run (see below)."""
    v, t = config.vision, config.text
    assert isinstance(v.layers, int)  # transformers' CLIPModel is a ViT
    stated = [
        (vision, "hidden_size", v.width, "the vision width"),
        (vision, "num_hidden_layers", v.layers, "vision blocks"),
        (vision, "patch_size", v.patch_size, "the patch size of the patch embedding"),
        (vision, "intermediate_size", round(v.mlp_ratio * v.width), "the vision MLP width"),
        (text, "hidden_size", t.width, "the text width"),
        (text, "num_hidden_layers", t.layers, "text blocks"),
        (text, "intermediate_size", round(t.mlp_ratio * t.width), "the text MLP width"),
        (text, "max_position_embeddings", t.context_length, "text positions"),
        (text, "vocab_size", t.vocab_size, "rows of the token embedding"),
        (root, "projection_dim", config.embed_dim, "the projection width"),
    ]
    for node, key, weights, what in stated:
        if node.has(key):
            value = node.get(key).whole(min=1)
            if value != weights:
                node.get(key).refuse(f"is {value}, but the weights have {weights} ({what}): this config.json is not "
                                     "the one of these weights")  # fmt: skip
    if not vision.has("image_size"):
        return v.image_size
    size_node = vision.get("image_size")
    size = size_node.whole(min=1)
    grid = v.image_size // v.patch_size
    if size // v.patch_size != grid:
        size_node.refuse(
            f"is {size}, but the weights' position embeddings hold a {grid}x{grid} grid of {v.patch_size}-pixel "
            f"patches ({v.image_size} pixels): this config.json is not the one of these weights"
        )
    # An image size that is not a multiple of the patch (e.g. 100 with 14-pixel patches): transformers resizes and
    # crops to it, and its patch embedding leaves the last pixels of each row and column out; so does edgeclip's.
    return size


def _heads(node: Node, width: int, tower: str) -> int:
    heads = node.whole(min=1)
    if width % heads:
        node.refuse(f"is {heads}, which does not divide the {tower} width {width} read from the weights")
    return heads
