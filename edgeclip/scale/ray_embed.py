"""Embedding image files on a Ray cluster with Ray Data, with the vectors a single process would give.

The files are cut into chunks of exactly the batch size the runtime uses, in input order, and each chunk is one
`map_batches` call on an actor that loaded the bundle once: every graph call sees the same batch as in one
process (int8 graphs quantize activations per batch, so the batch boundaries decide the last bits). The actor
pool is sized from the cluster: one actor per GPU where it has GPUs, else one per CPU. Every node must see the
bundle and the image files at the same paths (a shared file system).
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from edgeclip.errors import InputError, MissingExtraError
from edgeclip.runtime import ImageEmbeddings

LOCAL = "local"  # --ray without an address: start (or join the already started) Ray instance on this machine
DEFAULT_BATCH = 32  # the runtime's default batch, so that the chunks are the batches one process would run
CONNECT_TIMEOUT_S = 5.0


def require_ray() -> None:
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise MissingExtraError("--ray needs Ray Data, which is not installed: pip install 'edgeclip[ray]'")


def connect(address: str) -> None:
    """Join the Ray cluster at `address` (LOCAL: start one here, or use the one this process started)."""
    require_ray()
    import ray

    if address != LOCAL:
        _check_answers(address)
    if ray.is_initialized():
        return
    if address == LOCAL:
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        return
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        raise InputError(f"cannot join the Ray cluster at {address}: {exc}") from None


def _check_answers(address: str) -> None:
    # ray.init waits a minute or more on an address where nothing listens; a plain TCP connect says so in seconds.
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise InputError(
            f"--ray {address!r} is not an address: give HOST:PORT (the head's GCS port, usually 6379), "
            "ray://HOST:PORT for Ray Client, or --ray alone for a local instance"
        )
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise InputError(
            f"the Ray cluster at {address} does not answer ({exc.strerror or exc}); start it with "
            "'ray start --head' on that machine, check the address, or pass --ray alone to use a local instance"
        ) from None


def pool_size(resources: dict[str, float], chunks: int) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) for a cluster's resources and the number of chunks to run."""
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    if gpus:
        return max(1, min(gpus, chunks)), 1.0, 1.0
    return max(1, min(cpus, chunks)), 1.0, 0.0


class _EmbedActor:
    """One per Ray worker: loads the bundle once and embeds one chunk of files per call."""

    def __init__(self, bundle: str, precision: str, graph_hash: str, threads: int, preprocess: str = "exact") -> None:
        import edgeclip

        self.model = edgeclip.load(bundle, precision=precision, threads=threads, preprocess=preprocess)
        found = self.model.bundle.graph_hash()
        if found != graph_hash:
            raise RuntimeError(f"bundle {bundle} on this node has graph hash {found}, the driver's has {graph_hash}")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list[Any]] = {"chunk": [], "vectors": [], "rows": [], "failed": []}
        for chunk, paths_json in zip(batch["chunk"], batch["paths"], strict=True):
            paths = json.loads(str(paths_json))
            result = self.model.encode_image_files(paths, batch_size=len(paths))
            out["chunk"].append(int(chunk))
            out["vectors"].append(np.ascontiguousarray(result.vectors, np.float32).tobytes())
            out["rows"].append(json.dumps(list(result.rows)))
            out["failed"].append(json.dumps([list(f) for f in result.failed]))
        return {
            "chunk": np.asarray(out["chunk"], np.int64),
            "vectors": np.asarray(out["vectors"], dtype=object),
            "rows": np.asarray(out["rows"]),
            "failed": np.asarray(out["failed"]),
        }


@dataclass
class RayEmbedder:
    """`Model.encode_image_files` spread over a Ray cluster (see the module docstring); an `Embedder`."""

    bundle: str
    precision: str  # the image graph's precision the driver's model runs
    graph_hash: str
    embed_dim: int
    batch: int | None = None
    address: str = LOCAL
    preprocess: str = "exact"  # the driver's model's preprocessing mode, which every worker uses too

    def __call__(self, paths: Sequence[str], on_progress: Callable[[int], None] | None = None) -> ImageEmbeddings:
        connect(self.address)
        import ray
        import ray.data

        size = self.batch or DEFAULT_BATCH
        chunks = [list(paths[i : i + size]) for i in range(0, len(paths), size)]
        if not chunks:
            return ImageEmbeddings(np.zeros((0, self.embed_dim), np.float32), (), ())
        actors, cpus, gpus = pool_size(ray.cluster_resources(), len(chunks))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the command draws its own
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # one INFO line per dataset otherwise
        items = [{"chunk": i, "paths": json.dumps(c)} for i, c in enumerate(chunks)]
        # One block per chunk, already in the object store: no read or repartition task competes with the actors
        # for the CPUs they hold (with every CPU given to an actor, such a task would wait for ever).
        ds = ray.data.from_items(items, override_num_blocks=len(chunks)).map_batches(
            _EmbedActor,
            fn_constructor_kwargs={
                "bundle": self.bundle,
                "precision": f"image={self.precision}",
                "graph_hash": self.graph_hash,
                "threads": int(cpus),
                "preprocess": self.preprocess,
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus,
            num_gpus=gpus,
        )
        done: dict[int, tuple[np.ndarray, list[int], list[list[Any]]]] = {}
        for row in ds.iter_rows():
            i = int(row["chunk"])
            vectors = np.frombuffer(row["vectors"], np.float32).reshape(-1, self.embed_dim)
            done[i] = (vectors, json.loads(row["rows"]), json.loads(row["failed"]))
            if on_progress is not None:
                on_progress(len(chunks[i]))
        parts, rows, failed = [], [], []
        for i in range(len(chunks)):
            vectors, chunk_rows, chunk_failed = done[i]
            offset = i * size
            parts.append(vectors)
            rows += [offset + r for r in chunk_rows]
            failed += [(offset + int(j), str(why)) for j, why in chunk_failed]
        return ImageEmbeddings(np.concatenate(parts).astype(np.float32, copy=False), tuple(rows), tuple(failed))


def ray_embedder(model: Any, batch: int | None, address: str) -> RayEmbedder:
    """A RayEmbedder for the bundle, image precision and preprocessing that `model` (an `edgeclip.load` result)
    runs."""
    require_ray()
    return RayEmbedder(
        bundle=str(model.bundle.path),
        precision=model.precisions["image"],
        graph_hash=model.bundle.graph_hash(),
        embed_dim=model.contract.head.embed_dim,
        batch=batch,
        address=address,
        preprocess=model.preprocess,
    )
