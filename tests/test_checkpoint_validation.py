"""Hugging Face directories and edgeclip's own metadata are data read from disk: each field edgeclip reads from
config.json, preprocessor_config.json, a weight index or a checkpoint's metadata is checked by type and range, and
a bad one is one CheckpointError naming the file and the field (never a ValueError or AttributeError traceback)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeclip.checkpoint import load_checkpoint, save_checkpoint
from edgeclip.contract import ImageSpec
from edgeclip.errors import CheckpointError, InputError
from edgeclip.models.clip import CLIP
from edgeclip.models.config import config_from_dict, config_to_dict
from tests.reference import hf_clip, one_thread
from tests.test_checkpoint import TINY

HINT = "fix the file, or save the model again with save_pretrained(path)"
DELETE = object()
Edit = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny CLIPModel saved whole (with a preprocessor config) and in shards (vision width 64, text width 48)."""
    from transformers import CLIPImageProcessor

    root = tmp_path_factory.mktemp("hf")
    model = hf_clip(seed=3)
    model.save_pretrained(root / "whole")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "whole"
    )
    model.save_pretrained(root / "sharded", max_shard_size="100KB")
    return {"whole": root / "whole", "sharded": root / "sharded"}


def put(path: str, value: Any) -> Edit:
    """Set the field at the dotted `path` (DELETE: remove it)."""
    *parents, last = path.split(".")

    def edit(data: dict[str, Any]) -> None:
        node: Any = data
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value

    return edit


def _damaged(source: Path, tmp_path: Path, file: str, edit: Edit) -> Path:
    target = tmp_path / source.name
    shutil.copytree(source, target)
    data = json.loads((target / file).read_text())
    edit(data)
    (target / file).write_text(json.dumps(data))
    return target


def _refused(path: Path) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    return str(caught.value)


CONFIG_CASES: list[tuple[str, Edit, str]] = [
    ("vision-missing", put("vision_config", DELETE), "vision_config is missing"),
    ("vision-list", put("vision_config", []), "vision_config must be an object ({...}), found a list of 0"),
    ("text-null", put("text_config", None), "text_config must be an object ({...}), found null"),
    ("eps-string", put("text_config.layer_norm_eps", "1e-6"),
     'text_config.layer_norm_eps must be a finite number > 0 and <= 1, found "1e-6" (a string)'),
    ("eps-negative", put("vision_config.layer_norm_eps", -1e-5),
     "vision_config.layer_norm_eps must be a finite number > 0 and <= 1, found -1e-05"),
    ("heads-string", put("vision_config.num_attention_heads", "4"),
     'vision_config.num_attention_heads must be a whole number >= 1, found "4" (a string)'),
    ("heads-zero", put("text_config.num_attention_heads", 0),
     "text_config.num_attention_heads must be a whole number >= 1, found 0"),
    ("heads-do-not-divide", put("vision_config.num_attention_heads", 5),
     "vision_config.num_attention_heads is 5, which does not divide the vision width 64 read from the weights"),
    ("layers", put("text_config.num_hidden_layers", 1),
     "text_config.num_hidden_layers is 1, but the weights have 2 (text blocks): this config.json is not the one of "
     "these weights"),
    ("width", put("vision_config.hidden_size", 128),
     "vision_config.hidden_size is 128, but the weights have 64 (the vision width): this config.json is not the one "
     "of these weights"),
    ("positions", put("text_config.max_position_embeddings", 32),
     "text_config.max_position_embeddings is 32, but the weights have 16 (text positions): this config.json is not "
     "the one of these weights"),
    ("projection", put("projection_dim", 32),
     "projection_dim is 32, but the weights have 24 (the projection width): this config.json is not the one of these "
     "weights"),
    ("image-size", put("vision_config.image_size", 64),
     "vision_config.image_size is 64, but the weights' position embeddings hold a 4x4 grid of 8-pixel patches (32 "
     "pixels): this config.json is not the one of these weights"),
    ("legacy-dict", put("text_config_dict", {"num_attention_heads": 5}),
     "text_config_dict.num_attention_heads is 5, which does not divide the text width 48 read from the weights"),
    ("act-list", put("vision_config.hidden_act", ["gelu"]),
     'vision_config.hidden_act must be one of "quick_gelu", "gelu", found a list of 1'),
    ("eos-beyond-vocab", put("text_config.eos_token_id", 49408),
     "text_config.eos_token_id must be an id of the vocabulary, below the 49408 rows of the token embedding, "
     "found 49408"),
    ("eos-string", put("text_config.eos_token_id", "49407"),
     'text_config.eos_token_id must be a whole number >= 0, found "49407" (a string)'),
]  # fmt: skip

