"""`edgeclip bench`: throughput, latency, preprocessing, load time and memory of a bundle, against PyTorch eager."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgeclip.bundle import PRECISIONS, TOWERS
from edgeclip.cli.options import backend_option, bundle_option, handle_errors, json_option


@click.command()
@bundle_option
@backend_option
@click.option(
    "--precision",
    default=None,
    metavar="P,...",
    help=f"Precisions ({','.join(PRECISIONS)}; default: all the bundle has).",
)
@click.option("--batch", default="1,8,32", show_default=True, metavar="N,...", help="Batch sizes.")
@click.option("--tower", default=",".join(TOWERS), show_default=True, metavar="T,...", help="Towers to measure.")
@click.option(
    "--repeats", type=click.IntRange(min=1), default=10, show_default=True, help="Timed rounds (batch 1: at least 30)."
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads per graph (default: the backend's).")
@click.option(
    "--torch-checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    metavar="PATH",
    help="Checkpoint of the bundle's model, for PyTorch eager in the same run (built-in model: automatic).",
)
@click.option(
    "--eager/--no-eager",
    default=None,
    help="Measure PyTorch eager fp32 (default: when torch and a checkpoint are at hand).",
)
@click.option(
    "--memory/--no-memory", default=True, show_default=True, help="Peak RSS per precision, in a fresh process."
)
@json_option
@click.option("--markdown", "as_markdown", is_flag=True, help="Print Markdown tables (for benchmarks/RESULTS.md).")
@handle_errors
def bench(bundle: Path | None, backend: str, precision: str | None, batch: str, tower: str, repeats: int,
          threads: int | None, torch_checkpoint: Path | None, eager: bool | None, memory: bool, as_json: bool,
          as_markdown: bool) -> None:  # fmt: skip
    """Measure images/s and texts/s per precision and batch size, batch-1 latency, 1080p preprocessing, load time
    and the runtime's peak memory; with PyTorch eager fp32 of the same model in the same run, and the ratio."""
    from tqdm import tqdm

    from edgeclip import bench as lib

    config = lib.BenchConfig(
        bundle=bundle, backend=backend, batches=lib.parse_batches(batch), towers=lib.parse_list(tower, "tower", TOWERS),
        precisions=lib.parse_list(precision, "precision", PRECISIONS) if precision is not None else None,
        repeats=repeats, threads=threads, torch_checkpoint=torch_checkpoint, eager=eager, memory=memory,
    )  # fmt: skip
    with tqdm(total=0, unit="step", file=sys.stderr, leave=False, disable=None) as bar:
        result = lib.bench(config, progress=bar)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(lib.markdown(result) if as_markdown else lib.table(result))
