"""Scenes as plain data, and how they are sampled: what is where, in which colors, under which light."""

from __future__ import annotations

import colorsys
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edgeclip.errors import InputError
from edgeclip.world.vocab import BACKGROUNDS, COLOR_HSV, COLORS, POSITIONS, SHAPES, SIZES

RGB = tuple[int, int, int]

# Where each position puts an object's center, as fractions of the central square (see `Scene`).
ANCHORS: dict[str, tuple[float, float]] = {
    "left": (0.2, 0.5),
    "right": (0.8, 0.5),
    "top": (0.5, 0.2),
    "bottom": (0.5, 0.8),
    "center": (0.5, 0.5),
}
# Circumradius of an object as a fraction of the central square's side: large is about 1.7x small.
RADII: dict[str, tuple[float, float]] = {"small": (0.11, 0.13), "large": (0.19, 0.22)}
JITTER = 0.04  # of the square's side, around the anchor
# Two objects' centers stay at least this times the sum of their radii apart (two circles: under a fifth hidden).
MIN_SPREAD = 0.7
MAX_LAYOUTS = 20
# Rotation stays within +-MAX_ANGLE degrees, so a heart stays a heart and a triangle points up, as people draw them.
MAX_ANGLE = 25.0
# Least RGB distance between an object's color and any color of the background behind it (out of 441).
MIN_CONTRAST = 100.0
MUTED = 0.4  # largest saturation of the plain world's background colors
PATTERNS: tuple[str, ...] = ("stripes", "checker", "weave", "grain")


@dataclass(frozen=True)
class ObjStyle:
    """How one object is drawn beyond its geometry (randomized scenes; see `edgeclip.world.randomize`)."""

    fill: str = "solid"  # one of FILLS
    stroke: float = 0.0  # outline width, as a fraction of the radius
    rgb2: tuple[int, int, int] = (0, 0, 0)  # the second shade of gradient and texture fills (same color name)
    fill_angle: float = 0.0  # degrees: gradient direction, stripe direction
    fill_scale: float = 0.3  # stripe period as a fraction of the radius
    stretch: float = 1.0  # x scaled by it, y divided by it (before the rotation)
    shear: float = 0.0
    tilt: tuple[float, float] = (0.0, 0.0)  # perspective: x' = x / (1 + tx x + ty y), in unit-radius coordinates
    wobble: float = 0.0  # radial irregularity amplitude, fraction of the radius
    wobble_freq: int = 3
    wobble_phase: float = 0.0


@dataclass(frozen=True)
class Obj:
    """One object: its attributes (the words) and its geometry in pixels (what is drawn)."""

    color: str
    shape: str
    size: str
    position: str
    x: float  # center, pixels
    y: float
    radius: float  # circumradius, pixels
    angle: float  # degrees, counter-clockwise
    rgb: RGB
    style: ObjStyle | None = None  # None: a plain filled shape


@dataclass(frozen=True)
class Lighting:
    """A global light change: v -> ((v - 128) * contrast + 128 + brightness) * gain[c], times a directional ramp."""

    brightness: float = 0.0
    contrast: float = 1.0
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)  # color cast, per RGB channel
    falloff: float = 0.0  # the ramp goes from 1 - falloff / 2 to 1 + falloff / 2 across the image
    falloff_angle: float = 0.0  # degrees


@dataclass(frozen=True)
class Occluder:
    """A gray band drawn over part of one object."""

    x: float
    y: float
    length: float
    width: float
    angle: float
    gray: int


