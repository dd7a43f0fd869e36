"""The synthetic world: deterministic, never leaks held-out pairs, truthful captions, recognisable pictures."""

from __future__ import annotations

import colorsys
import hashlib
import itertools
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeclip.errors import InputError
from edgeclip.world import (
    BACKGROUNDS,
    COLORS,
    HELD_OUT_PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    World,
    eval_labels,
    eval_set,
    train_stream,
)
from edgeclip.world.core import EVAL_SIZES
from tests.captions import SHAPE_WORDS, assert_true_of, describes, read_caption

ROOT = Path(__file__).resolve().parents[1]


def digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def train_scenes() -> list[Scene]:
    rng = np.random.default_rng(11)
    world = World(0)
    return [world.sample_scene(rng, "train") for _ in range(2500)]


# ------------------------------------------------------------------------------------------------ vocabulary
def test_held_out_pairs_are_a_balanced_quarter() -> None:
    assert len(HELD_OUT_PAIRS) >= 16
    assert all(c in COLORS and s in SHAPES for c, s in HELD_OUT_PAIRS)
    per_color = Counter(c for c, _ in HELD_OUT_PAIRS)
    per_shape = Counter(s for _, s in HELD_OUT_PAIRS)
    assert set(per_color) == set(COLORS) and set(per_shape) == set(SHAPES)
    assert len(set(per_color.values()) | set(per_shape.values())) == 1


# ------------------------------------------------------------------------------------------------ determinism
def _sample(seed: int, n: int = 6) -> tuple[list[Scene], list[np.ndarray], list[list[str]]]:
    world, rng = World(seed), np.random.default_rng(seed)
    scenes, images, caps = [], [], []
    for _ in range(n):
        scenes.append(world.sample_scene(rng))
        images.append(world.render(scenes[-1], rng))
        caps.append(world.captions(scenes[-1], rng, 3))
    return scenes, images, caps


def test_same_seed_same_bytes_and_other_seeds_differ() -> None:
    a, b, c = _sample(5), _sample(5), _sample(6)
    assert a[0] == b[0] and a[2] == b[2]
    assert digest(*a[1]) == digest(*b[1])
    assert digest(*a[1]) != digest(*c[1]) and a[2] != c[2]
    # The world's own generator (rng=None) is seeded too.
    w1, w2 = World(9), World(9)
    s1, s2 = w1.sample_scene(), w2.sample_scene()
    assert s1 == s2 and digest(w1.render(s1)) == digest(w2.render(s2)) and w1.captions(s1) == w2.captions(s2)
    # Training batches.
    x, y = next(train_stream(3, 4)), next(train_stream(3, 4))
    assert x[1:] == y[1:] and digest(*x[0]) == digest(*y[0])
    assert next(train_stream(4, 4))[2] != x[2]


HASH_SCRIPT = """
import hashlib, sys
import numpy as np
from edgeclip.world import World, eval_set
w, rng, h = World(2), np.random.default_rng(2), hashlib.sha256()
for _ in range(4):
    s = w.sample_scene(rng)
    h.update(w.render(s, rng).tobytes()); h.update(repr(w.captions(s, rng, 2)).encode())
for split in ("seen", "heldout"):
    h.update(repr(w.sample_scene(rng, split)).encode())
h.update(eval_set("color_shape", n=2)[1].image.tobytes())
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxruntime", "transformers"))
print(h.hexdigest(), heavy)
"""


def test_same_bytes_in_other_processes_and_no_torch_import() -> None:
    # String hashing changes between processes: nothing may depend on set iteration order.
    outs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", HASH_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outs.append(done.stdout.split(maxsplit=1))
    assert outs[0] == outs[1]
    assert outs[0][1].strip() == "[]", f"edgeclip.world imported heavy modules: {outs[0][1]}"


# ----------------------------------------------------------------------------------------------- the splits
def test_training_never_shows_a_held_out_pair(train_scenes: list[Scene]) -> None:
    pairs = {(o.color, o.shape) for s in train_scenes for o in s.objects}
    assert not pairs & HELD_OUT_PAIRS
    assert len(pairs) == 64 - len(HELD_OUT_PAIRS)  # and every other pair does appear
    rng, world = np.random.default_rng(1), World(0)
    banned = [f"{c} {s}" for c, s in HELD_OUT_PAIRS] + [f"{c} {s}s" for c, s in HELD_OUT_PAIRS]
    banned += [f"{c} crosses" for c, s in HELD_OUT_PAIRS if s == "cross"]
    for scene in train_scenes[:800]:
        for caption in [*world.captions(scene, rng, 2), world.canonical_caption(scene)]:
            assert not any(b in caption for b in banned), caption
            assert not any((n.get("color"), n.get("shape")) in HELD_OUT_PAIRS for _, n in read_caption(caption))
    _, captions, canonical = next(train_stream(0, 64))
    assert not any(b in c for b in banned for c in captions + canonical)


