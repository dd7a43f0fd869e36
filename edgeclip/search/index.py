"""Building and updating an index: scan folders, embed what is new or changed, drop what is gone, commit often.

A run commits after every segment (SEGMENT_ROWS images), so an interrupted run (Ctrl-C, kill -9, power cut) loses
at most the segment it was embedding, and the next run starts where it stopped: a file already in the index with the
same size and modification time is not read again; one whose time changed but whose bytes did not (same sha256)
keeps its vector without being embedded again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edgeclip.errors import EdgeClipError, InputError
from edgeclip.fileio import is_text_name, sha256_file, sha256_files, text_name
from edgeclip.search import store
from edgeclip.search.store import IndexManifest, Rows, SearchIndexError

if TYPE_CHECKING:
    from edgeclip.runtime import ImageEmbeddings, Model

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
FRAME_CHUNK = 256  # sampled video frames held in memory at once
SEGMENT_ROWS = 1024  # images per commit: what an interruption can cost, against one manifest write per segment
COMPACT_SEGMENTS = 16  # more segments than this are merged into one at the end of a run


class FrameEmbedder(Protocol):
    """Decoded BGR frames (H, W, 3) uint8 to vectors (N, D): the runtime's `Model.encode_image`."""

    def __call__(self, frames: list[np.ndarray]) -> np.ndarray: ...


class Embedder(Protocol):
    """Image files to vectors: the runtime's `Model.encode_image_files`, in this process or spread over Ray."""

    def __call__(self, paths: Sequence[str], on_progress: Callable[[int], None] | None) -> ImageEmbeddings: ...


@dataclass(frozen=True)
class IndexReport:
    """What one `build_index` run did."""

    index: Path
    rows: int  # images in the index now
    embedded: int  # images embedded in this run
    reused: int  # changed files whose bytes were already in the index (vector kept)
    unchanged: int
    dropped: int  # rows of files that are gone or changed
    failed: tuple[tuple[str, str], ...]  # (path, why) of each file that could not be read
    ann: bool  # whether the approximate index is built for these rows
    ann_recall: float | None = None  # its recall@10 against exact search, measured when it was built


def model_identity(model: Model) -> IndexManifest:
    """The manifest fields that name the model, for a new index or to check an existing one."""
    return IndexManifest(
        bundle_name=model.bundle.manifest.name,
        graph_hash=model.bundle.graph_hash(),
        precision=model.precisions["image"],
        embed_dim=model.contract.head.embed_dim,
        preprocess=model.preprocess,
    )


def check_same_model(index: Path, manifest: IndexManifest, wanted: IndexManifest) -> None:
    """Refuse to mix embeddings of two models (or two precisions of one) in an index or a query."""
    if (manifest.graph_hash, manifest.precision) != (wanted.graph_hash, wanted.precision):
        raise SearchIndexError(
            f"index {index} was made with {manifest.model}; this run uses {wanted.model}. Embeddings of different "
            f"models or precisions do not mix: pass --bundle and --precision {manifest.precision} of the index's "
            "model, or write a new index with --out (the existing one is left as it is)"
        )


def check_same_preprocessing(index: Path, manifest: IndexManifest, wanted: IndexManifest) -> None:
    """Refuse to add images preprocessed in another mode than the index's rows (queries may use any mode)."""
    if manifest.preprocess != wanted.preprocess:
        raise SearchIndexError(
            f"index {index} was embedded with --preprocess {manifest.preprocess}; this run uses --preprocess "
            f"{wanted.preprocess}, whose vectors differ slightly: pass --preprocess {manifest.preprocess} to update "
            "it, or write a new index with --out (the existing one is left as it is)"
        )


