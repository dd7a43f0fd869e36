"""Small realistic test photos made on the fly (no downloads).

A photo here is a sky gradient, a ground plane, textured shapes with hard and soft edges, fine stripes, sensor
noise, and (by default) a round trip through JPEG: the mix of smooth areas, edges and high-frequency detail that
makes resampling errors show. Everything is seeded, so a test sees the same pixels every run.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, ImageDraw

from edgeclip.contract import ImageSpec

# (width, height): tiny, upscaled, already at size, odd crop offsets, landscape, portrait, panorama, tall strip,
# full HD.
PHOTO_SIZES: tuple[tuple[int, int], ...] = (
    (2, 2),
    (7, 5),
    (33, 20),
    (150, 100),
    (224, 224),
    (224, 300),
    (225, 224),
    (227, 224),
    (320, 240),
    (480, 640),
    (640, 480),
    (1000, 999),
    (1280, 720),
    (1920, 1080),
    (3000, 500),
    (300, 2000),
)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Noise with features about `1 / cells` of the image wide, in [-1, 1]: clouds, foliage, grain."""
    gh, gw = max(2, height * cells // max(height, width)), max(2, width * cells // max(height, width))
    grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def make_photo(width: int, height: int, seed: int = 0, *, jpeg_quality: int | None = 90) -> np.ndarray:
    """A realistic RGB photo as HWC uint8, `jpeg_quality=None` for the raw render without JPEG artefacts."""
    rng = np.random.default_rng(seed + 7919 * width + 104729 * height)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    horizon = rng.uniform(0.35, 0.65)
    sky_top, sky_low = rng.uniform(40, 120, 3), rng.uniform(150, 240, 3)
    ground_a, ground_b = rng.uniform(20, 110, 3), rng.uniform(60, 180, 3)
    t_sky = np.clip(y / horizon, 0, 1)[..., None]
    t_ground = np.clip((y - horizon) / (1 - horizon), 0, 1)[..., None]
    sky = sky_top * (1 - t_sky) + sky_low * t_sky
    ground = ground_a * (1 - t_ground) + ground_b * t_ground
    img = np.where((y < horizon + 0.02 * np.sin(x * 17.0))[..., None], sky, ground) * np.ones((1, 1, 3), np.float32)
    img = img + 25.0 * _smooth_noise(rng, height, width, 6)[..., None]  # clouds and terrain
    img = img + 12.0 * _smooth_noise(rng, height, width, 80)[..., None] * rng.uniform(0.5, 1.5, 3)  # foliage
    fine = _smooth_noise(rng, height, width, max(8, max(width, height) // 5))  # grass, gravel: 5-pixel grain
    img = img + 14.0 * fine[..., None] * (x > rng.uniform(0.2, 0.8))[..., None]

    photo = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(photo)
    scale = max(width, height)
    for _ in range(int(rng.integers(4, 10))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.03, 0.25) * scale
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse((cx - r, cy - 0.7 * r, cx + r, cy + 0.7 * r), fill=color)
        elif kind == 1:
            draw.rectangle((cx - r, cy - r / 2, cx + r / 3, cy + r), fill=color, outline=(0, 0, 0))
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, 5))
            draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles], fill=color)
    # Fine detail: thin stripes (fences, text, hair) near the resampling filter's cut-off.
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        step = max(2.0, rng.uniform(0.002, 0.01) * scale)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        for k in range(int(rng.integers(5, 30))):
            xs = x0 + k * step
            draw.line((xs, y0, xs + 0.05 * scale, y0 + 0.2 * scale), fill=color, width=max(1, int(step / 3)))

    out = np.asarray(photo, dtype=np.float32)
    out = out + rng.normal(0.0, 3.0, out.shape).astype(np.float32)  # sensor noise
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if jpeg_quality is None or min(width, height) < 8:
        return out
    return np.asarray(Image.open(io.BytesIO(encode(out, "JPEG", quality=jpeg_quality))).convert("RGB"))


def encode(rgb: np.ndarray | Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    """An image encoded as a file would hold it (JPEG, PNG, WEBP, ...)."""
    image = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def pil_reference(image: Image.Image, spec: ImageSpec | None = None) -> np.ndarray:
    """(3, S, S) float32: convert("RGB"), Resize, CenterCrop, ToTensor, Normalize, in PIL and numpy calls."""
    spec = spec or ImageSpec()
    image = image.convert("RGB")
    size, (width, height) = spec.size, image.size
    if spec.resize == "squash":
        resized_w, resized_h = size, size
    elif width <= height:
        resized_w, resized_h = size, int(size * height / width)
    else:
        resized_w, resized_h = int(size * width / height), size
    resized = image.resize((resized_w, resized_h), Image.Resampling.BICUBIC)
    top, left = round((resized_h - size) / 2.0), round((resized_w - size) / 2.0)
    crop = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32) / np.float32(255)
    mean, std = np.asarray(spec.mean, dtype=np.float32), np.asarray(spec.std, dtype=np.float32)
    return ((crop - mean) / std).transpose(2, 0, 1)
