"""`edgeclip doctor`: what this machine has for running CLIP on a GPU, what is missing, and the command that adds it.

Always exit 0 with a report: a missing GPU, TensorRT or library is a line of the report, not an error. Only a
--bundle that cannot be opened is an error (exit 1), as in `edgeclip info`.
"""

from __future__ import annotations

import importlib.util
import json
import platform
from pathlib import Path
from typing import Any

import click

from edgeclip.cli.options import bundle_option, handle_errors, json_option

MiB = 1 << 20


@click.command()
@bundle_option
@json_option
@handle_errors
def doctor(bundle: Path | None, as_json: bool) -> None:
    """Check the GPU, driver, CUDA, TensorRT, ONNX Runtime, PyTorch, OpenCV and (on Jetson) JetPack, and whether an
    engine build for the bundle fits in GPU memory; name each missing piece with the command that adds it."""
    report = gather(bundle)
    click.echo(json.dumps(report, indent=2) if as_json else "\n".join(text(report)))


def gather(bundle: Path | None, *, jetson_root: Path | None = None) -> dict[str, Any]:
    """Everything `doctor` reports, as plain JSON-able data."""
    from edgeclip import device
    from edgeclip.engines.cuda import cuda_library_name

    gpus = [g.to_dict() for g in device.gpus()]
    _, gpu_detail = device.cuda_devices()
    board = device.jetson(jetson_root)
    trt = device.tensorrt_version()
    report: dict[str, Any] = {
        "platform": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "gpus": gpus,
        "gpu_detail": gpu_detail,
        "driver_cuda": device.cuda_driver_version(),
        "cuda_memory_library": cuda_library_name(),
        "tensorrt": trt,
        "onnxruntime": _onnxruntime(),
        "torch": _torch(),
        "opencv": _opencv(),
        "jetson": board.to_dict() if board is not None else None,
        "engine_fit": _engine_fit(bundle, gpus),
    }
    report["missing"] = _missing(report)
    return report


def _onnxruntime() -> dict[str, Any] | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime as ort

    return {"version": ort.__version__, "providers": list(ort.get_available_providers())}


