"""Captions by retrieval: rank the sentences of a caption bank for each image by cosine similarity.

The built-in world can write its own bank (`world_caption_bank`): every one-phrase caption its grammar can say,
in canonical wording ("two small red stars", "a large blue circle on the left", "something green").
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeclip.errors import InputError

if TYPE_CHECKING:
    from edgeclip.runtime import Model


@dataclass(frozen=True)
class Captioned:
    image: str
    captions: tuple[str, ...]  # best first
    scores: tuple[float, ...]  # cosine similarities, in the same order


def read_caption_bank(path: str | os.PathLike[str]) -> list[str]:
    """The captions of a bank file: one per line, blank lines and repeats dropped, order kept."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"--captions {file} does not exist; give a text file with one caption per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read --captions {file}: {exc}; it must be a UTF-8 text file") from None
    captions = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    if not captions:
        raise InputError(f"--captions {file} holds no captions; write one per line")
    return captions


def rank_captions(
    image_vectors: np.ndarray, names: list[str], bank: np.ndarray, captions: list[str], top_k: int
) -> list[Captioned]:
    """Per image vector, the `top_k` captions of the bank (their text vectors, (C, D)) with the highest cosine."""
    from edgeclip.search.search import exact_top_k

    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"--top-k must be a whole number >= 1, got {top_k!r}")
    scores, ids = exact_top_k(bank, image_vectors, min(top_k, len(captions)))
    return [
        Captioned(name, tuple(captions[j] for j in row), tuple(float(s) for s in srow))
        for name, row, srow in zip(names, ids, scores, strict=True)
    ]


def caption_bank_vectors(model: Model, captions: list[str], batch: int | None = None) -> np.ndarray:
    return model.encode_text(captions, batch_size=batch)


def world_caption_bank() -> list[str]:
    """Every one-phrase caption of the built-in world's grammar, in canonical wording, sorted."""
    from edgeclip.world.captions import GROUP_KEYS, SINGLE_FORMS, Phrase, words
    from edgeclip.world.vocab import COLORS, POSITIONS, SHAPES, SIZES

    values = {"color": COLORS, "shape": SHAPES, "size": SIZES, "position": POSITIONS}
    out: set[str] = set()

    def add(count: int, attrs: tuple[str, ...]) -> None:
        for combo in itertools.product(*(values[a] for a in attrs)):
            out.add(words(Phrase(count=count, **dict(zip(attrs, combo, strict=True)))))

    for attrs, _ in SINGLE_FORMS:
        add(1, attrs)
    for count in (2, 3):  # a group of objects: its key attributes, and the size where all members share one
        for key, _ in GROUP_KEYS:
            add(count, key)
            add(count, (*key, "size"))
    return sorted(out)
