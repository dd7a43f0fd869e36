"""Reading images: files, encoded bytes, PIL images and numpy arrays become 8-bit pixels. No torch.

Decoding follows the reference pipeline of CLIP models, `PIL.Image.open(path).convert("RGB")`:

- Alpha is dropped, not composited: RGBA, LA and PA images keep their colour values under transparent pixels, as
  OpenAI's and open_clip's `convert("RGB")` does (transformers' CLIPImageProcessor composites onto white instead).
- EXIF orientation is not applied, as PIL does not apply it by itself: a photo whose camera stored it sideways with
  an orientation tag reaches the model sideways, exactly as in the reference. Call `PIL.ImageOps.exif_transpose`
  first if you want it upright.
- 16-bit pixels (PIL modes I;16*, uint16 arrays) are scaled to 8 bits (`round(v * 255 / 65535)`); PIL's
  `convert("RGB")` would clip them at 255 and turn most 16-bit photos white. 32-bit PIL modes (I, F), whose range
  is unknown, go through `convert("RGB")` as in the reference.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from edgeclip.errors import ImageDecodeError, InputError

COLOR_ORDERS = ("RGB", "BGR")
MIN_SIDE = 2  # a 1-pixel-wide "image" is almost always a flattened or mis-sliced array
# The file names that folders of images are read by (classify, embed, index, calibration, training, streams): the
# formats `decode` reads (an animated GIF or a multi-page TIFF gives its first frame).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pnm")


@dataclass(frozen=True)
class Pixels:
    """Decoded pixels before resizing: a PIL image in mode RGB or L, or an HxWxC uint8 array (C = 1, 3 or 4).

    Arrays stay as given (no full-frame copy) so that the resizer converts only the region it reads; `bgr` says
    their channel order, and a fourth channel is alpha, to be ignored.
    """

    image: Image.Image | None = None
    array: np.ndarray | None = None
    bgr: bool = False
    full_size: tuple[int, int] | None = None  # (width, height) of the file when a JPEG was decoded at reduced scale

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        if self.image is not None:
            return self.image.size
        assert self.array is not None
        return self.array.shape[1], self.array.shape[0]


# What every image argument takes; `Pixels` (from `decode` or `Preprocessor.decode`) passes through undecoded again.
ImageInput = Union[str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray, Pixels]  # noqa: UP007 (a runtime alias)


def check_color_order(color_order: str) -> None:
    if color_order not in COLOR_ORDERS:
        raise InputError(
            f"color_order must be 'RGB' or 'BGR', got {color_order!r}: use 'BGR' for frames from OpenCV "
            "(cv2.imread, cv2.VideoCapture) and 'RGB' for everything else"
        )


def decode(image: ImageInput, color_order: str = "RGB", *, draft: int | None = None) -> Pixels:
    """The pixels of any supported input, as cheaply as possible (see `Pixels`).

    `draft`: a JPEG file or bytes may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, much cheaper than
    decoding every pixel) as long as its shortest side stays at least `draft` pixels; `Pixels.full_size` then holds
    the file's own size. None decodes every pixel, as the reference does. `Pixels` are returned as they are.
    """
    if isinstance(image, Pixels):
        return image
    if isinstance(image, np.ndarray):
        return _array_pixels(image, color_order)
    if isinstance(image, Image.Image):
        return Pixels(image=_pil_rgb_or_l(_loaded(image), "the PIL image"))
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return _pixels(*_decode_bytes(data, f"<{len(data)} bytes>", draft))
    if isinstance(image, (str, os.PathLike)):
        return _pixels(*_decode_file(image, draft))
    raise InputError(
        f"unsupported image type {type(image).__name__}: pass a file path, encoded bytes, a PIL image or a numpy "
        "array (HxWx3 uint8), or a list of them"
    )


def load_image(image: ImageInput, *, color_order: str = "RGB") -> np.ndarray:
    """Any supported input as an HxWx3 uint8 RGB array, decoded as the reference does (see the module docstring).

    `color_order` says how numpy arrays hold their channels ("BGR" for OpenCV frames); files, bytes and PIL images
    know their own. The result is a new writable array, except that a C-contiguous HxWx3 uint8 RGB array is
    returned as is.
    """
    check_color_order(color_order)
    pixels = decode(image, color_order)
    if pixels.image is not None:
        return np.array(pixels.image.convert("RGB"))  # np.array, not asarray: a writable array
    array = pixels.array
    assert array is not None
    if array.shape[2] == 1:
        return cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_GRAY2RGB)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB if pixels.bgr else cv2.COLOR_RGBA2RGB)
    if pixels.bgr:
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(array)


def _pixels(image: Image.Image, full_size: tuple[int, int]) -> Pixels:
    return Pixels(image=image, full_size=None if image.size == full_size else full_size)


def _decode_file(path: str | os.PathLike, draft: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    name = os.fspath(path)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if name.startswith(("http://", "https://")):
        raise ImageDecodeError(
            f"cannot read image {name!r}: edgeclip does not download anything; fetch the file yourself and pass its "
            "path or its bytes"
        )
    try:
        data = Path(name).read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(
            f"cannot read image {name!r}: no such file (working directory: {os.getcwd()!r}); check the path"
        ) from None
    except IsADirectoryError:
        raise ImageDecodeError(
            f"cannot read image {name!r}: it is a directory, not an image file (pass the image files in it, such as "
            "DIR/*.jpg)"
        ) from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read image {name!r}: {exc.strerror or exc}") from None
    return _decode_bytes(data, repr(name), draft)


def _decode_bytes(data: bytes, name: str, draft: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded image in mode RGB or L, and the size the file gives (which `draft` may have reduced)."""
    if not data:
        raise ImageDecodeError(f"cannot decode image {name}: it is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            full_size = opened.size
            if Image.MAX_IMAGE_PIXELS and full_size[0] * full_size[1] > Image.MAX_IMAGE_PIXELS:
                # PIL's own warning does not say which file; this one does.
                size = f"{full_size[0]}x{full_size[1]}"
                warnings.warn(
                    f"image {name} is {size} pixels: decoding it takes much memory", RuntimeWarning, stacklevel=2
                )
            if draft is not None and opened.format == "JPEG" and min(full_size) > 0:
                scale = draft / min(full_size)
                opened.draft(opened.mode, (math.ceil(full_size[0] * scale), math.ceil(full_size[1] * scale)))
            opened.load()  # decode now, so that a truncated or corrupt file fails here and names itself
            return _pil_rgb_or_l(opened, f"image {name}", copy=True), full_size
    except InputError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"cannot decode image {name}: not an image format PIL can read (starts with {data[:8]!r}); "
            "pass a JPEG, PNG, WebP, BMP, TIFF or GIF file"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(
            f"cannot decode image {name}: {exc} (PIL's guard against decompression bombs; downscale the image, or "
            "raise PIL.Image.MAX_IMAGE_PIXELS in your program if you trust the file)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # PIL's ways of saying "corrupt"
        raise ImageDecodeError(
            f"cannot decode image {name}: {exc} (the file is corrupt or truncated; re-encode or re-download it)"
        ) from None


def _loaded(image: Image.Image) -> Image.Image:
    """A PIL image with its pixels read: `Image.open` is lazy, so a corrupt file fails only here."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        source = getattr(image, "filename", "") or "<not a file>"
        raise ImageDecodeError(
            f"cannot decode the PIL image opened from {source!r}: {exc} (the file is corrupt or truncated; "
            "re-encode or re-download it)"
        ) from None
    return image


def _pil_rgb_or_l(image: Image.Image, name: str, *, copy: bool = False) -> Image.Image:
    """A PIL image in mode RGB, or L for greyscale (resizing L once equals resizing its three equal channels)."""
    width, height = image.size
    _check_size(width, height, name)
    if image.mode in ("RGB", "L"):
        return image.copy() if copy else image
    if image.mode.startswith("I;16"):
        return Image.fromarray(_scale16(np.asarray(image)))
    return image.convert("RGB")


def _array_pixels(array: np.ndarray, color_order: str) -> Pixels:
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:  # uint16 in either byte order
        array = _scale16(array)
    elif array.dtype != np.uint8:
        hint = (
            " If the values are in [0, 1], pass (array * 255).round().astype(np.uint8)."
            if array.dtype.kind == "f"
            else ""
        )
        raise InputError(
            f"image array has dtype {array.dtype}; edgeclip takes uint8 (0-255) or uint16 (0-65535) pixels.{hint}"
        )
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        hint = ""
        if array.ndim == 3 and array.shape[0] in (1, 3, 4):
            hint = " It looks channels-first (CxHxW): pass array.transpose(1, 2, 0)."
        elif array.ndim == 4:
            hint = " A 4-D array is a batch: pass it to Preprocessor, or one image at a time to load_image."
        raise InputError(
            f"image array has shape {array.shape}; expected HxW (grey), HxWx3 (colour) or HxWx4 (colour and alpha)."
            + hint
        )
    _check_size(array.shape[1], array.shape[0], f"the image array of shape {array.shape}")
    return Pixels(array=array, bgr=color_order == "BGR" and array.shape[2] != 1)


def _scale16(array: np.ndarray) -> np.ndarray:
    """16-bit pixels to 8 bits, rounding: v * 255 / 65535, so that 65535 maps to 255 and 257 to 1."""
    return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _check_size(width: int, height: int, name: str) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InputError(
            f"{name} is {width}x{height} pixels; edgeclip needs at least {MIN_SIDE}x{MIN_SIDE} "
            "(an empty or 1-pixel-wide image is most often a failed capture or a mis-sliced array)"
        )