def test_eval_splits_are_one_object_of_their_kind() -> None:
    rng, world = np.random.default_rng(2), World(0)
    for split, want in (("seen", False), ("heldout", True)):
        scenes = [world.sample_scene(rng, split) for _ in range(200)]
        assert all(len(s.objects) == 1 for s in scenes)
        pairs = {(s.objects[0].color, s.objects[0].shape) for s in scenes}
        assert all((p in HELD_OUT_PAIRS) == want for p in pairs)
    assert pairs == HELD_OUT_PAIRS  # 200 draws of 16 pairs: all of them


def test_every_attribute_and_nuisance_is_produced(train_scenes: list[Scene]) -> None:
    objects = [o for s in train_scenes for o in s.objects]
    assert {o.color for o in objects} == set(COLORS)
    assert {o.shape for o in objects} == set(SHAPES)
    assert {o.size for o in objects} == set(SIZES)
    assert {o.position for o in objects} == set(POSITIONS)
    assert {s.background for s in train_scenes} == set(BACKGROUNDS)
    assert {len(s.objects) for s in train_scenes} == {1, 2, 3}
    repeats = Counter(max(Counter((o.color, o.shape) for o in s.objects).values()) for s in train_scenes)
    assert repeats[2] > 50 and repeats[3] > 20
    assert sum(s.occluder is not None for s in train_scenes) > 100
    for effect in ("blur", "noise", "jpeg"):
        assert 0.1 < np.mean([getattr(s, effect) > 0 for s in train_scenes]) < 0.9, effect
    assert np.ptp([s.lighting.brightness for s in train_scenes]) > 20
    assert len({s.lighting.gain for s in train_scenes}) == len(train_scenes)
    sides = np.array([(s.width, s.height) for s in train_scenes])
    assert sides.min() >= 160 and sides.max() <= 480
    aspect = sides[:, 0] / sides[:, 1]
    assert aspect.min() < 0.7 and aspect.max() > 1.4 and np.mean(np.abs(aspect - 1) < 0.05) > 0.02


# ------------------------------------------------------------------------------------------------- captions
def test_captions_are_true_of_their_scene(train_scenes: list[Scene]) -> None:
    rng, world = np.random.default_rng(3), World(0)
    for scene in train_scenes[:600]:
        for caption in world.captions(scene, rng, 4):
            assert_true_of(caption, scene)
        canonical = world.canonical_caption(scene)
        assert_true_of(canonical, scene)
        # The canonical caption names color and shape everywhere, does not depend on drawing order, and is
        # equal for two renderings of the same content.
        assert all({"color", "shape"} <= set(named) for _, named in read_caption(canonical)), canonical
        assert world.canonical_caption(replace(scene, objects=scene.objects[::-1])) == canonical


def test_colorless_captions_name_no_color_and_stay_true(train_scenes: list[Scene]) -> None:
    rng, world = np.random.default_rng(5), World(0)
    captions = []
    for scene in train_scenes[:400]:
        for caption in world.captions(scene, rng, 3, colors=False):
            assert not set(caption.split()) & set(COLORS), caption
            assert_true_of(caption, scene)
            captions.append(caption)
    assert any(re.search(rf"\b({'|'.join(SHAPES)})$", c) for c in captions)  # shape alone survives
    assert len(set(captions)) > 100


def test_truth_matrix_agrees_with_an_independent_reading(train_scenes: list[Scene]) -> None:
    from edgeclip.world.captions import phrase_code, sample_described, scene_code, truth_matrix

    rng, world = np.random.default_rng(6), World(0)
    scenes = train_scenes[:150] + [world.sample_scene(rng, "seen") for _ in range(150)]
    said = [sample_described(s, rng, colors=i % 3 != 0) for i, s in enumerate(scenes)]
    codes = [phrase_code(phrases) for _, phrases in said]
    truth = truth_matrix(
        np.stack([scene_code(s) for s in scenes]), np.stack([c for c, _ in codes]), np.stack([n for _, n in codes])
    )
    expected = np.array([[describes(text, scene) for text, _ in said] for scene in scenes])
    np.testing.assert_array_equal(truth, expected)
    assert truth.diagonal().all()
    # Not a trivial answer: generic captions ("a star", "two shapes") are true of many scenes, most pairs are false.
    assert 2 < truth.sum(0).mean() < 0.2 * len(scenes)