def _torch() -> dict[str, Any] | None:
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch
    except Exception as exc:  # a broken install is a line of the report
        return {"version": None, "error": str(exc)}
    return {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": bool(torch.cuda.is_available())}


def _opencv() -> dict[str, Any] | None:
    if importlib.util.find_spec("cv2") is None:
        return None
    import cv2

    build = cv2.getBuildInformation()
    gstreamer = any("GStreamer" in line and "YES" in line for line in build.splitlines())
    return {"version": cv2.__version__, "gstreamer": gstreamer}


def _engine_fit(bundle: Path | None, gpus: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Whether one engine build of the bundle's largest graph fits the free GPU memory (an estimate)."""
    from edgeclip.bundle import Bundle
    from edgeclip.engines.build import build_memory_estimate, default_workspace
    from edgeclip.runtime import builtin_bundle_path

    path = bundle if bundle is not None else builtin_bundle_path()
    if bundle is None and not (path / "edgeclip.json").is_file():
        return None
    opened = Bundle.open(path, verify=False)
    largest = max(opened.graphs_for("tensorrt"), key=opened.graph_bytes)
    free = gpus[0]["free_bytes"] if gpus else None
    workspace = default_workspace(free)
    need = build_memory_estimate(opened.graph_bytes(largest), workspace)
    return {
        "bundle": str(opened.path),
        "graph": largest.file,
        "needs_bytes": need,
        "workspace_bytes": workspace,
        "free_bytes": free,
        "fits": None if free is None else need <= free,
    }


def _missing(r: dict[str, Any]) -> list[dict[str, str]]:
    """Each missing piece and the command that adds it."""
    out = []
    jetson = r["jetson"] is not None
    if not r["gpus"]:
        fix = (
            "reflash or update JetPack (sudo apt install nvidia-jetpack)"
            if jetson
            else "install the NVIDIA driver for your GPU (e.g. sudo ubuntu-drivers install), then check nvidia-smi"
        )
        out.append({"what": f"a CUDA GPU ({r['gpu_detail']})", "fix": fix})
    if r["tensorrt"] is None:
        fix = (
            "JetPack ships TensorRT for the system Python: python3 -m venv --system-site-packages .venv"
            if jetson
            else "pip install 'edgeclip[tensorrt]'"
        )
        out.append({"what": "TensorRT (the tensorrt Python module)", "fix": fix})
    elif not r["tensorrt"].split(".")[0].isdigit() or int(r["tensorrt"].split(".")[0]) < 10:
        out.append({"what": f"TensorRT 10 or newer (found {r['tensorrt']})", "fix": "pip install -U 'tensorrt>=10'"})
    if r["cuda_memory_library"] is None:
        out.append({"what": "cuda-python (GPU memory for the TensorRT backend)", "fix": "pip install cuda-python"})
    ort = r["onnxruntime"]
    if ort is None:
        out.append({"what": "ONNX Runtime", "fix": "pip install 'edgeclip[cpu]' (or 'edgeclip[gpu]' with CUDA)"})
    elif r["gpus"] and "CUDAExecutionProvider" not in ort["providers"] and not jetson:
        out.append(
            {"what": "ONNX Runtime's CUDA provider", "fix": "pip uninstall onnxruntime && pip install 'edgeclip[gpu]'"}
        )
    torch = r["torch"]
    if r["gpus"] and torch is not None and torch.get("version") and not torch.get("cuda_available"):
        out.append(
            {
                "what": f"PyTorch with CUDA (this is {torch['version']})",
                "fix": "install the CUDA build of PyTorch (on Jetson: NVIDIA's wheel for your JetPack)",
            }
        )
    cv = r["opencv"]
    if cv is not None and not cv["gstreamer"]:
        out.append(
            {
                "what": "OpenCV with GStreamer (camera pipelines, RTSP); PyPI's OpenCV has none",
                "fix": "use the system OpenCV: sudo apt install python3-opencv and a venv with "
                "--system-site-packages (then pip uninstall opencv-python-headless)",
            }
        )
    fit = r["engine_fit"]
    if fit is not None and fit["fits"] is False:
        out.append(
            {
                "what": f"GPU memory for an engine build of {fit['graph']} (about {fit['needs_bytes'] // MiB} "
                f"MiB, {fit['free_bytes'] // MiB} MiB free)",
                "fix": "close other GPU programs, or pass a smaller --workspace to edgeclip build",
            }
        )
    return out


def text(r: dict[str, Any]) -> list[str]:
    """The report as lines."""
    lines = [f"edgeclip doctor (Python {r['python']}, {r['platform']})"]
    if r["gpus"]:
        for g in r["gpus"]:
            free = "unknown" if g["free_bytes"] is None else f"{g['free_bytes'] // MiB} MiB"
            lines.append(
                f"GPU {g['index']}: {g['name']}, compute capability {g['compute_capability']}, "
                f"{g['total_bytes'] // MiB} MiB, {free} free"
            )
    else:
        lines.append(f"GPU: none ({r['gpu_detail']})")
    lines.append(f"driver: CUDA {r['driver_cuda']}" if r["driver_cuda"] else "driver: none")
    lines.append(f"TensorRT: {r['tensorrt'] or 'not installed'}")
    lines.append(f"GPU memory library: {r['cuda_memory_library'] or 'none (cuda-python or PyTorch)'}")
    ort = r["onnxruntime"]
    lines.append(f"ONNX Runtime {ort['version']}: {', '.join(ort['providers'])}" if ort else "ONNX Runtime: none")
    torch = r["torch"]
    if torch is None:
        lines.append("PyTorch: not installed")
    else:
        lines.append(
            f"PyTorch {torch.get('version')}: CUDA {torch.get('cuda') or 'none'}, "
            f"{'GPU available' if torch.get('cuda_available') else 'no GPU'}"
        )
    cv = r["opencv"]
    lines.append(f"OpenCV {cv['version']}: GStreamer {'yes' if cv['gstreamer'] else 'no'}" if cv else "OpenCV: none")
    board = r["jetson"]
    if board is not None:
        lines.append(
            f"Jetson: {board['module']}, L4T {board['l4t'] or '?'} (JetPack {board['jetpack'] or '?'}), "
            f"power mode {board['power_mode'] or 'unknown (nvpmodel -q)'}"
        )
    fit = r["engine_fit"]
    if fit is not None:
        verdict = {True: "fits", False: "does not fit", None: "cannot tell (no GPU)"}[fit["fits"]]
        lines.append(
            f"engine build of {fit['graph']} ({fit['bundle']}): needs about {fit['needs_bytes'] // MiB} MiB "
            f"with a {fit['workspace_bytes'] // MiB} MiB workspace: {verdict}"
        )
    if r["missing"]:
        lines.append("missing:")
        lines += [f"  {m['what']}: {m['fix']}" for m in r["missing"]]
    else:
        lines.append("nothing missing")
    return lines
