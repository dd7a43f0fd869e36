"""The end-to-end demo: export the built-in model, classify world images it never trained on, show the answers.

Two kinds of pictures: the world's own renderings (in-distribution, seen and held-out color-shape pairs) and the
out-of-distribution renderings of `edgeclip.world.ood` (another renderer, other sizes, frames and backgrounds).

What `make demo` runs. With torch installed (the `[export]` extra) the built-in checkpoint is exported to a fresh
bundle and verified against PyTorch; a runtime-only install uses the bundle shipped in the package.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeclip.zeroshot import Classification

if TYPE_CHECKING:
    from edgeclip.world import EvalItem
    from edgeclip.world.ood import OODItem

DEMO_SEED = 20261127  # apart from the training stream and the evaluation sets
GRID_COLUMNS = 8
TILE = 160


@dataclass(frozen=True)
class DemoRow:
    index: int
    truth: str
    heldout: bool
    labels: tuple[str, ...]
    scores: tuple[float, ...]
    ood: bool = False  # drawn by the out-of-distribution renderer

    @property
    def correct(self) -> bool:
        return self.labels[0] == self.truth


@dataclass(frozen=True)
class DemoResult:
    bundle: Path
    backend: str
    rows: tuple[DemoRow, ...]
    grid: Path
    exported: bool

    def accuracy(self, heldout: bool | None = None, *, ood: bool | None = False) -> float:
        """Top-1 accuracy over the world's pictures (`ood=False`, the default), the out-of-distribution ones
        (`ood=True`) or all (`ood=None`); `heldout` narrows the world's to held-out or seen pairs."""
        rows = [r for r in self.rows if (ood is None or r.ood == ood) and (heldout is None or r.heldout == heldout)]
        return sum(r.correct for r in rows) / len(rows) if rows else float("nan")

    def to_dict(self) -> dict[str, object]:
        return {
            "bundle": str(self.bundle),
            "backend": self.backend,
            "exported": self.exported,
            "grid": str(self.grid),
            # JSON has no NaN: a set with no pictures (say, no held-out pair among a few) has no accuracy.
            "accuracy": _json_number(self.accuracy()),
            "accuracy_seen": _json_number(self.accuracy(heldout=False)),
            "accuracy_heldout": _json_number(self.accuracy(heldout=True)),
            "accuracy_ood": _json_number(self.accuracy(ood=True)),
            "rows": [asdict(r) for r in self.rows],
        }


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def run_demo(
    out: Path, *, n: int = 64, ood_n: int | None = None, backend: str = "auto", export: bool | None = None
) -> DemoResult:
    """Export (when torch is there, or `export=True`), then classify `n` unseen world images and `ood_n` (default
    `n`) out-of-distribution ones; write a PNG grid of both."""
    import edgeclip
    from edgeclip.runtime import builtin_bundle_path
    from edgeclip.world import eval_labels

    out.mkdir(parents=True, exist_ok=True)
    if export is None:
        export = _torch_available()
    bundle_path = builtin_bundle_path()
    if export:
        from edgeclip.export import bundle_from_checkpoint

        # The demo's own output folder: replacing the bundle of an earlier demo run loses nothing of the user's.
        bundle_path = bundle_from_checkpoint(None, out / "bundle", force=True).path
    items = demo_items(n)
    ood = demo_ood_items(n if ood_n is None else ood_n)
    images = [item.image for item in items] + [item.image for item in ood]
    truths = [(item.label, item.heldout, False) for item in items] + [(item.label, False, True) for item in ood]
    labels = eval_labels("color_shape")
    with edgeclip.load(bundle_path, backend=backend) as model:
        results = model.classify(images, labels, top_k=3)
        backend_name = model.backend
    rows = tuple(
        DemoRow(i, label, heldout, r.labels, r.scores, is_ood)
        for i, ((label, heldout, is_ood), r) in enumerate(zip(truths, results, strict=True))
    )
    grid = out / "grid.png"
    write_grid(grid, images, rows)
    result = DemoResult(bundle_path, backend_name, rows, grid, export)
    (out / "results.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def demo_items(n: int) -> list[EvalItem]:
    """`n` unseen world images spread over all 64 color-shape labels (the evaluation set cycles through them)."""
    from edgeclip.world import eval_set

    pool = eval_set("color_shape", n=max(n, 64), seed=DEMO_SEED)
    return [pool[i] for i in np.linspace(0, len(pool) - 1, n).round().astype(int)]


def demo_ood_items(n: int) -> list[OODItem]:
    """`n` out-of-distribution images over all 64 labels and every family, apart from the evaluation's seed."""
    from edgeclip.world.ood import ood_set

    pool = ood_set(max(n, 256), seed=DEMO_SEED)
    return [pool[i] for i in np.linspace(0, len(pool) - 1, n).round().astype(int)]


def format_table(result: DemoResult) -> str:
    lines = [f"{'#':>3}  {'truth':<16} {'top-1':<16} {'score':>6}  {'pictures':<8} ok"]
    for r in result.rows:
        kind = "other" if r.ood else "held-out" if r.heldout else "seen"
        lines.append(f"{r.index:>3}  {r.truth:<16} {r.labels[0]:<16} {r.scores[0]:>6.3f}  {kind:<8} {_mark(r)}")
    seen, held = result.accuracy(heldout=False), result.accuracy(heldout=True)
    lines.append(
        f"in-distribution accuracy: {result.accuracy():.1%} overall, {seen:.1%} on seen color-shape pairs, "
        f"{held:.1%} on held-out pairs (never in training)"
    )
    if any(r.ood for r in result.rows):
        lines.append(
            f"out-of-distribution accuracy: {result.accuracy(ood=True):.1%} on pictures of another renderer "
            '("other": its own shapes, sizes, frames and backgrounds)'
        )
    return "\n".join(lines)


def _mark(row: DemoRow) -> str:
    return "yes" if row.correct else "NO"


def write_grid(path: Path, images: Sequence[np.ndarray], rows: Sequence[DemoRow]) -> None:
    """A PNG a person can look at: each image with its top labels and scores, green when right, red when wrong."""
    import cv2

    tiles = [_tile(image, row) for image, row in zip(images, rows, strict=True)]
    blank = np.full_like(tiles[0], 32)
    tiles += [blank] * (-len(tiles) % GRID_COLUMNS)
    lines = [np.hstack(tiles[i : i + GRID_COLUMNS]) for i in range(0, len(tiles), GRID_COLUMNS)]
    grid = np.vstack(lines)
    tmp = path.with_name(path.name + ".tmp.png")
    if not cv2.imwrite(str(tmp), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write the demo grid to {path}")
    tmp.replace(path)


def _tile(image: np.ndarray, row: DemoRow) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    s = TILE / min(h, w)  # shortest side to TILE, center crop: what the model saw
    resized = cv2.resize(image, (max(TILE, round(w * s)), max(TILE, round(h * s))), interpolation=cv2.INTER_AREA)
    y, x = (resized.shape[0] - TILE) // 2, (resized.shape[1] - TILE) // 2
    tile = np.full((TILE + 56, TILE, 3), 24, np.uint8)
    tile[:TILE] = resized[y : y + TILE, x : x + TILE]
    color = (80, 220, 80) if row.correct else (240, 70, 70)
    cv2.rectangle(tile, (0, 0), (TILE - 1, TILE - 1), color, 3)
    text = [f"truth: {row.truth}" + (" *" if row.heldout else "") + (" (other)" if row.ood else "")]
    text += [f"{score:.2f} {label}" for label, score in zip(row.labels, row.scores, strict=True)]
    for i, line in enumerate(text):
        cv2.putText(tile, line, (3, TILE + 12 + 13 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.34,
                    color if i == 1 else (230, 230, 230), 1, cv2.LINE_AA)  # fmt: skip
    return tile


def _torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


__all__ = [
    "Classification",
    "DemoResult",
    "DemoRow",
    "demo_items",
    "demo_ood_items",
    "format_table",
    "run_demo",
    "write_grid",
]
