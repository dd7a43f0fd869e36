"""Zero-shot top-1 of the built-in model's evaluation set per held-out color-shape pair, and what each miss was called.

    python scripts/heldout_pairs.py [CHECKPOINT ...]   # default: the shipped edgeclip/builtin/tiny.safetensors

The same set, prompts and rule as `edgeclip.train.evaluate.WorldEvaluator` (seed 1234): where two runs of the
recipe differ on held-out pairs, this shows which pairs moved.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict

from edgeclip.builtin import checkpoint_path
from edgeclip.checkpoint import load_checkpoint
from edgeclip.train.evaluate import WorldEvaluator
from edgeclip.world import eval_set


def report(path: str) -> None:
    saved = load_checkpoint(path)
    model = saved.model.float().eval()
    items = eval_set("color_shape", None, 1234)
    labels = items[0].labels
    predicted = WorldEvaluator(saved.contract, sizes={"color_shape": None}).predictions(model, "color_shape")
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    wrong: dict[str, Counter[str]] = defaultdict(Counter)
    for item, guess in zip(items, predicted.tolist(), strict=True):
        if not item.heldout:
            continue
        total[item.label] += 1
        if labels[guess] == item.label:
            right[item.label] += 1
        else:
            wrong[item.label][labels[guess]] += 1
    print(f"{path}: held-out {sum(right.values()) / sum(total.values()):.3f}")
    for label in sorted(total):
        called = ", ".join(f"{name} {n}" for name, n in wrong[label].most_common())
        print(f"  {label:18s} {right[label]:3d}/{total[label]}" + (f"  called: {called}" if called else ""))


if __name__ == "__main__":
    for path in sys.argv[1:] or [str(checkpoint_path())]:
        report(path)
