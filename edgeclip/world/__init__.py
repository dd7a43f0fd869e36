"""A procedural image-caption world, so that a fresh machine with no downloads can train and check a tiny CLIP.

Pictures of one to three objects: 8 colors x 8 shapes, two sizes, five positions, on plain, gradient, noise or
textured backgrounds, anti-aliased with OpenCV at 160-480 pixel sides and varied aspect ratios, under random
lighting (brightness, contrast, color cast, a directional ramp), sometimes partly hidden (by a neighbour or a gray
band), blurred, noisy or JPEG-compressed. numpy and OpenCV only; everything is a pure function of the seeds.

Vocabulary: `COLORS`, `SHAPES`, `SIZES`, `POSITIONS`, `BACKGROUNDS`, `SPLITS`, and `HELD_OUT_PAIRS`: 16 (color,
shape) pairs, every color and every shape in two of them, that no training scene ever shows (not even as a second
object), so that zero-shot accuracy on them measures composition.

    world = World(seed=0, min_side=160, max_side=480)
    rng = np.random.default_rng(7)
    scene = world.sample_scene(rng, "train")    # Scene; split "seen" / "heldout": one object of such a pair
    image = world.render(scene, rng)            # (H, W, 3) uint8 RGB
    world.captions(scene, rng, n=4)             # ["two blue stars and a circle", "a photo of ...", ...]
    world.canonical_caption(scene)              # "a large red circle on the left and two small blue stars"
    world.compose([("red", "star", "large", "left")], rng)   # a scene of chosen objects
    world.masks(scene)                          # per object, its visible pixels

    for images, captions, canonical in train_stream(seed=0, batch_size=64): ...
    eval_set("color_shape")  # list[EvalItem(image, label, labels, heldout, scene)]; also "count", "position"

Domain randomization for training (`edgeclip.world.randomize`): `World(seed, randomize=0.6, free_p=0.3)` draws that
share of its scenes in random styles (filled, outlined, gradient or textured shapes; stretched, sheared, tilted and
wobbly contours; multi-scale noise, clutter and hard-edged region backgrounds; harsh light, motion blur,
low-resolution and JPEG looks), and makes that share of "train" scenes one free object of any size anywhere,
sometimes cut by the crop, named by color and shape only. With both at 0 (the default, and the evaluation sets)
the world is drawn as before, draw for draw. `edgeclip.world.ood` is a second, independent renderer for
out-of-distribution evaluation only.

Objects lie in the central square of each image, so CLIP's shortest-side resize and center crop keep them all
(free objects excepted: at least 80% of each stays inside the crop).
Captions are always true of their scene and their counts exact (see `edgeclip.world.captions`). Unknown splits,
eval kinds or attribute names raise `edgeclip.errors.InputError`.
"""

from __future__ import annotations

from edgeclip.world.core import EVAL_KINDS, EvalItem, World, eval_labels, eval_set, train_stream
from edgeclip.world.scene import Lighting, Obj, Occluder, Scene
from edgeclip.world.vocab import (
    BACKGROUNDS,
    COLORS,
    HELD_OUT_PAIRS,
    POSITIONS,
    SEEN_PAIRS,
    SHAPES,
    SIZES,
    SPLITS,
)

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "EVAL_KINDS",
    "HELD_OUT_PAIRS",
    "POSITIONS",
    "SEEN_PAIRS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "EvalItem",
    "Lighting",
    "Obj",
    "Occluder",
    "Scene",
    "World",
    "eval_labels",
    "eval_set",
    "train_stream",
]