def scan(folders: Iterable[str | os.PathLike[str]], *, videos: bool = False) -> list[Path]:
    """Every image file under the folders, recursively, absolute, sorted, each once; `videos`: video files and
    ROS 2 bag folders too."""
    from edgeclip.images import IMAGE_SUFFIXES

    found: set[Path] = set()
    wanted = IMAGE_SUFFIXES + (VIDEO_SUFFIXES if videos else ())
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            what = "is a file" if root.exists() else "does not exist"
            raise InputError(f"{root} {what}; give folders of images to index")
        for dirpath, dirnames, names in os.walk(root, followlinks=False):
            if videos and "metadata.yaml" in names:  # a ROS 2 bag: one item, its storage files not walked
                found.add(Path(dirpath).absolute())
                dirnames.clear()
                continue
            for name in names:
                if name.lower().endswith(wanted) and not name.startswith("."):
                    found.add(Path(dirpath, name).absolute())
    return sorted(found)


def is_recording(path: str | Path) -> bool:
    """A video file or a ROS 2 bag folder (sampled frame by frame), not a still image."""
    return str(path).lower().endswith(VIDEO_SUFFIXES) or Path(path).is_dir()


def prepare_output(out: Path) -> IndexManifest | None:
    """The manifest of an existing index at `out`, or None for a new one; anything else there is refused untouched."""
    if out.exists() and not store.is_index(out):
        if out.is_dir() and not any(out.iterdir()):
            return None
        raise SearchIndexError(
            f"{out} exists and is not an edgeclip index (no {store.MANIFEST}); nothing was written there. Give a new "
            "or empty folder, or an index made by 'edgeclip index'"
        )
    if not out.exists():
        if not out.parent.is_dir():
            raise InputError(f"cannot write index {out}: the folder {out.parent} does not exist; create it first")
        return None
    return store.read_manifest(out)


def build_index(
    folders: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    identity: IndexManifest,
    embed: Embedder,
    *,
    segment_rows: int = SEGMENT_ROWS,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    ann: bool | None = None,
    video_every: int | None = None,
    embed_frames: FrameEmbedder | None = None,
) -> IndexReport:
    """Bring the index at `out` up to date with the images under `folders`, embedded by `embed` with the model
    `identity` names (`model_identity`). ann: build the approximate index (None: when the index is large).
    video_every: index video files and ROS 2 bags too, every N-th frame (read by edgeclip.stream's sources),
    embedded by `embed_frames` in this process."""
    out = Path(out)
    existing = prepare_output(out)
    if existing is not None:
        check_same_model(out, existing, identity)
        check_same_preprocessing(out, existing, identity)
    sampler = None
    if video_every is not None:
        if embed_frames is None or video_every < 1:
            raise InputError(f"video_every must be >= 1 and come with embed_frames; got {video_every!r}")
        sampler = _sampler(video_every, embed_frames)
    files = scan(folders, videos=sampler is not None)  # before creating anything: a wrong folder must cost nothing
    out.mkdir(exist_ok=True)
    manifest = existing or store.write_manifest(out, identity)
    store.remove_debris(out, manifest)

    old = store.read_rows(out, manifest)
    stats = {str(f): _stat(f) for f in files}
    old_at: dict[str, list[int]] = {}  # a video has a row per sampled frame
    for i, p in enumerate(old.path):
        old_at.setdefault(p, []).append(i)
    keep = np.zeros(len(old), bool)
    todo: list[str] = []
    for path, st in stats.items():
        at = old_at.get(path)
        if st is not None and at and (old.size[at[0]], old.mtime_ns[at[0]]) == st:
            keep[at] = True
        else:
            todo.append(path)
    # The vectors of still images whose bytes are known: a changed file with known bytes keeps its vector.
    by_hash = {h: old.vector[i] for i, h in enumerate(old.sha256) if old.frame[i] < 0}
    dropped = len(old) - int(keep.sum())
    if dropped:  # the files gone or changed leave the index first; what replaces them comes segment by segment
        manifest = _commit(out, manifest, old.take(keep), replace_all=True)
    if on_total is not None:
        on_total(len(todo))

    embedded = reused = 0
    failed: list[tuple[str, str]] = []
    for start in range(0, len(todo), segment_rows):
        chunk = todo[start : start + segment_rows]
        rows, n_embedded, n_reused, chunk_failed = _segment(
            chunk, stats, by_hash, embed, identity.embed_dim, on_progress, sampler
        )
        embedded, reused = embedded + n_embedded, reused + n_reused
        failed += chunk_failed
        if len(rows):
            manifest = _commit(out, manifest, rows)

    if len(manifest.segments) > COMPACT_SEGMENTS:
        manifest = _commit(out, manifest, store.read_rows(out, manifest), replace_all=True)
    manifest = _update_ann(out, manifest, ann, had=bool(existing and existing.ann))
    store.remove_debris(out, manifest)
    return IndexReport(
        index=out,
        rows=manifest.rows,
        embedded=embedded,
        reused=reused,
        unchanged=int(keep.sum()),
        dropped=dropped,
        failed=tuple(failed),
        ann=bool(manifest.ann),
        ann_recall=manifest.ann.get("params", {}).get("recall_at_10") if manifest.ann else None,
    )


