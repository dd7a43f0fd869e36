"""The on-disk index: a folder of Parquet segments and one JSON manifest that says which segments are the index.

    INDEX/
      edgeclip-index.json     format, the bundle's name and graph hash, image precision, preprocessing, segments
      segments/000001.parquet path, frame, timestamp, size, mtime_ns, sha256, vector (float32 x D)
      ann-<id>.faiss          (large indexes) the approximate index of exactly these rows, when the manifest names it

Every segment is written whole beside its final name and renamed (edgeclip.fileio), and only then does a new
manifest, also written atomically, list it. A crash at any moment leaves the last manifest and every segment it
names intact; a segment no manifest names is debris of an interrupted run and is removed by the next one.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import InputError
from edgeclip.fileio import atomic_write

FORMAT = "edgeclip-index"
FORMAT_VERSION = 1
MANIFEST = "edgeclip-index.json"
SEGMENTS = "segments"
COLUMNS = ("path", "frame", "timestamp", "size", "mtime_ns", "sha256", "vector")


class SearchIndexError(InputError):
    """An index folder that is not an edgeclip index, is damaged, or was made by another model."""


@dataclass(frozen=True)
class IndexManifest:
    """What `edgeclip-index.json` holds."""

    bundle_name: str
    graph_hash: str
    precision: str  # the image graph's precision that made the vectors
    embed_dim: int
    segments: tuple[str, ...] = ()
    rows: int = 0
    generation: str = ""  # a new random id at every commit: names the files built from these rows
    ann: dict[str, Any] = field(default_factory=dict)  # {"file", "kind", "rows", "params"} when built
    preprocess: str = "exact"  # the image preprocessing mode that made the vectors (edgeclip.preprocess.MODES)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bundle": {"name": self.bundle_name, "graph_hash": self.graph_hash},
            "precision": self.precision,
            "embed_dim": self.embed_dim,
            "segments": list(self.segments),
            "rows": self.rows,
            "generation": self.generation,
            "ann": self.ann,
            "preprocess": self.preprocess,
        }

    @property
    def model(self) -> str:
        """The model in words, for messages: 'bundle tiny (graphs 1a2b...) at int8'."""
        return f"bundle {self.bundle_name!r} (graph hash {self.graph_hash}) at {self.precision}"


@dataclass
class Rows:
    """Rows of the index in memory: one per image (or video frame)."""

    path: list[str]
    frame: np.ndarray  # int64, -1 for a still image
    timestamp: np.ndarray  # float64 seconds, NaN for a still image
    size: np.ndarray  # int64 bytes
    mtime_ns: np.ndarray  # int64
    sha256: list[str]
    vector: np.ndarray  # (N, D) float32, L2-normalized

    @classmethod
    def empty(cls, dim: int) -> Rows:
        return cls(
            [],
            np.zeros(0, np.int64),
            np.zeros(0),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            [],
            np.zeros((0, dim), np.float32),
        )

    def __len__(self) -> int:
        return len(self.path)

    def take(self, keep: np.ndarray) -> Rows:
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep
        return Rows(
            [self.path[i] for i in idx],
            self.frame[idx],
            self.timestamp[idx],
            self.size[idx],
            self.mtime_ns[idx],
            [self.sha256[i] for i in idx],
            self.vector[idx],
        )

    @classmethod
    def concat(cls, parts: Sequence[Rows], dim: int) -> Rows:
        if not parts:
            return cls.empty(dim)
        return cls(
            [p for r in parts for p in r.path],
            np.concatenate([r.frame for r in parts]),
            np.concatenate([r.timestamp for r in parts]),
            np.concatenate([r.size for r in parts]),
            np.concatenate([r.mtime_ns for r in parts]),
            [h for r in parts for h in r.sha256],
            np.concatenate([r.vector for r in parts]).astype(np.float32, copy=False),
        )


def _preprocess_mode(value: object) -> str:
    from edgeclip.preprocess import MODES

    if value not in MODES:
        raise ValueError(f"preprocess is {value!r}, not one of {', '.join(MODES)}")
    return str(value)


def is_index(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def read_manifest(folder: Path) -> IndexManifest:
    """The manifest of the index at `folder`; anything else is an SearchIndexError that says what was found."""
    path = folder / MANIFEST
    if not folder.exists():
        raise SearchIndexError(f"index {folder} does not exist; make it with 'edgeclip index DIR... --out {folder}'")
    if not folder.is_dir():
        raise SearchIndexError(f"{folder} is a file, not an edgeclip index (a folder made by 'edgeclip index')")
    if not path.is_file():
        raise SearchIndexError(
            f"{folder} is not an edgeclip index: it has no {MANIFEST}; give a folder made by 'edgeclip index', "
            "or a new or empty folder to make one"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {data.get('format_version')!r}; this edgeclip reads {FORMAT_VERSION}")
        manifest = IndexManifest(
            bundle_name=str(data["bundle"]["name"]),
            graph_hash=str(data["bundle"]["graph_hash"]),
            precision=str(data["precision"]),
            embed_dim=int(data["embed_dim"]),
            segments=tuple(str(s) for s in data["segments"]),
            rows=int(data["rows"]),
            generation=str(data.get("generation", "")),
            ann=dict(data.get("ann") or {}),
            preprocess=_preprocess_mode(data.get("preprocess", "exact")),  # indexes made before it was kept: exact
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SearchIndexError(f"{path} is damaged ({exc}); make the index again with 'edgeclip index'") from None
    for name in manifest.segments:
        if "/" in name or "\\" in name or name.startswith(".") or not (folder / SEGMENTS / name).is_file():
            raise SearchIndexError(f"{path} names segment {name!r}, which is missing; make the index again")
    return manifest


def write_manifest(folder: Path, manifest: IndexManifest) -> IndexManifest:
    """Commit `manifest` (a fresh generation) atomically: from now on it is the index."""
    manifest = replace(manifest, generation=secrets.token_hex(8))
    with atomic_write(folder / MANIFEST) as f:
        f.write((json.dumps(manifest.to_dict(), indent=2) + "\n").encode("utf-8"))
    return manifest


def write_segment(folder: Path, rows: Rows) -> str:
    """Write `rows` as a new segment file (atomically) and return its name; the manifest does not name it yet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / SEGMENTS).mkdir(parents=True, exist_ok=True)
    name = f"{secrets.token_hex(6)}.parquet"
    dim = rows.vector.shape[1]
    table = pa.table(
        {
            "path": pa.array(rows.path, type=pa.string()),
            "frame": pa.array(rows.frame, type=pa.int64()),
            "timestamp": pa.array(rows.timestamp, type=pa.float64()),
            "size": pa.array(rows.size, type=pa.int64()),
            "mtime_ns": pa.array(rows.mtime_ns, type=pa.int64()),
            "sha256": pa.array(rows.sha256, type=pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(rows.vector, np.float32).reshape(-1), type=pa.float32()), dim
            ),
        }
    )
    with atomic_write(folder / SEGMENTS / name) as f:
        # Float vectors do not compress: zstd on them made writes 6x slower and files larger (benchmarks/RESULTS.md).
        compression = {name: "zstd" for name in COLUMNS} | {"vector": "none"}
        pq.write_table(table, f, compression=compression, use_dictionary=False)
    return name


