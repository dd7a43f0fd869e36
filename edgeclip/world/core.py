"""The World (sample, render, caption), the endless training stream, and the fixed evaluation sets."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from edgeclip.errors import InputError
from edgeclip.world import captions as _captions
from edgeclip.world import render as _render
from edgeclip.world.scene import (
    Obj,
    Scene,
    place,
    sample_background,
    sample_effects,
    sample_frame,
    sample_pattern,
)
from edgeclip.world.vocab import (
    BACKGROUNDS,
    COLORS,
    HELD_OUT_LIST,
    HELD_OUT_PAIRS,
    NUMBER_WORDS,
    POSITION_PHRASES,
    POSITIONS,
    SEEN_PAIRS,
    SHAPES,
    SIZES,
    SPLITS,
    plural,
)

EVAL_KINDS: tuple[str, ...] = ("color_shape", "count", "position")
# Whole rounds of their labels; color_shape has 256 held-out items, so one item moves held-out accuracy 0.4 points.
EVAL_SIZES: dict[str, int] = {"color_shape": 1024, "count": 480, "position": 512}
EDGE_POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
EVAL_POSITIONS = EDGE_POSITIONS
# Tags that keep the generators of the training stream and the evaluation sets apart whatever seeds are given.
_TRAIN_TAG = 0x7A1
_EVAL_TAG = 0xE7A1
# How many objects a training scene has, and how often.
N_OBJECTS = (1, 2, 3)
N_OBJECTS_P = (0.5, 0.3, 0.2)
REPEAT_P = 0.35  # multi-object training scenes that repeat one color-shape pair (what counting captions need)

Spec = tuple[str, str, str, str]  # (color, shape, size, position)


def _check_choice(kind: str, value: str, known: Sequence[str]) -> None:
    if value not in known:
        raise InputError(f"unknown {kind} {value!r}; known {kind}s: {', '.join(known)}")


class World:
    """The procedural image-caption world. Pass a generator to every call for reproducible streams; None uses the
    world's own, seeded with `seed`."""

    def __init__(
        self, seed: int = 0, *, min_side: int = 160, max_side: int = 480, randomize: float = 0.0, free_p: float = 0.0
    ) -> None:
        if not 32 <= min_side <= max_side:
            raise InputError(
                f"image sides must satisfy 32 <= min_side <= max_side; got min_side={min_side}, "
                f"max_side={max_side}: pass e.g. min_side=160, max_side=480"
            )
        if not (0.0 <= randomize <= 1.0 and 0.0 <= free_p <= 1.0):
            raise InputError(f"randomize and free_p are probabilities; got randomize={randomize}, free_p={free_p}")
        self.seed = seed
        # Domain randomization (see `edgeclip.world.randomize`): the share of composed scenes drawn in random styles
        # and the share of training scenes that are one free object. 0 keeps the plain world, draw for draw.
        self.randomize = randomize
        self.free_p = free_p
        self.min_side = min_side
        self.max_side = max_side
        self._rng = np.random.default_rng(seed)

    def _gen(self, rng: np.random.Generator | None) -> np.random.Generator:
        return self._rng if rng is None else rng

    def compose(
        self,
        specs: Sequence[Spec],
        rng: np.random.Generator | None = None,
        *,
        size: tuple[int, int] | None = None,
    ) -> Scene:
        """A scene of the given (color, shape, size, position) objects, with a random frame, background and light.

        Positions must be distinct. Any color-shape pair is allowed here: the split rules live in `sample_scene`.
        `size`: (width, height), default random within the world's sides.
        """
        rng = self._gen(rng)
        positions = [s[3] for s in specs]
        if not specs or len(set(positions)) != len(positions):
            raise InputError(f"a scene needs one or more objects at distinct positions; got positions {positions}")
        if size is not None and min(size) < 32:
            raise InputError(f"a scene must be at least 32x32 pixels to draw its shapes; got size={size}")
        width, height = size if size is not None else sample_frame(rng, self.min_side, self.max_side)
        objects = place(rng, specs, width, height)
        if self.randomize > 0 and rng.random() < self.randomize:
            return self._randomized(rng, objects, width, height, free=False)
        kind, colors = sample_background(rng, objects)
        return Scene(
            objects=objects,
            background=kind,
            width=width,
            height=height,
            bg_colors=colors,
            **sample_pattern(rng, kind, min(width, height)),  # type: ignore[arg-type]
            **sample_effects(rng, objects, min(width, height)),  # type: ignore[arg-type]
        )

    def _randomized(
        self, rng: np.random.Generator, objects: tuple[Obj, ...], width: int, height: int, *, free: bool
    ) -> Scene:
        from edgeclip.world import randomize as _rand

        side = min(width, height)
        objects = _rand.styled(rng, objects)
        kinds = (*BACKGROUNDS, *_rand.RANDOM_BACKGROUNDS)
        kind, colors = sample_background(rng, objects, kinds, _rand.background_saturation(rng))
        effects = sample_effects(rng, objects, side)
        return Scene(
            objects=objects,
            background=kind,
            width=width,
            height=height,
            bg_colors=colors,
            free=free,
            occluder=effects["occluder"],  # type: ignore[arg-type]
            **sample_pattern(rng, kind, side),  # type: ignore[arg-type]
            **_rand.strong_effects(rng, side),  # type: ignore[arg-type]
        )

    def free_scene(self, rng: np.random.Generator | None = None, pair: tuple[str, str] | None = None) -> Scene:
        """One object of a seen pair (or `pair`) of any size, anywhere, in a random style: its captions name only
        its color and shape."""
        from edgeclip.world import randomize as _rand

        rng = self._gen(rng)
        color, shape = pair if pair is not None else SEEN_PAIRS[int(rng.integers(len(SEEN_PAIRS)))]
        width, height = sample_frame(rng, self.min_side, self.max_side)
        base = place(rng, [(color, shape, "large", "center")], width, height)[0]
        x, y, radius = _rand.free_geometry(rng, width, height)
        obj = replace(base, x=x, y=y, radius=radius, size=_rand.free_size_word(radius, min(width, height)))
        return self._randomized(rng, (obj,), width, height, free=True)

    def sample_scene(self, rng: np.random.Generator | None = None, split: str = "train") -> Scene:
        """A random scene. "train": one to three objects, never a held-out pair; "seen" / "heldout": one object
        whose (color, shape) is a seen / held-out pair."""
        _check_choice("split", split, SPLITS)
        rng = self._gen(rng)
        if split != "train":
            allowed = SEEN_PAIRS if split == "seen" else HELD_OUT_LIST
            color, shape = allowed[int(rng.integers(len(allowed)))]
            return self.compose([(color, shape, _any(rng, SIZES), _any(rng, POSITIONS))], rng)
        if self.free_p > 0 and rng.random() < self.free_p:
            return self.free_scene(rng)
        n = N_OBJECTS[int(np.searchsorted(np.cumsum(N_OBJECTS_P), rng.random() * sum(N_OBJECTS_P), side="right"))]
        pairs = [SEEN_PAIRS[int(i)] for i in rng.integers(len(SEEN_PAIRS), size=n)]
        sizes = [_any(rng, SIZES) for _ in range(n)]
        if n > 1 and rng.random() < REPEAT_P:
            # Two or all of the objects are copies of one pair, often of one size too.
            copies = n if n == 2 or rng.random() < 0.5 else 2
            pairs[1:copies] = [pairs[0]] * (copies - 1)
            if rng.random() < 0.7:
                sizes[1:copies] = [sizes[0]] * (copies - 1)
        positions = _positions(rng, pairs)
        return self.compose([(c, s, z, p) for (c, s), z, p in zip(pairs, sizes, positions, strict=True)], rng)

    def render(self, scene: Scene, rng: np.random.Generator | None = None) -> npt.NDArray[np.uint8]:
        """The scene as an (height, width, 3) uint8 RGB image."""
        return _render.render(scene, self._gen(rng))

    def masks(self, scene: Scene) -> list[npt.NDArray[np.bool_]]:
        """Per object, the (height, width) bool mask of its visible pixels."""
        return _render.visible_masks(scene)

    def captions(
        self, scene: Scene, rng: np.random.Generator | None = None, n: int = 1, *, colors: bool = True
    ) -> list[str]:
        """`n` independently sampled phrasings of the scene (repeats possible); `colors=False`: none names a
        color, so they stay true of the scene in grayscale."""
        if n < 1:
            raise InputError(f"the number of captions must be at least 1; got n={n}")
        rng = self._gen(rng)
        return [_captions.sample_caption(scene, rng, colors=colors) for _ in range(n)]

    def canonical_caption(self, scene: Scene) -> str:
        """One deterministic caption naming every attribute of every object (equal for equal content)."""
        return _captions.canonical_caption(scene)


