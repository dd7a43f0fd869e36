"""`edgeclip embed`: images or texts to embedding vectors in a file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from edgeclip.cli.options import (
    batch_option,
    force_option,
    handle_errors,
    images_from_option,
    load_model,
    model_options,
    progress,
    report_unreadable,
)
from edgeclip.errors import InputError
from edgeclip.zeroshot import one_per_line

if TYPE_CHECKING:
    from edgeclip.runtime import Model

TEXT_CHUNK = 256  # texts per progress step when --batch is not given


@click.command()
@click.argument("images", nargs=-1, metavar="[IMAGE ...]")
@click.option("--text", "texts", multiple=True, metavar="TEXT", help="A text to embed (repeat for more).")
@click.option("--text-file", type=click.Path(path_type=Path), metavar="FILE", help="Texts to embed, one per line.")
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="FILE", help=".npy, .jsonl or .parquet")
@model_options
@batch_option
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Embed the images on a Ray cluster (HOST:PORT or ray://HOST:PORT; alone: a local instance).",
)
@force_option
@handle_errors
@images_from_option
def embed(
    images: tuple[str, ...],
    texts: tuple[str, ...],
    text_file: Path | None,
    out: Path,
    bundle: Path | None,
    backend: str,
    precision: str | None,
    preprocess: str,
    batch: int | None,
    ray_address: str | None,
    force: bool,
) -> None:
    """Embed IMAGEs, or texts (--text / --text-file), into FILE: L2-normalized float32 vectors in input order.

    \b
    .npy      an (N, D) float32 array
    .jsonl    one {"path": ..., "vector": [...]} (or {"text": ...}) per line
    .parquet  columns path (or text) and vector; needs pyarrow

    An image that cannot be read does not stop the run: it is named on stderr, the others are written (in input
    order, the unreadable ones left out) and the exit status is 1. FILE is replaced only with --force, and only
    once the new file is complete.
    """
    from edgeclip.outputs import check_output, write_embeddings

    all_texts = list(texts) + (_read_texts(text_file) if text_file is not None else [])
    if images and all_texts:
        raise InputError("give images or texts (--text / --text-file), not both: run embed once for each")
    if not images and not all_texts:
        raise InputError("nothing to embed: give image files, or texts with --text / --text-file")
    check_output(out, force=force)  # before loading anything: a wrong --out must cost nothing
    if ray_address is not None:
        if all_texts:
            raise InputError("--ray spreads image embedding over a cluster; embed texts without --ray")
        from edgeclip.scale.ray_embed import connect, ray_embedder

        connect(ray_address)  # an address that does not answer costs seconds, before the model loads
    model = load_model(bundle, backend, precision, preprocess=preprocess)

    if all_texts:
        write_embeddings(out, _encode_texts(model, all_texts, batch), all_texts, key_name="text", force=force)
        return

    with progress(len(images), "img") as bar:
        if ray_address is None:
            result = model.encode_image_files(images, batch_size=batch, on_progress=bar.update)
        else:
            result = ray_embedder(model, batch, ray_address)(images, bar.update)
    report_unreadable(images, result.failed)
    if result.rows:
        write_embeddings(out, result.vectors, [images[i] for i in result.rows], key_name="path", force=force)
    if result.failed:
        kept = f"{out} holds the other {len(result.rows)}, in input order" if result.rows else f"{out} not written"
        click.echo(f"error: {len(result.failed)} of {len(images)} images could not be read; {kept}", err=True)
        raise SystemExit(1)


def _encode_texts(model: Model, texts: list[str], batch: int | None) -> np.ndarray:
    step = batch or TEXT_CHUNK
    parts = []
    with progress(len(texts), "text") as bar:
        for start in range(0, len(texts), step):
            parts.append(model.encode_text(texts[start : start + step], batch_size=batch))
            bar.update(len(parts[-1]))
    return np.concatenate(parts)


def _read_texts(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark is not text
    except FileNotFoundError:
        raise InputError(f"--text-file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read --text-file {path}: {exc}; it must be a UTF-8 text file") from None
    lines = one_per_line(text.splitlines(), f"--text-file {path}", "text")
    if not lines:
        raise InputError(f"--text-file {path} is empty; write one text per line")
    return lines