Sampler = Callable[[str], tuple[list[int], list[float], np.ndarray]]


def _segment(
    chunk: list[str],
    stats: dict[str, tuple[int, int] | None],
    by_hash: dict[str, np.ndarray],
    embed: Embedder,
    dim: int,
    on_progress: Callable[[int], None] | None,
    sampler: Sampler | None = None,
) -> tuple[Rows, int, int, list[tuple[str, str]]]:
    """The rows of one segment: hashes first (a known hash keeps its vector), then one embedding call for the
    still images; recordings (videos, bags) frame by frame."""
    failed: list[tuple[str, str]] = []
    hashes: dict[str, str] = {}
    for path in chunk:
        try:
            if not is_text_name(path):
                failed.append((text_name(path), "its name is not valid UTF-8, which an index cannot store; rename it"))
                continue
            if stats[path] is None:
                raise OSError("it vanished or cannot be read")
            hashes[path] = _hash(path)
        except OSError as exc:
            failed.append((path, f"cannot read it: {getattr(exc, 'strerror', None) or exc}"))
    recordings = [p for p in chunk if p in hashes and sampler is not None and is_recording(p)]
    stills = [p for p in chunk if p in hashes and p not in recordings]
    known = [p for p in stills if hashes[p] in by_hash]
    new = [p for p in stills if hashes[p] not in by_hash]
    if on_progress is not None and len(chunk) - len(new) - len(recordings):
        on_progress(len(chunk) - len(new) - len(recordings))
    result = embed(new, on_progress) if new else None
    items: list[tuple[str, int, float, np.ndarray]] = [(p, -1, np.nan, by_hash[hashes[p]]) for p in known]
    if result is not None:
        items += [(new[i], -1, np.nan, v) for i, v in zip(result.rows, result.vectors, strict=True)]
        failed += [(new[i], why) for i, why in result.failed]
    frames_embedded = 0
    for path in recordings:
        try:
            indices, stamps, vectors = sampler(path) if sampler is not None else ([], [], np.zeros((0, dim)))
        except EdgeClipError as exc:
            failed.append((path, str(exc)))
        else:
            items += list(zip([path] * len(indices), indices, stamps, vectors, strict=True))
            frames_embedded += len(indices)
        if on_progress is not None:
            on_progress(1)
    items.sort(key=lambda item: (item[0], item[1]))
    sizes = [stats[p] or (0, 0) for p, *_ in items]
    rows = Rows(
        path=[p for p, *_ in items],
        frame=np.asarray([f for _, f, _, _ in items], np.int64),
        timestamp=np.asarray([t for _, _, t, _ in items], np.float64),
        size=np.asarray([s[0] for s in sizes], np.int64),
        mtime_ns=np.asarray([s[1] for s in sizes], np.int64),
        sha256=[hashes[p] for p, *_ in items],
        vector=np.asarray([v for *_, v in items], np.float32).reshape(len(items), dim),
    )
    return rows, (len(result.rows) if result is not None else 0) + frames_embedded, len(known), failed


