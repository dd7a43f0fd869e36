"""Search and scale-out figures: indexing throughput in one process against Ray on this machine, search latency
exact and approximate (FAISS IVF-Flat) with recall@10, and the index's size per image.

    python benchmarks/bench_search.py [--images 2000] [--large 1000000] [--dim 512] [--queries 200]
                                      [--spread 1.0] [--query-noise 0.05] [--no-indexing] [--json]

Indexing runs `edgeclip.search.build_index` on the built-in model over PNGs of the built-in world (written first,
not timed), once in this process and once with a local Ray instance (one actor per CPU). Search runs on synthetic
L2-normalized vectors drawn around random centers (a uniform cloud has no neighbours to find: every index does
badly on it, unlike on real embeddings; `--spread`: the noise around them), 10k and `--large` rows, queries at
`--query-noise` around random rows; latency is the median of single-query calls, recall@10 is the share of the
exact top 10 the approximate index returns.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgeclip
from edgeclip.search import SearchIndex, build_index, exact_top_k, local_embedder, model_identity
from edgeclip.search import ann as ann_module


def write_world(folder: Path, n: int) -> None:
    import cv2

    from edgeclip.world import eval_set

    items = eval_set("color_shape")
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:06d}.png"), items[i % len(items)].image[:, :, ::-1])


def bench_indexing(n: int) -> dict[str, float]:
    from edgeclip.scale.ray_embed import ray_embedder

    root = Path(tempfile.mkdtemp(prefix="bench-search-"))
    try:
        photos = root / "photos"
        photos.mkdir()
        write_world(photos, n)
        model = edgeclip.load()
        start = time.perf_counter()
        build_index([photos], root / "one.index", model_identity(model), local_embedder(model))
        one = time.perf_counter() - start
        size = sum(f.stat().st_size for f in (root / "one.index").rglob("*") if f.is_file())
        import ray

        start = time.perf_counter()
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        ray_start = time.perf_counter() - start
        cpus = int(ray.cluster_resources().get("CPU", 0))
        embed = ray_embedder(model, None, "local")
        start = time.perf_counter()
        build_index([photos], root / "ray.index", model_identity(model), embed, segment_rows=n)
        spread = time.perf_counter() - start
        ray.shutdown()
        same = np.array_equal(SearchIndex(root / "one.index").rows.vector, SearchIndex(root / "ray.index").rows.vector)
        return {
            "images": n,
            "one_process_img_s": n / one,
            "ray_img_s": n / spread,
            "ray_cpus": cpus,
            "ray_start_s": ray_start,
            "ray_identical": same,
            "index_bytes_per_image": size / n,
            "embed_dim": model.contract.head.embed_dim,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def synthetic(n: int, dim: int, spread: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(16, n // 250), dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # in pieces: the noise of a million rows at once is another 2 GB
        stop = min(n, start + 100_000)
        labels = rng.integers(len(centers), size=stop - start)
        out[start:stop] = centers[labels] + spread * rng.standard_normal((stop - start, dim), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def bench_search(n: int, dim: int, queries: int, spread: float, query_noise: float) -> dict[str, float]:
    vectors = synthetic(n, dim, spread)
    rng = np.random.default_rng(1)
    q = vectors[rng.integers(n, size=queries)] + query_noise * rng.standard_normal((queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact_ms, exact_ids = [], []
    for row in q:
        start = time.perf_counter()
        _, ids = exact_top_k(vectors, row[None], 10)
        exact_ms.append((time.perf_counter() - start) * 1e3)
        exact_ids.append(ids[0])
    folder = Path(tempfile.mkdtemp(prefix="bench-ann-"))
    try:
        start = time.perf_counter()
        params = ann_module.build(vectors, folder / "ann.faiss")
        build_s = time.perf_counter() - start
        index = ann_module.Approximate(folder / "ann.faiss", params["nprobe"])
        approx_ms, hits = [], []
        for row, truth in zip(q, exact_ids, strict=True):
            start = time.perf_counter()
            _, ids = index.search(row[None], 10)
            approx_ms.append((time.perf_counter() - start) * 1e3)
            hits.append(len(set(ids[0].tolist()) & set(truth.tolist())) / 10)
        return {
            "rows": n,
            "dim": dim,
            "exact_ms": statistics.median(exact_ms),
            "approx_ms": statistics.median(approx_ms),
            "recall_at_10": float(np.mean(hits)),
            "ann_build_s": build_s,
            **params,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--spread", type=float, default=1.0, help="Noise around the centers (1: as wide as them).")
    parser.add_argument("--query-noise", type=float, default=0.05, help="Noise of the queries around random rows.")
    parser.add_argument("--no-indexing", dest="indexing", action="store_false", help="Search figures only.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {
        "cpus": os.cpu_count(),
        "indexing": bench_indexing(args.images) if args.indexing else None,
        "search": [
            bench_search(n, args.dim, args.queries, args.spread, args.query_noise) for n in (10_000, args.large)
        ],
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    ix = results["indexing"]
    if ix:
        print(
            f"indexing {ix['images']} images ({ix['embed_dim']}-d): one process {ix['one_process_img_s']:.0f} img/s, "
            f"Ray local ({ix['ray_cpus']} CPUs) {ix['ray_img_s']:.0f} img/s (start {ix['ray_start_s']:.1f} s), "
            f"identical vectors: {ix['ray_identical']}; index {ix['index_bytes_per_image']:.0f} bytes/image"
        )
    print("| rows | dim | exact p50 | approx p50 | recall@10 | nlist / nprobe | build |")
    print("|---|---|---|---|---|---|---|")
    for s in results["search"]:
        print(
            f"| {s['rows']:,} | {s['dim']} | {s['exact_ms']:.2f} ms | {s['approx_ms']:.2f} ms | "
            f"{s['recall_at_10']:.3f} | {s['nlist']} / {s['nprobe']} | {s['ann_build_s']:.1f} s |"
        )


if __name__ == "__main__":
    main()
