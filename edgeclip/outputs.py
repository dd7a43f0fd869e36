"""Writing embeddings to .npy / .jsonl / .parquet without ever leaving a half file or losing an old one.

Every write goes to a temporary file beside the target and is renamed over it only once complete, so a crash or
Ctrl-C leaves either the old file or the new one. Paths are checked before any work (`check_output`), so a typo in
`--out` costs nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from edgeclip.errors import InputError
from edgeclip.fileio import atomic_write, check_writable_file, text_name

FORMATS = (".npy", ".jsonl", ".parquet")
KeyName = Literal["path", "text"]


def check_output(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Refuse an output path that cannot or must not be written, before the caller does any work."""
    out = Path(path)
    if out.is_dir():
        raise InputError(f"cannot write {out}: it is a directory; give a file name such as {out / 'embeddings.npy'}")
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(
            f"cannot write {out}: unknown output format {out.suffix or '(no extension)'!r}; "
            f"name the file with one of {', '.join(FORMATS)}"
        )
    if suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise InputError(
            f"cannot write {out}: .parquet needs pyarrow, which is not installed; "
            "pip install 'edgeclip[parquet]', or write .npy or .jsonl"
        )
    check_writable_file(out, force=force)
    return out


# Where the other modules (zeroshot's label banks) have always found it.
atomic_file = atomic_write


def write_embeddings(
    path: str | os.PathLike[str],
    vectors: np.ndarray,
    keys: Sequence[str],
    *,
    key_name: KeyName = "path",
    force: bool = False,
) -> Path:
    """Write `vectors` (N, D) float32 with their `keys` (image paths or texts) in the format the suffix names.

    .npy holds the vectors alone, row i for keys[i]; .jsonl one {key_name: key, "vector": [...]} per line;
    .parquet the columns key_name (string) and "vector" (fixed-size list of float32). A key that is a file name
    with bytes that are not UTF-8 is written with those bytes as \\xNN escapes (`fileio.text_name`).
    """
    out = check_output(path, force=force)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(keys):
        raise InputError(f"cannot write {out}: {len(keys)} keys for vectors of shape {vectors.shape}")
    suffix = out.suffix.lower()
    keys = [text_name(key) for key in keys]  # a file name that is not UTF-8: \xNN escapes, never a crash at the end
    if suffix == ".npy":
        with atomic_file(out) as f:
            np.save(f, vectors, allow_pickle=False)
    elif suffix == ".jsonl":
        with atomic_file(out) as f:
            for key, row in zip(keys, vectors, strict=True):
                # float32 -> Python float is exact, so the file reads back to the same float32 values.
                line = json.dumps({key_name: key, "vector": row.tolist()}, ensure_ascii=False) + "\n"
                f.write(line.encode("utf-8"))
    else:
        _write_parquet(out, vectors, keys, key_name)
    return out


def _write_parquet(out: Path, vectors: np.ndarray, keys: Sequence[str], key_name: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = vectors.shape[1]
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), dim)
    table = pa.table({key_name: pa.array(list(keys), type=pa.string()), "vector": column})
    with atomic_file(out) as f:
        pq.write_table(table, f)
