"""Captions of a scene: one canonical wording, and many sampled phrasings that are all true of it.

A caption is a list of phrases joined by "and". Each phrase names a set of objects by some of their attributes and
counts it, and the count is exact: "two blue stars" means the scene has exactly two blue stars. Multi-object scenes
are described whole (every object is in some phrase); one-object scenes also get phrases that name one attribute
alone ("something red", "a star"), so that a model learns the factors apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeclip.world.scene import Obj, Scene
from edgeclip.world.vocab import (
    COLORS,
    NUMBER_WORDS,
    POSITION_PHRASES,
    POSITIONS,
    SHAPES,
    SIZE_WORDS,
    SIZES,
    article,
    plural,
)

PREFIXES: tuple[str, ...] = ("a photo of", "a picture of", "an image of", "a rendering of", "a drawing of")
NOUNS: tuple[str, ...] = ("object", "shape", "thing")

# Attribute sets a one-object caption names, and how often: (attributes, weight).
SINGLE_FORMS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("color", "shape"), 0.42),
    (("color", "shape", "size"), 0.1),
    (("color", "shape", "position"), 0.1),
    (("size", "color", "shape", "position"), 0.1),
    (("color",), 0.1),
    (("shape",), 0.1),
    (("size", "shape"), 0.02),
    (("shape", "position"), 0.02),
    (("position",), 0.04),
)
# What groups the objects of a multi-object caption: by color and shape ("two red stars and a circle"), by shape
# alone ("three stars"), by color alone ("two red things"), or all together ("three objects").
GROUP_KEYS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("color", "shape"), 0.6),
    (("shape",), 0.15),
    (("color",), 0.12),
    ((), 0.13),
)
# The same tables for captions that name no color (what a grayscale picture can still show).
COLORLESS_SINGLE_FORMS = tuple((attrs, w) for attrs, w in SINGLE_FORMS if "color" not in attrs)
COLORLESS_GROUP_KEYS = tuple((key, w) for key, w in GROUP_KEYS if "color" not in key)
# A free scene's object (any size, anywhere) has no size or position word: only these forms describe it.
FREE_SINGLE_FORMS = tuple((attrs, w) for attrs, w in SINGLE_FORMS if not {"size", "position"} & set(attrs))
COLORLESS_FREE_SINGLE_FORMS = tuple((attrs, w) for attrs, w in FREE_SINGLE_FORMS if "color" not in attrs)


@dataclass(frozen=True)
class Phrase:
    """`count` objects, and exactly those, have every attribute given here (None: not named)."""

    count: int
    color: str | None = None
    shape: str | None = None
    size: str | None = None
    position: str | None = None


def _pick(rng: np.random.Generator | None, options: Sequence[str]) -> str:
    """The first option (canonical) without a generator, else a random one."""
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def _weighted(rng: np.random.Generator, table: Sequence[tuple[tuple[str, ...], float]]) -> tuple[str, ...]:
    # A plain walk over the weights: rng.choice(p=...) costs more than the rest of a caption.
    r = rng.random() * sum(w for _, w in table)
    for item, w in table:
        r -= w
        if r < 0:
            return item
    return table[-1][0]


def _order(objects: Sequence[Obj]) -> list[Obj]:
    # Positions are distinct within a scene, so this order does not depend on the order objects were drawn in.
    return sorted(objects, key=lambda o: POSITIONS.index(o.position))


def groups(objects: Sequence[Obj], key: Sequence[str]) -> list[list[Obj]]:
    """Objects grouped by equal values of the `key` attributes, in position order."""
    out: dict[tuple[str, ...], list[Obj]] = {}
    for o in _order(objects):
        out.setdefault(tuple(getattr(o, k) for k in key), []).append(o)
    return list(out.values())


def words(p: Phrase, rng: np.random.Generator | None = None, *, bare: bool = False) -> str:
    """The phrase in words; canonical without a generator. `bare`: a lone singular phrase may drop its article."""
    size = _pick(rng, SIZE_WORDS[p.size]) if p.size else None
    where = _pick(rng, POSITION_PHRASES[p.position]) if p.position else None
    adjectives = [w for w in (size, p.color) if w]
    if p.shape is None and p.count == 1 and len(adjectives) <= 1 and rng is not None and rng.random() < 0.5:
        body = " ".join(["something", *adjectives])  # "something red", "something on the left"
    else:
        noun = p.shape or _pick(rng, NOUNS)
        noun = noun if p.count == 1 else plural(noun)
        body = " ".join([*adjectives, noun])
        if p.count > 1:
            body = f"{NUMBER_WORDS[p.count]} {body}"
        elif rng is not None and p.shape is not None and rng.random() < 0.12:
            body = f"one {body}"  # the singular of the counting captions
        elif not (bare and rng is not None and rng.random() < 0.1):
            body = f"{article(body)} {body}"
    return f"{body} {where}" if where else body


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def canonical_caption(scene: Scene) -> str:
    """One deterministic caption naming every attribute of every object: 'a large red circle on the left and ...'."""
    phrases = []
    for members in groups(scene.objects, ("color", "shape")):
        first, sizes = members[0], {m.size for m in members}
        phrases.append(
            Phrase(
                count=len(members),
                color=first.color,
                shape=first.shape,
                size=first.size if len(sizes) == 1 and not scene.free else None,
                position=first.position if len(members) == 1 and not scene.free else None,
            )
        )
    return _join([words(p) for p in phrases])


def sample_phrases(scene: Scene, rng: np.random.Generator, *, colors: bool = True) -> list[Phrase]:
    """The phrases of one random caption of the scene (`colors=False`: a caption that names no color)."""
    if len(scene.objects) == 1:
        o = scene.objects[0]
        if scene.free:
            forms = FREE_SINGLE_FORMS if colors else COLORLESS_FREE_SINGLE_FORMS
        else:
            forms = SINGLE_FORMS if colors else COLORLESS_SINGLE_FORMS
        return [Phrase(count=1, **{k: getattr(o, k) for k in _weighted(rng, forms)})]
    key = _weighted(rng, GROUP_KEYS if colors else COLORLESS_GROUP_KEYS)
    phrases = []
    for members in groups(scene.objects, key):
        named = {k: getattr(members[0], k) for k in key}
        # Extra attributes are named only where every member shares them, so the phrase still picks out exactly
        # its members (a key attribute already tells them from the other groups).
        if len({m.size for m in members}) == 1 and rng.random() < 0.3:
            named["size"] = members[0].size
        if len(members) == 1 and rng.random() < 0.3:
            named["position"] = members[0].position
        phrases.append(Phrase(count=len(members), **named))
    if rng.random() < 0.4:
        rng.shuffle(phrases)
    return phrases


def sample_caption(scene: Scene, rng: np.random.Generator, *, colors: bool = True) -> str:
    """One random phrasing of the scene (`colors=False`: one that names no color)."""
    return sample_described(scene, rng, colors=colors)[0]


def sample_described(scene: Scene, rng: np.random.Generator, *, colors: bool = True) -> tuple[str, tuple[Phrase, ...]]:
    """One random phrasing of the scene and the phrases it says (what `truth_matrix` checks other scenes against)."""
    phrases = sample_phrases(scene, rng, colors=colors)
    r = rng.random()
    if r < 0.45:
        text = _join([words(p, rng, bare=len(phrases) == 1) for p in phrases])
    elif r < 0.55:
        text = ("there are " if phrases[0].count > 1 else "there is ") + _join([words(p, rng) for p in phrases])
    else:
        text = f"{_pick(rng, PREFIXES)} {_join([words(p, rng) for p in phrases])}"
    return text, tuple(phrases)


# ------------------------------------------------------------------------------------------------ caption truth
# Which captions are true of which scenes, for the contrastive loss: "something red" describes every scene of one
# red object, so it must not be a negative of those scenes' pictures. Scenes and phrases become small integer
# arrays (attribute index per object / per phrase; -1 in a phrase: not named) so a whole batch is checked at once.
ATTRIBUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("color", COLORS),
    ("shape", SHAPES),
    ("size", SIZES),
    ("position", POSITIONS),
)
MAX_OBJECTS = 3  # a scene has at most this many objects, so a caption at most this many phrases
_ABSENT = -2  # an object slot a scene does not fill; no phrase attribute ever equals it
_UNNAMED = -1
_NO_PHRASE = -3  # a phrase slot a caption does not fill: it matches no object (and its count is 0)
_NOT_SAID = -4  # a free object's size and position: only a phrase that leaves them unnamed matches it


def scene_code(scene: Scene) -> np.ndarray:
    """(MAX_OBJECTS, 4) int8: each object's attribute indices; unused rows are _ABSENT."""
    code = np.full((MAX_OBJECTS, len(ATTRIBUTES)), _ABSENT, dtype=np.int8)
    for row, o in enumerate(scene.objects):
        code[row] = [names.index(getattr(o, attr)) for attr, names in ATTRIBUTES]
        if scene.free:
            code[row, 2:] = _NOT_SAID
    return code