PREPROCESSOR_CASES: list[tuple[str, Edit, str]] = [
    ("size-string", put("size", "32"),
     'size must be a whole number of pixels from 1 to 16384, or an object ({"shortest_edge": N} or '
     '{"height": N, "width": N}), found "32" (a string)'),
    ("crop-list", put("crop_size", [32]),
     'crop_size must be a whole number of pixels from 1 to 16384, or an object ({"shortest_edge": N} or '
     '{"height": N, "width": N}), found a list of 1'),
    ("shortest-edge-string", put("size", {"shortest_edge": "32"}),
     'size.shortest_edge must be a whole number from 1 to 16384, found "32" (a string)'),
    ("crop-height-missing", put("crop_size", {"width": 32}), "crop_size.height is missing"),
    ("not-square", put("size", {"height": 32, "width": 40}),
     "size is 32 x 40 pixels (height x width); edgeclip's image graphs take squares"),
    ("mean-two", put("image_mean", [0.5, 0.5]),
     "image_mean must be a list of 3 finite numbers (R, G, B), or one number, found a list of 2"),
    ("mean-string", put("image_mean", "0.5"),
     'image_mean must be a list of 3 finite numbers (R, G, B), or one number, found "0.5" (a string)'),
    ("std-zero", put("image_std", [0.2, 0, 0.2]), "image_std[1] must be a finite number > 0, found 0"),
    ("std-nan", put("image_std", [0.2, float("nan"), 0.2]), "image_std[1] must be a finite number > 0, found NaN"),
    ("center-crop", put("do_center_crop", "yes"), 'do_center_crop must be true or false, found "yes" (a string)'),
    ("resample-string", put("resample", "bicubic"),
     'resample must be a whole number >= 0, found "bicubic" (a string)'),
    ("resample-bilinear", put("resample", 2), "resample is 2, not bicubic (3), the only one edgeclip runs"),
    ("no-rescale", put("do_rescale", False),
     "do_rescale is false; edgeclip always resizes and scales pixels to [0, 1], as CLIP does"),
    ("rescale-factor", put("rescale_factor", 1.0),
     "rescale_factor is 1.0; edgeclip scales pixels to [0, 1] (1/255), as CLIP does"),
    ("normalize-string", put("do_normalize", 1), "do_normalize must be true or false, found 1"),
]  # fmt: skip

INDEX = "model.safetensors.index.json"
INDEX_CASES: list[tuple[str, Edit, str]] = [
    ("map-list", put("weight_map", []), "weight_map must be an object ({...}), found a list of 0"),
    ("map-missing", put("weight_map", DELETE), "weight_map is missing"),
    ("map-empty", put("weight_map", {}),
     "weight_map must be an object of tensor name -> shard file, naming at least one, found an empty object"),
    ("shard-number", put("weight_map.logit_scale", 5), "weight_map.logit_scale must be a non-empty string, found 5"),
    ("shard-outside", put("weight_map.logit_scale", "../model.safetensors"),
     'weight_map.logit_scale must be the name of a shard file in the same directory, found "../model.safetensors" '
     "(a string)"),
]  # fmt: skip


