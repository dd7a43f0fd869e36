"""edgeclip's CLIP against transformers' CLIPModel and OpenAI's clip/model.py, loaded through load_checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgeclip.checkpoint import load_checkpoint
from edgeclip.errors import InputError
from tests.reference import hf_clip, one_thread, openai_clip, token_ids

TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def assert_informative(features: torch.Tensor) -> None:
    """Guard against a parity test passing on constant outputs."""
    assert features.abs().max() > 1e-3
    if features.shape[0] > 1:
        assert (features[0] - features[1]).abs().max() > 1e-4


def hf_features(output: object) -> torch.Tensor:
    # transformers 5.x returns a BaseModelOutputWithPooling whose pooler_output holds the projected features;
    # 4.x returned the tensor itself.
    return output.pooler_output if hasattr(output, "pooler_output") else output  # type: ignore[return-value]


# ---- Hugging Face CLIPModel ----

HF_CASES = [
    ("quick_gelu", 49407, True),
    ("gelu", 49407, False),
    ("quick_gelu", 2, False),  # legacy configs: pooled at the largest id
    ("gelu", 2, True),
]


@pytest.fixture(scope="module", params=HF_CASES, ids=lambda c: f"{c[0]}-eos{c[1]}-{'st' if c[2] else 'bin'}")
def hf_pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    act, eos, safetensors = request.param
    ref = hf_clip(act=act, eos_token_id=eos, seed=len(act) + eos)
    path = tmp_path_factory.mktemp("hf")
    if safetensors:
        ref.save_pretrained(path)
    else:  # transformers 5 writes safetensors only; older versions wrote this torch.save file beside config.json
        ref.config.save_pretrained(path)
        torch.save(ref.state_dict(), path / "pytorch_model.bin")
    return ref, load_checkpoint(path)


@pytest.mark.parametrize("batch", [1, 3])
def test_hf_image_features(hf_pair, batch: int) -> None:
    ref, ck = hf_pair
    pixels = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = hf_features(ref.get_image_features(pixel_values=pixels))
        got = ck.model.encode_image(pixels)
    assert_informative(expected)
    assert max_diff(got, expected) <= TOL


@pytest.mark.parametrize("lengths", [[7], [3, 16, 9, 5], [40, 2, 16]], ids=["one", "mixed", "truncated"])
def test_hf_text_features(hf_pair, lengths: list[int]) -> None:
    ref, ck = hf_pair
    # Padding 0 after the end token; a prompt longer than the context is cut there (no end token left).
    ids = token_ids(lengths, context=16, vocab=49408, seed=len(lengths))
    with torch.no_grad():
        expected = hf_features(ref.get_text_features(input_ids=ids))
        got = ck.model.encode_text(ids)
    assert_informative(expected)
    assert max_diff(got, expected) <= TOL


def test_hf_config_read(hf_pair) -> None:
    ref, ck = hf_pair
    cfg, hf = ck.model.config, ref.config
    assert ck.source_format == "hf"
    assert cfg.vision.act == hf.vision_config.hidden_act and cfg.text.act == hf.text_config.hidden_act
    assert (
        cfg.vision.heads == hf.vision_config.num_attention_heads
        and cfg.text.heads == hf.text_config.num_attention_heads
    )
    assert cfg.text.ln_eps == hf.text_config.layer_norm_eps
    assert cfg.text.pooling == ("argmax" if hf.text_config.eos_token_id == 2 else "eot")
    assert ck.contract.head.embed_dim == hf.projection_dim
    assert ck.contract.head.logit_scale == pytest.approx(ref.logit_scale.exp().item())
    assert ck.contract.text.context_length == hf.text_config.max_position_embeddings


def test_hf_legacy_config_with_added_tokens_pools_and_tokenizes_as_transformers(tmp_path: Path) -> None:
    """eos_token_id 2 (configs before transformers' per-token end id) with tokens added after <|endoftext|>."""
    from edgeclip.tokenizer import Tokenizer

    ref = hf_clip(eos_token_id=2, seed=9, text={"vocab_size": 49410})
    ref.save_pretrained(tmp_path)
    ck = load_checkpoint(tmp_path)
    text = ck.contract.text
    assert (text.pooling, text.sot_id, text.eot_id, text.vocab_size) == ("argmax", 49406, 49407, 49410)
    ids = torch.from_numpy(Tokenizer(text)(["a photo of a dog", "x"], 16)).long()  # the CLIP BPE fits this model
    with torch.no_grad():
        expected = hf_features(ref.get_text_features(input_ids=ids))
        got = ck.model.encode_text(ids)
    assert_informative(expected)
    assert max_diff(got, expected) <= TOL


def test_hf_sharded(tmp_path: Path) -> None:
    ref = hf_clip(seed=5)
    ref.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ck = load_checkpoint(tmp_path)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(ck.model.encode_image(pixels), hf_features(ref.get_image_features(pixel_values=pixels))) <= TOL


def test_hf_config_dicts_of_older_transformers_are_what_transformers_runs(tmp_path: Path) -> None:
    # Configs saved by transformers 4.1x (openai/clip-vit-large-patch14's among them) carry text_config_dict and
    # vision_config_dict; transformers builds each tower from the `_dict`, whatever `text_config` says.
    import json

    from transformers import CLIPModel

    hf_clip(seed=6).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config_dict"] = {**config["text_config"], "hidden_act": "gelu", "num_attention_heads": 6}
    config["vision_config_dict"] = {**config["vision_config"], "layer_norm_eps": 0.1, "num_attention_heads": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    ref = CLIPModel.from_pretrained(tmp_path).eval()
    assert ref.config.text_config.hidden_act == "gelu" and ref.config.vision_config.layer_norm_eps == 0.1
    ck = load_checkpoint(tmp_path)
    text, vision = ck.model.config.text, ck.model.config.vision
    assert (text.act, text.heads, vision.ln_eps, vision.heads) == ("gelu", 6, 0.1, 2)
    pixels = torch.randn(2, 3, 32, 32)
    ids = token_ids([5, 16, 9], context=16, vocab=49408)
    with torch.no_grad():
        assert max_diff(ck.model.encode_image(pixels), hf_features(ref.get_image_features(pixel_values=pixels))) <= TOL
        assert max_diff(ck.model.encode_text(ids), hf_features(ref.get_text_features(input_ids=ids))) <= TOL


def test_hf_image_size_that_is_not_a_multiple_of_the_patch(tmp_path: Path) -> None:
    # 36 px in 8-px patches: transformers takes 36-px images and its patch embedding leaves the last 4 pixels of
    # each row and column out; the contract says 36 px, so the preprocessing is transformers' too.
    ref = hf_clip(seed=7, vision={"image_size": 36})
    ref.save_pretrained(tmp_path)
    ck = load_checkpoint(tmp_path)
    assert ck.model.config.vision.image_size == ck.contract.image.size == 36
    pixels = torch.randn(2, 3, 36, 36)
    with torch.no_grad():
        assert max_diff(ck.model.encode_image(pixels), hf_features(ref.get_image_features(pixel_values=pixels))) <= TOL


def test_hf_weights_without_config_take_64_wide_heads_and_say_so(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    vision = {"hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 256}  # 64-wide heads
    ref = hf_clip(
        seed=8,
        vision=vision,
        text={"hidden_size": 64, "num_attention_heads": 1, "intermediate_size": 96, "layer_norm_eps": 1e-5},
    )
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "model.safetensors")
    with pytest.warns(UserWarning, match=r"no config\.json: the attention heads are taken to be 64 wide \(vision 2 "
                      r"heads, text 1 heads\)"):  # fmt: skip
        ck = load_checkpoint(tmp_path / "model.safetensors")
    pixels = torch.randn(2, 3, 32, 32)
    ids = token_ids([5, 16], context=16, vocab=49408)
    with torch.no_grad():
        assert max_diff(ck.model.encode_image(pixels), hf_features(ref.get_image_features(pixel_values=pixels))) <= TOL
        assert max_diff(ck.model.encode_text(ids), hf_features(ref.get_text_features(input_ids=ids))) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("patch", [32, 16])
def test_hf_vit_b_shapes(tmp_path: Path, patch: int) -> None:
    vision = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
              "image_size": 224, "patch_size": patch}  # fmt: skip
    text = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8,
            "max_position_embeddings": 77, "layer_norm_eps": 1e-5}  # fmt: skip
    ref = hf_clip(vision=vision, text=text, projection_dim=512)
    ref.save_pretrained(tmp_path)
    ck = load_checkpoint(tmp_path)
    pixels = torch.randn(2, 3, 224, 224)
    ids = token_ids([10, 77, 30], context=77, vocab=49408)
    with torch.no_grad():
        assert max_diff(ck.model.encode_image(pixels), hf_features(ref.get_image_features(pixel_values=pixels))) <= TOL
        assert max_diff(ck.model.encode_text(ids), hf_features(ref.get_text_features(input_ids=ids))) <= TOL


# ---- OpenAI clip/model.py, in OpenAI's and open_clip's file formats ----


def _save_state_dict(ref: torch.nn.Module, path: Path, variant: str) -> None:
    sd = ref.state_dict()
    if variant == "openai-extras":  # OpenAI's own files keep these ints beside the weights
        sd = {**sd, "input_resolution": torch.tensor(224), "context_length": torch.tensor(77),
              "vocab_size": torch.tensor(49408)}  # fmt: skip
    if variant == "open_clip-wrapped":  # open_clip training checkpoints: DDP prefixes under 'state_dict'
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    elif variant == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif variant == "torchscript":
        S = ref.visual.input_resolution
        traced = torch.jit.trace(ref, (torch.randn(1, 3, S, S), token_ids([5], 16, 100)), check_trace=False)
        torch.jit.save(traced, str(path))
    else:
        torch.save(sd, path)


OPENAI_VARIANTS = {
    "openai-extras": ("model.pt", "openai"),
    "open_clip-wrapped": ("epoch_3.pth", "open_clip"),
    "safetensors": ("open_clip_model.safetensors", "open_clip"),
    "torchscript": ("ViT-T.pt", "openai-torchscript"),
}


@pytest.fixture(scope="module", params=["vit", "resnet"])
def openai_ref(request: pytest.FixtureRequest):
    return openai_clip(request.param, seed=1 if request.param == "vit" else 2)


@pytest.mark.parametrize("variant", list(OPENAI_VARIANTS))
def test_openai_formats(openai_ref, variant: str, tmp_path: Path) -> None:
    name, source = OPENAI_VARIANTS[variant]
    if variant == "torchscript" and openai_ref.visual.__class__.__name__ == "ModifiedResNet":
        name = "RN-T.pt"
    path = tmp_path / name
    _save_state_dict(openai_ref, path, variant)
    ck = load_checkpoint(path)
    assert ck.source_format == source
    assert ck.model.config.vision.is_resnet == (openai_ref.visual.__class__.__name__ == "ModifiedResNet")
    S = openai_ref.visual.input_resolution
    pixels = torch.randn(3, 3, S, S, generator=torch.Generator().manual_seed(0))
    ids = token_ids([4, 16, 9], context=16, vocab=100)
    with torch.no_grad():
        expected_image, expected_text = openai_ref.encode_image(pixels), openai_ref.encode_text(ids)
        assert_informative(expected_image)
        assert_informative(expected_text)
        assert max_diff(ck.model.encode_image(pixels), expected_image) <= TOL
        assert max_diff(ck.model.encode_text(ids), expected_text) <= TOL
        for got, expected in zip(ck.model(pixels, ids), openai_ref(pixels, ids), strict=True):
            assert max_diff(got, expected) <= 1e-4  # logits: cosines times a scale of ~13


def test_openai_fp16_torchscript(tmp_path: Path) -> None:
    """OpenAI published fp16 TorchScript archives: HalfStorage tensors, read back as float32."""
    ref = openai_clip("vit", seed=3)
    traced = torch.jit.trace(ref, (torch.randn(1, 3, 32, 32), token_ids([5], 16, 100)), check_trace=False)
    torch.jit.save(traced.half(), str(tmp_path / "half.pt"))
    ck = load_checkpoint(tmp_path / "half.pt")
    assert all(p.dtype == torch.float32 for p in ck.model.parameters())
    ref.half().float()  # the reference with the same fp16-rounded weights
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(ck.model.encode_image(pixels), ref.encode_image(pixels)) <= TOL


def test_openai_config_from_weights(openai_ref, tmp_path: Path) -> None:
    torch.save(openai_ref.state_dict(), tmp_path / "m.pt")
    cfg = load_checkpoint(tmp_path / "m.pt").model.config
    assert cfg.vision.act == "quick_gelu" and cfg.text.act == "quick_gelu"  # what an OpenAI-layout file means
    assert cfg.vision.image_size == openai_ref.visual.input_resolution
    assert cfg.text.context_length == openai_ref.context_length
    assert cfg.text.vocab_size == openai_ref.vocab_size
    assert cfg.text.layers == openai_ref.transformer.layers


# ---- the model API ----


def test_shorter_ids_and_pooling_rules(openai_ref, tmp_path: Path) -> None:
    torch.save(openai_ref.state_dict(), tmp_path / "m.pt")
    model = load_checkpoint(tmp_path / "m.pt").model
    ids = token_ids([4, 9, 6], context=16, vocab=100)
    with torch.no_grad():
        full = model.encode_text(ids)
        # Causal attention: dropping the padding after the last end token changes nothing.
        assert max_diff(model.encode_text(ids[:, :9]), full) <= TOL
    # With the CLIP BPE's layout (end token = largest id) the two pooling rules pick the same positions.
    model.text_config = type(model.text_config)(**{**model.text_config.__dict__, "pooling": "argmax"})
    assert torch.equal(model.pool_index(ids), (ids == 99).int().argmax(-1))


def test_bad_inputs_say_what_to_do(openai_ref, tmp_path: Path) -> None:
    torch.save(openai_ref.state_dict(), tmp_path / "m.pt")
    model = load_checkpoint(tmp_path / "m.pt").model
    S = openai_ref.visual.input_resolution
    with pytest.raises(InputError, match=r"L <= 16, got \(1, 17\); tokenize with context length 16"):
        model.encode_text(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(InputError, match=rf"expected pixels of shape \(B, 3, {S}, {S}\), got \(1, 3, 40, 40\)"):
        model.encode_image(torch.zeros(1, 3, 40, 40))