@dataclass(frozen=True)
class Scene:
    """A whole picture as data.

    Objects lie inside the central square of side min(width, height), so the shortest-side resize and center crop of
    CLIP preprocessing keep all of them; positions are read in that square. Objects are drawn in order (later ones
    on top). The background mixes `bg_colors[0]` and `bg_colors[1]` with a pattern; every color it can take is at
    least MIN_CONTRAST away from every object color.
    """

    objects: tuple[Obj, ...]
    background: str
    width: int
    height: int
    bg_colors: tuple[RGB, RGB] = ((128, 128, 128), (128, 128, 128))
    bg_pattern: str = ""  # texture backgrounds: one of PATTERNS
    bg_angle: float = 0.0  # degrees: gradient direction, stripe direction
    bg_scale: float = 0.0  # pixels: stripe period, checker cell, region edges' spacing; noise: grid cells across
    lighting: Lighting = field(default_factory=Lighting)
    occluder: Occluder | None = None
    blur: float = 0.0  # Gaussian sigma, pixels; 0: none
    noise: float = 0.0  # sensor noise std (uniform), 0..255 units; 0: none
    jpeg: int = 0  # JPEG quality of a round trip; 0: none
    # Randomized scenes only (see `edgeclip.world.randomize`):
    free: bool = False  # one object of any size anywhere: its size and position words do not apply
    motion: float = 0.0  # motion blur length, pixels; 0: none
    motion_angle: float = 0.0  # degrees
    downscale: float = 0.0  # shrink to this fraction and back (a low-resolution video look); 0: none


