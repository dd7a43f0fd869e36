"""The parity check of an fp32 graph against PyTorch fp32, and the real inputs it feeds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from edgeclip.contract import ModelContract
from edgeclip.export.towers import tower_module
from edgeclip.precision.data import HARD_PROMPTS

if TYPE_CHECKING:
    from edgeclip.models.clip import CLIP

MIN_COSINE = 0.99999  # a graph below this against PyTorch fp32 is refused
PROMPTS = HARD_PROMPTS  # what the parity check feeds the text graph


def graph_parity(model: CLIP, tower: str, path: Path, samples: Sequence[np.ndarray]) -> dict[str, Any]:
    """Compare the graph at `path` on ONNX Runtime CPU with PyTorch fp32, each sample batch whole and row by row.

    Returns max abs diff, min cosine (float64) and what was fed.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    module = tower_module(model, tower)
    max_abs, min_cos, rows = 0.0, 1.0, 0
    for batch in samples:
        with torch.no_grad():
            want = module(torch.from_numpy(batch)).numpy().astype(np.float64)
        runs = [(batch, want)] + [(batch[i : i + 1], want[i : i + 1]) for i in range(len(batch))]
        for feed, expected in runs:
            got = np.asarray(session.run(None, {input_name: feed})[0], dtype=np.float64)
            # np.max/np.min propagate NaN (Python's max/min would drop it), so a NaN output fails the check below.
            max_abs = float(np.max([max_abs, np.abs(got - expected).max()]))
            cos = (got * expected).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(expected, axis=-1))
            min_cos = float(np.min([min_cos, cos.min()]))
            rows += len(feed)
    shapes = [list(s.shape) for s in samples]
    return {
        "max_abs_diff": max_abs,
        "min_cosine": min_cos,
        "rows": rows,
        "batches": shapes,
        "reference": f"torch {torch.__version__} fp32 cpu",
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
    }


def parity_inputs(contract: ModelContract, bundle_dir: Path, tower: str) -> list[np.ndarray]:
    """Real inputs for the parity check: images through the Preprocessor, prompts through the bundle's tokenizer."""
    if tower == "image":
        from edgeclip.preprocess import Preprocessor

        size = contract.image.size
        # Square, landscape, portrait (upscaled on one side), odd sizes and a camera frame.
        sizes = [(size, size), (2 * size + 3, size + 1), (size // 2 + 1, 3 * size), (640, 480), (97, 61)]
        return [Preprocessor(contract.image)([synthetic_photo(w, h, seed) for seed, (w, h) in enumerate(sizes)])]
    from edgeclip.tokenizer import Tokenizer

    spec = contract.text
    tokenizer = (
        Tokenizer.from_pretrained_dir((bundle_dir / spec.tokenizer_files[0]).parent, spec)
        if spec.tokenizer_files
        else Tokenizer(spec)
    )
    full = tokenizer(list(PROMPTS))
    short = tokenizer(list(PROMPTS), context_length=min(spec.context_length, 8))
    return [full.astype(np.int64), short.astype(np.int64)]


def synthetic_photo(width: int, height: int, seed: int) -> np.ndarray:
    """An HWC uint8 RGB image with gradients, hard-edged shapes and noise: enough detail to exercise resampling."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), (x + y) / max(width + height - 2, 1)], -1) * 200
    for _ in range(6):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        img[y0 : y0 + rng.integers(1, height + 1), x0 : x0 + rng.integers(1, width + 1)] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
