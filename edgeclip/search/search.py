"""Querying an index: exact cosine search over every vector, or the approximate index where one is built."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from edgeclip.errors import InputError
from edgeclip.search import store
from edgeclip.search.store import IndexManifest, Rows, SearchIndexError

if TYPE_CHECKING:
    from edgeclip.search.ann import Approximate

Mode = Literal["auto", "exact", "approx"]


@dataclass(frozen=True)
class Hit:
    path: str
    score: float
    frame: int | None = None  # for a video frame; None for a still image
    timestamp: float | None = None


class SearchIndex:
    """An index opened for queries. Vectors load on the first query."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.manifest: IndexManifest = store.read_manifest(self.folder)
        self._rows: Rows | None = None
        self._approx: Approximate | None = None

    def __len__(self) -> int:
        return self.manifest.rows

    @property
    def rows(self) -> Rows:
        if self._rows is None:
            self._rows = store.read_rows(self.folder, self.manifest)
        return self._rows

    def has_approx(self) -> bool:
        ann = self.manifest.ann
        return bool(ann) and ann.get("rows") == self.manifest.rows and (self.folder / str(ann.get("file"))).is_file()

    def check_not_empty(self) -> None:
        if self.manifest.rows == 0:
            raise InputError(
                f"index {self.folder} is empty (0 images): add images with 'edgeclip index DIR... --out {self.folder}'"
            )

    def search(self, queries: np.ndarray, top_k: int = 10, mode: Mode = "auto") -> list[list[Hit]]:
        """The `top_k` best rows for each query vector (Q, D), best first, by cosine.

        mode "auto": the approximate index where the index has one, else exact; "exact"; "approx" (refused where
        there is none)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"--top-k must be a whole number >= 1, got {top_k!r}")
        self.check_not_empty()
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        if queries.shape[1] != self.manifest.embed_dim:
            raise SearchIndexError(
                f"query vectors have {queries.shape[1]} dimensions; index {self.folder} holds {self.manifest.embed_dim}"
            )
        k = min(top_k, self.manifest.rows)
        if mode == "approx" and not self.has_approx():
            raise InputError(
                f"index {self.folder} has no approximate index ({self.manifest.rows} rows; it is built from "
                "100,000 rows up, or with 'edgeclip index --ann'); search it exactly"
            )
        if mode != "exact" and self.has_approx():
            scores, ids = self._approximate().search(queries, k)
        else:
            scores, ids = exact_top_k(self.rows.vector, queries, k)
        return [self._hits(s, i) for s, i in zip(scores, ids, strict=True)]

    def _approximate(self) -> Approximate:
        from edgeclip.search.ann import Approximate

        if self._approx is None:
            ann = self.manifest.ann
            self._approx = Approximate(self.folder / str(ann["file"]), int(ann["params"]["nprobe"]))
        return self._approx

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        rows = self.rows
        hits = []
        for score, i in zip(scores, ids, strict=True):
            if i < 0:  # the approximate index found fewer than k in the cells it searched
                continue
            frame = int(rows.frame[i])
            stamp = float(rows.timestamp[i])
            hits.append(
                Hit(rows.path[i], float(score), frame if frame >= 0 else None, None if np.isnan(stamp) else stamp)
            )
        return hits


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k) scores and row ids of the k largest inner products per query, best first (ties: lower row first)."""
    scores = queries @ vectors.T  # (Q, N)
    k = min(k, scores.shape[1])
    part = (
        np.argpartition(-scores, k - 1, axis=1)[:, :k]
        if k < scores.shape[1]
        else np.tile(np.arange(scores.shape[1]), (len(queries), 1))
    )
    top = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -top), axis=1)
    ids = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(scores, ids, axis=1), ids
