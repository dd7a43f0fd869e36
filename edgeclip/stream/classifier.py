"""Per-frame classification for robots: one frame in, its labels (or embedding) out, with the least latency.

A `FrameClassifier` holds a loaded model and a precomputed label bank. It is safe to call from several threads at
once: the model's sessions are thread-safe, and the labels and their bank are swapped together as one immutable
pair, so a call sees either the old labels or the new ones, never a mix.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgeclip import zeroshot
from edgeclip.zeroshot import Classification

if TYPE_CHECKING:
    from edgeclip.runtime import Model


@dataclass(frozen=True)
class LabelBank:
    """Labels with their text embeddings, computed once."""

    labels: tuple[str, ...]
    vectors: np.ndarray  # (L, D) float32
    version: int  # increases each time the labels change


class FrameClassifier:
    """Zero-shot classification and embedding of single frames (HWC uint8 arrays, BGR by default, as OpenCV gives).

    >>> clf = FrameClassifier(edgeclip.load(), ["a red circle", "a blue star"])
    >>> clf.classify(frame).labels[0]
    """

    def __init__(
        self,
        model: Model,
        labels: Sequence[str] | None = None,
        *,
        templates: str | os.PathLike[str] | Sequence[str] | None = None,
        color_order: str = "BGR",
    ) -> None:
        self.model = model
        self.templates = zeroshot.load_templates(templates)
        self.color_order = color_order
        self._lock = threading.Lock()
        self._bank: LabelBank | None = None
        if labels is not None:
            self.set_labels(labels)

    @classmethod
    def load(
        cls,
        labels: Sequence[str] | None = None,
        *,
        bundle: str | os.PathLike[str] | None = None,
        backend: str = "auto",
        precision: str | None = None,
        templates: str | os.PathLike[str] | Sequence[str] | None = None,
    ) -> FrameClassifier:
        """Load a bundle (None: the built-in model) and precompute the labels' bank."""
        from edgeclip.runtime import load

        return cls(load(bundle, backend=backend, precision=precision), labels, templates=templates)

    # ------------------------------------------------------------ labels

    def set_labels(self, labels: Sequence[str]) -> LabelBank:
        """Compute the bank of new labels (in the caller's thread), then swap it in at once."""
        checked = zeroshot.check_labels(list(labels))
        vectors = self.model.label_bank(checked, self.templates)
        with self._lock:
            version = 1 if self._bank is None else self._bank.version + 1
            self._bank = LabelBank(checked, vectors, version)
            return self._bank

    @property
    def bank(self) -> LabelBank:
        bank = self._bank
        if bank is None:
            from edgeclip.errors import InputError

            raise InputError("no labels yet: give labels to FrameClassifier(...) or call set_labels([...])")
        return bank

    @property
    def labels(self) -> tuple[str, ...]:
        return self.bank.labels

    # ------------------------------------------------------------ frames

    def embed(self, frame: np.ndarray, *, color_order: str | None = None) -> np.ndarray:
        """(D,) float32 L2-normalized embedding of one frame."""
        return self.model.encode_image(frame, color_order=color_order or self.color_order, batch_size=1)[0]

    def embed_batch(self, frames: Sequence[np.ndarray], *, color_order: str | None = None) -> np.ndarray:
        """(N, D) embeddings of several frames in one backend call (several cameras at once)."""
        return self.model.encode_image(list(frames), color_order=color_order or self.color_order)

    def probabilities(self, embedding: np.ndarray, bank: LabelBank | None = None) -> np.ndarray:
        """(L,) scores of every label (in bank order) for one embedding."""
        bank = bank or self.bank
        return zeroshot.scores(np.asarray(embedding)[None], bank.vectors, self.model.contract.head)[0]

    def classify(self, frame: np.ndarray, *, top_k: int = 5, color_order: str | None = None) -> Classification:
        """The `top_k` best labels of one frame with their scores, best first."""
        bank = self.bank  # one bank for the whole call, even if the labels change meanwhile
        probs = self.probabilities(self.embed(frame, color_order=color_order), bank)
        return zeroshot.top_labels(probs[None], bank.labels, top_k)[0]

    def top(self, probs: np.ndarray, bank: LabelBank, top_k: int) -> Classification:
        return zeroshot.top_labels(np.asarray(probs)[None], bank.labels, top_k)[0]

    def warmup(self) -> None:
        """Run the image graph once, so that the first real frame does not pay for the backend's first call."""
        size = self.model.contract.image.size
        self.model.encode_image(np.zeros((size, size, 3), np.uint8), color_order="BGR", batch_size=1)
