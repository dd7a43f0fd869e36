"""`edgeclip demo`: the built-in model end to end on this machine (what `make demo` runs)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgeclip.cli.options import backend_option, export_wanted, handle_errors, json_option


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Folder for the demo's bundle, results.json and grid.png (an earlier demo's files there are replaced).",
)
@click.option(
    "-n", "--images", "n", type=click.IntRange(min=1), default=64, show_default=True, help="Unseen images to classify."
)
@click.option(
    "--ood-images",
    "ood_n",
    type=click.IntRange(min=0),
    default=None,
    help="Out-of-distribution images (another renderer) to classify too (default: as many as --images).",
)
@click.option(
    "--export/--no-export",
    default=None,
    help="Export the built-in checkpoint first (default: when torch is installed), else use the shipped bundle.",
)
@backend_option
@json_option
@handle_errors
def demo(out: Path, n: int, ood_n: int | None, export: bool | None, backend: str, as_json: bool) -> None:
    """Export the built-in model, classify world images it never trained on, and draw the answers.

    Prints a table with the accuracy on seen and held-out color-shape pairs and on out-of-distribution pictures
    (another renderer) and writes OUT/grid.png.
    """
    export = export_wanted(export, "demo")
    from edgeclip.demo import format_table, run_demo

    result = run_demo(out, n=n, ood_n=ood_n, backend=backend, export=export)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    source = f"exported to {result.bundle}" if result.exported else f"shipped bundle {result.bundle}"
    click.echo(f"built-in model: {source}; backend: {result.backend}")
    click.echo(format_table(result))
    click.echo(f"annotated grid: {result.grid}")
