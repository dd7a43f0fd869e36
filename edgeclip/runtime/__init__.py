"""The light runtime: `load(bundle) -> Model` to embed images and text and classify zero-shot.

Needs numpy, a backend (ONNX Runtime now), tokenizers and OpenCV; never torch or onnx. A Model may be used from
several threads at once: the backends' sessions are thread-safe and the one shared cache is guarded by a lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeclip import zeroshot
from edgeclip.bundle import PRECISIONS, Bundle, GraphEntry
from edgeclip.errors import BackendError, BundleError, InputError
from edgeclip.runtime.backends import SPECS, Runner, available_backends, create_runner, resolve_backend
from edgeclip.zeroshot import Classification

if TYPE_CHECKING:
    from edgeclip.contract import ModelContract, TextSpec
    from edgeclip.preprocess import Preprocessor
    from edgeclip.tokenizer import Tokenizer

__all__ = ["Classification", "ImageEmbeddings", "Model", "available_backends", "builtin_bundle_path", "load"]

DEFAULT_BATCH = 32  # large enough to keep a CPU busy, small enough for a Jetson's memory at 224 px


def builtin_bundle_path() -> Path:
    """Where the bundle of the built-in model is shipped inside the package (it may not be there yet)."""
    return Path(__file__).resolve().parents[1] / "builtin" / "bundle"


def load(
    path: str | os.PathLike[str] | Bundle | None = None,
    backend: str = "auto",
    precision: str | Mapping[str, str] | None = None,
    *,
    threads: int | None = None,
    verify: bool = True,
) -> Model:
    """Open a bundle and start its graphs on a backend.

    path: a bundle directory (None: the built-in model). backend: "auto" (the fastest available; `Model.backend`
    says which) or a name from `available_backends()`; an unavailable one is a BackendError, never replaced.
    precision: "fp32" | "fp16" | "int8" for both towers, per tower as {"image": "int8", "text": "fp16"} or
    "image=int8,text=fp16" (a tower not named: the default), None: for each tower the fastest graph the bundle has
    for the backend that passed its accuracy gate (`best_precision`). threads: CPU threads per
    graph (None: the backend's default). verify: check the sha256 of the graph files.
    """
    wanted = parse_precision(precision)
    bundle = path if isinstance(path, Bundle) else Bundle.open(_bundle_path(path), verify=verify)
    name = resolve_backend(backend)
    runners: dict[str, Runner] = {}
    precisions: dict[str, str] = {}
    files: dict[str, str] = {}
    try:
        for tower in sorted({g.tower for g in bundle.manifest.graphs}):
            chosen = wanted.get(tower) or best_precision(bundle, tower, name)
            entry = bundle.graph(tower, chosen, backend=name)
            runners[tower] = _start(bundle, entry, name, auto=backend == "auto", threads=threads)
            precisions[tower] = entry.precision
            files[tower] = entry.file
    except BaseException:
        for runner in runners.values():
            runner.close()
        raise
    return Model(bundle, name, runners, precisions, files)


def parse_precision(precision: str | Mapping[str, str] | None) -> dict[str, str]:
    """`load`'s precision argument as {tower: precision} (towers not named: the default)."""
    if precision is None:
        return {}
    given = precision
    if isinstance(precision, str):
        if "=" not in precision:
            precision = {"image": precision, "text": precision}
        else:
            pairs = [part.split("=", 1) for part in precision.split(",") if part.strip()]
            precision = {k.strip(): v.strip() for k, v in (p if len(p) == 2 else (p[0], "") for p in pairs)}
    if not isinstance(precision, Mapping):
        raise InputError(f"precision must be a string or a mapping of tower to precision, got {given!r}")
    towers = ("image", "text")
    bad_towers = [t for t in precision if t not in towers]
    bad = [p for p in precision.values() if p not in PRECISIONS]
    if bad_towers or bad:
        raise InputError(
            f"unknown precision {given!r}; give one of {', '.join(PRECISIONS)}, or per tower as "
            "'image=int8,text=fp16' (or None: the fastest that passed its gate)"
        )
    return dict(precision)


def _start(bundle: Bundle, entry: GraphEntry, backend: str, *, auto: bool, threads: int | None) -> Runner:
    if len(entry.inputs) != 1 or len(entry.outputs) != 1:
        raise BundleError(
            f"graph {entry.file} of bundle {bundle.path} has {len(entry.inputs)} inputs and {len(entry.outputs)} "
            f"outputs; edgeclip graphs have one of each: export the bundle again"
        )
    limits = _dim_limits(entry.tower, entry.inputs[0].shape, bundle.manifest.contract)
    try:
        runner = create_runner(
            backend, bundle.file(entry), entry.inputs, entry.outputs, threads=threads, dim_limits=limits
        )
    except BackendError as exc:
        if not auto:
            raise
        # auto never falls back on its own: a backend that looked available but fails is reported.
        raise BackendError(
            f"backend 'auto' chose {backend!r}, the fastest that looked available here, and it failed: {exc}. "
            "Pass another backend explicitly (see 'edgeclip info')"
        ) from exc
    return runner


def _bundle_path(path: str | os.PathLike[str] | None) -> Path:
    if path is not None:
        return Path(path)
    builtin = builtin_bundle_path()
    if not (builtin / "edgeclip.json").is_file():
        raise BundleError(
            f"the built-in bundle is missing from this installation ({builtin} has no edgeclip.json): reinstall "
            "edgeclip, or pass a bundle directory: edgeclip.load('export/<name>') or --bundle DIR, made with "
            "'edgeclip export CHECKPOINT --out DIR'"
        )
    return builtin


def best_precision(bundle: Bundle, tower: str, backend: str) -> str:
    """The precision `load(precision=None)` runs for `tower` on `backend`: the fastest the bundle has for that
    backend whose graph passed its accuracy gate (fp32 needs none)."""
    present = {
        g.precision
        for g in bundle.graphs_for(backend)
        if g.tower == tower and (g.precision == "fp32" or g.gate.get("passed") is True)
    }
    for precision in SPECS[backend].precisions:
        if precision in present:
            return precision
    return "fp32"  # not reached for a valid bundle; bundle.graph then names what is present


def _dim_limits(tower: str, shape: tuple[int | str, ...], contract: ModelContract) -> dict[str, tuple[int, int | None]]:
    # The text graph takes any length up to the context length it was exported with (its position embeddings).
    if tower == "text" and len(shape) == 2 and isinstance(shape[1], str):
        return {shape[1]: (1, contract.text.context_length)}
    return {}


@dataclass(frozen=True)
class ImageEmbeddings:
    """What `Model.encode_image_files` returns: rows for the images that could be read, and what failed."""

    vectors: np.ndarray  # (M, D) float32, L2-normalized, the readable images in input order
    rows: tuple[int, ...]  # rows[i]: the input index of vectors[i]
    failed: tuple[tuple[int, str], ...]  # (input index, why) of each image that could not be read


class Model:
    """A bundle running on one backend. Make it with `edgeclip.load`."""

    def __init__(
        self,
        bundle: Bundle,
        backend: str,
        runners: dict[str, Runner],
        precisions: dict[str, str],
        files: dict[str, str] | None = None,
    ) -> None:
        self.bundle = bundle
        self.backend = backend
        self.precisions = dict(precisions)  # tower -> precision of the graph that runs
        self.files = dict(files or {})  # tower -> the graph file that runs (two int8 graphs serve other backends)
        self._runners = runners
        self._tokenizer: Tokenizer | None = None
        self._preprocessor: Preprocessor | None = None
        self._banks: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def contract(self) -> ModelContract:
        return self.bundle.manifest.contract

    def runner(self, tower: str) -> Runner:
        """The runner of a tower ("image" | "text"): `runner.infer(feeds)` for raw graph calls."""
        if tower not in self._runners:
            raise BundleError(
                f"bundle {self.bundle.path} has no {tower} graph (it has: {', '.join(sorted(self._runners))})"
            )
        return self._runners[tower]

    # ------------------------------------------------------------ images

    def encode_image(self, images: Any, *, color_order: str = "RGB", batch_size: int | None = None) -> np.ndarray:
        """(N, D) float32 L2-normalized embeddings, rows in input order.

        images: one image or a sequence of them; an image is a file path, encoded bytes, a PIL image or an HWC
        uint8 array in `color_order` ("RGB", or "BGR" for OpenCV frames). A bad image raises ImageDecodeError.
        """
        items = _image_list(images)
        preprocess = self.preprocessor
        parts = [
            self._run("image", preprocess(chunk, color_order=color_order))
            for chunk in _chunks(items, self._batch("image", batch_size))
        ]
        return self._stack(parts)

    def encode_image_files(
        self,
        images: Sequence[Any],
        *,
        color_order: str = "RGB",
        batch_size: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> ImageEmbeddings:
        """Like `encode_image`, but an image that cannot be read is skipped and reported instead of raised."""
        from edgeclip.images import decode

        preprocess = self.preprocessor
        parts, rows, failed = [], [], []
        start = 0
        for chunk in _chunks(list(images), self._batch("image", batch_size)):
            decoded = []
            for i, item in enumerate(chunk, start=start):
                try:
                    pixels = decode(item, color_order)  # files are read and decoded once, here
                except InputError as exc:  # ImageDecodeError, or an image that edgeclip cannot take
                    failed.append((i, str(exc)))
                    continue
                decoded.append(pixels.image if pixels.image is not None else item)
                rows.append(i)
            if decoded:
                parts.append(self._run("image", preprocess(decoded, color_order=color_order)))
            start += len(chunk)
            if on_progress is not None:
                on_progress(len(chunk))
        return ImageEmbeddings(self._stack(parts), tuple(rows), tuple(failed))

    # ------------------------------------------------------------ text

    def encode_text(self, texts: str | Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """(N, D) float32 L2-normalized embeddings of the texts, rows in input order."""
        items = [texts] if isinstance(texts, str) else list(texts)
        bad = [i for i, t in enumerate(items) if not isinstance(t, str)]
        if bad:
            raise InputError(f"texts must be strings; items {bad} are not (first: {type(items[bad[0]]).__name__})")
        tokenize = self.tokenizer
        trim = isinstance(self.runner("text").inputs[0].shape[-1], str)  # a graph of dynamic length
        parts = []
        for chunk in _chunks(items, self._batch("text", batch_size)):
            ids = tokenize(chunk)
            parts.append(self._run("text", _trim_padding(ids, self.contract.text) if trim else ids))
        return self._stack(parts)

    # ------------------------------------------------------------ zero-shot

    def label_bank(
        self, labels: Sequence[str], templates: str | os.PathLike[str] | Sequence[str] | None = None
    ) -> np.ndarray:
        """(L, D) float32 text embeddings of the labels, templates ensembled; cached in memory and on disk."""
        labels = zeroshot.check_labels(labels)
        prompts = zeroshot.load_templates(templates)
        model_key = f"{self.bundle.graph_hash()}/text-{self.files.get('text', self.precisions.get('text', '?'))}"
        key = zeroshot.bank_key(model_key, labels, prompts)
        with self._lock:
            bank = self._banks.get(key)
        if bank is None:
            bank = zeroshot.cached_label_bank(
                self.encode_text, labels, prompts, model_key=model_key, embed_dim=self.contract.head.embed_dim
            )
            with self._lock:
                self._banks[key] = bank
        return bank

    def classify(
        self,
        images: Any,
        labels: Sequence[str],
        *,
        templates: str | os.PathLike[str] | Sequence[str] | None = None,
        top_k: int = 5,
        color_order: str = "RGB",
        batch_size: int | None = None,
    ) -> list[Classification]:
        """Zero-shot: per image, the `top_k` best labels with their scores, best first."""
        zeroshot.check_top_k(top_k)
        labels = zeroshot.check_labels(labels)
        bank = self.label_bank(labels, templates)  # checks labels and templates before any image work
        embeds = self.encode_image(images, color_order=color_order, batch_size=batch_size)
        return self.classify_embeddings(embeds, labels, bank=bank, top_k=top_k)

    def classify_embeddings(
        self,
        image_embeds: np.ndarray,
        labels: Sequence[str],
        *,
        templates: str | os.PathLike[str] | Sequence[str] | None = None,
        top_k: int = 5,
        bank: np.ndarray | None = None,
    ) -> list[Classification]:
        """Zero-shot on image embeddings already computed (from `encode_image`)."""
        labels = zeroshot.check_labels(labels)
        if bank is None:
            bank = self.label_bank(labels, templates)
        probs = zeroshot.scores(image_embeds, bank, self.contract.head)
        return zeroshot.top_labels(probs, labels, top_k)

    # ------------------------------------------------------------ plumbing

    def _batch(self, tower: str, batch_size: int | None) -> int:
        limit = self.runner(tower).max_batch
        if batch_size is None:
            return min(DEFAULT_BATCH, limit) if limit else DEFAULT_BATCH
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        if limit is not None and batch_size > limit:
            raise InputError(f"batch_size {batch_size} is above the {tower} graph's limit of {limit}")
        return batch_size

    def _run(self, tower: str, batch: np.ndarray) -> np.ndarray:
        runner = self.runner(tower)
        spec = runner.inputs[0]
        feed = np.ascontiguousarray(batch, dtype=np.dtype(spec.dtype))  # fp16 graphs may take float16 pixels
        n = len(feed)
        fixed = spec.shape[0] if isinstance(spec.shape[0], int) else None
        if fixed is not None and n < fixed:  # a graph exported with a fixed batch: fill up, then drop the filler
            feed = np.concatenate([feed, np.repeat(feed[-1:], fixed - n, axis=0)])
        out = runner.infer({spec.name: feed})[runner.outputs[0].name][:n]
        return np.asarray(out, dtype=np.float32)

    def _stack(self, parts: list[np.ndarray]) -> np.ndarray:
        if not parts:
            return np.zeros((0, self.contract.head.embed_dim), np.float32)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    @property
    def tokenizer(self) -> Tokenizer:
        """The contract's tokenizer (the bundle's files, or the shipped CLIP BPE): texts -> int64 (B, L) ids."""
        with self._lock:
            if self._tokenizer is None:
                from edgeclip.tokenizer import Tokenizer

                folder = self.bundle.tokenizer_dir()
                spec = self.contract.text
                self._tokenizer = Tokenizer(spec) if folder is None else Tokenizer.from_pretrained_dir(folder, spec)
            return self._tokenizer

    @property
    def preprocessor(self) -> Preprocessor:
        """The contract's image preprocessing: images -> float32 (B, 3, S, S)."""
        with self._lock:
            if self._preprocessor is None:
                from edgeclip.preprocess import Preprocessor

                self._preprocessor = Preprocessor(self.contract.image)
            return self._preprocessor

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        graphs = ", ".join(f"{t}/{p}" for t, p in sorted(self.precisions.items()))
        return f"Model({str(self.bundle.path)!r}, backend={self.backend!r}, graphs=[{graphs}])"


def _image_list(images: Any) -> list[Any]:
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike)) or type(images).__module__.startswith(
        "PIL."
    ):
        return [images]
    if isinstance(images, np.ndarray):
        return [images] if images.ndim in (2, 3) else list(images)  # (N, H, W, C): a batch of frames
    if isinstance(images, Iterable):
        return list(images)
    raise InputError(
        f"images must be a path, bytes, a PIL image, an HWC uint8 array or a sequence of those; "
        f"got {type(images).__name__}"
    )


def _trim_padding(ids: np.ndarray, spec: TextSpec) -> np.ndarray:
    """The ids without the padding columns after every row's pooled token.

    A causal text tower never looks past the token it pools, so those columns cannot change the embedding; cutting
    them makes a batch of short prompts (label banks: labels x templates) several times cheaper than at full length.
    """
    if not spec.causal or spec.pooling == "last" or ids.shape[1] == 0:
        return ids
    if spec.pooling == "eot":
        found = ids == spec.eot_id
        pooled = np.where(found.any(axis=1), found.argmax(axis=1), ids.shape[1] - 1)
    else:  # "argmax": the first position of the largest id, as torch.argmax picks it
        pooled = ids.argmax(axis=1)
    return ids[:, : int(pooled.max()) + 1]


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
