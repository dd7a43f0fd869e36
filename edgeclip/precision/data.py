"""What calibration and the gate are fed: the user's images and captions, or the built-in model's own world.

Images go through the bundle's own Preprocessor, so calibration images of any size are treated like any input; an
unreadable one is skipped and counted. Every 8th image is held out of calibration for the gate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeclip.contract import ModelContract
from edgeclip.errors import InputError
from edgeclip.precision.gate import LabelledSet

MIN_CALIB_IMAGES = 16
MIN_CALIB_TEXTS = 8
MAX_CALIB_IMAGES = 512  # more adds calibration time, not accuracy
HOLDOUT_EVERY = 8  # every 8th calibration image is kept for the gate instead
# Short, empty, odd and over-long prompts: what export's parity check feeds every text graph.
HARD_PROMPTS = (
    "a photo of a cat",
    "",
    "A DIAGRAM of the über-café's 3 señoras & 2 🚲s!!",
    "a photo of " + " and ".join(f"a {color} square next to a circle" for color in ("red", "green", "blue") * 12),
    "   the   quick brown fox jumps over the lazy dog   ",
)
# What the gate feeds every reduced text graph: those, and prompts as long as the context allows in odd tokens.
PROBE_PROMPTS = (
    *HARD_PROMPTS,
    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38",
)
# Labels for zero-shot agreement on a user's images when no labelled set (--eval) is given.
GENERIC_LABELS = (
    "person", "car", "truck", "bicycle", "dog", "cat", "bird", "tree", "building", "road", "chair", "table",
    "bottle", "cup", "phone", "computer", "book", "box", "door", "window", "robot", "forklift", "pallet", "shelf",
    "plant", "sky", "water", "food", "text", "tool", "ball", "shoe",
)  # fmt: skip


@dataclass
class Calibration:
    """Calibration inputs per tower, the held-out images for the gate, and what was skipped."""

    images: np.ndarray  # (N, 3, S, S) float32
    holdout: np.ndarray  # (M, 3, S, S) float32: never calibrated on
    texts: list[str] | None  # None: no captions (the text tower cannot be calibrated)
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)


def image_files(folder: Path) -> list[Path]:
    """The image files under `folder`, recursively, in sorted order."""
    from edgeclip.images import IMAGE_SUFFIXES

    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def images_from_folder(folder: str | os.PathLike[str], contract: ModelContract) -> tuple[np.ndarray, list]:
    """Preprocessed pixels of the readable images under `folder` (at most MAX_CALIB_IMAGES, spread evenly), and
    the (file, why) of each one skipped."""
    from edgeclip.images import decode
    from edgeclip.preprocess import Preprocessor

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--calib {folder}: no such folder; give a folder of your own images (any size)")
    files = image_files(folder)
    if len(files) > MAX_CALIB_IMAGES:
        files = [files[i] for i in np.linspace(0, len(files) - 1, MAX_CALIB_IMAGES).round().astype(int)]
    pre = Preprocessor(contract.image)
    pixels, skipped = [], []
    for f in files:
        try:
            decoded = decode(str(f))
        except InputError as exc:
            skipped.append((str(f), str(exc)))
            continue
        pixels.append(pre([decoded.image if decoded.image is not None else str(f)])[0])
    if len(pixels) < MIN_CALIB_IMAGES:
        raise InputError(
            f"--calib {folder}: {len(pixels)} readable images ({len(skipped)} unreadable, of {len(files)} image "
            f"files); int8 calibration needs at least {MIN_CALIB_IMAGES} (a few hundred of the scenes the model will "
            f"see are best)"
        )
    return np.stack(pixels), skipped


def texts_from_file(path: str | os.PathLike[str]) -> list[str]:
    """The non-empty lines of a caption or prompt file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"--calib-text {path}: no such file; give a text file with one caption per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--calib-text {path} cannot be read as UTF-8 text: {exc}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < MIN_CALIB_TEXTS:
        raise InputError(
            f"--calib-text {path}: {len(lines)} non-empty lines; text calibration needs at least {MIN_CALIB_TEXTS} "
            "captions or label prompts, one per line"
        )
    return lines