def _sampler(every: int, embed_frames: FrameEmbedder) -> Sampler:
    """Every `every`-th frame of a video file or ROS 2 bag (from frame 0), embedded: (frame indices, timestamps in
    seconds (NaN where the source has none), vectors)."""
    try:
        from edgeclip.stream.sources import CorruptFrame, open_source
    except ImportError:
        raise InputError(
            "indexing videos and ROS 2 bags needs edgeclip.stream, which this installation lacks"
        ) from None

    def sample(path: str) -> tuple[list[int], list[float], np.ndarray]:
        indices: list[int] = []
        stamps: list[float] = []
        parts: list[np.ndarray] = []
        pending: list[np.ndarray] = []
        with open_source(path) as source:
            while True:
                try:
                    frame = source.read()
                except CorruptFrame:
                    continue
                if frame is None:
                    break
                if frame.index % every:
                    continue
                indices.append(frame.index)
                stamps.append(np.nan if frame.time is None else float(frame.time))
                pending.append(frame.image)
                if len(pending) == FRAME_CHUNK:
                    parts.append(embed_frames(pending))
                    pending = []
        if pending:
            parts.append(embed_frames(pending))
        if not indices:
            raise InputError(f"{path}: no frame could be read")
        return indices, stamps, np.concatenate(parts)

    return sample


def _hash(path: str) -> str:
    """sha256 of a file, or of a bag folder's files in name order."""
    if Path(path).is_dir():
        return sha256_files(*sorted(p for p in Path(path).rglob("*") if p.is_file()))
    return sha256_file(path)


def _commit(out: Path, manifest: IndexManifest, rows: Rows, *, replace_all: bool = False) -> IndexManifest:
    """Write `rows` as a segment and commit a manifest with it: added to the index, or (`replace_all`) as the
    whole index. The approximate index no longer matches and is dropped from the manifest."""
    names = [store.write_segment(out, rows)] if len(rows) else []
    segments = tuple(names) if replace_all else (*manifest.segments, *names)
    total = len(rows) if replace_all else manifest.rows + len(rows)
    return store.write_manifest(out, replace(manifest, segments=segments, rows=total, ann={}))


def _update_ann(out: Path, manifest: IndexManifest, wanted: bool | None, *, had: bool = False) -> IndexManifest:
    """Build, keep or drop the approximate index. wanted None: build it for a large index, or for one that had one
    (`had`: it was built with --ann before); True: build it; False: drop it."""
    from edgeclip.search import ann

    build = (had or ann.worth_building(manifest.rows)) if wanted is None else wanted
    if not build or manifest.rows == 0:
        return store.write_manifest(out, replace(manifest, ann={})) if manifest.ann else manifest
    current = manifest.ann
    if current and current.get("rows") == manifest.rows and (out / str(current.get("file"))).is_file():
        return manifest  # built for exactly these rows by an earlier run
    if not ann.available():
        if wanted:
            raise InputError(ann.missing_message())
        return manifest
    rows = store.read_rows(out, manifest)
    file = f"ann-{manifest.generation}.faiss"
    params = ann.build(rows.vector, out / file)
    params["recall_at_10"] = ann.measure_recall(rows.vector, out / file, int(params["nprobe"]))
    # Every commit that changes the rows drops "ann" from the manifest, so an "ann" entry always fits its rows.
    info = {"file": file, "kind": ann.KIND, "rows": manifest.rows, "params": params}
    return store.write_manifest(out, replace(manifest, ann=info))


def _stat(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file; of a bag folder: its files' total size and latest time."""
    try:
        if path.is_dir():
            stats = [p.stat() for p in path.rglob("*") if p.is_file()]
            return sum(st.st_size for st in stats), max((st.st_mtime_ns for st in stats), default=0)
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
