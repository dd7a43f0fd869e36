"""Typed reading of JSON documents read from disk: bundle manifests, Hugging Face configs, checkpoint metadata.

A `Node` is a value of the document with its path in it (`contract.text.context_length`, `graphs[1].shape[0]`).
Each reader checks type and range and turns a bad value into one error of the caller's class that names the file,
the field, what it must be and what was found. JSON's own spelling is used in messages (`true`, `null`, `NaN`),
since that is what the user sees in the file. Torch-free.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from edgeclip.errors import EdgeClipError

# Deeper than any document edgeclip writes or reads (a manifest is about 5 levels deep): a deeper one is damaged or
# hostile, and refusing it early keeps every later walk over it (printing, hashing, copying) from recursing away.
MAX_DEPTH = 32
_MISSING: Any = object()
S = TypeVar("S", bound=str)


@dataclass(frozen=True)
class Node:
    """One value of a JSON document, where it sits, and how to report it."""

    value: Any
    path: str  # "" for the document itself
    error: type[EdgeClipError]
    source: str = ""  # the file, named first in every message ("": the caller names it)
    hint: str = ""  # what to do next, closing every message

    @classmethod
    def root(cls, value: Any, *, error: type[EdgeClipError], source: str = "", hint: str = "", path: str = "") -> Node:
        return cls(value, path, error, source, hint)

    # ---- reporting

    def message(self, text: str) -> str:
        where = f"{self.source}: " if self.source else ""
        field = self.path or "the document"
        return f"{where}{field} {text}" + (f"; {self.hint}" if self.hint else "")

    def fail(self, expected: str) -> NoReturn:
        """Raise: this value must be `expected` and is not."""
        raise self.error(self.message(f"must be {expected}, found {describe(self.value)}"))

    def refuse(self, text: str) -> NoReturn:
        """Raise with a message of the caller's own about this value."""
        raise self.error(self.message(text))

    # ---- structure

    def child(self, key: str | int, value: Any) -> Node:
        path = f"{self.path}[{key}]" if isinstance(key, int) else f"{self.path}.{key}" if self.path else key
        return Node(value, path, self.error, self.source, self.hint)

    def mapping(self) -> Mapping[str, Any]:
        if not isinstance(self.value, Mapping):
            self.fail("an object ({...})")
        return self.value

    def has(self, key: str) -> bool:
        return key in self.mapping()

    def get(self, key: str, default: Any = _MISSING) -> Node:
        """The field `key` of this object; missing: `default` when given, else an error naming the field."""
        data = self.mapping()
        if key in data:
            return self.child(key, data[key])
        if default is _MISSING:
            self.child(key, None).refuse("is missing")
        return self.child(key, default)

    def items(self, *, min_len: int = 0, length: int | None = None) -> list[Node]:
        """The elements of this list."""
        if not isinstance(self.value, (list, tuple)):  # a tuple: data from Python rather than JSON
            self.fail("a list ([...])" if length is None else f"a list of {length}")
        if length is not None and len(self.value) != length:
            self.fail(f"a list of {length}")
        if len(self.value) < min_len:
            self.fail(f"a list of at least {min_len}")
        return [self.child(i, v) for i, v in enumerate(self.value)]

    @property
    def is_null(self) -> bool:
        return self.value is None

    # ---- scalars

    def whole(self, *, min: int | None = None, max: int | None = None) -> int:
        """An integer (not a bool, not 1.0) in [min, max]."""
        v = self.value
        if (
            not isinstance(v, int)
            or isinstance(v, bool)
            or (min is not None and v < min)
            or (max is not None and v > max)
        ):
            self.fail(_range("a whole number", min, max))
        return v

    def number(self, *, min: float | None = None, max: float | None = None, positive: bool = False) -> float:
        """A finite number (an integer is one; a bool or a numeric string is not) in [min, max], > 0 if `positive`."""
        v = self.value
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if ok and ((min is not None and v < min) or (max is not None and v > max) or (positive and v <= 0)):
            ok = False
        if not ok:
            if positive:
                self.fail("a finite number > 0" + (f" and <= {max:g}" if max is not None else ""))
            self.fail(_range("a finite number", min, max))
        return float(v)

    def string(self, *, nonempty: bool = True) -> str:
        if not isinstance(self.value, str) or (nonempty and not self.value):
            self.fail("a non-empty string" if nonempty else "a string")
        return self.value

    def choice(self, options: Sequence[S]) -> S:
        for option in options:
            if isinstance(self.value, str) and self.value == option:
                return option
        self.fail(f"one of {', '.join(json.dumps(o) for o in options)}")

    def flag(self) -> bool:
        if not isinstance(self.value, bool):
            self.fail("true or false")
        return self.value

    def object_copy(self) -> dict[str, Any]:
        """A shallow copy of this object (figures and provenance: free-form, but an object)."""
        return dict(self.mapping())


def describe(value: Any) -> str:
    """A value as the user wrote it in the JSON file, shortened, with its kind where that is the problem."""
    if isinstance(value, bool):
        return f"{json.dumps(value)} (a boolean)"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return _short(json.dumps(value))
    if isinstance(value, str):
        return f"{_short(json.dumps(value, ensure_ascii=False))} (a string)"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    if isinstance(value, Mapping):
        keys = ", ".join(str(k) for k in list(value)[:4])
        return f"an object ({keys}{', ...' if len(value) > 4 else ''})" if value else "an empty object"
    return type(value).__name__


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists and objects nest deeper than `limit` in `value` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _range(kind: str, min: float | None, max: float | None) -> str:
    if min is not None and max is not None:
        return f"{kind} from {min:g} to {max:g}"
    if min is not None:
        return f"{kind} >= {min:g}"
    if max is not None:
        return f"{kind} <= {max:g}"
    return kind


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