def read_rows(folder: Path, manifest: IndexManifest, *, vectors: bool = True) -> Rows:
    """Every row of the index, in segment order (`vectors=False`: the vectors left as an empty (N, 0) array)."""
    import pyarrow.parquet as pq

    parts = []
    columns = list(COLUMNS) if vectors else list(COLUMNS[:-1])
    for name in manifest.segments:
        try:
            table = pq.read_table(folder / SEGMENTS / name, columns=columns)
        except (OSError, ValueError) as exc:
            raise SearchIndexError(
                f"segment {name} of index {folder} cannot be read ({exc}); make the index again"
            ) from None
        n = table.num_rows
        if vectors:
            flat = table["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
            vec = np.asarray(flat, np.float32).reshape(n, manifest.embed_dim)
        else:
            vec = np.zeros((n, 0), np.float32)
        parts.append(
            Rows(
                table["path"].to_pylist(),
                table["frame"].to_numpy().astype(np.int64),
                table["timestamp"].to_numpy().astype(np.float64),
                table["size"].to_numpy().astype(np.int64),
                table["mtime_ns"].to_numpy().astype(np.int64),
                table["sha256"].to_pylist(),
                vec,
            )
        )
    return Rows.concat(parts, manifest.embed_dim if vectors else 0)


def remove_debris(folder: Path, manifest: IndexManifest) -> int:
    """Remove segment files that no manifest names and temporary files of interrupted writes; how many."""
    removed = 0
    seg_dir = folder / SEGMENTS
    keep = set(manifest.segments)
    candidates = list(seg_dir.iterdir()) if seg_dir.is_dir() else []
    candidates += [p for p in folder.iterdir() if p.name.startswith(".") and ".partial" in p.name]
    for path in candidates:
        if path.is_file() and path.name not in keep and (path.suffix == ".parquet" or ".partial" in path.name):
            os.unlink(path)
            removed += 1
    ann = manifest.ann.get("file")
    for path in folder.glob("ann-*"):
        if path.name != ann:
            os.unlink(path)
    return removed
