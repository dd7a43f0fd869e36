"""`edgeclip triton`: a Triton Inference Server model repository for a bundle."""

from __future__ import annotations

from pathlib import Path

import click

from edgeclip.cli.options import force_option, handle_errors, load_model
from edgeclip.errors import InputError


@click.command()
@click.argument("bundle", required=False, type=click.Path(path_type=Path), metavar="[BUNDLE]")
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="DIR", help="Repository folder.")
@click.option(
    "--precision",
    default="fp32",
    show_default=True,
    metavar="P",
    help="Graphs to serve (as 'edgeclip embed --precision'); fp32 runs on every Triton backend.",
)
@click.option(
    "--plan",
    "plans",
    multiple=True,
    metavar="TOWER=FILE",
    help="A TensorRT plan to serve for a tower instead of its ONNX graph (repeat per tower).",
)
@click.option("--max-batch", type=click.IntRange(min=1), default=64, show_default=True, metavar="N")
@force_option
@handle_errors
def triton(bundle: Path | None, out: Path, precision: str, plans: tuple[str, ...], max_batch: int, force: bool) -> None:
    """Write a Triton model repository for BUNDLE (default: the built-in model) into DIR: image and text models
    with dynamic batching, a Python-backend tokenizer and an ensemble that takes text strings. See docs/triton.md.
    """
    from edgeclip.scale.triton import repository_from_model

    parsed: dict[str, Path] = {}
    for item in plans:
        tower, sep, file = item.partition("=")
        if not sep or not file:
            raise InputError(f"--plan {item!r}: write it as TOWER=FILE, e.g. --plan image=engines/tiny/image.plan")
        parsed[tower.strip()] = Path(file)
    model = load_model(bundle, "onnxruntime", precision)
    repo = repository_from_model(model, out, plans=parsed, max_batch=max_batch, force=force)
    click.echo(f"wrote {repo.path}: models {', '.join(repo.models)}")
