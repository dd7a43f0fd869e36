"""Domain randomization of training scenes: many ways to draw each shape, frame it and spoil the picture.

A randomized scene is still a `Scene` (plain data, rendered by `edgeclip.world.render`): its objects carry an `ObjStyle`
(filled, outlined, gradient or textured fill; stretched, sheared, tilted in perspective, with a wobbly contour), its
background may be multi-scale noise, clutter or flat regions parted by straight hard edges (a table's edge, a sheet of
paper, planks), in muted or (half the time) vivid colors, and its effects are stronger (white balance, motion blur,
low-resolution video look, harsh JPEG). A "free" scene holds one object of any size from about 14% to 90% of the short
side, anywhere in the frame, sometimes cut by the frame or the center crop: its captions name only its color and shape
(size and position words do not apply), and it is kept only where at least `MIN_VISIBLE` of the object survives the
crop, so that its shape can still be told.

Each variation stays within what the shape's name means: circles and squares stretch less than stars and crosses, and a
circle is never outlined (an outlined circle is a ring).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from edgeclip.world.scene import MUTED, Lighting, Obj, ObjStyle, sample_rgb

FILLS: tuple[str, ...] = ("solid", "outline", "gradient", "texture")
FILL_P: tuple[float, ...] = (0.4, 0.2, 0.2, 0.2)
NO_OUTLINE = frozenset({"circle", "ring"})  # an outlined circle is a ring; a ring is already a band
# Largest axis stretch per shape (x / y = stretch**2 at most): a square stays a square, a star may be lean.
MAX_STRETCH: dict[str, float] = {
    "circle": 1.1,
    "ring": 1.1,
    "square": 1.08,
    "hexagon": 1.12,
    "triangle": 1.25,
    "star": 1.25,
    "cross": 1.2,
    "heart": 1.2,
}
RANDOM_BACKGROUNDS: tuple[str, ...] = ("octaves", "clutter", "regions")
FREE_RADIUS = (0.07, 0.46)  # of the short side, log-uniform
MIN_VISIBLE = 0.8  # share of a free object's area that must lie inside the center crop
# Half the randomized backgrounds are vivid: colors of this saturation range (a red table, a blue wall, colored paper),
# so that a color word is learned as the object's color, not the picture's. Still MIN_CONTRAST from every object.
VIVID_P = 0.5
VIVID_SATURATION = (0.3, 0.85)


def sample_style(rng: np.random.Generator, obj: Obj) -> ObjStyle:
    """A random drawing style for an object, true to its shape name."""
    r = rng.random()
    fill = FILLS[-1]
    for name, p in zip(FILLS, FILL_P, strict=True):
        r -= p
        if r < 0:
            fill = name
            break
    if fill == "outline" and obj.shape in NO_OUTLINE:
        fill = "gradient"
    limit = math.log(MAX_STRETCH[obj.shape])
    return ObjStyle(
        fill=fill,
        stroke=float(rng.uniform(0.1, 0.3)) if fill == "outline" else 0.0,
        rgb2=sample_rgb(rng, obj.color),
        fill_angle=float(rng.uniform(0, 180)),
        fill_scale=float(rng.uniform(0.15, 0.5)),
        stretch=float(math.exp(rng.uniform(-limit, limit))),
        shear=float(rng.uniform(-0.12, 0.12)),
        tilt=(float(rng.uniform(-0.2, 0.2)), float(rng.uniform(-0.2, 0.2))),
        wobble=float(rng.uniform(0.0, 0.05)) if rng.random() < 0.5 else 0.0,
        wobble_freq=int(rng.integers(2, 7)),
        wobble_phase=float(rng.uniform(0, 2 * math.pi)),
    )


def background_saturation(rng: np.random.Generator) -> tuple[float, float]:
    """The saturation range of a randomized scene's background colors: muted, or vivid in VIVID_P of the scenes."""
    return VIVID_SATURATION if rng.random() < VIVID_P else (0.0, MUTED)


def styled(rng: np.random.Generator, objects: Sequence[Obj]) -> tuple[Obj, ...]:
    return tuple(replace(o, style=sample_style(rng, o)) for o in objects)


def free_geometry(rng: np.random.Generator, width: int, height: int) -> tuple[float, float, float]:
    """(x, y, radius) of a free object: any size, anywhere, at least MIN_VISIBLE of its disk inside the crop."""
    side = min(width, height)
    ox, oy = (width - side) / 2, (height - side) / 2
    lo, hi = FREE_RADIUS
    radius = side * float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    for _ in range(12):
        # Centers up to 0.35 radius past the crop's edge: cut objects are a minority, and only a little cut.
        margin = min(side / 2, radius * 0.65)
        x = ox + float(rng.uniform(margin, side - margin))
        y = oy + float(rng.uniform(margin, side - margin))
        if _disk_inside(x - ox, y - oy, radius * 0.95, side) >= MIN_VISIBLE:
            return x, y, radius
    return ox + side / 2, oy + side / 2, min(radius, side * 0.45)


def _disk_inside(x: float, y: float, r: float, side: float, n: int = 24) -> float:
    """Share of a disk's area inside the square [0, side]^2, on an n x n grid of the disk's box."""
    g = (np.arange(n) + 0.5) / n * 2 - 1
    xx, yy = np.meshgrid(g, g)
    disk = xx**2 + yy**2 <= 1
    px, py = x + xx * r, y + yy * r
    inside = (px >= 0) & (px <= side) & (py >= 0) & (py <= side)
    return float((disk & inside).sum() / disk.sum())


def free_size_word(radius: float, side: float) -> str:
    """The size word nearest to a free object's radius (kept as data; free captions never say it)."""
    return "large" if radius / side >= 0.16 else "small"


def strong_effects(rng: np.random.Generator, side: int) -> dict[str, object]:
    """Lighting, blur, noise, compression for a randomized scene, as Scene keyword arguments."""
    scale = side / 240
    lighting = Lighting(
        brightness=float(rng.uniform(-30, 30)),
        contrast=float(rng.uniform(0.75, 1.25)),
        gain=tuple(float(g) for g in rng.uniform(0.9, 1.1, 3)),  # type: ignore[arg-type]
        falloff=float(rng.uniform(0, 0.35)) if rng.random() < 0.5 else 0.0,
        falloff_angle=float(rng.uniform(0, 360)),
    )
    blur, motion, motion_angle = 0.0, 0.0, 0.0
    r = rng.random()
    if r < 0.25:
        blur = float(rng.uniform(0.4, 1.8) * scale)
    elif r < 0.4:
        motion, motion_angle = float(rng.uniform(3, 9) * scale), float(rng.uniform(0, 180))
    return {
        "lighting": lighting,
        "blur": blur,
        "motion": motion,
        "motion_angle": motion_angle,
        "noise": float(rng.uniform(2, 12)) if rng.random() < 0.4 else 0.0,
        "downscale": float(rng.uniform(0.35, 0.7)) if rng.random() < 0.15 else 0.0,
        "jpeg": int(rng.integers(20, 90)) if rng.random() < 0.45 else 0,
    }
