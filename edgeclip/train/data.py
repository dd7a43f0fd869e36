"""Training batches: from the synthetic world, a CSV/JSONL of image-caption pairs, or a folder of captioned images.

Every source is a pure function of (seed, step): `source.batch(step)` always returns the same batch, so the data
stream's whole state is the step number and a resumed run continues exactly. Pairs whose captions are equal (or
whose scenes have the same canonical caption) are marked as positives of each other in `Batch.positives`.
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeclip.contract import ImageSpec
from edgeclip.errors import InputError
from edgeclip.images import IMAGE_SUFFIXES

COLOR_WORDS = frozenset({"red", "green", "blue", "yellow", "orange", "purple", "white", "black"})  # the world's


@dataclass(frozen=True)
class Batch:
    pixels: np.ndarray  # (B, 3, S, S) float32, preprocessed as the model contract says
    texts: list[str]
    positives: np.ndarray  # (B, B) bool: positives[i, j] means text j describes image i; the diagonal is True
    scenes: tuple[Any, ...] = ()  # the world's scenes behind the images, when the source knows them


class BatchSource(Protocol):
    batch_size: int

    def batch(self, step: int) -> Batch: ...

    def describe(self) -> dict[str, Any]: ...

    def skipped(self) -> dict[str, int]: ...

    def close(self) -> None: ...


def positives_mask(texts: Sequence[str], keys: Sequence[str] | None = None) -> np.ndarray:
    """(B, B) bool: equal texts (case and spacing folded), or equal keys (canonical captions), are positives."""
    norm = np.array([" ".join(t.lower().split()) for t in texts])
    mask = norm[:, None] == norm[None, :]
    if keys is not None:
        k = np.array(list(keys))
        mask |= k[:, None] == k[None, :]
    return mask


class Normalizer:
    """The runtime's preprocessing split in two: resize to uint8 (once per image), normalize (once per use)."""

    def __init__(self, spec: ImageSpec) -> None:
        from edgeclip.preprocess import Preprocessor

        self._pre = Preprocessor(spec)
        # The runtime's own lookup table, so a pooled image equals a preprocessed one.
        self._table = np.ascontiguousarray(self._pre.lookup.T)  # (256, 3)

    def resized(self, image: Any) -> np.ndarray:
        """(S, S, 3) uint8 RGB of any image the runtime takes (an array, a PIL image, a path)."""
        pixels = np.asarray(self._pre.resized(image))
        if pixels.ndim == 2:  # a gray image: the runtime normalizes its one channel as each of R, G and B
            return np.repeat(pixels[..., None], 3, axis=-1)
        return pixels[..., :3]  # PIL may hand back its RGBX layout

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 -> (B, 3, S, S) float32, a view of channels-last memory (what a ResNet trains on)."""
        out = self._table[pixels, np.arange(3)]  # (B, S, S, 3)
        return out.transpose(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------------------- world
@dataclass(frozen=True)
class WorldOptions:
    """How the world is sampled. The pool keeps rendering cheap: each scene is rendered once and used ~reuse times."""

    seed: int = 0
    chunk_size: int = 256  # scenes rendered together, from one seed
    pool_chunks: int = 32  # chunks a batch can draw from
    steps_per_chunk: int = 4  # one chunk leaves the pool (and a fresh one enters) every this many steps
    captions_per_scene: int = 4  # phrasings drawn per scene when it is rendered; one is picked per use
    shift: int = 0  # random translation of up to this many pixels (augmentation; 0: none)
    # Training scenes are rendered smaller than the world's default (160-480 px): about 4x cheaper, and the model
    # sees them only after the resize to its input size anyway.
    min_side: int = 96
    max_side: int = 192
    # Share of scenes of one object of a seen pair (the world's "seen" split), on top of the "train" split's own
    # one-object scenes: single objects teach color and shape fastest; held-out pairs stay out either way.
    single_p: float = 0.0
    # Probability that an image whose caption names no color is shown in grayscale. In the world, color predicts
    # shape (each color lacks its two held-out shapes), so a model learns color-specific shape features and cannot
    # name the shape of a held-out pair; gray pictures of "a star" teach shape apart from color.
    gray_p: float = 0.0
    # Share of pictures shown in grayscale with a caption that names no color (sampled for that): many more
    # shape-only examples than gray_p alone gives, so shape features cannot lean on color. Gray pictures show
    # no color, so no held-out color-shape pair is ever shown.
    decolor_p: float = 0.0
    # Probability that an image whose caption names no color (and that gray_p left in color) has its hue turned
    # so that every colored object lands on a hue that no color name covers (at least HUE_MARGIN degrees from every
    # named range: teal, lime, pink, indigo): shape examples in colors the vocabulary never pairs with any shape,
    # so shape features cannot lean on color, while no named color-shape pair (held-out or not) is ever shown.
    offhue_p: float = 0.0
    # Mark every caption that is true of a picture as its positive, not only its own and equal ones: "a star" or
    # "two shapes" describe many pictures of a batch, and a loss that calls those pairs negatives fights itself.
    true_positives: bool = False
    # Domain randomization (see `edgeclip.world.randomize`): the share of scenes drawn in random styles (fills,
    # outlines, warps, wobbly contours, cluttered backgrounds, harsh light, blur, compression), and the share of
    # "train" scenes that are one object of any size anywhere, named by color and shape only.
    randomize: float = 0.0
    free_p: float = 0.0


class WorldSource:
    """Batches of the synthetic world's training scenes (never a held-out color-shape pair).

    Worker processes render chunks of scenes ahead of the trainer (processes, not threads: rendering is partly
    Python and would hold the GIL the training loop needs). At step t the pool holds chunks
    [t // steps_per_chunk, t // steps_per_chunk + pool_chunks), chunk c rendered from seed (seed, c), so the batch
    of a step never depends on timing.
    """

    def __init__(
        self, image: ImageSpec, batch_size: int, options: WorldOptions | None = None, workers: int = 1
    ) -> None:
        self.options = options or WorldOptions()
        if batch_size > self.options.chunk_size * self.options.pool_chunks:
            raise InputError(
                f"batch size {batch_size} is larger than the world pool ({self.options.pool_chunks} chunks of "
                f"{self.options.chunk_size} scenes): lower the batch size or enlarge the pool"
            )
        self.batch_size = batch_size
        self.image = image
        self.workers = workers
        self._normalizer = Normalizer(image)
        self._chunks: dict[int, Any] = {}  # chunk index -> Future of its `_Chunk`
        self._executor: Any = None

    def describe(self) -> dict[str, Any]:
        return {"kind": "world", "batch_size": self.batch_size, **self.options.__dict__}

    def skipped(self) -> dict[str, int]:
        return {}

    def _schedule(self, first: int) -> None:
        """Drop chunks that left the pool; start rendering those it holds and the next one."""
        if self._executor is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: the trainer has torch's thread pools running, which a fork would copy in a broken state.
            self._executor = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.image, self.options),
            )
        for c in [c for c in self._chunks if c < first]:
            self._chunks.pop(c).cancel()
        for c in range(first, first + self.options.pool_chunks + 1):
            if c not in self._chunks:
                self._chunks[c] = self._executor.submit(_render_chunk, c)

    def batch(self, step: int) -> Batch:
        from edgeclip.world.captions import phrase_code, scene_code, truth_matrix

        opts = self.options
        first = step // opts.steps_per_chunk
        self._schedule(first)
        rng = np.random.default_rng([opts.seed, 2, step])
        picks = rng.choice(opts.pool_chunks * opts.chunk_size, size=self.batch_size, replace=False)
        size = self.image.size
        pixels = np.empty((self.batch_size, size, size, 3), dtype=np.uint8)
        texts, phrases, canon, scenes, colorless = [], [], [], [], []
        for b, p in enumerate(picks):
            chunk = self._chunks[first + int(p) // opts.chunk_size].result()
            i = int(p) % opts.chunk_size
            pixels[b] = chunk.pixels[i]
            options = chunk.captions[i]
            text, said = options[int(rng.integers(len(options)))]
            texts.append(text)
            phrases.append(said)
            canon.append(chunk.canonical[i])
            scenes.append(chunk.scenes[i])
            colorless.append(chunk.colorless[i])
        no_color = np.zeros(self.batch_size, dtype=bool)  # gray or off-palette
        if opts.decolor_p > 0:
            decolored = rng.random(self.batch_size) < opts.decolor_p
            for k in np.flatnonzero(decolored).tolist():
                texts[k], phrases[k] = colorless[k][int(rng.integers(len(colorless[k])))]
                pixels[k] = _grayscale(pixels[k])
                canon[k] = f"gray picture {k}"
            no_color |= decolored
        if opts.gray_p > 0:
            maybe = rng.random(self.batch_size) < opts.gray_p
            for k in np.flatnonzero(maybe & ~no_color).tolist():
                if not COLOR_WORDS & set(texts[k].split()):
                    pixels[k] = _grayscale(pixels[k])
                    canon[k] = f"gray picture {k}"  # no longer interchangeable with colored pictures of its scene
                    no_color[k] = True
        if opts.offhue_p > 0:
            maybe = rng.random(self.batch_size) < opts.offhue_p
            for k in np.flatnonzero(maybe & ~no_color).tolist():
                if COLOR_WORDS & set(texts[k].split()):
                    continue
                turn = offpalette_turn({obj.color for obj in scenes[k].objects}, rng)
                if turn is not None:
                    pixels[k] = turn_hue(pixels[k], turn)
                    canon[k] = f"off-palette picture {k}"
                    no_color[k] = True  # as a gray picture: no caption that names a color is true of it
        if opts.shift:
            pixels = _shift(pixels, opts.shift, rng)
        positives = positives_mask(texts, canon)
        if opts.true_positives:
            # Every caption that is true of a picture is its positive ("something red" of every lone red object),
            # except that a gray or off-palette picture shows no color: captions naming one are not true of it.
            codes = [phrase_code(said) for said in phrases]
            named, counts = np.stack([c for c, _ in codes]), np.stack([n for _, n in codes])
            truth = truth_matrix(np.stack([scene_code(scene) for scene in scenes]), named, counts)
            names_color = ((named[:, :, 0] >= 0) & (counts > 0)).any(-1)
            truth[no_color] &= ~names_color
            positives |= truth
        return Batch(self._normalizer.normalize(pixels), texts, positives, tuple(scenes))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._chunks.clear()


_WORKER: dict[str, Any] = {}


def _init_worker(image: ImageSpec, options: WorldOptions) -> None:
    from edgeclip import world

    _follow_parent(os.getppid())

    _WORKER["world"] = world.World(
        options.seed,
        min_side=options.min_side,
        max_side=options.max_side,
        randomize=options.randomize,
        free_p=options.free_p,
    )
    _WORKER["normalizer"] = Normalizer(image)
    _WORKER["options"] = options


def _follow_parent(parent: int, interval: float = 1.0) -> threading.Thread:
    """End this worker within `interval` seconds of the trainer's end, however it ended. A trainer stopped by
    SIGTERM or SIGKILL runs no cleanup, and its pool's workers would otherwise wait on their queue forever."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(0)

    thread = threading.Thread(target=watch, name="edgeclip-follow-parent", daemon=True)
    thread.start()
    return thread


@dataclass(frozen=True)
class _Chunk:
    """`chunk_size` rendered scenes of the pool, with what a batch draws from them."""

    pixels: np.ndarray  # (N, S, S, 3) uint8, resized (a quarter of float32's memory); normalized when drawn
    scenes: list[Any]
    captions: list[list[tuple[str, tuple[Any, ...]]]]  # per scene: sampled (caption, its phrases)
    canonical: list[str]
    colorless: list[list[tuple[str, tuple[Any, ...]]]]  # per scene: captions naming no color (if decolor_p)


def _render_chunk(c: int) -> _Chunk:
    """Chunk c of the pool, rendered in a worker process from the seed (seed, 1, c)."""
    from edgeclip.world.captions import sample_described

    world, normalizer, opts = _WORKER["world"], _WORKER["normalizer"], _WORKER["options"]
    rng = np.random.default_rng([opts.seed, 1, c])
    scenes, pixels, captions, canon, colorless = [], [], [], [], []
    for _ in range(opts.chunk_size):
        scene = world.sample_scene(rng, "seen" if rng.random() < opts.single_p else "train")
        pixels.append(normalizer.resized(world.render(scene, rng)))
        captions.append([sample_described(scene, rng) for _ in range(opts.captions_per_scene)])
        canon.append(world.canonical_caption(scene))
        scenes.append(scene)
        n = opts.captions_per_scene if opts.decolor_p else 0
        colorless.append([sample_described(scene, rng, colors=False) for _ in range(n)])
    return _Chunk(np.stack(pixels), scenes, captions, canon, colorless)


def _grayscale(image: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 RGB -> its luma (ITU-R 601, as PIL's "L") in all three channels."""
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


HUE_MARGIN = 15  # degrees between an off-palette hue and every named color's hue range


def _degrees(lo: float, hi: float, margin: int = 0) -> np.ndarray:
    """The whole degrees of the hue arc [lo, hi] widened by `margin` on both sides, in [0, 360)."""
    return np.arange(int(np.floor(lo)) - margin, int(np.ceil(hi)) + margin + 1) % 360


@cache
def _hue_ranges() -> dict[str, tuple[float, float]]:
    """Each chromatic color name's hue range in degrees (white and black name no hue)."""
    from edgeclip.world.vocab import COLOR_HSV

    return {name: hue for name, (hue, _, _) in COLOR_HSV.items() if hue[1] - hue[0] < 360}


@cache
def _named_hues() -> np.ndarray:
    """(360,) bool: the whole degrees of hue within HUE_MARGIN of a chromatic color name's range."""
    near = np.zeros(360, dtype=bool)
    for lo, hi in _hue_ranges().values():
        near[_degrees(lo, hi, HUE_MARGIN)] = True
    return near


def offpalette_turn(colors: set[str], rng: np.random.Generator, tries: int = 16) -> int | None:
    """A hue rotation in whole degrees that takes every chromatic color of `colors` (world color names) wholly
    off the named hues (HUE_MARGIN included), or None if `tries` random turns found none (or no color has a hue)."""
    ranges = [_hue_ranges()[c] for c in sorted(colors) if c in _hue_ranges()]
    if not ranges:
        return None
    near = _named_hues()
    for turn in rng.integers(0, 360, size=tries).tolist():
        if not any(near[(_degrees(lo, hi) + turn) % 360].any() for lo, hi in ranges):
            return int(turn)
    return None


def turn_hue(image: np.ndarray, degrees: int) -> np.ndarray:
    """(S, S, 3) uint8 RGB with its hue rotated by `degrees` (OpenCV's full-range HSV, 256 hue steps)."""
    import cv2

    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + round(degrees * 256 / 360)) % 256).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def _shift(pixels: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Translate each (B, S, S, 3) image by up to `limit` pixels, filling with edge pixels (a cheap augmentation)."""
    out = np.empty_like(pixels)
    size = pixels.shape[1]
    padded = np.pad(pixels, ((0, 0), (limit, limit), (limit, limit), (0, 0)), mode="edge")
    for b, (dy, dx) in enumerate(rng.integers(0, 2 * limit + 1, size=(len(pixels), 2))):
        out[b] = padded[b, dy : dy + size, dx : dx + size]
    return out


# ---------------------------------------------------------------------------------------------------------- pairs
@dataclass
class PairsSource:
    """Image-caption pairs from a CSV/JSONL file or a folder; shuffled per epoch from the seed.

    Missing image files and empty captions are skipped when the list is read; images that fail to decode are
    skipped (and replaced by another pair) when they are first met. `skipped()` counts both by reason.
    """

    pairs: list[tuple[Path, str]]
    image: ImageSpec
    batch_size: int
    seed: int = 0
    origin: str = ""
    _skipped: Counter[str] = field(default_factory=Counter)
    _bad: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.pairs:
            raise InputError(f"no usable image-caption pairs in {self.origin}: {_format_skips(self._skipped)}")
        self._normalizer = Normalizer(self.image)

    def describe(self) -> dict[str, Any]:
        return {"kind": "pairs", "origin": self.origin, "pairs": len(self.pairs), "batch_size": self.batch_size}

    def skipped(self) -> dict[str, int]:
        return dict(self._skipped)

    def close(self) -> None:
        pass

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.pairs))
        return int(np.random.default_rng([self.seed, 3, epoch]).permutation(len(self.pairs))[offset])

    def _load(self, index: int) -> np.ndarray | None:
        """The picture resized as the runtime decodes and resizes it (16-bit PNGs, alpha, EXIF orientation)."""
        if index in self._bad:
            return None
        try:
            return self._normalizer.resized(self.pairs[index][0])
        except (OSError, ValueError, SyntaxError):  # InputError (a ValueError) for files the runtime cannot decode
            self._bad.add(index)
            self._skipped["image could not be decoded"] += 1
            if len(self._bad) == len(self.pairs):
                raise InputError(
                    f"no image in {self.origin} could be decoded ({len(self.pairs)} tried): check the files"
                ) from None
            return None

    def batch(self, step: int) -> Batch:
        images, texts = [], []
        for k in range(self.batch_size):
            index = self._index(step * self.batch_size + k)
            image = self._load(index)
            # A bad image is replaced by a pair drawn from (seed, step, k): the same one on every run.
            rng = np.random.default_rng([self.seed, 4, step, k])
            while image is None:
                index = int(rng.integers(len(self.pairs)))
                image = self._load(index)
            images.append(image)
            texts.append(self.pairs[index][1])
        return Batch(self._normalizer.normalize(np.stack(images)), texts, positives_mask(texts))


def _format_skips(skipped: Counter[str]) -> str:
    if not skipped:
        return "the list is empty"
    return ", ".join(f"{n} skipped: {reason}" for reason, n in skipped.most_common())


def _read_rows(path: Path) -> list[tuple[str, str]]:
    """(image, caption) rows of a CSV (header `image,caption`) or a JSONL file (objects with those keys)."""
    rows: list[tuple[str, str]] = []
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                rows.append((str(obj["image"]), str(obj.get("caption") or "")))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InputError(
                    f"{path} line {n} is not a JSON object with an 'image' key ({exc}); "
                    'each line must look like {"image": "a.jpg", "caption": "a red circle"}'
                ) from None
        return rows
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if "image" not in header or "caption" not in header:
            raise InputError(f"{path} must have a header row with the columns 'image' and 'caption'; found {header}")
        rows = [(row["image"] or "", row["caption"] or "") for row in reader]
    return rows


def read_pairs(path: Path) -> tuple[list[tuple[Path, str]], Counter[str]]:
    """Usable (image path, caption) pairs of a CSV/JSONL file or a folder, and the skips counted by reason.

    Relative image paths are resolved against the file's folder; a folder pairs `name.txt` with the image `name.*`.
    """
    skipped: Counter[str] = Counter()
    pairs: list[tuple[Path, str]] = []
    if path.is_dir():
        images = {p.stem: p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        for stem, image in images.items():
            text_file = image.with_name(stem + ".txt")
            if not text_file.is_file():
                skipped["no caption file beside the image"] += 1
                continue
            caption = text_file.read_text(encoding="utf-8-sig").strip()
            if not caption:
                skipped["empty caption"] += 1
                continue
            pairs.append((image, caption))
        return pairs, skipped
    for image_name, caption in _read_rows(path):
        image = Path(image_name) if Path(image_name).is_absolute() else path.parent / image_name
        if not caption.strip():
            skipped["empty caption"] += 1
        elif not image_name.strip() or not image.is_file():
            skipped["image file missing"] += 1
        else:
            pairs.append((image, caption.strip()))
    return pairs, skipped


def open_source(
    data: str, image: ImageSpec, batch_size: int, seed: int, world: WorldOptions | None = None, workers: int = 1
) -> Any:
    """The batch source a `--data` value names: "world", a .csv/.jsonl file, or a folder."""
    if data == "world":
        if workers < 1:
            raise InputError(f"--workers {workers}: the world needs at least one rendering process")
        return WorldSource(image, batch_size, world or WorldOptions(seed=seed), workers=workers)
    path = Path(data)
    if not path.exists():
        raise InputError(f"--data {data!r}: no such file or folder; give 'world', a .csv/.jsonl file or a folder")
    if path.is_file() and path.suffix.lower() not in (".csv", ".jsonl"):
        raise InputError(f"--data {data!r}: unknown file type {path.suffix!r}; give a .csv or .jsonl file")
    pairs, skipped = read_pairs(path)
    return PairsSource(pairs, image, batch_size, seed=seed, origin=str(path), _skipped=skipped)
