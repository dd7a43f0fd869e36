"""Zero-shot classification: prompt templates, the label bank (cached on disk) and scoring.

A label's text embedding is the mean of the L2-normalized embeddings of its prompts (one per template),
normalized again, as in CLIP's ImageNet notebook. Scores follow the model's head: softmax (CLIP) or sigmoid
(SigLIP) over `logit_scale * cosine (+ logit_bias)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from edgeclip.contract import HeadSpec
from edgeclip.errors import InputError
from edgeclip.outputs import atomic_file

PLACEHOLDER = "{}"
_CACHE_FORMAT = 1  # bump when what a label bank holds changes, so old cache files are not read


@dataclass(frozen=True)
class Classification:
    """The top labels of one image, best first, with their scores (probabilities for softmax heads)."""

    labels: tuple[str, ...]
    scores: tuple[float, ...]


# ---------------------------------------------------------------- templates


def template_sets() -> tuple[str, ...]:
    """Names of the template sets shipped with edgeclip ("default", "imagenet": CLIP's 80 ImageNet prompts)."""
    folder = resources.files("edgeclip") / "data" / "templates"
    return tuple(sorted(p.name.removesuffix(".txt") for p in folder.iterdir() if p.name.endswith(".txt")))


def load_templates(templates: str | os.PathLike[str] | Sequence[str] | None = None) -> tuple[str, ...]:
    """Templates from a shipped set name, a file (one template per line), or a list; None: the "default" set.

    A name of a shipped set wins over a file of the same name; write "./imagenet" to read a file called so.
    """
    if templates is None:
        templates = "default"
    if isinstance(templates, (str, os.PathLike)):
        name = os.fspath(templates)
        if name in template_sets():
            text = (resources.files("edgeclip") / "data" / "templates" / f"{name}.txt").read_text(encoding="utf-8")
            return _parse_templates(text, f"template set {name!r}")
        path = Path(name)
        if path.is_dir():
            raise InputError(
                f"templates {name!r} is a directory; give a file with one template per line, or a set name"
            )
        if not path.is_file():
            raise InputError(
                f"templates {name!r}: no such file, and not a shipped template set "
                f"({', '.join(template_sets())}); give a set name or a file with one template per line"
            )
        return _parse_templates(_read_text(path, "templates file"), str(path))
    if isinstance(templates, Iterable):
        items = tuple(templates)
        for i, t in enumerate(items):
            if not isinstance(t, str) or PLACEHOLDER not in t:
                raise InputError(
                    f"template {i + 1} ({t!r}) has no {{}} where the label goes; write it like 'a photo of a {{}}.'"
                )
        if not items:
            raise InputError("the template list is empty; give at least one template such as 'a photo of a {}.'")
        return items
    raise InputError(f"templates must be a set name, a file or a list of strings, got {type(templates).__name__}")


def text_lines(text: str) -> list[str]:
    """The lines of a one-item-per-line file, without the blank lines at its end (an editor's last newline)."""
    return _trimmed(text.splitlines())


def one_per_line(lines: Sequence[str], source: str, what: str) -> list[str]:
    """`lines` of a one-item-per-line file without the blank lines at its end; InputError naming the blank lines
    inside it (they would shift every item after them)."""
    lines = _trimmed(lines)
    blank = [str(i) for i, line in enumerate(lines, start=1) if not line.strip()]
    if blank:
        which = f"line {blank[0]} is" if len(blank) == 1 else f"lines {', '.join(blank)} are"
        raise InputError(f"{source}: {which} blank; write one {what} per line, no blank lines")
    return lines


def _trimmed(lines: Sequence[str]) -> list[str]:
    lines = list(lines)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _parse_templates(text: str, source: str) -> tuple[str, ...]:
    lines = text_lines(text)
    for number, line in enumerate(lines, start=1):
        if PLACEHOLDER not in line:
            raise InputError(
                f"line {number} of {source} ({line!r}) has no {{}} where the label goes; every line must be one "
                f"template such as 'a photo of a {{}}.'"
            )
    if not lines:
        raise InputError(f"{source} holds no templates; write one per line, such as 'a photo of a {{}}.'")
    return tuple(lines)


# ---------------------------------------------------------------- labels


def check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """The labels as a tuple, or InputError naming the empty, blank or duplicated ones."""
    if isinstance(labels, str):
        raise InputError(f"labels must be a list of strings, got the single string {labels!r}; write [{labels!r}]")
    items = tuple(labels)
    if not items:
        raise InputError("the label list is empty; give at least one label")
    bad = [f"{i} ({x!r})" for i, x in enumerate(items, start=1) if not isinstance(x, str) or not x.strip()]
    if bad:
        raise InputError(
            f"blank or non-text labels at positions {', '.join(bad)} (counting from 1); every label needs some text"
        )
    seen: dict[str, int] = {}
    duplicates = []
    for label in items:
        key = label.strip()
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 2:
            duplicates.append(key)
    if duplicates:
        raise InputError(f"duplicated labels: {', '.join(map(repr, duplicates))}; give each label once")
    return items


def check_distinct(labels: Sequence[str], ids: np.ndarray) -> None:
    """InputError naming labels that are one text to the model: `ids` (one row of token ids per label) equal.

    The tokenizer lower-cases, folds whitespace and unescapes HTML, so "blue" and "BLUE " give the same prompts,
    the same embedding, and would split one label's probability between two names.
    """
    first: dict[bytes, int] = {}
    same = []
    for i, row in enumerate(np.asarray(ids)):
        j = first.setdefault(row.tobytes(), i)
        if j != i:
            same.append(f"{labels[j]!r} and {labels[i]!r}")
    if same:
        raise InputError(
            f"labels {'; '.join(same)} are the same text to the model (its tokenizer lower-cases, folds spaces and "
            "unescapes HTML): they would share one score; give each label once"
        )


def labels_from_text(text: str) -> tuple[str, ...]:
    """Labels from "a,b,c" (spaces around commas are dropped)."""
    return check_labels([part.strip() for part in text.split(",")])


def labels_from_file(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Labels from a file, one per line; a blank line is an error naming its number (blank lines at the end are
    ignored)."""
    path = Path(path)
    lines = one_per_line(_read_text(path, "labels file").splitlines(), str(path), "label")
    return check_labels([line.strip() for line in lines])


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark (Windows editors) is not text
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what} {path}: {exc}; it must be a UTF-8 text file") from None


# ---------------------------------------------------------------- label bank


def cache_dir() -> Path:
    """Where label banks are cached: $EDGECLIP_CACHE/labels, else the user cache directory."""
    root = os.environ.get("EDGECLIP_CACHE")
    if root:
        return Path(root) / "labels"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgeclip" / "labels"


def bank_key(model_key: str, labels: Sequence[str], templates: Sequence[str]) -> str:
    """The cache key of a label bank: the model's text graph, the templates and the labels."""
    blob = json.dumps([_CACHE_FORMAT, model_key, list(templates), list(labels)], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def build_label_bank(
    encode_text: Callable[[list[str]], np.ndarray], labels: Sequence[str], templates: Sequence[str]
) -> np.ndarray:
    """(L, D) float32: per label, the normalized mean of its prompts' normalized text embeddings."""
    prompts = [t.replace(PLACEHOLDER, label) for label in labels for t in templates]
    return ensemble(encode_text(prompts), len(templates))


def ensemble(embeds: np.ndarray, templates: int) -> np.ndarray:
    """(L, D) float32 label embeddings from (L * T, D) prompt embeddings, label-major: the normalized mean of each
    label's normalized prompt embeddings (the training evaluator ensembles its prompts with this too)."""
    embeds = np.asarray(embeds, dtype=np.float64).reshape(-1, templates, np.shape(embeds)[-1])  # (L, T, D)
    embeds = embeds / np.linalg.norm(embeds, axis=-1, keepdims=True)
    mean = embeds.mean(axis=1)  # (L, D)
    return (mean / np.linalg.norm(mean, axis=-1, keepdims=True)).astype(np.float32)


def cached_label_bank(
    encode_text: Callable[[list[str]], np.ndarray],
    labels: Sequence[str],
    templates: Sequence[str],
    *,
    model_key: str,
    embed_dim: int,
    directory: Path | None = None,
) -> np.ndarray:
    """The label bank from the disk cache, or built with `encode_text` and cached (atomically).

    A cache file that cannot be read, or holds the wrong shape or non-unit rows, is rebuilt with a warning; a cache
    that cannot be written only costs a warning.
    """
    folder = cache_dir() if directory is None else directory
    path = folder / f"{bank_key(model_key, labels, templates)}.npy"
    if path.exists():
        try:
            return _read_bank(path, (len(labels), embed_dim))
        except (OSError, ValueError) as exc:
            warnings.warn(f"label cache {path} is unusable ({exc}); rebuilding it", RuntimeWarning, stacklevel=2)
    bank = build_label_bank(encode_text, labels, templates)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as f:
            np.save(f, bank, allow_pickle=False)
    except OSError as exc:
        warnings.warn(f"cannot write label cache {path} ({exc}); going on without it", RuntimeWarning, stacklevel=2)
    return bank


def _read_bank(path: Path, shape: tuple[int, int]) -> np.ndarray:
    try:
        bank = np.load(path, allow_pickle=False)
    except ValueError:  # numpy's own text would advise unpickling the file
        raise ValueError("it is not a float32 array file") from None
    if bank.shape != shape or bank.dtype != np.float32:
        raise ValueError(f"it holds {bank.dtype} {bank.shape}, expected float32 {shape}")
    norms = np.linalg.norm(bank.astype(np.float64), axis=-1)
    if not np.all(np.abs(norms - 1.0) < 1e-3):
        raise ValueError("its rows are not unit vectors")
    return bank


# ---------------------------------------------------------------- scoring


def scores(image_embeds: np.ndarray, bank: np.ndarray, head: HeadSpec) -> np.ndarray:
    """(N, L) float64: softmax over labels (or per-label sigmoid) of `logit_scale * cosine (+ logit_bias)`."""
    logits = head.logit_scale * (np.asarray(image_embeds, np.float64) @ np.asarray(bank, np.float64).T)
    if head.logit_bias is not None:
        logits = logits + head.logit_bias
    if head.activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    logits = logits - logits.max(axis=1, keepdims=True)  # exp cannot overflow
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def check_top_k(top_k: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise InputError(f"top_k (--top-k) must be a whole number >= 1, got {top_k!r}")
    return int(top_k)


def top_labels(probs: np.ndarray, labels: Sequence[str], top_k: int) -> list[Classification]:
    """The `top_k` best labels per row, best first; equal scores keep the order the labels were given in."""
    k = min(check_top_k(top_k), len(labels))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # stable: a tie goes to the label given first
    return [
        Classification(tuple(labels[j] for j in row), tuple(float(p[j]) for j in row))
        for p, row in zip(probs, order, strict=True)
    ]
