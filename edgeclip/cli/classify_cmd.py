"""`edgeclip classify`: zero-shot classification of images against labels."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgeclip.cli.options import (
    batch_option,
    handle_errors,
    images_from_option,
    json_option,
    load_model,
    model_options,
    progress,
    report_unreadable,
)
from edgeclip.errors import InputError
from edgeclip.fileio import text_name
from edgeclip.zeroshot import Classification


@click.command()
@click.argument("images", nargs=-1, metavar="IMAGE ...")
@click.option("--labels", "labels_text", metavar='"a,b,c"', help="Comma-separated labels.")
@click.option("--labels-file", type=click.Path(path_type=Path), metavar="FILE", help="Labels, one per line.")
@click.option(
    "--templates",
    default=None,
    metavar="NAME|FILE",
    help="Prompt templates: 'default', 'imagenet' (CLIP's 80), or a file with one template per line, each with {}.",
)
@click.option("--top-k", type=int, default=5, show_default=True, metavar="K", help="Labels to show per image.")
@model_options
@batch_option
@json_option
@handle_errors
@images_from_option
def classify(
    images: tuple[str, ...],
    labels_text: str | None,
    labels_file: Path | None,
    templates: str | None,
    top_k: int,
    bundle: Path | None,
    backend: str,
    precision: str | None,
    preprocess: str,
    batch: int | None,
    as_json: bool,
) -> None:
    """Zero-shot classify each IMAGE against the labels: the top-k labels with their scores, best first.

    --json prints one {"image": ..., "labels": [...], "scores": [...]} per line. An image that cannot be read is
    named on stderr and skipped; the others are still classified and the exit status is 1.
    """
    from edgeclip import zeroshot

    if not images:
        raise InputError("nothing to classify: give image files, or --images-from FILE with one path per line")
    if (labels_text is None) == (labels_file is None):
        raise InputError('give the labels with exactly one of --labels "a,b,c" or --labels-file FILE')
    if labels_text is not None:
        labels = zeroshot.labels_from_text(labels_text)
    else:
        assert labels_file is not None
        labels = zeroshot.labels_from_file(labels_file)
    prompts = zeroshot.load_templates(templates)
    zeroshot.check_top_k(top_k)
    model = load_model(bundle, backend, precision, preprocess=preprocess)
    bank = model.label_bank(labels, prompts)
    with progress(len(images), "img") as bar:
        result = model.encode_image_files(images, batch_size=batch, on_progress=bar.update)
    found = model.classify_embeddings(result.vectors, labels, bank=bank, top_k=top_k)
    named = [(text_name(images[i]), c) for i, c in zip(result.rows, found, strict=True)]
    for line in _json_lines(named) if as_json else _table(named):
        click.echo(line)
    report_unreadable(images, result.failed)
    if result.failed:
        click.echo(f"error: {len(result.failed)} of {len(images)} images could not be read", err=True)
        raise SystemExit(1)


def _json_lines(named: list[tuple[str, Classification]]) -> list[str]:
    return [
        json.dumps({"image": image, "labels": list(c.labels), "scores": list(c.scores)}, ensure_ascii=False)
        for image, c in named
    ]


def _table(named: list[tuple[str, Classification]]) -> list[str]:
    if not named:
        return []
    named = [(_cell(image), c) for image, c in named]
    labels = {label: _cell(label) for _, c in named for label in c.labels}
    width_image = max(len("image"), *(_width(image) for image, _ in named))
    width_label = max(len("label"), *(_width(label) for label in labels.values()))
    lines = [f"{'image':<{width_image}}  {'label':<{width_label}}  score"]
    for image, c in named:
        for rank, (label, score) in enumerate(zip(c.labels, c.scores, strict=True)):
            shown = image if rank == 0 else ""
            lines.append(f"{_pad(shown, width_image)}  {_pad(labels[label], width_label)}  {score:.4f}")
    return lines


def _cell(text: str) -> str:
    """Text for one table cell: newlines, tabs and other control characters as escapes, so rows stay rows."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _width(text: str) -> int:
    """Terminal columns: wide (CJK) characters take two, combining marks none."""
    import unicodedata

    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))
