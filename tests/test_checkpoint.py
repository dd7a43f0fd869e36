"""load_checkpoint / save_checkpoint: edgeclip's own format, and every bad input a user can give."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeclip.checkpoint import load_checkpoint, save_checkpoint
from edgeclip.contract import HeadSpec, ImageSpec, ModelContract, TextSpec
from edgeclip.errors import CheckpointError, InputError
from edgeclip.models.clip import CLIP
from edgeclip.models.config import CLIPConfig, TextConfig, VisionConfig
from tests.reference import one_thread, openai_clip, perturb, token_ids

TINY = CLIPConfig(
    embed_dim=16,
    vision=VisionConfig(image_size=32, layers=2, width=64, patch_size=16, head_width=32, act="gelu"),
    text=TextConfig(context_length=8, vocab_size=50, width=32, heads=2, layers=1, eot_id=49, act="gelu"),
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def openai_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("openai") / "tiny.pt"
    torch.save(openai_clip("vit").state_dict(), path)
    return path


# ---- edgeclip's own format ----


@pytest.mark.parametrize("vision", ["vit", "resnet"])
def test_save_load_round_trip_is_exact(tmp_path: Path, vision: str) -> None:
    resnet = VisionConfig(image_size=64, layers=(1, 1, 1, 1), width=8)
    config = TINY if vision == "vit" else CLIPConfig(embed_dim=16, vision=resnet, text=TINY.text)
    model = perturb(CLIP(config), seed=4)
    contract = ModelContract(
        name="tiny",
        image=ImageSpec(size=config.vision.image_size, mean=(0.5, 0.5, 0.5)),
        text=TextSpec(context_length=8, vocab_size=50, sot_id=48, eot_id=49),
        head=HeadSpec(embed_dim=16, logit_scale=42.0),
    )
    save_checkpoint(model, tmp_path / "tiny.safetensors", contract=contract, extra={"epoch": 7, "note": "ok"})
    ck = load_checkpoint(tmp_path / "tiny.safetensors")
    assert ck.source_format == "edgeclip"
    assert ck.model.config == config
    assert ck.contract == contract
    assert ck.extra == {"epoch": 7, "note": "ok"}
    assert ck.sha256 == hashlib.sha256((tmp_path / "tiny.safetensors").read_bytes()).hexdigest()
    assert not ck.model.training
    saved, loaded = model.state_dict(), ck.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    model.eval()
    S = config.vision.image_size
    pixels, ids = torch.randn(2, 3, S, S), token_ids([3, 8], 8, 50)
    with torch.no_grad():
        assert torch.equal(ck.model.encode_image(pixels), model.encode_image(pixels))
        assert torch.equal(ck.model.encode_text(ids), model.encode_text(ids))


def test_save_without_contract_derives_one(tmp_path: Path) -> None:
    save_checkpoint(CLIP(TINY), tmp_path / "m.safetensors")
    ck = load_checkpoint(tmp_path / "m.safetensors")
    assert ck.contract.name == "m"
    assert ck.contract.image.size == 32
    assert ck.contract.text.context_length == 8 and ck.contract.text.eot_id == 49
    assert ck.contract.head.embed_dim == 16
    assert ck.contract.head.logit_scale == pytest.approx(1 / 0.07)  # OpenAI's initial temperature
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not private: safetensors' 0600


def test_save_replaces_atomically_and_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(CLIP(TINY), path, extra={"v": 1})
    before = path.read_bytes()
    with pytest.raises(InputError, match=re.escape("extra=...) must be JSON-serialisable")):
        save_checkpoint(CLIP(TINY), path, extra={"v": object()})
    assert path.read_bytes() == before
    save_checkpoint(CLIP(TINY), path, extra={"v": 2})
    assert load_checkpoint(path).extra == {"v": 2}
    assert os.listdir(tmp_path) == ["m.safetensors"]  # no temporary file left behind


def test_save_refuses_a_contract_that_does_not_fit(tmp_path: Path) -> None:
    contract = ModelContract(name="m", image=ImageSpec(size=224))
    with pytest.raises(InputError, match=r"image\.size is 224 in the contract but 32 in the model; .*embed_dim is 512"):
        save_checkpoint(CLIP(TINY), tmp_path / "m.safetensors", contract=contract)
    assert not (tmp_path / "m.safetensors").exists()


def test_save_refuses_other_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=re.escape("name the file *.safetensors, not 'm.pt'")):
        save_checkpoint(CLIP(TINY), tmp_path / "m.pt")


# ---- options ----


def test_act_overrides_what_weights_cannot_tell(openai_file: Path) -> None:
    assert load_checkpoint(openai_file).model.config.vision.act == "quick_gelu"
    cfg = load_checkpoint(openai_file, act="gelu").model.config
    assert cfg.vision.act == "gelu" and cfg.text.act == "gelu"


def test_unknown_act(openai_file: Path) -> None:
    with pytest.raises(InputError, match="unknown activation act='relu'; expected one of 'quick_gelu', 'gelu'"):
        load_checkpoint(openai_file, act="relu")


def test_unknown_preset(openai_file: Path) -> None:
    with pytest.raises(InputError, match="unknown architecture preset 'ViT-X'; known presets: RN101, RN50"):
        load_checkpoint(openai_file, preset="ViT-X")


def test_preset_that_does_not_fit(openai_file: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(openai_file, preset="ViT-B-32")
    message = str(info.value)
    assert "preset 'ViT-B-32' does not fit the weights in" in message
    assert "vision.width is 768 in the preset but 128 in the weights" in message
    assert "drop preset= to read the architecture from the weights" in message


@pytest.mark.slow
def test_preset_that_fits(tmp_path: Path) -> None:
    from tests.reference import openai_model_module

    ref = openai_model_module().CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)
    torch.save(ref.state_dict(), tmp_path / "b32.pt")
    ck = load_checkpoint(tmp_path / "b32.pt", preset="ViT-B-32")
    assert ck.model.config.vision.act == "gelu"  # the preset supplies what the weights cannot tell
    assert ck.contract.name == "ViT-B-32"


# ---- bad files ----


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*nope\.pt: the path does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_unknown_layout(tmp_path: Path) -> None:
    torch.save({"encoder.weight": torch.zeros(2), "decoder.bias": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "other.pt")
    message = str(info.value)
    assert "unknown checkpoint layout in" in message
    assert "expected OpenAI/open_clip keys (token_embedding.weight, positional_embedding" in message
    assert "Hugging Face CLIPModel keys (text_model.embeddings.token_embedding.weight" in message
    assert "found 2 keys: decoder.bias, encoder.weight" in message


@pytest.mark.parametrize("name", ["cut.pt", "cut.safetensors"])
def test_truncated_file(tmp_path: Path, openai_file: Path, name: str) -> None:
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_checkpoint(CLIP(TINY), tmp_path / "full.safetensors")
        data = (tmp_path / "full.safetensors").read_bytes()
    else:
        data = openai_file.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"cannot read .*{name}: the file is truncated or corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 10], ids=["empty", "garbage"])
def test_corrupt_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.bin").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"cannot read .*bad\.bin: the file is truncated or corrupt"):
        load_checkpoint(tmp_path / "bad.bin")


def test_unknown_file_kind(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model at all, just some text")
    with pytest.raises(CheckpointError, match=r"notes\.txt is not a checkpoint edgeclip can read"):
        load_checkpoint(tmp_path / "notes.txt")


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole_model.pt")
    with pytest.raises(CheckpointError, match="holds Python objects besides tensors, and edgeclip does not run code"):
        load_checkpoint(tmp_path / "whole_model.pt")


def test_torchscript_archive_runs_no_code(tmp_path: Path) -> None:
    """A TorchScript-like archive whose data.pkl names os.system: refused, never called."""
    path = tmp_path / "evil.pt"
    marker = tmp_path / "ran"
    payload = pickle.dumps({"x": os.system}, protocol=2)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", payload)
        zf.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        zf.writestr("evil/code/__torch__.py", f"touch {marker}")
    with pytest.raises(CheckpointError, match=r"refusing to load the global (posix|nt)\.system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    sd = openai_clip("vit").state_dict()
    sd["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(128)  # an open_clip variant we do not build
    torch.save(sd, tmp_path / "ls.pt")
    with pytest.raises(CheckpointError, match=r"missing none; unexpected visual\.transformer\.resblocks\.0\.ls_1"):
        load_checkpoint(tmp_path / "ls.pt")


# ---- Hugging Face directories ----


def _hf_dir(tmp_path: Path) -> Path:
    from tests.reference import hf_clip

    hf_clip().save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def test_hf_dir_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)
    message = str(info.value)
    assert "is not a Hugging Face CLIPModel directory: it lacks a weights file (model.safetensors" in message
    assert "found: config.json" in message


def test_hf_dir_without_config(tmp_path: Path) -> None:
    path = _hf_dir(tmp_path)
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=re.escape("it lacks config.json; found: model.safetensors")):
        load_checkpoint(path)


def test_hf_dir_of_another_model(tmp_path: Path) -> None:
    path = _hf_dir(tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "siglip"}))
    with pytest.raises(CheckpointError, match="is a 'siglip' model; edgeclip loads CLIP models"):
        load_checkpoint(path)


def test_hf_preprocessing_and_tokenizer(tmp_path: Path) -> None:
    from transformers import CLIPImageProcessor

    path = _hf_dir(tmp_path)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=mean,
                       image_std=std).save_pretrained(path)  # fmt: skip
    assert load_checkpoint(path).tokenizer_dir is None
    (path / "vocab.json").write_text("{}")
    (path / "merges.txt").write_text("#version: 0.2\n")
    ck = load_checkpoint(path)
    assert ck.tokenizer_dir == path
    assert ck.contract.image == ImageSpec(size=32, resize="shortest", crop="floor", mean=tuple(mean), std=tuple(std))
    assert ck.contract.name == "hf"
    assert ck.sha256 == hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_hf_preprocessing_matches_clip_image_processor_pixel_for_pixel(tmp_path: Path) -> None:
    """transformers floors the center crop's offset where torchvision rounds it: a pixel apart when the resized
    long side exceeds the crop by 4k + 3 (35 x 32 at 32), which moved embeddings to cosine 0.95-0.99."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    from edgeclip.preprocess import Preprocessor
    from tests.images import make_photo

    path = _hf_dir(tmp_path)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(path)
    spec = load_checkpoint(path).contract.image
    sizes = [(35, 32), (32, 39), (64, 86), (640, 480), (70, 32)]  # margins 3, 7, 11 (4k + 3), 10, 38
    images = [Image.fromarray(make_photo(w, h, seed=i)) for i, (w, h) in enumerate(sizes)]
    want = processor(images=images, return_tensors="np")["pixel_values"]
    got = Preprocessor(spec)(images)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_hf_preprocessing_that_edgeclip_cannot_follow(tmp_path: Path) -> None:
    from transformers import CLIPImageProcessor

    path = _hf_dir(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    with pytest.raises(CheckpointError, match="resizes the shortest side to 40 then crops 32"):
        load_checkpoint(path)
    CLIPImageProcessor(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    with pytest.raises(CheckpointError, match="resizes to 40 x 40 then crops 32"):
        load_checkpoint(path)
    CLIPImageProcessor(size={"shortest_edge": 32, "longest_edge": 40}, crop_size=32).save_pretrained(path)
    with pytest.raises(CheckpointError, match="longest_edge caps the long side"):
        load_checkpoint(path)


def test_scripted_archive_reads_every_parameter_and_buffer(tmp_path: Path) -> None:
    """torch.jit.script archives keep more attributes than traced ones (ints, None, the training flag)."""
    from edgeclip.checkpoint import _read_torchscript
    from tests.reference import openai_model_module

    block = perturb(openai_model_module().Bottleneck(8, 4, stride=2))  # OpenAI's whole CLIP does not script
    torch.jit.save(torch.jit.script(block), str(tmp_path / "block.pt"))
    expected, found = block.state_dict(), _read_torchscript(tmp_path / "block.pt")
    assert found.keys() == expected.keys()
    assert all(torch.equal(found[k], expected[k]) for k in expected)
