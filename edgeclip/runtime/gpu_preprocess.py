"""Preprocessing on the model's own device (a GPU): uint8 frames uploaded once, resized, cropped and normalized there.

The CPU path (`edgeclip.preprocess`) runs PIL's antialiased bicubic on the pixels that survive the crop. Here the
whole frame goes to the device as uint8 (a quarter of float32's bytes) and is resized with
`torch.nn.functional.interpolate(mode="bicubic", antialias=True)`, PyTorch's port of PIL's filter (a = -0.5,
support scaled by the shrink factor), then center-cropped by the reference's rule (`edgeclip.preprocess.geometry`),
so a 1080p frame never passes through the CPU resize. As PIL does, the two passes run one at a time in PIL's order
and each is rounded to 8 bits; the remaining differences are PIL's fixed-point filter weights and its rounding of
halves (a step of 1/255 on a few pixels: tests/test_gpu_torch.py measures both against the CPU path).

Decoding (files, bytes, PIL images, EXIF, alpha) stays on the CPU, in `edgeclip.images.decode`; numpy frames are
uploaded as they are, their channel order and alpha handled on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgeclip.contract import ImageSpec
from edgeclip.errors import InputError
from edgeclip.images import Pixels, check_color_order, decode
from edgeclip.preprocess import Preprocessor, geometry
from edgeclip.preprocess import _vertical_first as vertical_first  # PIL's pass order, measured there

__all__ = ["DevicePreprocessor"]


class DevicePreprocessor:
    """Images -> the model's input, (B, 3, size, size) float32 on `device`, as `edgeclip.preprocess.Preprocessor`
    computes it on the CPU (see the module docstring for the differences)."""

    def __init__(self, spec: ImageSpec | None = None, device: str | torch.device = "cpu") -> None:
        self.spec = spec if spec is not None else ImageSpec()
        Preprocessor(self.spec)  # the same checks of the spec, the same messages
        self.device = torch.device(device)
        self._mean = torch.tensor(self.spec.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.spec.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def __call__(self, images: Sequence[Any] | np.ndarray, color_order: str = "RGB") -> torch.Tensor:
        """float32 (B, 3, size, size) on the device. A 4-D uint8 array is a batch of frames of one size."""
        check_color_order(color_order)
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        batch = list(images) if isinstance(images, Sequence) and not isinstance(images, (str, bytes)) else [images]
        if not batch:
            raise InputError("the batch of images is empty: pass at least one image")
        size = self.spec.size
        out = torch.empty((len(batch), 3, size, size), dtype=torch.float32, device=self.device)
        # Frames of one size are uploaded and resized together; anything else one by one.
        groups: dict[tuple[Any, ...], list[tuple[int, Pixels]]] = {}
        for index, item in enumerate(batch):
            try:
                pixels = decode(item, color_order)
            except InputError as exc:
                if len(batch) == 1:
                    raise
                raise type(exc)(f"image {index} of the batch of {len(batch)}: {exc}") from None
            key = ("array", pixels.array.shape, pixels.bgr) if pixels.array is not None else ("image", index)
            groups.setdefault(key, []).append((index, pixels))
        for members in groups.values():
            rows = [i for i, _ in members]
            out[rows] = self._resized(self._upload([p for _, p in members]))
        return (out / 255.0 - self._mean) / self._std

    def resized(self, image: Any, color_order: str = "RGB") -> np.ndarray:
        """One image resized and cropped as on the device, before normalisation: (size, size, 3) uint8 RGB (to
        compare with `Preprocessor.resized`)."""
        check_color_order(color_order)
        x = self._resized(self._upload([decode(image, color_order)]))
        return x[0].permute(1, 2, 0).to(torch.uint8).cpu().numpy()

    def _upload(self, group: list[Pixels]) -> torch.Tensor:
        """(B, 3, H, W) float32 RGB on the device, from uint8 pixels uploaded as they are."""
        if group[0].image is not None:
            image = group[0].image
            host = np.array(image.convert("RGB") if image.mode != "RGB" else image)[None]  # (1, H, W, 3)
            bgr = False
        else:
            arrays = [p.array for p in group]
            assert all(a is not None for a in arrays)
            host = arrays[0][None] if len(arrays) == 1 else np.stack(arrays)  # type: ignore[index, arg-type]
            bgr = group[0].bgr
        host = np.ascontiguousarray(host)
        if not host.flags.writeable:  # torch.from_numpy wants a writable array (a frame from np.broadcast_to...)
            host = host.copy()
        frames = torch.from_numpy(host).to(self.device)  # the one upload, uint8
        channels = frames.shape[-1]
        x = frames.permute(0, 3, 1, 2)  # (B, C, H, W)
        # Grey to three channels; BGR(A) to RGB; alpha is ignored, as on the CPU path.
        x = x.expand(-1, 3, -1, -1) if channels == 1 else x[:, [2, 1, 0]] if bgr else x[:, :3]
        return x.to(torch.float32)

    def _resized(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, size, size), the reference's resize then center crop, 8-bit values as floats."""
        height, width = x.shape[-2:]
        geo = geometry(width, height, self.spec)
        resized_w, resized_h = geo.resized
        passes = [axis for axis, (old, new) in (("x", (width, resized_w)), ("y", (height, resized_h))) if old != new]
        if len(passes) == 2 and vertical_first(width, height, resized_w, resized_h):
            passes.reverse()
        for axis in passes:
            target = (x.shape[-2], resized_w) if axis == "x" else (resized_h, x.shape[-1])
            x = F.interpolate(x, size=target, mode="bicubic", antialias=True, align_corners=False)
            x = x.round().clamp(0.0, 255.0)  # PIL keeps 8 bits between its passes
        if self.spec.resize == "squash":
            return x
        size = self.spec.size
        left, top = geo.offset
        return x[:, :, top : top + size, left : left + size]
