"""`edgeclip search`: the images of an index that best match a text or an image."""

from __future__ import annotations

from pathlib import Path

import click

from edgeclip.cli.options import backend_option, bundle_option, handle_errors, json_option, load_model
from edgeclip.errors import InputError


@click.command()
@click.argument("index", type=click.Path(path_type=Path), metavar="INDEX")
@click.argument("text", required=False, metavar="[TEXT]")
@click.option("--image", type=click.Path(path_type=Path), metavar="FILE", help="Search by an image instead of text.")
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True, metavar="K")
@click.option("--exact", is_flag=True, help="Exact search even where the index has an approximate one.")
@click.option(
    "--html", "html_out", type=click.Path(path_type=Path), metavar="OUT.html", help="Write a page of thumbnails."
)
@click.option("--force", is_flag=True, help="Replace an existing --html file.")
@bundle_option
@backend_option
@json_option
@handle_errors
def search(
    index: Path,
    text: str | None,
    image: Path | None,
    top_k: int,
    exact: bool,
    html_out: Path | None,
    force: bool,
    bundle: Path | None,
    backend: str,
    as_json: bool,
) -> None:
    """The TOP-K images of INDEX closest to TEXT (or to --image FILE), best first, with their cosine scores.

    The model and precision are the index's own: --bundle must be the bundle the index was made with (default: the
    built-in model). Output: a table, or with --json one {"path": ..., "score": ...} per line.
    """
    import json

    from edgeclip.fileio import check_writable_file
    from edgeclip.search import SearchIndex, check_same_model, model_identity

    if (text is None) == (image is None):
        raise InputError("give a TEXT to search for, or --image FILE, and not both")
    opened = SearchIndex(index)
    if html_out is not None:
        check_writable_file(html_out, force=force)
    opened.check_not_empty()  # before loading the model
    model = load_model(bundle, backend, f"image={opened.manifest.precision}")
    check_same_model(index, opened.manifest, model_identity(model))
    query = model.encode_text([text]) if text is not None else model.encode_image([str(image)])
    hits = opened.search(query, top_k, mode="exact" if exact else "auto")[0]
    if html_out is not None:
        from edgeclip.search.html import write_results_page

        write_results_page(html_out, text if text is not None else f"image {image}", hits)
    if as_json:
        for hit in hits:
            record: dict[str, object] = {"path": hit.path, "score": round(hit.score, 6)}
            if hit.frame is not None:
                record |= {"frame": hit.frame, "timestamp": hit.timestamp}
            click.echo(json.dumps(record, ensure_ascii=False))
        return
    click.echo(f"{'score':>7}  path")
    for hit in hits:
        click.echo(f"{hit.score:7.4f}  {hit.path}")
