"""`edgeclip info`: this machine's backends and devices, and what a bundle holds."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import click

from edgeclip import errors as edgeclip_errors
from edgeclip.cli.options import bundle_option, handle_errors, json_option


@click.command()
@bundle_option
@json_option
@handle_errors
def info(bundle: Path | None, as_json: bool) -> None:
    """Show the edgeclip version, the backends available here (and why the others are not), the CPU and GPU, and
    the bundle's model contract and export-time parity figures."""
    report = gather(bundle)
    click.echo(json.dumps(report, indent=2) if as_json else "\n".join(_text(report)))


def gather(bundle: Path | None) -> dict[str, Any]:
    """Everything `info` reports, as plain JSON-able data."""
    import edgeclip
    from edgeclip.runtime.backends import available_backends, cuda_devices, resolve_backend

    backends = available_backends()
    try:
        auto: str | None = resolve_backend("auto")
    except edgeclip.BackendError:
        auto = None
    gpus, gpu_detail = cuda_devices()
    return {
        "edgeclip": edgeclip.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu": {"name": _cpu_name(), "cores": os.cpu_count()},
        "gpu": {"cuda_devices": gpus, "detail": gpu_detail},
        "onnxruntime": _onnxruntime(),
        "backends": {name: {"available": ok, "reason": why} for name, (ok, why) in backends.items()},
        "auto_backend": auto,
        "bundle": _bundle(bundle),
    }


def _onnxruntime() -> dict[str, Any] | None:
    try:
        from edgeclip.runtime.backends.onnxruntime import describe_build
    except ImportError:
        return None
    return describe_build()


def _bundle(path: Path | None) -> dict[str, Any]:
    from edgeclip.bundle import Bundle
    from edgeclip.runtime import builtin_bundle_path

    if path is None:
        path = builtin_bundle_path()
        if not (path / "edgeclip.json").is_file():
            return {"path": None, "note": f"the built-in bundle is missing ({path}); pass --bundle DIR"}
    b = Bundle.open(path)  # an explicit --bundle that is broken is an error, not a line of the report
    m = b.manifest
    return {
        "path": str(b.path),
        "name": m.name,
        "graph_hash": b.graph_hash(),
        "contract": m.contract.to_dict(),
        "graphs": [
            {
                "tower": g.tower,
                "precision": g.precision,
                "file": g.file,
                "data": g.data,
                "bytes": b.graph_bytes(g),
                "scheme": g.scheme,
                "backends": list(g.backends),
                "parity": g.parity,
                "gate": g.gate,
            }
            for g in m.graphs
        ],
        "runs": _default_graphs(b),
        "provenance": m.provenance,
    }


def _default_graphs(bundle: Any) -> dict[str, dict[str, str]]:
    """Per backend, the graph file each tower runs by default (precision=None)."""
    from edgeclip.runtime import best_precision
    from edgeclip.runtime.backends import BACKENDS

    out = {}
    for backend in BACKENDS:
        runs = {}
        for tower in sorted({g.tower for g in bundle.manifest.graphs}):
            try:
                entry = bundle.graph(tower, best_precision(bundle, tower, backend), backend=backend)
            except edgeclip_errors.BundleError:
                continue
            runs[tower] = f"{entry.file} ({entry.precision})"
        out[backend] = runs
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:  # Linux; elsewhere platform.processor() says enough
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _text(r: dict[str, Any]) -> list[str]:
    lines = [
        f"edgeclip {r['edgeclip']} (Python {r['python']}, {r['platform']})",
        f"CPU: {r['cpu']['name']}, {r['cpu']['cores']} cores",
        f"GPU: {r['gpu']['detail'] if r['gpu']['cuda_devices'] else 'none; ' + r['gpu']['detail']}",
    ]
    ort = r["onnxruntime"]
    lines.append(
        f"onnxruntime {ort['version']} ({ort['device']}): {', '.join(ort['providers'])}" if ort else
        "onnxruntime: not installed"
    )  # fmt: skip
    lines.append("backends:")
    width = max(len(name) for name in r["backends"])
    for name, b in r["backends"].items():
        lines.append(f"  {name:<{width}}  {'yes' if b['available'] else 'no '}  {b['reason']}")
    lines.append(f"auto picks: {r['auto_backend'] or 'nothing (no backend is available)'}")
    bundle = r["bundle"]
    if bundle["path"] is None:
        lines.append(f"bundle: none ({bundle['note']})")
        return lines
    c = bundle["contract"]
    image, text, head = c["image"], c["text"], c["head"]
    lines += [
        f"bundle: {bundle['path']} (model {bundle['name']}, graph hash {bundle['graph_hash']})",
        f"  image: {image['size']} px, resize {image['resize']}, {image['interpolation']}, mean {image['mean']}, "
        f"std {image['std']}",
        f"  text: context {text['context_length']}, vocab {text['vocab_size']}, pooling {text['pooling']}, "
        f"eot {text['eot_id']}",
        f"  head: embed dim {head['embed_dim']}, logit scale {head['logit_scale']:.4g}, {head['activation']}",
        "  graphs:",
    ]
    for g in bundle["graphs"]:
        if g["precision"] == "fp32":
            figures = ", ".join(f"{k}={_fmt(v)}" for k, v in g["parity"].items()) or "no parity figures"
        else:
            gate = g["gate"]
            figures = (f"{g['scheme']}, for {', '.join(g['backends']) or 'every backend'}; gate "
                       f"{'passed' if gate.get('passed') else 'not passed'}: mean cosine "
                       f"{_fmt(gate.get('mean_cosine'))}, agreement {_fmt(gate.get('agreement'))}")  # fmt: skip
        lines.append(f"    {g['tower']:<5} {g['precision']:<4} {g['file']}: {figures}")
    lines.append("  by default each backend runs:")
    for backend, runs in bundle["runs"].items():
        lines.append(f"    {backend:<20} " + (", ".join(f"{t} {f}" for t, f in runs.items()) or "-"))
    prov = bundle["provenance"]
    if prov:
        lines.append("  provenance: " + ", ".join(f"{k}={_fmt(v)}" for k, v in prov.items()))
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
