"""An independent reading of the world's captions, written from the caption grammar's promise (every phrase counts
exactly the objects it names; a caption of several objects names them all), not from its code."""

from __future__ import annotations

import re

from edgeclip.world import COLORS, SHAPES, Scene

NUMBERS = {"two": 2, "three": 3}
SIZE_WORDS = {"small": "small", "little": "small", "large": "large", "big": "large"}
POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "center": "center"}
POSITION_WORDS["middle"] = "center"
SHAPE_WORDS = {**{s: s for s in SHAPES}, **{s + "s": s for s in SHAPES}, "crosses": "cross"}


def read_caption(caption: str) -> list[tuple[int, dict[str, str]]]:
    """(count, named attributes) per phrase of a caption."""
    phrases = []
    for phrase in re.split(r", | and ", caption):
        words = phrase.split()
        named: dict[str, str] = {}
        for w in words:
            for attribute, table in (
                ("color", {c: c for c in COLORS}),
                ("size", SIZE_WORDS),
                ("position", POSITION_WORDS),
                ("shape", SHAPE_WORDS),
            ):
                if w in table:
                    assert attribute not in named, f"{attribute} named twice in {phrase!r} of {caption!r}"
                    named[attribute] = table[w]
        phrases.append((next((NUMBERS[w] for w in words if w in NUMBERS), 1), named))
    return phrases


def describes(caption: str, scene: Scene) -> bool:
    """Whether the caption is true of the scene, by the grammar's promise (a free object has no size or position
    words)."""
    phrases = read_caption(caption)
    if scene.free and any({"size", "position"} & set(named) for _, named in phrases):
        return False
    counts_right = all(
        len([o for o in scene.objects if all(getattr(o, k) == v for k, v in named.items())]) == count
        for count, named in phrases
    )
    return counts_right and sum(c for c, _ in phrases) == len(scene.objects)


def assert_true_of(caption: str, scene: Scene) -> None:
    phrases = read_caption(caption)
    if scene.free:
        assert not any({"size", "position"} & set(named) for _, named in phrases), f"{caption!r} of a free object"
    for count, named in phrases:
        matching = [o for o in scene.objects if all(getattr(o, k) == v for k, v in named.items())]
        assert len(matching) == count, f"{caption!r}: {count} {named} but the scene has {len(matching)}: {scene}"
    if len(scene.objects) > 1:  # multi-object captions describe every object
        assert sum(c for c, _ in phrases) == len(scene.objects), caption
