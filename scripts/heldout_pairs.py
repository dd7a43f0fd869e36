"""Zero-shot top-1 of the built-in model's evaluation set per held-out color-shape pair, and what each miss was called.

    python scripts/heldout_pairs.py [CHECKPOINT ...]   # default: the shipped edgeclip/builtin/tiny.safetensors

The same set, prompts and rule as `edgeclip.train.evaluate.WorldEvaluator` (seed 1234): where two runs of the
recipe differ on held-out pairs, this shows which pairs moved. Then a shape-only probe: every item classified among
the eight shape names alone ("a ring", "a circle", ..., the same templates), seen and held-out pairs apart. Where a
held-out pair is named right but its shape alone is not, the pair's right answer came from the color-shape prompt,
not from a shape feature that holds across colors.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from edgeclip.builtin import checkpoint_path
from edgeclip.checkpoint import load_checkpoint
from edgeclip.train.evaluate import TEMPLATES, WorldEvaluator
from edgeclip.world import SHAPES, EvalItem, eval_set


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
    shapes = shape_only(saved, items)
    print(f"{path}: held-out {sum(right.values()) / sum(total.values()):.3f}")
    for label in sorted(total):
        called = ", ".join(f"{name} {n}" for name, n in wrong[label].most_common())
        print(f"  {label:18s} {right[label]:3d}/{total[label]}" + (f"  called: {called}" if called else ""))
    for held in (False, True):
        hits = [
            shape == item.label.split()[-1] for item, shape in zip(items, shapes, strict=True) if item.heldout == held
        ]
        print(
            f"shape-only probe, {'held-out' if held else 'seen'} pairs: {sum(hits) / len(hits):.3f} ({len(hits)} items)"
        )
    for label in sorted(total):
        said = Counter(shape for item, shape in zip(items, shapes, strict=True) if item.label == label)
        truth = label.split()[-1]
        called = ", ".join(f"{name} {n}" for name, n in said.most_common() if name != truth)
        print(f"  {label:18s} {said[truth]:3d}/{total[label]}" + (f"  called: {called}" if called else ""))


def shape_only(saved: Any, items: Sequence[EvalItem]) -> list[str]:
    """The shape name each item is closest to among the eight shape names alone (templates ensembled)."""
    import torch

    from edgeclip.preprocess import Preprocessor
    from edgeclip.train.inputs import model_tokenizer, text_ids
    from edgeclip.zeroshot import ensemble

    model = saved.model.float().eval()
    templates = TEMPLATES["color_shape"]
    pixels = Preprocessor(saved.contract.image)([item.image for item in items])
    spec = saved.contract.text
    prompts = [template(shape) for shape in SHAPES for template in templates]
    ids = torch.from_numpy(text_ids(model_tokenizer(spec, None)(prompts, spec.context_length), spec))
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.encode_image(torch.from_numpy(pixels)), dim=-1)
        text = torch.from_numpy(ensemble(model.encode_text(ids).numpy(), len(templates)))
    return [SHAPES[i] for i in (image @ text.t()).argmax(-1).tolist()]


if __name__ == "__main__":
    for path in sys.argv[1:] or [str(checkpoint_path())]:
        report(path)
