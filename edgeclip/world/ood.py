"""Out-of-distribution evaluation pictures: the world's 64 color-shape labels drawn by a second, independent renderer.

Training draws with OpenCV (`cv2.fillPoly` over the contours of `edgeclip.world.render`, on the backgrounds of
`edgeclip.world.scene`). This module shares none of that: it draws with PIL's ImageDraw (4x supersampled, then
reduced), builds every shape from its own geometry (a heart from two disks and a triangle, a cross from two bars, a
ring as a thick circle outline, a star with another inner radius), picks its own colors, sizes, frames and
backgrounds, and imports nothing from the training renderers (a test checks the imports). Its pictures are made
from a seed when asked for, never stored and never given to training.

Families (item i has label i % 64 and family (i // 64) % 4: every 256 items show every label in every family):

- "filled": a filled shape, radius 18-38% of the short side, in a 320x240 frame, on plain gray, a two-color
  gradient or gray noise; slight color jitter, sometimes a blur; JPEG quality 60-90.
- "outline": the same frames, the shape drawn as a thick outline (8-16% of its radius) on the same backgrounds.
- "small": radius 9-18% of the short side, anywhere inside the center crop, frames 320x240 or 240x320.
- "wide": 16:9 frames (384x216), radius 15-35%, a two-color vertical band background, a little sensor noise.

    items = ood_set(seed=0)          # list[OODItem(image, label, family, radius_frac)]; 512 items
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edgeclip.errors import InputError
from edgeclip.world.vocab import COLORS, SHAPES

if TYPE_CHECKING:
    from PIL import ImageDraw

RGB = tuple[int, int, int]

OOD_SIZE = 512
FAMILIES: tuple[str, ...] = ("filled", "outline", "small", "wide")
SUPERSAMPLE = 4
# Centers of each color name, as an outside painter would choose them; jittered by up to JITTER per channel.
PAINT: dict[str, tuple[int, int, int]] = {
    "red": (214, 28, 34),
    "green": (34, 160, 60),
    "blue": (30, 80, 220),
    "yellow": (246, 220, 30),
    "orange": (250, 130, 20),
    "purple": (130, 50, 170),
    "white": (248, 248, 248),
    "black": (16, 16, 16),
}
JITTER = 12
MIN_CONTRAST = 90.0  # RGB distance between the shape and every background color it lies on


@dataclass(frozen=True)
class OODItem:
    image: npt.NDArray[np.uint8]  # (H, W, 3) RGB
    label: str  # "<color> <shape>"
    family: str
    radius_frac: float  # the shape's radius as a fraction of the frame's short side


def ood_labels() -> tuple[str, ...]:
    """The 64 candidate labels, in the order of `edgeclip.world.eval_labels("color_shape")`."""
    return tuple(f"{c} {s}" for c in COLORS for s in SHAPES)


def _star_points(cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * 0.5
        a = turn - math.pi / 2 + k * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _ngon(cx: float, cy: float, r: float, n: int, turn: float) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(turn + 2 * math.pi * k / n), cy + r * math.sin(turn + 2 * math.pi * k / n)) for k in range(n)
    ]


def _rotated_rect(cx: float, cy: float, half_w: float, half_h: float, turn: float) -> list[tuple[float, float]]:
    c, s = math.cos(turn), math.sin(turn)
    return [
        (cx + x * c - y * s, cy + x * s + y * c)
        for x, y in ((-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h))
    ]


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, turn: float, fill: RGB, width: int
) -> None:
    """Draw one shape of radius r; width > 0: an outline of that many pixels, else filled."""

    def poly(points: list[tuple[float, float]]) -> None:
        if width:
            draw.line([*points, points[0], points[1]], fill=fill, width=width, joint="curve")
        else:
            draw.polygon(points, fill=fill)

    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)  # an outlined circle would be a ring
    elif shape == "ring":
        # A ring is a thick band whatever the family: its hole is what makes it a ring.
        band = max(width, int(r * 0.38))
        draw.ellipse(box, outline=fill, width=band)
    elif shape == "square":
        half = r / math.sqrt(2)
        poly(_rotated_rect(cx, cy, half, half, turn))
    elif shape == "triangle":
        poly(_ngon(cx, cy + 0.12 * r, r, 3, -math.pi / 2 + turn))
    elif shape == "hexagon":
        poly(_ngon(cx, cy, r, 6, turn))
    elif shape == "star":
        poly(_star_points(cx, cy, r, turn))
    elif shape == "cross":
        if width:
            a, b = r * 0.92, r * 0.3
            c, s = math.cos(turn), math.sin(turn)
            outline = [
                (b, -a),
                (b, -b),
                (a, -b),
                (a, b),
                (b, b),
                (b, a),
                (-b, a),
                (-b, b),
                (-a, b),
                (-a, -b),
                (-b, -b),
                (-b, -a),
            ]
            poly([(cx + x * c - y * s, cy + x * s + y * c) for x, y in outline])
        else:
            poly(_rotated_rect(cx, cy, r * 0.92, r * 0.3, turn))
            poly(_rotated_rect(cx, cy, r * 0.3, r * 0.92, turn))
    elif shape == "heart":
        # Two lobes and a point, built from disks and a triangle (filled), or traced as one curve (outline).
        if width:
            pts = []
            for k in range(72):
                t = 2 * math.pi * k / 72
                x = 16 * math.sin(t) ** 3
                y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
                pts.append((cx + x * r / 17, cy + (y + 2.5) * r / 17))
            poly(pts)
        else:
            lobe = r * 0.5
            lx, rx, ly = cx - r * 0.45, cx + r * 0.45, cy - r * 0.3
            draw.ellipse((lx - lobe, ly - lobe, lx + lobe, ly + lobe), fill=fill)
            draw.ellipse((rx - lobe, ly - lobe, rx + lobe, ly + lobe), fill=fill)
            left, right = (cx - r * 0.93, ly + lobe * 0.25), (cx + r * 0.93, ly + lobe * 0.25)
            draw.polygon([left, right, (cx, cy + r * 0.95)], fill=fill)
    else:
        raise InputError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def _paint(rng: np.random.Generator, color: str) -> RGB:
    base = np.array(PAINT[color], dtype=np.int64)
    return tuple(int(v) for v in np.clip(base + rng.integers(-JITTER, JITTER + 1, 3), 0, 255))  # type: ignore[return-value]


def _background(rng: np.random.Generator, family: str, w: int, h: int, rgb: tuple[int, int, int]) -> np.ndarray:
    """(h, w, 3) float32 background, far enough from the shape color."""
    target = np.array(rgb, dtype=np.float64)
    for _ in range(50):
        kind = int(rng.integers(3)) if family != "wide" else 3
        if kind == 0:  # plain gray
            g = float(rng.uniform(70, 190))
            colors = [np.array([g, g, g])]
            img = np.full((h, w, 3), g, dtype=np.float32)
        elif kind == 1:  # two-color linear gradient in any direction
            a, b = rng.uniform(50, 200, 3), rng.uniform(50, 200, 3)
            mean = (a + b) / 2
            a, b = mean + (a - mean) * 0.6, mean + (b - mean) * 0.6  # muted
            colors = [a, b, (a + b) / 2]
            t = rng.uniform(0, 2 * math.pi)
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            ramp = xx * math.cos(t) + yy * math.sin(t)
            ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
            img = (a[None, None] * (1 - ramp[..., None]) + b[None, None] * ramp[..., None]).astype(np.float32)
        elif kind == 2:  # gray value noise, blocky then smoothed by PIL's bilinear resize
            from PIL import Image

            g, spread = float(rng.uniform(90, 170)), float(rng.uniform(15, 40))
            colors = [np.array([g - spread] * 3), np.array([g + spread] * 3), np.array([g] * 3)]
            cells = rng.uniform(g - spread, g + spread, (int(rng.integers(4, 12)), int(rng.integers(4, 12))))
            small = Image.fromarray(cells.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR)
            plane = np.asarray(small, dtype=np.float32)
            img = np.repeat(plane[..., None], 3, axis=2)
        else:  # vertical bands of two muted colors
            a, b = rng.uniform(60, 190, 3), rng.uniform(60, 190, 3)
            colors = [a, b]
            period = int(rng.integers(20, 80))
            band = ((np.arange(w) // period) % 2).astype(np.float32)
            img = (a[None, None] * (1 - band[None, :, None]) + b[None, None] * band[None, :, None]).astype(np.float32)
            img = np.broadcast_to(img, (h, w, 3)).copy()
        if all(float(np.linalg.norm(c - target)) >= MIN_CONTRAST for c in colors):
            return img
    return np.full((h, w, 3), 128.0, dtype=np.float32)


def ood_item(index: int, seed: int = 0) -> OODItem:
    """Item `index` of the out-of-distribution set of `seed` (a pure function of both)."""
    from PIL import Image, ImageDraw, ImageFilter

    labels = ood_labels()
    label = labels[index % len(labels)]
    color, shape = label.split(" ")
    family = FAMILIES[(index // len(labels)) % len(FAMILIES)]
    rng = np.random.default_rng([seed, 0x00D, index])
    if family == "wide":
        w, h = 384, 216
    elif family == "small" and rng.random() < 0.5:
        w, h = 240, 320
    else:
        w, h = 320, 240
    short = min(w, h)
    lo, hi = {"filled": (0.18, 0.38), "outline": (0.18, 0.38), "small": (0.09, 0.18), "wide": (0.15, 0.35)}[family]
    frac = float(rng.uniform(lo, hi))
    r = frac * short
    # Inside the center crop (a square of the short side), with room to move where the shape is small.
    slack_x, slack_y = max(0.0, short / 2 - r * 1.05), max(0.0, short / 2 - r * 1.05)
    cx = w / 2 + float(rng.uniform(-slack_x, slack_x)) * (0.8 if family == "small" else 0.3)
    cy = h / 2 + float(rng.uniform(-slack_y, slack_y)) * (0.8 if family == "small" else 0.3)
    turn = float(rng.uniform(-0.3, 0.3))
    rgb = _paint(rng, color)
    bg = _background(rng, family, w, h, rgb)
    canvas = Image.fromarray(np.clip(np.rint(bg), 0, 255).astype(np.uint8), mode="RGB")
    big = canvas.resize((w * SUPERSAMPLE, h * SUPERSAMPLE), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(big)
    width = round(r * float(rng.uniform(0.08, 0.16)) * SUPERSAMPLE) if family == "outline" else 0
    s = SUPERSAMPLE
    _draw_shape(draw, shape, cx * s, cy * s, r * s, turn, rgb, width)
    img = big.resize((w, h), Image.Resampling.BOX)
    if rng.random() < 0.4:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.6))))
    if family == "wide":
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, (h, w, 1), dtype=np.int16)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(60, 91)))
    buf.seek(0)
    with Image.open(buf) as decoded:
        image = np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()
    return OODItem(image, label, family, frac)


def ood_set(n: int | None = None, seed: int = 0) -> list[OODItem]:
    """The out-of-distribution set: `n` items (default 512, every label 8 times, every family 128 times)."""
    n = OOD_SIZE if n is None else n
    if n < 1:
        raise InputError(f"an out-of-distribution set needs at least 1 item; got n={n}")
    return [ood_item(i, seed) for i in range(n)]
