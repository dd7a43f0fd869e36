"""The approximate index of a large index: FAISS IVF-Flat on inner product (cosine: the vectors are normalized).

IVF-Flat keeps every vector whole, so the scores it returns are the exact cosines; only which vectors it looks at
is approximate (the `nprobe` nearest of `nlist` k-means cells). It trains in seconds on a sample, where an HNSW
graph of a million vectors takes many minutes on two cores, and its recall is tuned by one number at query time.
Measured against exact search in benchmarks/bench_search.py; the figures are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.fileio import atomic_path

KIND = "faiss-ivf-flat"
MIN_ROWS = 100_000  # below this an exact search is a few milliseconds: nothing to gain, recall to lose
TRAIN_PER_CELL = 64  # k-means training vectors per cell (FAISS warns below 39)
# Cells searched per query, as a share of all cells. Measured at 1M x 512 (benchmarks/RESULTS.md): recall@10 1.00 for
# queries near a row, 0.76 for queries near none (the hard case); `edgeclip search --exact` where that matters.
PROBE_SHARE = 1 / 24


def available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def missing_message() -> str:
    return "the approximate index needs FAISS, which is not installed: pip install 'edgeclip[search]'"


def worth_building(rows: int) -> bool:
    return rows >= MIN_ROWS


def cells(rows: int) -> int:
    return int(min(65536, max(16, round(4 * math.sqrt(rows)))))


def build(vectors: np.ndarray, path: Path, *, seed: int = 0) -> dict[str, Any]:
    """Train and fill an IVF-Flat index of `vectors` (N, D) float32 and write it to `path` atomically."""
    import faiss

    vectors = np.ascontiguousarray(vectors, np.float32)
    n, dim = vectors.shape
    nlist = max(1, min(cells(n), n // TRAIN_PER_CELL))  # every cell gets its share of training vectors
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(n, size=min(n, TRAIN_PER_CELL * nlist), replace=False))]
    index.cp.seed = seed  # k-means seed: the same rows give the same index
    index.train(sample)
    index.add(vectors)
    nprobe = max(1, math.ceil(nlist * PROBE_SHARE))
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return {"nlist": nlist, "nprobe": nprobe}


def measure_recall(vectors: np.ndarray, path: Path, nprobe: int, *, queries: int = 100, seed: int = 0) -> float:
    """recall@10 of the approximate index at `path` against exact search, for `queries` midpoints of two random
    indexed vectors: a query near no single row, as a text query is (a row itself would be found too easily)."""
    from edgeclip.search.search import exact_top_k

    rng = np.random.default_rng(seed)
    pairs = rng.integers(len(vectors), size=(queries, 2))
    q = vectors[pairs[:, 0]] + vectors[pairs[:, 1]]
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    k = min(10, len(vectors))
    _, exact = exact_top_k(vectors, q, k)
    _, approx = Approximate(path, nprobe).search(q, k)
    return float(np.mean([len(set(a.tolist()) & set(e.tolist())) / k for a, e in zip(approx, exact, strict=True)]))


class Approximate:
    """A loaded IVF-Flat index: `search(queries, k)` -> (scores, row ids), best first."""

    def __init__(self, path: Path, nprobe: int) -> None:
        import faiss

        self._index = faiss.read_index(str(path))
        faiss.extract_index_ivf(self._index).nprobe = nprobe

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self._index.search(np.ascontiguousarray(queries, np.float32), k)
        return scores, ids
