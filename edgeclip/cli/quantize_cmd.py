"""`edgeclip quantize BUNDLE --fp16 --int8`: add reduced-precision graphs to an existing bundle, behind the gate.

The fp32 graphs are checked (sha256) and copied, never changed; the bundle is rewritten atomically, so a variant that
misses its gate (exit 1, with the figures) or an interruption leaves it exactly as it was. No torch needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgeclip.cli.options import handle_errors, json_option, require_extra
from edgeclip.cli.precision_options import echo_graphs, precision_options, to_precision


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Write the result here instead of replacing BUNDLE (an existing bundle there is replaced).",
)
@precision_options
@json_option
@handle_errors
def quantize(bundle: Path, out: Path | None, as_json: bool, **precision: object) -> None:
    """Add fp16 (--fp16) and/or int8 (--int8) graphs to BUNDLE, each checked against its fp32 graph."""
    require_extra("quantize", modules=("onnx",), extra="quantize")
    from edgeclip.precision.variants import quantize_bundle

    options = to_precision(precision)
    log = None if as_json else (lambda line: click.echo(line, err=True))
    manifest, report = quantize_bundle(bundle, options, out=out, log=log)
    for file, why in report.skipped_images:
        click.echo(f"warning: skipped calibration image {file}: {why}", err=True)
    target = out if out is not None else bundle
    if as_json:
        graphs = [g.to_dict() for g in manifest.graphs]
        click.echo(json.dumps({"path": str(target), "graphs": graphs, "added": [g.file for g in report.graphs]}))
        return
    click.echo(f"bundle {manifest.name!r} at {target}: added {', '.join(g.file for g in report.graphs)}")
    echo_graphs(report.graphs)