def _any(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _positions(rng: np.random.Generator, pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Distinct positions for objects of these (color, shape) pairs; copies of one pair on the edges only.

    Beside a large neighbour a large center object overlaps it; two copies of one pair would merge into one blob
    that nobody could count.
    """
    copies = [i for i, p in enumerate(pairs) if pairs.count(p) > 1]
    edges = [EDGE_POSITIONS[i] for i in rng.permutation(len(EDGE_POSITIONS))]
    rest = [*edges[len(copies) :], "center"]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    return [edges[copies.index(i)] if i in copies else rest.pop() for i in range(len(pairs))]


def train_stream(
    seed: int, batch_size: int, *, world: World | None = None
) -> Iterator[tuple[list[npt.NDArray[np.uint8]], list[str], list[str]]]:
    """Endless training batches: (images, sampled captions, canonical captions), never a held-out pair."""
    if batch_size < 1:
        raise InputError(f"the batch size must be at least 1; got {batch_size}")
    world = world or World(seed)
    rng = np.random.default_rng([seed, _TRAIN_TAG])
    while True:
        images, texts, canon = [], [], []
        for _ in range(batch_size):
            scene = world.sample_scene(rng, "train")
            images.append(world.render(scene, rng))
            texts.append(_captions.sample_caption(scene, rng))
            canon.append(_captions.canonical_caption(scene))
        yield images, texts, canon


@dataclass(frozen=True)
class EvalItem:
    image: npt.NDArray[np.uint8]
    label: str
    labels: tuple[str, ...]  # every candidate label of the set's kind, the same tuple for every item
    heldout: bool  # color_shape: the pair is held out of training; other kinds: always False
    scene: Scene


def eval_labels(kind: str) -> tuple[str, ...]:
    """The candidate labels of an evaluation kind, in a fixed order."""
    _check_choice("eval kind", kind, EVAL_KINDS)
    if kind == "color_shape":
        return tuple(f"{c} {s}" for c in COLORS for s in SHAPES)
    if kind == "count":
        return tuple(f"{NUMBER_WORDS[k]} {s if k == 1 else plural(s)}" for s in SHAPES for k in (1, 2, 3))
    return tuple(f"{s} {POSITION_PHRASES[p][0]}" for s in SHAPES for p in EVAL_POSITIONS)


def eval_set(
    kind: str = "color_shape", n: int | None = None, seed: int = 1234, *, world: World | None = None
) -> list[EvalItem]:
    """A fixed evaluation set: the same items for the same arguments, drawn apart from any training stream.

    Item i has label labels[i % len(labels)], so the labels are balanced (exactly, when n is a multiple of their
    number; the default n is). "color_shape": one object, label "<color> <shape>", `heldout` tells which pairs
    training never showed. "count": one to three objects of one shape, label "two stars". "position": one object,
    label "star on the left". Count and position sets use seen pairs only.
    """
    labels = eval_labels(kind)
    n = EVAL_SIZES[kind] if n is None else n
    if n < 1:
        raise InputError(f"an evaluation set needs at least 1 item; got n={n}")
    world = world or World(seed)
    rng = np.random.default_rng([seed, _EVAL_TAG, EVAL_KINDS.index(kind)])
    items = []
    for i in range(n):
        j = i % len(labels)
        heldout = False
        if kind == "color_shape":
            color, shape = COLORS[j // len(SHAPES)], SHAPES[j % len(SHAPES)]
            heldout = (color, shape) in HELD_OUT_PAIRS
            specs = [(color, shape, _any(rng, SIZES), _any(rng, POSITIONS))]
        elif kind == "count":
            shape, k = SHAPES[j // 3], j % 3 + 1
            colors = [c for c in COLORS if (c, shape) not in HELD_OUT_PAIRS]
            same = rng.random() < 0.5
            first = _any(rng, colors)
            pairs = [(first if same else _any(rng, colors), shape) for _ in range(k)]
            specs = [(c, s, _any(rng, SIZES), p) for (c, s), p in zip(pairs, _positions(rng, pairs), strict=True)]
        else:
            shape, position = SHAPES[j // len(EVAL_POSITIONS)], EVAL_POSITIONS[j % len(EVAL_POSITIONS)]
            colors = [c for c in COLORS if (c, shape) not in HELD_OUT_PAIRS]
            specs = [(_any(rng, colors), shape, _any(rng, SIZES), position)]
        scene = world.compose(specs, rng)
        items.append(EvalItem(world.render(scene, rng), labels[j], labels, heldout, scene))
    return items
