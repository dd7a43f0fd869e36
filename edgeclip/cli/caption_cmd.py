"""`edgeclip caption`: the captions of a bank that best describe each image (captions by retrieval)."""

from __future__ import annotations

from pathlib import Path

import click

from edgeclip.cli.options import (
    batch_option,
    handle_errors,
    json_option,
    load_model,
    model_options,
    report_unreadable,
)
from edgeclip.errors import InputError

WORLD = "world"


@click.command()
@click.argument("images", nargs=-1, metavar="IMAGE...")
@click.option(
    "--captions",
    "bank_file",
    required=True,
    metavar="FILE|world",
    help="Caption bank, one per line; 'world': the built-in world's own.",
)
@click.option(
    "--write-bank",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Write the --captions world bank to FILE (then IMAGEs are optional).",
)
@click.option("--force", is_flag=True, help="Replace an existing --write-bank file.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, metavar="K")
@model_options
@batch_option
@json_option
@handle_errors
def caption(
    images: tuple[str, ...],
    bank_file: str,
    write_bank: Path | None,
    force: bool,
    top_k: int,
    bundle: Path | None,
    backend: str,
    precision: str | None,
    preprocess: str,
    batch: int | None,
    as_json: bool,
) -> None:
    """Rank the captions of a bank for each IMAGE, best first, by cosine similarity.

    --json prints one {"image": ..., "captions": [...], "scores": [...]} per image.
    """
    import json

    from edgeclip.fileio import atomic_write, check_writable_file, text_name
    from edgeclip.search.captions import rank_captions, read_caption_bank, world_caption_bank

    captions = world_caption_bank() if bank_file == WORLD else read_caption_bank(bank_file)
    if write_bank is not None:
        if bank_file != WORLD:
            raise InputError("--write-bank writes the built-in world's bank: use it with --captions world")
        check_writable_file(write_bank, force=force)
        with atomic_write(write_bank) as f:
            f.write(("\n".join(captions) + "\n").encode("utf-8"))
        click.echo(f"wrote {len(captions)} captions to {write_bank}", err=True)
        if not images:
            return
    if not images:
        raise InputError("nothing to caption: give image files")
    model = load_model(bundle, backend, precision, preprocess=preprocess)
    bank = model.encode_text(captions, batch_size=batch)
    result = model.encode_image_files(images, batch_size=batch)
    report_unreadable(images, result.failed)
    ranked = rank_captions(result.vectors, [text_name(images[i]) for i in result.rows], bank, captions, top_k)
    for item in ranked:
        if as_json:
            record = {
                "image": item.image,
                "captions": list(item.captions),
                "scores": [round(s, 6) for s in item.scores],
            }
            click.echo(json.dumps(record, ensure_ascii=False))
        else:
            click.echo(item.image)
            for text, score in zip(item.captions, item.scores, strict=True):
                click.echo(f"  {score:7.4f}  {text}")
    if result.failed:
        raise SystemExit(1)
