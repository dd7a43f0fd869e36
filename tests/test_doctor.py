"""`edgeclip doctor`: its report and --json where pieces are missing (this machine has no GPU and no TensorRT), and
Jetson parsing on fake /proc/device-tree and /etc/nv_tegra_release trees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeclip import device
from edgeclip.cli import doctor_cmd, main


def _jetson_tree(root: Path, model: str, release: str) -> Path:
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_text(model + "\x00")
    (root / "etc").mkdir()
    (root / "etc/nv_tegra_release").write_text(release)
    return root


def test_jetson_is_read_from_its_files(tmp_path: Path) -> None:
    root = _jetson_tree(
        tmp_path,
        "NVIDIA Jetson Orin Nano Developer Kit",
        "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 2024\n",
    )
    board = device.jetson(root)
    assert board is not None and board.module == "NVIDIA Jetson Orin Nano Developer Kit"
    assert board.l4t == "36.4.0" and board.jetpack == "6.1/6.2"
    assert device.jetson(tmp_path / "elsewhere") is None
    assert device.parse_power_mode("NV Power Mode: 15W\n0\n") == "15W"


def test_doctor_reports_what_is_missing_and_exits_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "tensorrt_version", lambda: None)
    monkeypatch.setattr(device, "gpus", lambda: ())
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "TensorRT: not installed" in result.output and "missing:" in result.output
    assert "pip install 'edgeclip[tensorrt]'" in result.output


def test_doctor_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "tensorrt_version", lambda: None)
    monkeypatch.setattr(device, "gpus", lambda: ())
    result = CliRunner().invoke(main, ["doctor", "--json"])
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["gpus"] == [] and report["tensorrt"] is None
    assert any(m["what"].startswith("TensorRT") for m in report["missing"])


def test_doctor_on_a_fake_jetson_says_to_see_jetpacks_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = _jetson_tree(tmp_path, "NVIDIA Jetson AGX Orin", "# R36 (release), REVISION: 3.0, GCID: 1\n")
    monkeypatch.setattr(device, "tensorrt_version", lambda: None)
    report = doctor_cmd.gather(None, jetson_root=root)
    assert report["jetson"]["l4t"] == "36.3.0" and report["jetson"]["jetpack"] == "6.0"
    fixes = [m["fix"] for m in report["missing"]]
    assert any("python3 -m venv --system-site-packages" in f for f in fixes)
    assert any("Jetson: NVIDIA Jetson AGX Orin, L4T 36.3.0 (JetPack 6.0)" in line for line in doctor_cmd.text(report))
