"""Images to the tensor a CLIP image graph takes: float32 (B, 3, size, size), normalised. No torch.

The reference is the pipeline CLIP models were trained with, torchvision on a PIL image:
`Resize(size, BICUBIC)` (shortest side to `size`, long side `int(size * long / short)`, PIL's antialiased bicubic),
`CenterCrop(size)`, `ToTensor()`, `Normalize(mean, std)`. edgeclip runs PIL's own resampling, but only on the pixels
that survive the crop (PIL's `box`), converting a numpy frame's channel order only there: the result equals the
reference (up to a rare 1/255 step where float rounding of the box moves a filter weight) at about half its cost
on a 16:9 camera frame. Decoding rules (alpha, EXIF orientation, 16-bit) are in `edgeclip.images`.

`Preprocessor(mode="fast")` trades that exactness for speed on large frames: a JPEG is decoded at reduced scale
(libjpeg's DCT scaling) and the crop is box-reduced before the bicubic pass (a frame halved by OpenCV's 2x2 area
average, a decoded image by PIL's `reducing_gap`), both while at least `FAST_REDUCING_GAP` times the model's size
remains; smaller images come out as in exact mode. A 1080p camera frame then costs about a third of the exact
resize, 0.3 8-bit levels from the reference on average (benchmarks/RESULTS.md; tests/test_preprocess.py).

Images become RGB before resizing, as `Image.open(path).convert("RGB")` gives them; OpenAI's `preprocess` converts
after cropping instead, which resizes palette (P) images with nearest-neighbour and RGBA ones premultiplied: the
two differ for those modes only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Union, cast

import cv2
import numpy as np
import PIL
from PIL import Image

from edgeclip.contract import ImageSpec
from edgeclip.errors import InputError
from edgeclip.images import ImageInput, Pixels, check_color_order, decode

ImageBatch = Union[ImageInput, Sequence[ImageInput]]  # noqa: UP007 (a runtime alias)
Box = tuple[float, float, float, float]

MODES = ("exact", "fast")
# The fast mode's reduction stops where this many source pixels per output pixel remain (PIL's reducing_gap).
FAST_REDUCING_GAP = 2.0
_BICUBIC_SUPPORT = 2.0  # PIL's bicubic filter reads 2 source pixels (times the shrink factor) either side
_PIL_MAJOR = int(PIL.__version__.split(".")[0])
_SINGLE = (str, bytes, bytearray, memoryview, os.PathLike, Image.Image, Pixels)


@dataclass(frozen=True)
class Geometry:
    """The reference's resize and crop of one image: the `box` (x0, y0, x1, y1) of the source, in source pixels,
    becomes the size x size input; `resized` is the (width, height) the whole image is resized to before the crop.
    """

    box: Box
    resized: tuple[int, int]
    offset: tuple[int, int] = (0, 0)  # (left, top) of the crop in the resized image


def geometry(width: int, height: int, spec: ImageSpec) -> Geometry:
    """Where the model's input comes from in a width x height image.

    "shortest" is torchvision's Resize(size) then CenterCrop(size): the box is the crop mapped back through the
    resize. "squash" resizes the whole image to size x size.
    """
    size = spec.size
    if spec.resize == "squash":
        return Geometry((0.0, 0.0, float(width), float(height)), (size, size))
    # torchvision's rounding, exactly: long side truncated, crop offset rounded half to even (Python's round);
    # transformers' processors truncate the long side too and floor the offset (spec.crop "floor").
    if width <= height:
        resized_w, resized_h = size, int(size * height / width)
    else:
        resized_w, resized_h = int(size * width / height), size
    if spec.crop == "floor":
        left, top = (resized_w - size) // 2, (resized_h - size) // 2
    else:
        left, top = round((resized_w - size) / 2.0), round((resized_h - size) / 2.0)
    # Multiply before dividing: an unscaled side maps onto whole pixels, a crop at the far edge onto the edge.
    box = (
        left * width / resized_w,
        top * height / resized_h,
        min(float(width), (left + size) * width / resized_w),
        min(float(height), (top + size) * height / resized_h),
    )
    return Geometry(box, (resized_w, resized_h), (left, top))


def source_box(width: int, height: int, spec: ImageSpec) -> Box:
    """The region (x0, y0, x1, y1) of a width x height image, in source pixels, that the model sees."""
    return geometry(width, height, spec).box


class Preprocessor:
    """Turns images into the model's input tensor, as the reference pipeline does (see the module docstring).

    `threads` > 1 decodes and resizes the images of a batch in parallel (PIL and OpenCV release the GIL). `mode`
    "exact" (the default) is the reference; "fast" decodes JPEGs at reduced scale and box-reduces large images
    before resampling (see the module docstring).
    """

    def __init__(self, spec: ImageSpec | None = None, *, threads: int = 1, mode: str = "exact") -> None:
        self.spec = spec if spec is not None else ImageSpec()
        _check_spec(self.spec)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InputError(f"threads must be an int of at least 1, got {threads!r}")
        check_mode(mode)
        self.threads = threads
        self.mode = mode
        mean = np.asarray(self.spec.mean, dtype=np.float32)[:, None]
        std = np.asarray(self.spec.std, dtype=np.float32)[:, None]
        # ToTensor then Normalize of every 8-bit value, in float32 as torch computes them: the lookup is exact.
        self._table = (np.arange(256, dtype=np.float32)[None, :] / np.float32(255) - mean) / std  # (3, 256)

    @property
    def lookup(self) -> np.ndarray:
        """(3, 256) float32: the normalized value of every 8-bit level, per channel (what `__call__` applies after
        `resized`); training normalizes its pooled uint8 pictures with it."""
        return self._table

    def __call__(self, images: ImageBatch, *, color_order: str = "RGB") -> np.ndarray:
        """float32 (B, 3, size, size), C-contiguous. One image gives B = 1; a 4-D array is a batch of frames.

        `color_order` is the channel order of numpy arrays ("BGR" for OpenCV frames); other inputs know theirs.
        """
        check_color_order(color_order)
        batch = _as_batch(images)
        out = np.empty((len(batch), 3, self.spec.size, self.spec.size), dtype=np.float32)

        def one(index: int) -> None:
            try:
                self._normalise(self._resized(batch[index], color_order), out[index])
            except InputError as exc:
                if len(batch) == 1:
                    raise
                raise type(exc)(f"image {index} of the batch of {len(batch)}: {exc}") from None

        if self.threads == 1 or len(batch) == 1:
            for index in range(len(batch)):
                one(index)
        else:
            with ThreadPoolExecutor(min(self.threads, len(batch))) as pool:
                list(pool.map(one, range(len(batch))))  # list() re-raises the first error
        return out

    def resized(self, image: ImageInput, color_order: str = "RGB") -> np.ndarray:
        """One image resized and cropped as the reference does, before normalisation: (size, size, 3) uint8 RGB."""
        check_color_order(color_order)
        pixels = self._resized(image, color_order)
        if pixels.ndim == 2:
            return np.repeat(pixels[:, :, None], 3, axis=2)
        return np.ascontiguousarray(pixels[:, :, :3])

    def decode(self, image: ImageInput, color_order: str = "RGB") -> Pixels:
        """The pixels this mode needs of one image (a JPEG at reduced scale in "fast" mode), for `__call__` later:
        callers that must skip unreadable files decode first, then preprocess what decoded."""
        check_color_order(color_order)
        return decode(image, color_order, draft=self._draft)

    @property
    def _draft(self) -> int | None:
        return None if self.mode == "exact" else math.ceil(FAST_REDUCING_GAP * self.spec.size)

    def _resized(self, image: ImageInput, color_order: str) -> np.ndarray:
        """(size, size) grey, (size, size, 3) RGB or (size, size, 4) RGB and a pad byte: whatever PIL gave back."""
        pixels = decode(image, color_order, draft=self._draft)
        if self.mode == "exact":
            return _resize(pixels, geometry(*pixels.size, self.spec), self.spec.size)
        return _resize_fast(pixels, self.spec)

    def _normalise(self, pixels: np.ndarray, out: np.ndarray) -> None:
        for c in range(3):
            np.take(self._table[c], pixels if pixels.ndim == 2 else pixels[:, :, c], out=out[c])

    def __repr__(self) -> str:
        return f"Preprocessor({self.spec!r}, threads={self.threads}, mode={self.mode!r})"


def default_threads() -> int:
    """The threads a runtime gives the preprocessing of a batch by default: every core, at most 8."""
    return min(os.cpu_count() or 1, 8)


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InputError(f"preprocessing mode must be 'exact' or 'fast', got {mode!r}")


def preprocess(images: ImageBatch, spec: ImageSpec | None = None, *, color_order: str = "RGB") -> np.ndarray:
    """`Preprocessor(spec)(images, color_order=color_order)`: float32 (B, 3, size, size)."""
    return Preprocessor(spec)(images, color_order=color_order)


def _resize(pixels: Pixels, geo: Geometry, size: int) -> np.ndarray:
    """The box of the source resampled to size x size as PIL does it.

    Only the rows and columns that a filter tap can reach are converted and resampled. The two passes run one at a
    time, in the order PIL runs them for the reference's whole-image resize, so that the rounding between them is
    the same.
    """
    width, height = pixels.size
    x0, y0, x1, y1 = geo.box
    # An axis the reference does not scale (the short side already at `size`) is a plain crop, as in PIL.
    keep_x = x1 - x0 == size and x0.is_integer()
    keep_y = y1 - y0 == size and y0.is_integer()
    c0, c1 = (int(x0), int(x1)) if keep_x else _reach(x0, x1, size, width)
    r0, r1 = (int(y0), int(y1)) if keep_y else _reach(y0, y1, size, height)
    image = _region(pixels, c0, r0, c1, r1)
    passes = [axis for axis, keep in (("x", keep_x), ("y", keep_y)) if not keep]
    if len(passes) == 2 and _vertical_first(width, height, *geo.resized):
        passes.reverse()
    for axis in passes:
        if axis == "x":
            image = image.resize((size, image.height), Image.Resampling.BICUBIC, (x0 - c0, 0, x1 - c0, image.height))
        else:
            image = image.resize((image.width, size), Image.Resampling.BICUBIC, (0, y0 - r0, image.width, y1 - r0))
    return np.asarray(image)


def _resize_fast(pixels: Pixels, spec: ImageSpec) -> np.ndarray:
    """The reference's crop of the source, box-reduced by whole factors, then one bicubic resize (PIL).

    The crop is placed by the full image's size (`full_size` of a JPEG decoded at reduced scale), then mapped onto
    the decoded pixels. An array is halved with OpenCV's 2x2 area average (its fast path: a tenth of the cost of PIL's
    `reduce` on a 1080p frame) while the crop keeps `FAST_REDUCING_GAP` times the output size; a PIL image is reduced
    by PIL (`reducing_gap`), which a JPEG decoded at reduced scale rarely needs.
    """
    width, height = pixels.size
    full_w, full_h = pixels.full_size or (width, height)
    x0, y0, x1, y1 = geometry(full_w, full_h, spec).box
    sx, sy = width / full_w, height / full_h
    x0, x1, y0, y1 = x0 * sx, x1 * sx, y0 * sy, y1 * sy
    size = spec.size
    c0, c1 = _reach(x0, x1, size, width)
    r0, r1 = _reach(y0, y1, size, height)
    box = (x0 - c0, y0 - r0, x1 - c0, y1 - r0)
    if pixels.image is not None:
        image = _region(pixels, c0, r0, c1, r1)
        resized = image.resize((size, size), Image.Resampling.BICUBIC, box, reducing_gap=FAST_REDUCING_GAP)
        return np.asarray(resized)
    region = _region_array(pixels, c0, r0, c1, r1)
    while min(box[2] - box[0], box[3] - box[1]) >= 2 * FAST_REDUCING_GAP * size:
        h, w = region.shape[0] // 2, region.shape[1] // 2  # an odd last row or column is dropped
        region = cv2.resize(region[: 2 * h, : 2 * w], (w, h), interpolation=cv2.INTER_AREA)
        box = (box[0] / 2, box[1] / 2, min(box[2] / 2, w), min(box[3] / 2, h))
    return np.asarray(_as_pil(region).resize((size, size), Image.Resampling.BICUBIC, box))


def _vertical_first(width: int, height: int, resized_w: int, resized_h: int) -> bool:
    """Whether PIL resamples this resize vertically first. Pillow 13 does when the height shrinks by more than twice
    what the width does (python-pillow/Pillow#9549; the condition here was measured against it); older Pillow always
    goes horizontally first."""
    return _PIL_MAJOR >= 13 and height - resized_h > 2 * max(width - resized_w, 0)


def _reach(start: float, stop: float, size: int, limit: int) -> tuple[int, int]:
    """The source pixels [lo, hi) that PIL's bicubic filter can read for the output span [start, stop)."""
    reach = _BICUBIC_SUPPORT * max((stop - start) / size, 1.0) + 1.0
    return max(0, math.floor(start - reach)), min(limit, math.ceil(stop + reach))


def _region(pixels: Pixels, c0: int, r0: int, c1: int, r1: int) -> Image.Image:
    """Columns c0:c1 and rows r0:r1 of the source as a PIL image in mode RGB, RGBX (pad byte unused) or L."""
    if pixels.image is not None:
        if (c0, r0, c1, r1) == (0, 0, *pixels.image.size):
            return pixels.image
        return pixels.image.crop((c0, r0, c1, r1))
    return _as_pil(_region_array(pixels, c0, r0, c1, r1))


def _region_array(pixels: Pixels, c0: int, r0: int, c1: int, r1: int) -> np.ndarray:
    """Columns c0:c1 and rows r0:r1 of an array source: (H, W) grey or (H, W, 4) RGBX uint8, C-contiguous."""
    assert pixels.array is not None
    region = pixels.array[r0:r1, c0:c1]
    if region.shape[2] == 1:
        return np.ascontiguousarray(region[:, :, 0])
    if region.shape[2] == 3:
        return cv2.cvtColor(region, cv2.COLOR_BGR2RGBA if pixels.bgr else cv2.COLOR_RGB2RGBA)
    return cv2.cvtColor(region, cv2.COLOR_BGRA2RGBA) if pixels.bgr else np.ascontiguousarray(region)


def _as_pil(region: np.ndarray) -> Image.Image:
    if region.ndim == 2:
        return Image.fromarray(region)
    # RGBX is PIL's own memory layout for colour, so frombuffer maps the converted region without another copy.
    return Image.frombuffer("RGBX", (region.shape[1], region.shape[0]), region, "raw", "RGBX", 0, 1)


def _check_spec(spec: ImageSpec) -> None:
    problems = []
    if isinstance(spec.size, bool) or not isinstance(spec.size, int) or spec.size < 1:
        problems.append(f"size must be a positive int, got {spec.size!r}")
    if spec.resize not in ("shortest", "squash"):
        problems.append(f"resize must be 'shortest' or 'squash', got {spec.resize!r}")
    if spec.interpolation != "bicubic":
        problems.append(f"interpolation must be 'bicubic', got {spec.interpolation!r}")
    if spec.channel_order != "RGB":
        problems.append(f"channel_order must be 'RGB', got {spec.channel_order!r}")
    if len(spec.mean) != 3 or len(spec.std) != 3 or any(s == 0 for s in spec.std):
        problems.append(f"mean and std must hold 3 numbers each, std non-zero; got {spec.mean!r} and {spec.std!r}")
    if problems:
        raise InputError(
            f"unsupported ImageSpec: {'; '.join(problems)}. This edgeclip cannot preprocess for this model: check the "
            "bundle's manifest, or upgrade edgeclip if the bundle is newer"
        )


def _as_batch(images: ImageBatch) -> Sequence[ImageInput]:
    if isinstance(images, _SINGLE):  # bytes and str are sequences too: test them first
        return [cast(ImageInput, images)]
    if isinstance(images, np.ndarray):
        batch: Sequence[ImageInput] = list(images) if images.ndim == 4 else [images]
    elif isinstance(images, Sequence):
        batch = cast(Sequence[ImageInput], images)
    else:
        raise InputError(
            f"unsupported image type {type(images).__name__}: pass a file path, encoded bytes, a PIL image or a numpy "
            "array (HxWx3 uint8), or a list of them"
        )
    if len(batch) == 0:
        raise InputError("the batch of images is empty: pass at least one image")
    return batch