def test_an_activation_edgeclip_does_not_run_is_named(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    path = _damaged(hf_dirs["whole"], tmp_path, "config.json", put("text_config.hidden_act", "gelu_new"))
    assert _refused(path) == (
        f"{path / 'config.json'}: text_config.hidden_act is 'gelu_new': edgeclip's CLIP runs quick_gelu and gelu only "
        "(the activations of OpenAI's and open_clip's CLIP models); this model cannot be converted"
    )


@pytest.mark.parametrize(("edit", "message"), [pytest.param(e, m, id=i) for i, e, m in CONFIG_CASES])
def test_config_json_fields(hf_dirs: dict[str, Path], tmp_path: Path, edit: Edit, message: str) -> None:
    path = _damaged(hf_dirs["whole"], tmp_path, "config.json", edit)
    assert _refused(path) == f"{path / 'config.json'}: {message}; {HINT}"


@pytest.mark.parametrize(("edit", "message"), [pytest.param(e, m, id=i) for i, e, m in PREPROCESSOR_CASES])
def test_preprocessor_config_fields(hf_dirs: dict[str, Path], tmp_path: Path, edit: Edit, message: str) -> None:
    path = _damaged(hf_dirs["whole"], tmp_path, "preprocessor_config.json", edit)
    assert _refused(path) == f"{path / 'preprocessor_config.json'}: {message}; {HINT}"


@pytest.mark.parametrize(("edit", "message"), [pytest.param(e, m, id=i) for i, e, m in INDEX_CASES])
def test_weight_index_fields(hf_dirs: dict[str, Path], tmp_path: Path, edit: Edit, message: str) -> None:
    path = _damaged(hf_dirs["sharded"], tmp_path, INDEX, edit)
    assert _refused(path) == f"{path / INDEX}: {message}; {HINT}"


def test_the_valid_directories_load(hf_dirs: dict[str, Path]) -> None:
    whole, sharded = load_checkpoint(hf_dirs["whole"]), load_checkpoint(hf_dirs["sharded"])
    assert whole.model.config == sharded.model.config and whole.model.config.vision.heads == 4
    assert whole.contract.image == ImageSpec(size=32, crop="floor")  # transformers floors the crop offset
    assert len(CONFIG_CASES) + len(PREPROCESSOR_CASES) + len(INDEX_CASES) >= 30


def test_preprocessing_that_transformers_allows_is_followed(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    path = _damaged(hf_dirs["whole"], tmp_path, "preprocessor_config.json", put("do_normalize", False))
    assert load_checkpoint(path).contract.image == ImageSpec(
        size=32, crop="floor", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
    )
    one = put("image_mean", 0.5)
    path = _damaged(hf_dirs["whole"], tmp_path / "one", "preprocessor_config.json", one)
    assert load_checkpoint(path).contract.image.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("text", ["[" * 10_000 + "]" * 10_000, "[" * 40 + "]" * 40, '{"a": ' + "1" * 5000 + "}"])
def test_a_json_file_nested_too_deep_or_unreadable_is_refused(hf_dirs: dict[str, Path], tmp_path: Path, text: str):
    path = tmp_path / "hf"
    shutil.copytree(hf_dirs["whole"], path)
    (path / "config.json").write_text(text)
    message = _refused(path)
    assert message.startswith(f"cannot read {path / 'config.json'}: the file is truncated or corrupt (")
    if text.startswith("[["):
        assert "nested" in message


def test_export_cli_on_a_damaged_config_is_one_error_line(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    path = _damaged(hf_dirs["whole"], tmp_path, "config.json", put("text_config.layer_norm_eps", "1e-6"))
    out = tmp_path / "bundle"
    run = subprocess.run(
        [sys.executable, "-c", "from edgeclip.cli import main; main()", "export", str(path), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1 and not out.exists()
    message = 'text_config.layer_norm_eps must be a finite number > 0 and <= 1, found "1e-6" (a string)'
    assert "Traceback" not in run.stderr
    assert run.stderr.splitlines()[-1] == f"error: {path / 'config.json'}: {message}; {HINT}"  # after "loading ..."


# ---- edgeclip's own config (checkpoint metadata, training recipes) ----


def _config(**changes: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(config_to_dict(TINY)))
    for dotted, value in changes.items():
        put(dotted.replace("__", "."), value)(data)
    return data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"embed_dim": "16"}, 'config.embed_dim must be a whole number >= 1, found "16" (a string)'),
        ({"vision__width": 64.0}, "config.vision.width must be a whole number >= 1, found 64.0"),
        ({"vision__head_width": 48}, "config.vision.head_width is 48, which does not divide the width 64"),
        ({"vision__patch_size": 5}, "config.vision.patch_size is 5, which does not divide the image size 32"),
        (
            {"vision__layers": [1, 1, 1]},
            "config.vision.layers must be a whole number (ViT blocks) or a list of 4 "
            "(ResNet stages), found a list of 3",
        ),
        ({"vision__act": "relu"}, 'config.vision.act must be one of "quick_gelu", "gelu", found "relu" (a string)'),
        ({"text__heads": 3}, "config.text.heads is 3, which does not divide the width 32"),
        (
            {"text__eot_id": 50},
            "config.text.eot_id must be a whole number from 0 to 49, an id of the vocabulary (vocab_size 50), found 50",
        ),
        ({"text__ln_eps": float("inf")}, "config.text.ln_eps must be a finite number > 0 and <= 1, found Infinity"),
        ({"text__pooling": "last"}, 'config.text.pooling must be one of "eot", "argmax", found "last" (a string)'),
        (
            {"text__dropout": 0.1},
            "config.text has unknown fields 'dropout' (known: context_length, vocab_size, "
            "width, heads, layers, mlp_ratio, act, ln_eps, eot_id, pooling)",
        ),
        ({"vision": "vit"}, 'config.vision must be an object ({...}), found "vit" (a string)'),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, dict) else None,
)
def test_config_from_dict_names_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError) as caught:
        config_from_dict(_config(**changes))
    assert str(caught.value) == f"{message}; expected the output of config_to_dict"


