"""`edgeclip index`: the images under folders into a searchable index on disk, incrementally."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeclip.cli.options import batch_option, handle_errors, load_model, model_options, progress

RAY_HELP = "Spread the embedding over a Ray cluster (ADDRESS: HOST:PORT or ray://HOST:PORT; alone: a local instance)."
ray_option = click.option(
    "--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]", help=RAY_HELP
)


@click.command()
@click.argument("folders", nargs=-1, required=True, metavar="DIR...", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="INDEX", help="Index folder.")
@click.option("--ann/--no-ann", default=None, help="Build the approximate index (default: from 100,000 images).")
@model_options
@batch_option
@ray_option
@click.option(
    "--video-every",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Index video files and ROS 2 bags too: every N-th frame (embedded in this process).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run's figures as JSON.")
@handle_errors
def index(
    folders: tuple[Path, ...],
    out: Path,
    ann: bool | None,
    bundle: Path | None,
    backend: str,
    precision: str | None,
    preprocess: str,
    batch: int | None,
    ray_address: str | None,
    video_every: int | None,
    as_json: bool,
) -> None:
    """Embed every image under the DIRs (recursively) into INDEX, a folder of Parquet files.

    A second run embeds only new or changed files and drops deleted ones; an interrupted run resumes where it
    stopped. Unreadable files are skipped and listed (exit status 1). An index is made by one model at one
    precision: another is refused.
    """
    import contextlib
    import json

    from edgeclip.search import Embedder, build_index, local_embedder, model_identity
    from edgeclip.search.index import prepare_output

    existing = prepare_output(out)  # a wrong --out must cost nothing, not even loading the model
    if existing is not None and precision is None:
        precision = f"image={existing.precision}"  # keep the index's precision unless told otherwise
    model = load_model(bundle, backend, precision, preprocess=preprocess)
    embed: Embedder
    if ray_address is not None:
        from edgeclip.scale.ray_embed import connect, ray_embedder

        connect(ray_address)  # an address that does not answer is refused before any work
        embed = ray_embedder(model, batch, ray_address)
    else:
        embed = local_embedder(model, batch)
    with contextlib.ExitStack() as stack:
        bars: list[Any] = []  # the bar opens once the run knows how many images it has to embed
        report = build_index(
            folders,
            out,
            model_identity(model),
            embed,
            ann=ann,
            video_every=video_every,
            embed_frames=lambda frames: model.encode_image(frames, color_order="BGR", batch_size=batch),
            on_total=lambda n: bars.append(stack.enter_context(progress(n, "img"))),
            on_progress=lambda n: bars[0].update(n),
        )
    for path, why in report.failed:
        click.echo(f"error: skipped {path}: {why}", err=True)
    figures = {
        "index": str(out),
        "images": report.rows,
        "embedded": report.embedded,
        "reused": report.reused,
        "unchanged": report.unchanged,
        "dropped": report.dropped,
        "failed": len(report.failed),
        "approximate_index": report.ann,
        "approximate_recall_at_10": report.ann_recall,
    }
    if as_json:
        click.echo(json.dumps(figures))
    else:
        click.echo(
            f"{out}: {report.rows} images ({report.embedded} embedded, {report.reused} reused, "
            f"{report.unchanged} unchanged, {report.dropped} dropped)"
        )
        if report.ann_recall is not None:
            click.echo(
                f"approximate index: recall@10 {report.ann_recall:.3f} against exact search (100 sample queries)"
            )
    if report.failed:
        click.echo(f"error: {len(report.failed)} files could not be read; the index holds the others", err=True)
        raise SystemExit(1)
