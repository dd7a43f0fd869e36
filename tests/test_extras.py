"""The runtime-only install (`pip install 'edgeclip[cpu]'`: no torch, no onnx, no safetensors).

Commands that need the [export] extra say so in one line with the pip command that adds it (exit 1, no traceback);
the runtime commands still work. The install is simulated: a `sitecustomize` on PYTHONPATH marks the modules as
absent in `sys.modules`, so `import torch` fails and `importlib.util.find_spec("torch")` finds nothing, exactly as
where they were never installed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgeclip.cli import options
from edgeclip.errors import MissingExtraError

EXPORT = "PyTorch, onnx, onnxscript and safetensors"
INSTALL = "pip install torch==2.13.0 'edgeclip[cpu,export]'"
SCRIPT = Path(sys.executable).parent / "edgeclip"


def _edgeclip(tmp_path: Path, *args: str, absent: tuple[str, ...] = options.EXPORT_MODULES, timeout: float = 300):
    """Run the installed `edgeclip` script as if `absent` were not installed."""
    if not SCRIPT.exists():
        pytest.skip("the edgeclip script is not installed beside this Python")
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({list(absent)!r}))\n")
    env = {**os.environ, "PYTHONPATH": str(site), "EDGECLIP_CACHE": str(tmp_path / "cache")}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout)


def _one_error_line(run: subprocess.CompletedProcess[str], expected: str) -> None:
    assert run.returncode == 1 and run.stdout == "" and "Traceback" not in run.stderr, run.stderr
    assert run.stderr == f"error: {expected}\n"


def test_the_simulation_hides_the_modules(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules.update(dict.fromkeys(['torch', 'onnx']))\n")
    code = "import importlib.util as u\nprint(u.find_spec('torch'), u.find_spec('onnx'))\nimport torch"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ,
                         "PYTHONPATH": str(site)}, timeout=60)  # fmt: skip
    assert run.stdout == "None None\n" and "ModuleNotFoundError: import of torch halted" in run.stderr


def test_export_names_the_extra_and_the_command(tmp_path: Path) -> None:
    message = f"'edgeclip export' needs {EXPORT} (the [export] extra), and this installation lacks {EXPORT}: {INSTALL}"
    _one_error_line(_edgeclip(tmp_path, "export"), message)
    _one_error_line(_edgeclip(tmp_path, "export", "model.pt", "--out", "b"), message)
    assert not (tmp_path / "b").exists()
    only_onnx = _edgeclip(tmp_path, "export", absent=("onnx", "onnxscript"))
    _one_error_line(
        only_onnx,
        f"'edgeclip export' needs {EXPORT} (the [export] extra), and this installation lacks onnx and onnxscript: "
        f"{INSTALL}",
    )


def test_train_names_the_extra_and_the_command(tmp_path: Path) -> None:
    _one_error_line(
        _edgeclip(tmp_path, "train", "--out", "run", "--steps", "1"),
        f"'edgeclip train' needs PyTorch and safetensors (the [export] extra), and this installation lacks PyTorch "
        f"and safetensors: {INSTALL}",
    )
    assert not (tmp_path / "run").exists()


def test_demo_uses_the_shipped_bundle_and_refuses_export(tmp_path: Path) -> None:
    _one_error_line(
        _edgeclip(tmp_path, "demo", "--export", "--out", "demo"),
        f"'edgeclip demo --export' needs {EXPORT} (the [export] extra), and this installation lacks {EXPORT}: "
        f"{INSTALL}",
    )
    from edgeclip.runtime import builtin_bundle_path

    if not (builtin_bundle_path() / "edgeclip.json").is_file():
        pytest.skip("the built-in bundle is not in this checkout")
    run = _edgeclip(tmp_path, "demo", "-n", "2", "--json", "--out", "demo")
    assert run.returncode == 0, run.stderr
    assert '"exported": false' in run.stdout


def test_help_and_the_runtime_commands_need_no_extra(tmp_path: Path) -> None:
    for args in (["--help"], ["export", "--help"], ["info"]):
        run = _edgeclip(tmp_path, *args)
        assert run.returncode == 0 and "Traceback" not in run.stderr, (args, run.stderr)


def test_require_extra_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    options.require_extra("export", modules=("json",))  # present: nothing happens
    with pytest.raises(MissingExtraError, match=r"^'edgeclip x' needs no_such_module \(the \[export\] extra\), and"):
        options.require_extra("x", modules=("no_such_module",))
    assert options.missing_modules(["json", "no_such_module", "json.no_such"]) == ["no_such_module", "json.no_such"]
    monkeypatch.setattr(options, "_installed", lambda name: name == "onnxruntime-gpu")
    assert options.install_command("export") == "pip install torch==2.13.0 'edgeclip[gpu,export]'"
    assert options.install_command("parquet") == "pip install 'edgeclip[gpu,parquet]'"


def test_the_torch_pin_is_the_one_of_the_export_extra() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    export = project["optional-dependencies"]["export"]
    assert options.TORCH_REQUIREMENT in export
    modules = {re.split(r"[<>=!~ ;\[]", r)[0].replace("-", "_") for r in export}
    assert set(options.EXPORT_MODULES) == modules and set(options.TRAIN_MODULES) <= modules


def test_quantize_names_its_own_extra_which_needs_no_torch(tmp_path: Path) -> None:
    run = _edgeclip(tmp_path, "quantize", "bundle", "--fp16", absent=("onnx",))
    _one_error_line(run, "'edgeclip quantize' needs onnx (the [quantize] extra), and this installation "
                    "lacks onnx: pip install 'edgeclip[cpu,quantize]'")  # fmt: skip