def user_calibration(
    contract: ModelContract, calib: str | os.PathLike[str], calib_text: str | os.PathLike[str] | None
) -> Calibration:
    pixels, skipped = images_from_folder(calib, contract)
    holdout = np.arange(len(pixels)) % HOLDOUT_EVERY == 0
    texts = texts_from_file(calib_text) if calib_text is not None else None
    return Calibration(pixels[~holdout], pixels[holdout], texts, f"{Path(calib).name}/", skipped)


def builtin_calibration(contract: ModelContract, images: int = 256, seed: int = 97) -> Calibration:
    """The built-in model's calibration: its world's training scenes and their captions (never an evaluation set:
    those use other seeds)."""
    from edgeclip.preprocess import Preprocessor
    from edgeclip.world import World

    world = World(seed=seed)
    rng = np.random.default_rng(seed)
    scenes = [world.sample_scene(rng, "train") for _ in range(images + images // HOLDOUT_EVERY)]
    rendered = [world.render(scene, rng) for scene in scenes]
    texts = [caption for scene in scenes[:images] for caption in world.captions(scene, rng, n=1)]
    pixels = Preprocessor(contract.image)(rendered)
    return Calibration(pixels[:images], pixels[images:], texts, "the built-in world")


def builtin_eval(contract: ModelContract, templates: tuple[str, ...]) -> LabelledSet:
    """The built-in model's fixed color-shape evaluation set, with its held-out pairs as a group."""
    from edgeclip.preprocess import Preprocessor
    from edgeclip.world import eval_set

    items = eval_set("color_shape")
    labels = list(items[0].labels)
    return LabelledSet(
        name="world color_shape",
        pixels=Preprocessor(contract.image)([item.image for item in items]),
        prompt_ids=prompt_ids(contract, None, labels, templates),
        templates=len(templates),
        truth=np.asarray([labels.index(item.label) for item in items]),
        groups={
            "heldout": np.asarray([item.heldout for item in items]),
            "seen": np.asarray([not item.heldout for item in items]),
        },
    )


def eval_from_folder(
    folder: str | os.PathLike[str], contract: ModelContract, tokenizer_dir: Path | None, templates: tuple[str, ...]
) -> LabelledSet:
    """A labelled set from a folder with one sub-folder of images per label (the sub-folder's name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--eval {folder}: no such folder; give a folder with one sub-folder of images per label")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and image_files(p))
    if len(classes) < 2:
        raise InputError(
            f"--eval {folder}: {len(classes)} sub-folders with images; zero-shot needs at least 2 labels, one "
            "sub-folder of images each (the sub-folder's name is the label)"
        )
    from edgeclip.images import decode
    from edgeclip.preprocess import Preprocessor

    pre = Preprocessor(contract.image)
    pixels, truth = [], []
    for index, cls in enumerate(classes):
        for f in image_files(cls):
            try:
                decoded = decode(str(f))
            except InputError:
                continue
            pixels.append(pre([decoded.image if decoded.image is not None else str(f)])[0])
            truth.append(index)
    labels = [c.name.replace("_", " ") for c in classes]
    return LabelledSet(
        name=f"{folder.name}/",
        pixels=np.stack(pixels),
        prompt_ids=prompt_ids(contract, tokenizer_dir, labels, templates),
        templates=len(templates),
        truth=np.asarray(truth),
    )


def agreement_set(
    contract: ModelContract,
    tokenizer_dir: Path | None,
    pixels: np.ndarray,
    labels: list[str],
    templates: tuple[str, ...],
) -> LabelledSet:
    """No labelled set: zero-shot agreement with fp32 on the held-out images over `labels`."""
    return LabelledSet(
        name="held-out calibration images (agreement only)",
        pixels=pixels,
        prompt_ids=prompt_ids(contract, tokenizer_dir, labels, templates),
        templates=len(templates),
    )


def prompt_ids(
    contract: ModelContract, tokenizer_dir: Path | None, labels: list[str], templates: tuple[str, ...]
) -> np.ndarray:
    prompts = [t.format(label) for label in labels for t in templates]
    return tokenize(contract, tokenizer_dir, prompts)


def tokenize(contract: ModelContract, tokenizer_dir: Path | None, texts: list[str]) -> np.ndarray:
    from edgeclip.tokenizer import Tokenizer

    spec = contract.text
    tok = Tokenizer(spec) if tokenizer_dir is None else Tokenizer.from_pretrained_dir(tokenizer_dir, spec)
    return np.asarray(tok(texts), dtype=np.int64)