def test_truth_of_hand_made_captions() -> None:
    from edgeclip.world.captions import Phrase, phrase_code, scene_code, truth_matrix

    rng, world = np.random.default_rng(0), World(0)
    red_star = world.compose([("red", "star", "large", "left")], rng)
    red_star_blue_ring = world.compose([("red", "star", "large", "left"), ("blue", "ring", "small", "top")], rng)
    two_stars = world.compose([("red", "star", "large", "left"), ("blue", "star", "small", "right")], rng)
    captions = {
        "something red": [Phrase(1, color="red")],
        "two stars": [Phrase(2, shape="star")],
        "a star and a ring": [Phrase(1, shape="star"), Phrase(1, shape="ring")],
        "a large red star on the left": [Phrase(1, "red", "star", "large", "left")],
        "two shapes": [Phrase(2)],
    }
    codes = [phrase_code(p) for p in captions.values()]
    truth = truth_matrix(
        np.stack([scene_code(s) for s in (red_star, red_star_blue_ring, two_stars)]),
        np.stack([c for c, _ in codes]),
        np.stack([n for _, n in codes]),
    )
    assert truth.tolist() == [
        [True, False, False, True, False],  # one red star
        [False, False, True, False, True],  # "something red" is false: the ring is not named
        [False, True, False, False, True],
    ]


def test_captions_come_in_many_phrasings(train_scenes: list[Scene]) -> None:
    rng, world = np.random.default_rng(4), World(0)
    captions = [c for s in train_scenes[:500] for c in world.captions(s, rng, 2)]
    colors, shapes = "|".join(COLORS), "|".join(SHAPES)
    wanted = {
        "color alone": rf"^(an image of |a photo of )?something ({colors})$",
        "shape alone": rf"^(a|an|one) ({shapes})$",
        "color and shape": rf"^a photo of (a|an) ({colors}) ({shapes})$",
        "counting": rf"\b(two|three) ({colors}) ",
        "two objects": rf"^(a|an) ({colors}) ({shapes}) and (a|an) ({colors}) ({shapes})$",
        "position": r"(on the left|on the right|at the top|at the bottom|in the center|in the middle)$",
        "size": r"\b(small|large|big|little) ",
    }
    for name, pattern in wanted.items():
        assert any(re.search(pattern, c) for c in captions), f"no {name} caption among {captions[:20]}"
    assert len(set(captions)) > len(captions) // 3