def phrase_code(phrases: Sequence[Phrase]) -> tuple[np.ndarray, np.ndarray]:
    """(MAX_OBJECTS, 4) int8 attribute indices (-1: not named) and (MAX_OBJECTS,) counts (0: no such phrase)."""
    code = np.full((MAX_OBJECTS, len(ATTRIBUTES)), _NO_PHRASE, dtype=np.int8)
    counts = np.zeros(MAX_OBJECTS, dtype=np.int8)
    for row, p in enumerate(phrases):
        code[row] = _UNNAMED
        counts[row] = p.count
        for k, (attr, names) in enumerate(ATTRIBUTES):
            value = getattr(p, attr)
            if value is not None:
                code[row, k] = names.index(value)
    return code, counts


def truth_matrix(scenes: np.ndarray, phrases: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(S, C) bool: caption c is true of scene s. Inputs stack `scene_code` (S, O, 4) and `phrase_code` (C, O, 4),
    (C, O).

    True means what the captions promise: each phrase picks out exactly its count of objects, and together the
    phrases name every object of the scene once ("two red stars" is false of a scene with a third object).
    """
    present = scenes[:, :, 0] != _ABSENT  # (S, O)
    named = phrases[None, :, :, None, :]  # (1, C, P, 1, 4)
    attrs = scenes[:, None, None, :, :]  # (S, 1, 1, O, 4)
    match = ((named == _UNNAMED) | (named == attrs)).all(-1) & present[:, None, None, :]  # (S, C, P, O)
    exact = (match.sum(-1) == counts[None]).all(-1)  # (S, C): every phrase counts right (unused: 0 == 0)
    covered = (match.any(2) | ~present[:, None, :]).all(-1)  # (S, C): every object is named by some phrase
    once = counts.sum(-1)[None, :] == present.sum(-1)[:, None]  # (S, C): and by one phrase only
    result: np.ndarray = exact & covered & once
    return result
