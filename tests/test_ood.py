"""The out-of-distribution evaluation set: independent of the training renderers, fixed by seed, balanced."""

from __future__ import annotations

import ast
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgeclip.errors import InputError
from edgeclip.world import eval_labels
from edgeclip.world.ood import FAMILIES, OOD_SIZE, ood_item, ood_labels, ood_set

ROOT = Path(__file__).resolve().parents[1]
TRAINING_DRAWING = {"edgeclip.world.render", "edgeclip.world.scene", "edgeclip.world.randomize", "cv2"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_ood_shares_no_drawing_code_with_training() -> None:
    # The OOD module draws with PIL from its own geometry; from the world it takes only the vocabulary (names).
    imports = _imports(ROOT / "edgeclip/world/ood.py")
    assert not imports & TRAINING_DRAWING, imports & TRAINING_DRAWING
    world_imports = {n for n in imports if n.startswith("edgeclip.world")}
    assert world_imports <= {"edgeclip.world.vocab", "edgeclip.world.vocab.COLORS", "edgeclip.world.vocab.SHAPES"}
    # ... and no training module reads the OOD pictures: only the evaluator does.
    for path in [*(ROOT / "edgeclip/world").glob("*.py"), *(ROOT / "edgeclip/train").glob("*.py")]:
        if path.name not in ("ood.py", "evaluate.py"):
            assert not any("ood" in n for n in _imports(path)), path


def test_ood_is_fixed_by_seed_and_balanced() -> None:
    def digest(seed: int) -> str:
        h = hashlib.sha256()
        for i in range(0, OOD_SIZE, 37):
            h.update(ood_item(i, seed).image.tobytes())
        return h.hexdigest()

    assert digest(0) == digest(0)
    assert digest(0) != digest(1)
    items = ood_set(256)
    assert ood_labels() == eval_labels("color_shape")
    per_pair = Counter((item.label, item.family) for item in items)
    assert len(per_pair) == 64 * len(FAMILIES) and set(per_pair.values()) == {1}
    frames = {item.image.shape for item in items}
    assert {(240, 320, 3), (320, 240, 3), (216, 384, 3)} <= frames  # landscape, portrait, 16:9: none square
    assert all(item.image.dtype == np.uint8 for item in items)
    sizes = {f: [i.radius_frac for i in items if i.family == f] for f in FAMILIES}
    assert min(sizes["filled"]) >= 0.18 and max(sizes["filled"]) <= 0.38
    assert max(sizes["small"]) <= 0.18


def test_ood_shapes_are_drawn_in_their_color_on_a_contrasting_background() -> None:
    # The shape's own color dominates the frame's center (it is there and it is its color), the corners differ.
    from edgeclip.world.ood import PAINT

    for item in ood_set(64 * 2)[64:]:  # the outline family is the second
        color = item.label.split()[0]
        h, w = item.image.shape[:2]
        pixels = item.image.reshape(-1, 3).astype(np.float64)
        near = np.linalg.norm(pixels - np.array(PAINT[color]), axis=1) < 60
        share = near.mean() / (np.pi * (item.radius_frac * min(h, w)) ** 2 / (h * w))
        assert 0.1 < share < 1.6, (item.label, share)


def test_bad_ood_size_is_refused() -> None:
    with pytest.raises(InputError, match="at least 1 item"):
        ood_set(0)
