"""edgeclip caption: captions by retrieval from a bank, and the built-in world's own bank."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner

from edgeclip.cli import main
from edgeclip.search.captions import read_caption_bank, world_caption_bank
from edgeclip.world import eval_set


def test_world_bank_holds_every_one_phrase_caption_of_the_grammar() -> None:
    bank = world_caption_bank()
    assert len(bank) == len(set(bank)) == 1715
    for caption in (
        "a red star",
        "two small red stars",
        "a large blue circle on the left",
        "three objects",
        "an object on the left",
        "a small triangle",
        "a heart at the top",
        "two green objects",
    ):
        assert caption in bank, caption


def test_caption_json_ranks_the_world_bank_per_image(tmp_path: Path) -> None:
    items = eval_set("color_shape", n=64)[::8]
    paths = []
    for i, item in enumerate(items):
        paths.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(paths[-1], item.image[:, :, ::-1])
    bank = tmp_path / "bank.txt"
    result = CliRunner().invoke(main, ["caption", "--captions", "world", "--write-bank", str(bank)])
    assert result.exit_code == 0 and read_caption_bank(bank) == world_caption_bank()
    result = CliRunner().invoke(main, ["caption", *paths, "--captions", str(bank), "--top-k", "5", "--json"])
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in records] == paths
    named = 0
    for record, item in zip(records, items, strict=True):
        assert len(record["captions"]) == len(record["scores"]) == 5
        assert record["scores"] == sorted(record["scores"], reverse=True)
        obj = item.scene.objects[0]
        named += any(obj.color in c and obj.shape in c for c in record["captions"])
    assert named >= 7, f"{named} of 8 images have a caption naming their color and shape in the top 5"
    table = CliRunner().invoke(main, ["caption", paths[0], "--captions", str(bank), "--top-k", "2"])
    assert table.exit_code == 0 and table.stdout.splitlines()[0] == paths[0] and len(table.stdout.splitlines()) == 3


def test_caption_bad_inputs(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), eval_set("color_shape", n=1)[0].image)
    missing = CliRunner().invoke(main, ["caption", str(image), "--captions", str(tmp_path / "none.txt")])
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    (tmp_path / "blank.txt").write_text("\n  \n")
    blank = CliRunner().invoke(main, ["caption", str(image), "--captions", str(tmp_path / "blank.txt")])
    assert blank.exit_code == 1 and "holds no captions" in blank.stderr
    (tmp_path / "bad.png").write_bytes(b"nope")
    (tmp_path / "bank.txt").write_text("a red star\na blue circle\n")
    mixed = CliRunner().invoke(
        main, ["caption", str(image), str(tmp_path / "bad.png"), "--captions", str(tmp_path / "bank.txt"), "--json"]
    )
    assert mixed.exit_code == 1 and "bad.png" in mixed.stderr
    assert [json.loads(line)["image"] for line in mixed.stdout.splitlines()] == [str(image)]
    with pytest.raises(Exception, match="UTF-8"):
        (tmp_path / "latin.txt").write_bytes(b"caf\xe9\n")
        read_caption_bank(tmp_path / "latin.txt")
