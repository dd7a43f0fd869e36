"""`Model`: a bundle running on one backend; embeds images and text and classifies zero-shot.

A Model may be used from several threads at once: the backends' sessions are thread-safe and the one shared cache
is guarded by a lock.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeclip import zeroshot
from edgeclip.bundle import Bundle
from edgeclip.errors import BundleError, InputError
from edgeclip.runtime.backends import Runner
from edgeclip.zeroshot import Classification

if TYPE_CHECKING:
    from edgeclip.contract import ModelContract, TextSpec
    from edgeclip.preprocess import Preprocessor
    from edgeclip.runtime.backends.base import ImagePipeline
    from edgeclip.tokenizer import Tokenizer

__all__ = ["DEFAULT_BATCH", "ImageEmbeddings", "Model", "trim_padding"]

DEFAULT_BATCH = 32  # large enough to keep a CPU busy, small enough for a Jetson's memory at 224 px


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
        *,
        preprocess: str = "exact",
        threads: int | None = None,
    ) -> None:
        from edgeclip.preprocess import check_mode, default_threads

        check_mode(preprocess)
        self.bundle = bundle
        self.preprocess = preprocess  # "exact" | "fast": the CPU preprocessor's mode (edgeclip.preprocess)
        # The images of a batch are decoded and resized on this many threads (PIL, libjpeg and OpenCV release the
        # GIL): the cores the backend's graphs use (`threads` of `load`; None or ONNX Runtime's 0, "its default":
        # every core, at most 8).
        self.preprocess_threads = threads if threads else default_threads()
        self.backend = backend
        self.precisions = dict(precisions)  # tower -> precision of the graph that runs
        self.files = dict(files or {})  # tower -> the graph file that runs (two int8 graphs serve other backends)
        self._runners = runners
        self._tokenizer: Tokenizer | None = None
        self._preprocessor: Preprocessor | None = None
        self._pipeline: ImagePipeline | None = None
        self._pipeline_asked = False
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
        embed = self._image_embedder()
        parts = [embed(chunk, color_order) for chunk in _chunks(items, self._batch("image", batch_size))]
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

        embed = self._image_embedder()
        on_cpu = self.image_pipeline is None  # the CPU preprocessor takes its own decode (a "fast" one drafts JPEGs)
        parts, rows, failed = [], [], []
        start = 0

        def read(item: Any) -> Any:
            try:  # files are read and decoded once, here
                return self.preprocessor.decode(item, color_order) if on_cpu else decode(item, color_order)
            except InputError as exc:  # ImageDecodeError, or an image that edgeclip cannot take
                return exc

        with ThreadPoolExecutor(self.preprocess_threads) as pool:
            for chunk in _chunks(list(images), self._batch("image", batch_size)):
                decoded: list[Any] = []
                for i, (item, pixels) in enumerate(zip(chunk, pool.map(read, chunk), strict=True), start=start):
                    if isinstance(pixels, InputError):
                        failed.append((i, str(pixels)))
                        continue
                    decoded.append(pixels if on_cpu else pixels.image if pixels.image is not None else item)
                    rows.append(i)
                if decoded:
                    parts.append(embed(decoded, color_order))
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
        parts, cut = [], []
        for chunk in _chunks(items, self._batch("text", batch_size)):
            ids = tokenize(chunk)
            cut += _cut_texts(tokenize, chunk, ids, self.contract.text)
            parts.append(self._run("text", trim_padding(ids, self.contract.text) if trim else ids))
        if cut:
            shown = ", ".join(repr(t if len(t) <= 60 else t[:57] + "...") for t in cut[:3])
            more = f" and {len(cut) - 3} more" if len(cut) > 3 else ""
            warnings.warn(
                f"{len(cut)} text(s) longer than the model's context of {self.contract.text.context_length} tokens "
                f"were cut to fit: {shown}{more}",
                RuntimeWarning,
                stacklevel=2,
            )
        return self._stack(parts)

    # ------------------------------------------------------------ zero-shot

    def label_bank(
        self, labels: Sequence[str], templates: str | os.PathLike[str] | Sequence[str] | None = None
    ) -> np.ndarray:
        """(L, D) float32 text embeddings of the labels, templates ensembled; cached in memory and on disk."""
        labels = zeroshot.check_labels(labels)
        zeroshot.check_distinct(labels, self.tokenizer(list(labels)))
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
        """How many inputs are prepared and run at once: `batch_size`, checked against the graph's limit, and no
        more than the backend runs at once (the CPU provider: 8 rows), so that decoded images and pixel arrays of
        a large batch are not all held at the same time."""
        runner = self.runner(tower)
        limit = runner.max_batch
        if batch_size is None:
            batch_size = min(DEFAULT_BATCH, limit) if limit else DEFAULT_BATCH
        elif isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        elif limit is not None and batch_size > limit:
            raise InputError(f"batch_size {batch_size} is above the {tower} graph's limit of {limit}")
        rows = runner.slice_rows
        return min(batch_size, rows) if rows else batch_size

    def _image_embedder(self) -> Callable[[list[Any], str], np.ndarray]:
        """images, color order -> (B, D) embeddings: on the image runner's own device where it has a pipeline there
        (a GPU backend: frames uploaded once, resized on the GPU), else the CPU preprocessor and the runner."""
        pipeline = self.image_pipeline
        if pipeline is not None:
            return lambda chunk, color_order: np.asarray(pipeline(chunk, color_order), dtype=np.float32)
        preprocess = self.preprocessor
        return lambda chunk, color_order: self._run("image", preprocess(chunk, color_order=color_order))

    @property
    def image_pipeline(self) -> ImagePipeline | None:
        """Preprocessing and the image graph on the image runner's device, where it has one (the torch backend on a
        GPU); None: images go through the CPU `preprocessor`."""
        with self._lock:
            if not self._pipeline_asked:
                self._pipeline = self.runner("image").image_pipeline(self.contract.image)
                self._pipeline_asked = True
            return self._pipeline

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
        """The contract's image preprocessing: images -> float32 (B, 3, S, S), in the mode `load` was given."""
        with self._lock:
            if self._preprocessor is None:
                from edgeclip.preprocess import Preprocessor

                self._preprocessor = Preprocessor(
                    self.contract.image, mode=self.preprocess, threads=self.preprocess_threads
                )
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


def _cut_texts(tokenize: Tokenizer, texts: Sequence[str], ids: np.ndarray, spec: TextSpec) -> list[str]:
    """The texts whose tokens did not fit the context (their rows have no padding, and their BPE is too long)."""
    full = np.flatnonzero(ids[:, -1] != spec.pad_id).tolist()
    encode = getattr(tokenize, "encode", None)
    if encode is None:
        return []
    return [texts[i] for i in full if len(encode(texts[i])) + 2 > ids.shape[1]]


def trim_padding(ids: np.ndarray, spec: TextSpec) -> np.ndarray:
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


_trim_padding = trim_padding  # the name edgeclip 0.x code imported