# --------------------------------------------------------------------------------------------------- images
def _median_hsv(image: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    r, g, b = (float(np.median(image[..., c][inner])) / 255 for c in range(3))
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    return h * 360, s, v


# Hue windows a person would still name each color by (wider than the world's own ranges: lighting moves hues).
NAMED = {
    "red": lambda h, s, v: (h < 15 or h > 345) and s > 0.5,
    "orange": lambda h, s, v: 17 <= h <= 40 and s > 0.5 and v > 0.5,
    "yellow": lambda h, s, v: 45 <= h <= 68 and s > 0.5 and v > 0.6,
    "green": lambda h, s, v: 90 <= h <= 160 and s > 0.4,
    "blue": lambda h, s, v: 200 <= h <= 245 and s > 0.5,
    "purple": lambda h, s, v: 255 <= h <= 300 and s > 0.35,
    "white": lambda h, s, v: s < 0.15 and v > 0.65,
    "black": lambda h, s, v: v < 0.35,
}


def test_images_have_their_size_and_recognisable_objects() -> None:
    world, rng = World(0), np.random.default_rng(5)
    for i, color in enumerate(COLORS * 5):
        specs = [(color, SHAPES[i % 8], SIZES[i % 2], POSITIONS[i % 5])]
        if i % 3 == 0:  # a neighbour of another color
            specs.append((COLORS[(i + 3) % 8], SHAPES[(i + 2) % 8], "small", POSITIONS[(i + 1) % 5]))
        scene = world.compose(specs, rng)
        image = world.render(scene, rng)
        assert image.shape == (scene.height, scene.width, 3) and image.dtype == np.uint8
        assert image.std() > 5
        for obj, mask in zip(scene.objects, world.masks(scene), strict=True):
            full = world.masks(replace(scene, objects=(obj,), occluder=None))[0]
            assert mask.sum() >= 0.6 * full.sum() > 0, "an object is mostly hidden"
            h, s, v = _median_hsv(image, mask)
            assert NAMED[obj.color](h, s, v), f"{obj.color} drawn as hsv=({h:.0f}, {s:.2f}, {v:.2f}) in {scene}"
            # The object stands out from the background right around it.
            ring = (cv2.dilate(full.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0) & ~np.any(
                world.masks(replace(scene, occluder=None)), axis=0
            )
            inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            gap = np.linalg.norm(np.median(image[inner], 0) - np.median(image[ring], 0))
            assert gap > 50, f"{obj.color} {obj.shape} is only {gap:.0f} away from its background"


def test_geometry_matches_the_words(train_scenes: list[Scene]) -> None:
    world = World(0)
    areas: dict[tuple[str, str], list[float]] = {}
    copies = 0
    for scene in train_scenes[:400]:
        side = min(scene.width, scene.height)
        x0, y0 = (scene.width - side) // 2, (scene.height - side) // 2
        full = [world.masks(replace(scene, objects=(o,), occluder=None))[0] for o in scene.objects]
        for i, j in itertools.combinations(range(len(full)), 2):
            a, b = scene.objects[i], scene.objects[j]
            if (a.color, a.shape) == (b.color, b.shape):  # copies must not merge into one blob: they are counted
                copies += 1
                assert (full[i] & full[j]).sum() <= 0.05 * min(full[i].sum(), full[j].sum()), scene
        for obj, mask in zip(scene.objects, full, strict=True):
            ys, xs = np.nonzero(mask)
            # Inside the central square: a shortest-side resize and center crop keeps every object.
            assert xs.min() >= x0 and xs.max() < x0 + side and ys.min() >= y0 and ys.max() < y0 + side
            cx, cy = (xs.mean() - x0) / side, (ys.mean() - y0) / side
            where = {
                "left": cx < 0.3,
                "right": cx > 0.7,
                "top": cy < 0.3,
                "bottom": cy > 0.7,
                "center": 0.4 < cx < 0.6 and 0.4 < cy < 0.6,
            }
            assert where[obj.position], f"{obj.position} object at ({cx:.2f}, {cy:.2f})"
            areas.setdefault((obj.shape, obj.size), []).append(mask.sum() / side**2)
    assert copies > 20
    for shape in SHAPES:
        assert max(areas[shape, "small"]) * 1.8 < min(areas[shape, "large"]), shape


# ---------------------------------------------------------------------------------------------- eval sets
def test_eval_sets_are_fixed_and_balanced() -> None:
    for kind, default_n in EVAL_SIZES.items():
        assert default_n % len(eval_labels(kind)) == 0, kind
    items = eval_set("color_shape", n=64)
    assert [i.label for i in items] == list(eval_labels("color_shape"))  # each of the 64 labels once
    assert sum(i.heldout for i in items) == len(HELD_OUT_PAIRS)
    for item in items:
        (obj,) = item.scene.objects
        assert item.label == f"{obj.color} {obj.shape}" and item.heldout == ((obj.color, obj.shape) in HELD_OUT_PAIRS)
        assert item.image.shape == (item.scene.height, item.scene.width, 3)

    count = eval_set("count", n=24)
    assert Counter(i.label for i in count) == Counter(eval_labels("count"))
    for item in count:
        number, noun = item.label.split()
        assert len(item.scene.objects) == {"one": 1, "two": 2, "three": 3}[number], item.label
        assert {o.shape for o in item.scene.objects} == {SHAPE_WORDS[noun]} and not item.heldout
        assert not {(o.color, o.shape) for o in item.scene.objects} & HELD_OUT_PAIRS

    position = eval_set("position", n=32)
    assert Counter(i.label for i in position) == Counter(eval_labels("position"))
    for item in position:
        (obj,) = item.scene.objects
        assert item.label.startswith(obj.shape + " ") and item.label.endswith(obj.position), item.label
        assert (obj.color, obj.shape) not in HELD_OUT_PAIRS

    again = eval_set("color_shape", n=64)
    assert digest(*(i.image for i in again)) == digest(*(i.image for i in items))
    assert digest(*(i.image for i in eval_set("color_shape", n=64, seed=1))) != digest(*(i.image for i in items))


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: World().sample_scene(None, "test"), "unknown split 'test'; known splits: train, seen, heldout"),
        (lambda: eval_set("colour"), "unknown eval kind 'colour'; known eval kinds: color_shape, count, position"),
        (lambda: eval_labels("size"), "unknown eval kind 'size'; known eval kinds: color_shape, count, position"),
        (lambda: World().compose([("pink", "star", "small", "left")]), "unknown color 'pink'; known colors: red,"),
        (lambda: World().compose([("red", "moon", "small", "left")]), "unknown shape 'moon'; known shapes: circle,"),
        (lambda: World().compose([("red", "star", "tiny", "left")]), "unknown size 'tiny'; known sizes: small, large"),
        (
            lambda: World().compose([("red", "star", "small", "left"), ("blue", "ring", "large", "left")]),
            "one or more objects at distinct positions; got positions ['left', 'left']",
        ),
        (lambda: World().compose([]), "one or more objects at distinct positions; got positions []"),
        (
            lambda: World().compose([("red", "star", "small", "left")], size=(20, 200)),
            "at least 32x32 pixels to draw its shapes; got size=(20, 200)",
        ),
        (lambda: World(min_side=300, max_side=200), "min_side <= max_side; got min_side=300, max_side=200"),
        (lambda: World().captions(World().sample_scene(), n=0), "at least 1; got n=0"),
        (lambda: next(train_stream(0, 0)), "the batch size must be at least 1; got 0"),
        (lambda: eval_set("count", n=0), "at least 1 item; got n=0"),
    ],
)
def test_bad_input_is_refused_with_the_known_choices(call: Callable[[], object], message: str) -> None:
    with pytest.raises(InputError) as info:
        call()
    assert message in str(info.value)