def test_checkpoint_metadata_names_the_field(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = tmp_path / "m.safetensors"
    save_checkpoint(CLIP(TINY), path)
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    metadata = dict(header["__metadata__"], edgeclip_config=json.dumps(_config(text__context_length=1)))
    save_file(load_file(str(path)), str(path), metadata=metadata)
    assert _refused(path) == (
        f"the edgeclip metadata of {path} is malformed: config.text.context_length must be a whole number >= 2, "
        f"found 1; expected the output of config_to_dict; save it again"
    )


@pytest.mark.parametrize(
    ("key", "shape", "message"),
    [
        ("vision_model.embeddings.patch_embedding.weight", (64,), "the weight shapes do not fit a CLIP architecture"),
        ("text_model.final_layer_norm.weight", (), "the weight shapes do not fit a CLIP architecture"),
        ("text_projection.weight", (8,), "the weight shapes do not fit a CLIP architecture"),
        ("text_model.encoder.layers.0.self_attn.k_proj.weight", (48, 16), "q, k and v weights must have one shape"),
        ("text_model.encoder.layers.0.self_attn.k_proj.bias", (48, 2), "q, k and v biases must have one shape"),
    ],
)
def test_a_tensor_of_the_wrong_rank_is_one_clear_error(hf_dirs: dict[str, Path], tmp_path: Path, key, shape, message):
    """These ended in IndexError / ValueError / RuntimeError tracebacks from deep inside the shape reading."""
    import torch
    from safetensors.torch import load_file, save_file

    path = tmp_path / "hf"
    shutil.copytree(hf_dirs["whole"], path)
    weights = load_file(str(path / "model.safetensors"))
    assert key in weights
    weights[key] = torch.zeros(shape)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    assert message in _refused(path)
