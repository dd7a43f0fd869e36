"""`edgeclip export`: a checkpoint to a verified ONNX bundle. A thin shell over `bundle_from_checkpoint`.

Exit status: 0 written; 1 any edgeclip error (message on stderr, nothing written, an existing bundle kept), including
an existing non-empty --out without --force; 2 click's usage errors (an unknown option or choice).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgeclip.cli.options import handle_errors, json_option, require_extra
from edgeclip.cli.precision_options import echo_graphs, precision_options, to_precision
from edgeclip.models.config import PRESETS


@click.command()
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Bundle directory (default: export/<name>/).",
)
@click.option("--force", is_flag=True, help="Replace the bundle at --out (the old one stays until the new is whole).")
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default=None,
    help="Architecture preset: what the weights cannot tell.",
)
@click.option("--act", type=click.Choice(["quick_gelu", "gelu"]), default=None, help="Override the activation.")
@click.option("--name", default=None, help="Bundle name (default: the checkpoint's file or directory name).")
@precision_options
@json_option
@handle_errors
def export(
    source: Path | None,
    out: Path | None,
    force: bool,
    preset: str | None,
    act: str | None,
    name: str | None,
    as_json: bool,
    **precision: object,
) -> None:
    """Export SOURCE (an OpenAI .pt, an open_clip or edgeclip checkpoint, an HF CLIP directory; default: the
    built-in model) to an ONNX bundle whose graphs are checked against PyTorch; --fp16 and --int8 add reduced
    precisions behind their accuracy gate ('edgeclip quantize BUNDLE' adds them to a bundle later)."""
    require_extra("export")  # before anything imports torch or onnx
    from edgeclip.export import bundle_from_checkpoint

    options = to_precision(precision)
    log = None if as_json else (lambda line: click.echo(line, err=True))
    report = bundle_from_checkpoint(
        source, out, force=force, preset=preset, act=act, name=name, log=log, precision=options
    )
    for file, why in report.skipped_images:
        click.echo(f"warning: skipped calibration image {file}: {why}", err=True)
    engines, engine_line = _engines(report.path, options, log)
    if as_json:
        extra = {"engines": [e.to_dict() for e in engines], "engines_note": engine_line} if engine_line else {}
        click.echo(json.dumps({**report.to_dict(), **extra}))
        return
    click.echo(f"bundle {report.name!r} written to {report.path} in {report.seconds:.1f} s")
    echo_graphs(report.graphs)
    if engine_line:
        click.echo(f"  {engine_line}")


# ---------------------------------------------------------------- engine hook (edgeclip.engines)


def _engines(bundle: Path, options: Any, log: Any) -> tuple[list[Any], str]:
    """With --fp16/--int8: the TensorRT engines of the new precisions where TensorRT and a GPU are here, else a line
    saying that only ONNX was written and why. Without them: nothing (fp32 engines come from 'edgeclip build')."""
    precisions = [p for p, on in (("fp16", options.fp16), ("int8", options.int8)) if on]
    if not precisions:
        return [], ""
    from edgeclip.engines.build import engines_after_export

    return engines_after_export(bundle, precisions, log=log)
