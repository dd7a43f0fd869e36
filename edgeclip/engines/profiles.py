"""Optimization profiles: the ranges of batch size (and, for the text tower, token length) an engine is built for.

An engine runs only inside its profiles, and is fastest at each profile's `opt`. edgeclip builds two by default:
a batch-1 latency profile for cameras and a batch-N throughput profile. On the command line a tower's profiles are
`image=1:1:1,1:8:32` (min:opt:max batch per profile) and, for text, each batch range may carry a length range after
an `x`: `text=1:1:1x1:32:32,1:8:32x1:32:32` (the length defaults to 1:L:L, L the bundle's context length).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from edgeclip.errors import InputError

__all__ = ["Profile", "Range", "default_profiles", "parse_profiles", "profile_for", "profiles_text"]

Shape = tuple[int, ...]
LATENCY_BATCH = 1
THROUGHPUT_BATCH = (1, 8, 32)  # max 32: the runtime's default batch, and it fits an 8 GB Orin Nano at 224 px


@dataclass(frozen=True)
class Range:
    """min <= opt <= max, all >= 1."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (self.min, self.opt, self.max)):
            raise InputError(f"a profile range is three whole numbers min:opt:max, got {self}")
        if not 1 <= self.min <= self.opt <= self.max:
            raise InputError(f"profile range {self.text()} must have 1 <= min <= opt <= max")

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.min <= value <= self.max

    def text(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    @classmethod
    def parse(cls, text: str, *, what: str) -> Range:
        parts = text.strip().split(":")
        if len(parts) == 1:
            parts = parts * 3  # "8" means 8:8:8
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise InputError(f"{what} {text!r} is not min:opt:max (three whole numbers, e.g. 1:8:32)")
        low, opt, high = (int(p) for p in parts)
        try:
            return cls(low, opt, high)
        except InputError as exc:
            raise InputError(f"{what} {text!r}: {exc}") from None


@dataclass(frozen=True)
class Profile:
    """One optimization profile of one tower: the batch range, and the token length range of the text tower."""

    batch: Range
    length: Range | None = None  # text only

    def text(self) -> str:
        return self.batch.text() + (f"x{self.length.text()}" if self.length is not None else "")

    def accepts(self, batch: int, length: int | None = None) -> bool:
        return batch in self.batch and (self.length is None or length is None or length in self.length)

    def shapes(self, shape: Sequence[int | str]) -> tuple[Shape, Shape, Shape]:
        """(min, opt, max) shapes of an input whose manifest shape is `shape` (first dim the batch, a second
        dynamic dim the token length)."""
        out: list[list[int]] = [[], [], []]
        for axis, dim in enumerate(shape):
            if isinstance(dim, int):
                values = (dim, dim, dim)
            elif axis == 0:
                values = (self.batch.min, self.batch.opt, self.batch.max)
            elif self.length is not None:
                values = (self.length.min, self.length.opt, self.length.max)
            else:
                raise InputError(f"dim {dim!r} (axis {axis}) is dynamic but this profile ({self.text()}) has no range")
            for i in range(3):
                out[i].append(values[i])
        return tuple(out[0]), tuple(out[1]), tuple(out[2])


def default_profiles(tower: str, context_length: int | None = None) -> tuple[Profile, ...]:
    """The latency (batch 1) and throughput (batch 1..32, fastest at 8) profiles; text covers every length up to the
    context length and is fastest at full length (the runtime trims padding, so shorter ones come too)."""
    length = None
    if tower == "text":
        if context_length is None:
            raise InputError("the text tower's profiles need the bundle's context length")
        length = Range(1, context_length, context_length)
    return (
        Profile(Range(LATENCY_BATCH, LATENCY_BATCH, LATENCY_BATCH), length),
        Profile(Range(*THROUGHPUT_BATCH), length),
    )


def parse_profiles(specs: Iterable[str], *, context_length: int | None = None) -> dict[str, tuple[Profile, ...]]:
    """`["image=1:1:1,1:8:32", "text=1:1:1x1:16:32"]` -> profiles by tower; towers not named keep their defaults."""
    out: dict[str, tuple[Profile, ...]] = {}
    for spec in specs:
        tower, sep, body = spec.partition("=")
        tower = tower.strip()
        if not sep or tower not in ("image", "text") or not body.strip():
            raise InputError(
                f"--profiles {spec!r} is not TOWER=RANGES; e.g. image=1:1:1,1:8:32 or text=1:1:1x1:32:32,1:8:32"
            )
        if tower in out:
            raise InputError(f"--profiles names the {tower} tower twice; give all its profiles in one, comma-separated")
        out[tower] = tuple(_parse_profile(tower, part, context_length) for part in body.split(","))
    return out


def _parse_profile(tower: str, text: str, context_length: int | None) -> Profile:
    batch_text, sep, length_text = text.partition("x")
    batch = Range.parse(batch_text, what=f"{tower} batch range")
    if tower == "image":
        if sep:
            raise InputError(f"image profile {text!r} has a length range; only text profiles do (image=1:8:32)")
        return Profile(batch)
    if context_length is None:
        raise InputError("the text tower's profiles need the bundle's context length")
    length = Range.parse(length_text, what="text length range") if sep else Range(1, context_length, context_length)
    if length.max > context_length:
        raise InputError(
            f"text length range {length.text()} goes past the bundle's context length {context_length}: "
            f"the text graph takes at most {context_length} tokens"
        )
    return Profile(batch, length)


def profiles_text(profiles: Sequence[Profile]) -> str:
    """`1:1:1,1:8:32`: what keys and messages write."""
    return ",".join(p.text() for p in profiles)


def profile_for(profiles: Sequence[Profile], batch: int, length: int | None = None) -> int | None:
    """The index of the profile to run `batch` rows (of `length` tokens) in: the tightest that accepts them (the
    batch-1 profile for one row), None if none does."""
    fits = [i for i, p in enumerate(profiles) if p.accepts(batch, length)]
    if not fits:
        return None
    return min(fits, key=lambda i: (profiles[i].batch.max, i))


def largest_batch(profiles: Sequence[Profile], length: int | None = None) -> int:
    """The largest batch any profile takes (for `length` tokens): bigger batches are split into chunks of it."""
    sizes = [p.batch.max for p in profiles if p.length is None or length is None or length in p.length]
    return max(sizes, default=0)


def by_tower(profiles: Mapping[str, Sequence[Profile]], tower: str, context_length: int | None) -> tuple[Profile, ...]:
    """The profiles given for `tower`, or its defaults."""
    given = profiles.get(tower)
    return tuple(given) if given else default_profiles(tower, context_length)
