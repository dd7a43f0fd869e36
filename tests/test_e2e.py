"""End to end through the installed `edgeclip` command: the README's commands run as written, and what
`edgeclip export` + `edgeclip embed` give equals the reference models (transformers' CLIPModel, OpenAI's
`clip/model.py`) on images through PIL's preprocessing and texts through the reference tokenizer."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from edgeclip.contract import OPENAI_MEAN, OPENAI_STD, ImageSpec
from tests.images import encode, make_photo, pil_reference
from tests.reference import hf_clip, load_by_path, one_thread, openai_clip
from tests.test_export import _write_clip_tokenizer_files

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent
TEXTS = ["a robot arm", "a forklift"]


def readme_block(name: str) -> str:
    """The bash block that follows `<!-- readme-test: NAME -->` in the README."""
    match = re.search(rf"<!-- readme-test: {name} -->\n```bash\n(.*?)```", README.read_text(), re.S)
    assert match, f"README has no block marked readme-test: {name}"
    return match.group(1)


def run_block(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", EDGECLIP_CACHE=str(cwd / "cache"))
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """What a user has before the README: an OpenAI-layout checkpoint, an HF directory, a folder of photos."""
    root = tmp_path_factory.mktemp("user")
    with one_thread():
        openai_model = openai_clip("vit", seed=3, vocab_size=49408)
        torch.save(openai_model.state_dict(), root / "my-clip.pt")
        hf_model = hf_clip("gelu", seed=4)
        hf_model.save_pretrained(root / "my-hf-clip")
    _write_clip_tokenizer_files(root / "my-hf-clip")
    (root / "photos").mkdir()
    for i, (w, h) in enumerate([(120, 90), (64, 200), (333, 250)]):
        (root / "photos" / f"p{i}.jpg").write_bytes(encode(make_photo(w, h, seed=i)))
    return root, {"openai": openai_model, "hf": hf_model}


@pytest.fixture(scope="module")
def readme_run(workdir: tuple[Path, dict[str, Any]]) -> Path:
    root, _ = workdir
    for name in ("export", "runtime"):
        proc = run_block(readme_block(name), root)
        assert proc.returncode == 0, f"README block {name!r} failed:\n{proc.stdout}\n{proc.stderr}"
        (root / f"{name}.out").write_text(proc.stdout)
    return root


def _pil_pixels(paths: list[Path], size: int, mean: tuple, std: tuple) -> torch.Tensor:
    spec = ImageSpec(size=size, mean=mean, std=std)
    return torch.from_numpy(np.stack([pil_reference(Image.open(p), spec) for p in paths]))


def _reference_ids(texts: list[str], context: int) -> torch.Tensor:
    return load_by_path("open_clip", "tokenizer.py").tokenize(texts, context_length=context)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _assert_matches(got_img: np.ndarray, got_txt: np.ndarray, want_img: torch.Tensor, want_txt: torch.Tensor) -> None:
    """Images within the preprocessing tolerance (PIL path on the reference side); texts within fp32 noise."""
    want_img_n = torch.nn.functional.normalize(want_img, dim=-1).numpy()
    want_txt_n = torch.nn.functional.normalize(want_txt, dim=-1).numpy()
    assert _cosines(got_img, want_img_n).min() >= 0.9995
    assert np.abs(got_txt - want_txt_n).max() < 1e-5


def test_readme_commands_run_as_written(readme_run: Path) -> None:
    root = readme_run
    assert np.load(root / "image_vectors.npy").shape[0] == 3
    listed = [json.loads(line) for line in (root / "listed.jsonl").read_text().splitlines()]
    assert sorted(Path(r["path"]).name for r in listed) == sorted(p.name for p in (root / "photos").glob("*.jpg"))
    rows = [json.loads(line) for line in (root / "text_vectors.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == TEXTS
    results = [json.loads(line) for line in (root / "runtime.out").read_text().splitlines() if line.startswith("{")]
    assert [Path(r["image"]).name for r in results] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert all(len(r["labels"]) == 2 and r["scores"][0] >= r["scores"][1] for r in results)
    assert json.loads((root / "export.out").read_text().splitlines()[-1])["path"].endswith("my-hf-clip")


def test_openai_checkpoint_exported_and_embedded_equals_openais_model(
    readme_run: Path, workdir: tuple[Path, dict[str, Any]]
) -> None:
    root, models = workdir
    model = models["openai"]
    photos = sorted((root / "photos").glob("*.jpg"))
    with torch.no_grad(), one_thread():
        want_img = model.encode_image(_pil_pixels(photos, model.visual.input_resolution, OPENAI_MEAN, OPENAI_STD))
        want_txt = model.encode_text(_reference_ids(TEXTS, model.context_length))
    got_img = np.load(root / "image_vectors.npy")
    got_txt = np.array([r["vector"] for r in map(json.loads, (root / "text_vectors.jsonl").read_text().splitlines())])
    _assert_matches(got_img, got_txt, want_img, want_txt)


def test_hf_directory_exported_and_embedded_equals_transformers(
    readme_run: Path, workdir: tuple[Path, dict[str, Any]]
) -> None:
    root, models = workdir
    model = models["hf"]
    photos = sorted((root / "photos").glob("*.jpg"))
    bundle = root / "export" / "my-hf-clip"
    for args in (["embed", *map(str, photos), "--out", "hf_images.npy"], ["embed", "--text", TEXTS[0], "--text",
                 TEXTS[1], "--out", "hf_texts.npy"]):  # fmt: skip
        proc = run_block(shlex.join(["edgeclip", *args, "--bundle", str(bundle)]), root)
        assert proc.returncode == 0, proc.stderr
    vision = model.config.vision_config
    with torch.no_grad(), one_thread():
        pixels = _pil_pixels(photos, vision.image_size, OPENAI_MEAN, OPENAI_STD)
        want_img = model.get_image_features(pixel_values=pixels)
        want_txt = model.get_text_features(
            input_ids=_reference_ids(TEXTS, model.config.text_config.max_position_embeddings)
        )
    want_img = getattr(want_img, "pooler_output", want_img)
    want_txt = getattr(want_txt, "pooler_output", want_txt)
    _assert_matches(np.load(root / "hf_images.npy"), np.load(root / "hf_texts.npy"), want_img, want_txt)
