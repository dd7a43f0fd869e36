"""`edgeclip demo` (README command one) on the built-in model: a table, results.json and a grid a person can read."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner

from edgeclip.cli import main
from edgeclip.demo import TILE, demo_items, format_table, run_demo
from edgeclip.runtime import builtin_bundle_path

pytestmark = pytest.mark.skipif(
    not (builtin_bundle_path() / "edgeclip.json").is_file(), reason="the built-in bundle is not in this checkout"
)


def test_demo_classifies_unseen_images_and_draws_them(tmp_path: Path) -> None:
    result = run_demo(tmp_path, n=12, ood_n=8, export=False)
    assert [r.ood for r in result.rows] == [False] * 12 + [True] * 8
    truths = [r.truth for r in result.rows if not r.ood]
    assert len(set(truths)) == 12 and len({t.split()[0] for t in truths}) >= 6  # spread over the colors
    assert truths == [item.label for item in demo_items(12)]
    assert all(len(r.labels) == 3 and list(r.scores) == sorted(r.scores, reverse=True) for r in result.rows)
    grid = cv2.imread(str(result.grid))
    assert grid is not None and grid.shape[1] == 8 * TILE and grid.shape[0] == 3 * (TILE + 56)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["accuracy"] == pytest.approx(result.accuracy())
    assert saved["accuracy_ood"] == pytest.approx(sum(r.correct for r in result.rows[12:]) / 8)
    table = format_table(result)
    assert table.count("\n") == 22 and "held-out pairs (never in training)" in table
    assert "out-of-distribution accuracy" in table and table.count(" other ") == 8


def test_demo_command_json(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "--out", str(out), "-n", "4", "--no-export", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert (
        len(data["rows"]) == 8
        and sum(r["ood"] for r in data["rows"]) == 4
        and data["backend"] == "onnxruntime"
        and (out / "grid.png").is_file()
    )


def test_demo_json_has_no_nan_where_a_set_is_empty() -> None:
    from edgeclip.demo import _json_number

    assert _json_number(float("nan")) is None and _json_number(0.5) == 0.5