def hsv_rgb(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb((h % 360.0) / 360.0, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


def sample_rgb(rng: np.random.Generator, color: str) -> RGB:
    """A random RGB value that a person calls `color`."""
    (h0, h1), (s0, s1), (v0, v1) = COLOR_HSV[color]
    return hsv_rgb(rng.uniform(h0, h1), rng.uniform(s0, s1), rng.uniform(v0, v1))


def check_names(color: str, shape: str, size: str, position: str) -> None:
    for kind, value, known in (
        ("color", color, COLORS),
        ("shape", shape, SHAPES),
        ("size", size, SIZES),
        ("position", position, POSITIONS),
    ):
        if value not in known:
            raise InputError(f"unknown {kind} {value!r}; known {kind}s: {', '.join(known)}")


def sample_frame(rng: np.random.Generator, min_side: int, max_side: int) -> tuple[int, int]:
    """(width, height): short side in [min_side, max_side], aspect ratio up to 1.8, landscape or portrait."""
    short = int(rng.integers(min_side, max_side + 1))
    long = int(rng.integers(short, min(max_side, int(short * 1.8)) + 1))
    return (long, short) if rng.random() < 0.6 else (short, long)


def place(
    rng: np.random.Generator, specs: Sequence[tuple[str, str, str, str]], width: int, height: int
) -> tuple[Obj, ...]:
    """Objects for (color, shape, size, position) specs, placed in the central square of a width x height image.

    Neighbours may overlap a little (occlusion), never much: of a few jittered layouts the most spread one is kept.
    """
    for spec in specs:
        check_names(*spec)
    side = min(width, height)
    ox, oy = (width - side) / 2, (height - side) / 2
    radii = [rng.uniform(*RADII[size]) for _, _, size, _ in specs]
    best: list[tuple[float, float]] = []
    best_spread = -1.0
    for _ in range(MAX_LAYOUTS):
        centers = []
        for (_, _, _, position), r in zip(specs, radii, strict=True):
            ax, ay = ANCHORS[position]
            # Clamped so the whole object stays inside the square, a hair off its edge.
            lo, hi = r + 0.01, 0.99 - r
            centers.append(
                (
                    min(hi, max(lo, ax + rng.uniform(-JITTER, JITTER))),
                    min(hi, max(lo, ay + rng.uniform(-JITTER, JITTER))),
                )
            )
        pairs = itertools.combinations(range(len(specs)), 2)
        spread = min((math.dist(centers[i], centers[j]) / (radii[i] + radii[j]) for i, j in pairs), default=1.0)
        if spread > best_spread:
            best, best_spread = centers, spread
        if spread >= MIN_SPREAD:
            break
    return tuple(
        Obj(
            color=color,
            shape=shape,
            size=size,
            position=position,
            x=ox + fx * side,
            y=oy + fy * side,
            radius=r * side,
            angle=float(rng.uniform(-MAX_ANGLE, MAX_ANGLE)),
            rgb=sample_rgb(rng, color),
        )
        for (color, shape, size, position), r, (fx, fy) in zip(specs, radii, best, strict=True)
    )


def _segment_distance(p: RGB, a: RGB, b: RGB) -> float:
    """Distance from color p to the segment of colors a-b (plain Python: three numbers are cheaper than arrays)."""
    ab = [y - x for x, y in zip(a, b, strict=True)]
    ap = [y - x for x, y in zip(a, p, strict=True)]
    t = min(1.0, max(0.0, sum(u * v for u, v in zip(ab, ap, strict=True)) / max(sum(u * u for u in ab), 1e-9)))
    return math.dist(p, [x + t * d for x, d in zip(a, ab, strict=True)])


def sample_background(
    rng: np.random.Generator,
    objects: Sequence[Obj],
    kinds: Sequence[str] = BACKGROUNDS,
    saturation: tuple[float, float] = (0.0, MUTED),
) -> tuple[str, tuple[RGB, RGB]]:
    """A background kind and its two colors, of saturation within `saturation` (muted by default) and far enough
    from every object color."""
    kind = kinds[int(rng.integers(len(kinds)))]
    for _ in range(100):
        h, s, v = rng.uniform(0, 360), rng.uniform(*saturation), rng.uniform(0.25, 0.85)
        c0 = hsv_rgb(h, s, v)
        if kind == "plain":
            c1 = c0
        else:
            dv = rng.uniform(0.12, 0.35) * (1 if rng.random() < 0.5 else -1)
            c1 = hsv_rgb(h + rng.uniform(-60, 60), rng.uniform(*saturation), min(0.9, max(0.2, v + dv)))
        if all(
            _segment_distance(rgb, c0, c1) >= MIN_CONTRAST
            for o in objects
            for rgb in ((o.rgb,) if o.style is None else (o.rgb, o.style.rgb2))
        ):
            return kind, (c0, c1)
    # Mid gray is far from every color name's range (the nearest, dark purple, is ~110 away).
    return "plain", ((128, 128, 128), (128, 128, 128))


def sample_effects(rng: np.random.Generator, objects: Sequence[Obj], side: int) -> dict[str, object]:
    """Lighting, occluder, blur, sensor noise and JPEG for a scene, as Scene keyword arguments."""
    lighting = Lighting(
        brightness=float(rng.uniform(-18, 18)),
        contrast=float(rng.uniform(0.85, 1.15)),
        gain=tuple(float(g) for g in rng.uniform(0.95, 1.05, 3)),  # type: ignore[arg-type]
        falloff=float(rng.uniform(0, 0.2)) if rng.random() < 0.4 else 0.0,
        falloff_angle=float(rng.uniform(0, 360)),
    )
    occluder = None
    if objects and rng.random() < 0.12:
        # A band across one object, off its center, covering at most about a sixth of it.
        o = objects[int(rng.integers(len(objects)))]
        angle = rng.uniform(0, 180)
        offset = rng.uniform(-0.5, 0.5) * o.radius
        nx, ny = -np.sin(np.radians(angle)), np.cos(np.radians(angle))
        occluder = Occluder(
            x=float(o.x + offset * nx),
            y=float(o.y + offset * ny),
            length=float(o.radius * rng.uniform(2.4, 3.2)),
            width=float(o.radius * rng.uniform(0.15, 0.24)),
            angle=float(angle),
            gray=int(rng.integers(100, 160)),
        )
    scale = side / 240
    return {
        "lighting": lighting,
        "occluder": occluder,
        "blur": float(rng.uniform(0.4, 1.3) * scale) if rng.random() < 0.3 else 0.0,
        "noise": float(rng.uniform(2, 7)) if rng.random() < 0.35 else 0.0,
        "jpeg": int(rng.integers(40, 90)) if rng.random() < 0.3 else 0,
    }


def sample_pattern(rng: np.random.Generator, kind: str, side: int) -> dict[str, object]:
    """The pattern parameters of a background kind, as Scene keyword arguments."""
    angle = float(rng.uniform(0, 180))
    if kind == "texture":
        pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
        return {"bg_pattern": pattern, "bg_angle": angle, "bg_scale": float(rng.uniform(0.03, 0.12) * side)}
    if kind == "noise":
        return {"bg_angle": angle, "bg_scale": float(rng.integers(3, 12))}
    if kind in ("octaves", "clutter"):
        return {"bg_angle": angle, "bg_scale": float(rng.integers(2, 6))}
    if kind == "regions":  # bg_scale: the mean distance of parallel edges
        return {"bg_angle": angle, "bg_scale": float(rng.uniform(0.08, 0.4) * side)}
    return {"bg_angle": angle}
