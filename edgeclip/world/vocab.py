"""The world's vocabulary: attribute names, the held-out color-shape pairs, and how each name is worded."""

from __future__ import annotations

COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "orange", "purple", "white", "black")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross", "heart", "ring")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "noise", "texture")
SPLITS: tuple[str, ...] = ("train", "seen", "heldout")

# Color i is held out with shapes i + k (mod 8) for each offset k: every color and every shape is in exactly
# len(offsets) held-out pairs, so no single color or shape is favoured by what the model never saw.
HELD_OUT_OFFSETS: tuple[int, ...] = (1, 5)
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    (color, SHAPES[(i + k) % len(SHAPES)]) for i, color in enumerate(COLORS) for k in HELD_OUT_OFFSETS
)
# Sorted: iterating the frozenset follows string hashes, which change from one process to the next.
HELD_OUT_LIST: tuple[tuple[str, str], ...] = tuple(sorted(HELD_OUT_PAIRS))
SEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (color, shape) for color in COLORS for shape in SHAPES if (color, shape) not in HELD_OUT_PAIRS
)

# HSV ranges of each color name: hue in degrees (may start below 0: it wraps), saturation and value in [0, 1].
# Kept tight enough that a person names every sample the same way, even after the lighting changes.
COLOR_HSV: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "red": ((-5.0, 5.0), (0.8, 1.0), (0.75, 1.0)),
    "orange": ((24.0, 32.0), (0.85, 1.0), (0.9, 1.0)),
    "yellow": ((52.0, 60.0), (0.8, 1.0), (0.9, 1.0)),
    "green": ((105.0, 140.0), (0.65, 1.0), (0.5, 0.85)),
    "blue": ((212.0, 230.0), (0.7, 1.0), (0.65, 1.0)),
    "purple": ((266.0, 284.0), (0.55, 0.85), (0.5, 0.85)),
    "white": ((0.0, 360.0), (0.0, 0.05), (0.93, 1.0)),
    "black": ((0.0, 360.0), (0.0, 0.3), (0.02, 0.1)),
}

# The first wording of each is the canonical one.
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "on the left side", "at the left"),
    "right": ("on the right", "on the right side", "at the right"),
    "top": ("at the top", "near the top", "on the top"),
    "bottom": ("at the bottom", "near the bottom", "on the bottom"),
    "center": ("in the center", "in the middle"),
}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three")


def plural(shape: str) -> str:
    """The plural of a shape name: 'stars', 'crosses'."""
    return shape + "es" if shape.endswith(("s", "x", "sh", "ch")) else shape + "s"


def article(word: str) -> str:
    """'a' or 'an' before `word`."""
    return "an" if word[:1] in "aeio" else "a"