# ------------------------------------------------------------------------------------------------- gallery
def test_gallery_example_writes_a_grid(tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    cmd = [sys.executable, str(ROOT / "examples" / "world_gallery.py"), "--out", str(out), "--n", "4", "--cols", "2"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    grid = cv2.imread(str(out))
    assert grid is not None and grid.shape[1] == 2 * 240 and grid.std() > 10


# ----------------------------------------------------------------------------------------- domain randomization
@pytest.fixture(scope="module")
def random_scenes() -> list[Scene]:
    rng = np.random.default_rng(21)
    world = World(0, min_side=96, max_side=192, randomize=0.7, free_p=0.3)
    return [world.sample_scene(rng, "train") for _ in range(1500)]


def test_randomized_scenes_vary_every_way_of_drawing(random_scenes: list[Scene]) -> None:
    from edgeclip.world.randomize import FILLS, NO_OUTLINE, RANDOM_BACKGROUNDS

    styles = [o.style for s in random_scenes for o in s.objects if o.style is not None]
    assert {st.fill for st in styles} == set(FILLS)
    assert not any(
        o.style.fill == "outline" for s in random_scenes for o in s.objects if o.style and o.shape in NO_OUTLINE
    )
    assert np.ptp([st.stretch for st in styles]) > 0.3 and any(st.wobble > 0 for st in styles)
    assert {s.background for s in random_scenes} == {*BACKGROUNDS, *RANDOM_BACKGROUNDS}
    assert any(s.motion > 0 for s in random_scenes) and any(s.downscale > 0 for s in random_scenes)
    free = [s for s in random_scenes if s.free]
    assert 0.2 < len(free) / len(random_scenes) < 0.4 and all(len(s.objects) == 1 for s in free)
    radii = [s.objects[0].radius / min(s.width, s.height) for s in free]
    assert min(radii) < 0.1 and max(radii) > 0.4  # from small to filling the crop
    assert not any((o.color, o.shape) in HELD_OUT_PAIRS for s in random_scenes for o in s.objects)


def test_randomized_backgrounds_are_muted_or_vivid_and_keep_every_object_apart(random_scenes: list[Scene]) -> None:
    import colorsys

    from edgeclip.world.randomize import VIVID_SATURATION
    from edgeclip.world.scene import MIN_CONTRAST, MUTED

    def saturation(rgb: tuple[int, int, int]) -> float:
        return colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[1]

    randomized = [s for s in random_scenes if any(o.style is not None for o in s.objects)]
    most = np.array([max(saturation(c) for c in s.bg_colors) for s in randomized])
    assert 0.2 < (most > MUTED + 0.02).mean() < 0.6  # vivid backgrounds: about half of the randomized scenes
    assert most.max() > VIVID_SATURATION[1] - 0.1
    plain = [s for s in random_scenes if all(o.style is None for o in s.objects)]
    assert max(saturation(c) for s in plain for c in s.bg_colors) <= MUTED + 0.01  # the plain world stays muted
    for s in randomized:  # every shade of every object stays MIN_CONTRAST from the background's color segment
        a, b = (np.array(c, dtype=float) for c in s.bg_colors)
        t = np.linspace(0, 1, 33)[:, None]
        segment = a * (1 - t) + b * t
        for o in s.objects:
            assert o.style is not None
            for rgb in (o.rgb, o.style.rgb2):
                assert np.linalg.norm(segment - np.array(rgb), axis=1).min() >= MIN_CONTRAST - 0.5


def test_region_backgrounds_have_hard_straight_edges_in_the_backgrounds_colors() -> None:
    from edgeclip.world.render import background_field, render

    rng = np.random.default_rng(5)
    colors = ((60, 60, 90), (200, 190, 170))
    for i in range(40):
        scene = Scene(
            objects=(), background="regions", width=192, height=108, bg_colors=colors, bg_angle=i * 4.5, bg_scale=30.0
        )
        field = background_field(scene, np.random.default_rng(i)).astype(np.int16)
        # Flat areas (most neighbours equal) and hard edges (some neighbours a third of the range apart).
        steps = np.maximum(np.abs(np.diff(field, axis=0))[:, 1:], np.abs(np.diff(field, axis=1))[1:])
        assert (steps == 0).mean() > 0.8 and steps.max() > 80, i
        assert np.ptp(field) >= 0.4 * 255 - 1  # a dark share of at most 0.3, a light one of at least 0.7
        image = render(scene, rng)
        lo, hi = np.minimum(*colors), np.maximum(*colors)
        assert ((image >= lo) & (image <= hi)).all()  # every pixel a mix of the two colors: objects keep contrast


def test_free_objects_are_named_by_color_and_shape_only_and_survive_the_crop(random_scenes: list[Scene]) -> None:
    from edgeclip.contract import ImageSpec
    from edgeclip.preprocess import source_box
    from edgeclip.world.captions import phrase_code, sample_described, scene_code, truth_matrix
    from edgeclip.world.randomize import MIN_VISIBLE

    rng, world = np.random.default_rng(8), World(0)
    free = [s for s in random_scenes if s.free][:200]
    cut = 0
    for scene in free:
        for caption in world.captions(scene, rng, 4):
            assert_true_of(caption, scene)
        assert_true_of(world.canonical_caption(scene), scene)
        mask = world.masks(scene)[0]
        x0, y0, x1, y1 = (round(v) for v in source_box(scene.width, scene.height, ImageSpec(size=64)))
        inside = mask[y0:y1, x0:x1].sum() / max(1, mask.sum())
        assert inside >= MIN_VISIBLE - 0.08, (inside, scene)  # the disk test is on the circumcircle
        cut += inside < 0.999
    assert cut > 5  # some are cut by the frame or the crop
    # A caption naming a size or a position is never true of a free object, even one it would fit.
    plain = [s for s in random_scenes if not s.free and len(s.objects) == 1][:100]
    said = [sample_described(s, rng) for s in plain + free]
    codes = [phrase_code(p) for _, p in said]
    truth = truth_matrix(
        np.stack([scene_code(s) for s in free]), np.stack([c for c, _ in codes]), np.stack([n for _, n in codes])
    )
    expected = np.array([[describes(text, scene) for text, _ in said] for scene in free])
    np.testing.assert_array_equal(truth, expected)


def test_randomized_rendering_is_fixed_by_seed_and_quick(random_scenes: list[Scene]) -> None:
    import time

    world = World(0, min_side=96, max_side=192, randomize=1.0, free_p=0.3)
    a = [world.render(s, np.random.default_rng(i)) for i, s in enumerate(random_scenes[:40])]
    b = [world.render(s, np.random.default_rng(i)) for i, s in enumerate(random_scenes[:40])]
    assert digest(*a) == digest(*b)
    start = time.perf_counter()
    for i, s in enumerate(random_scenes[:300]):
        world.render(s, np.random.default_rng(i))
    assert 300 / (time.perf_counter() - start) > 60  # images/s on one core: ~400 measured; a trainer needs ~60


def test_randomization_off_keeps_the_plain_world() -> None:
    rng_a, rng_b = np.random.default_rng(2), np.random.default_rng(2)
    plain, off = World(0), World(0, randomize=0.0, free_p=0.0)
    for _ in range(20):
        assert plain.sample_scene(rng_a, "train") == off.sample_scene(rng_b, "train")
    with pytest.raises(InputError, match="probabilities"):
        World(0, randomize=1.5)
