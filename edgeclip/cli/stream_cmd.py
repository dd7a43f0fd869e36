"""`edgeclip stream`: classify a camera, a network stream, a video, an image folder or a ROS 2 bag, frame by frame."""

from __future__ import annotations

from pathlib import Path

import click

from edgeclip.cli.options import handle_errors, json_option, model_options


@click.command()
@click.option(
    "--source",
    required=True,
    metavar="SRC",
    help="Camera index, /dev/videoN, csi://N, rtsp://, http:// "
    "(MJPEG), video file, image folder, BAG#/topic (ROS 2 bag) or a GStreamer pipeline.",
)
@click.option("--labels", "labels_text", metavar='"a,b,c"', help="Comma-separated labels.")
@click.option(
    "--labels-file",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Labels, one per line; watched: edit it while the stream runs.",
)
@click.option("--templates", default=None, metavar="NAME|FILE", help="Prompt templates (as for classify).")
@model_options
@click.option(
    "--every", type=click.IntRange(min=1), default=1, show_default=True, metavar="N", help="Classify every N-th frame."
)
@click.option(
    "--smooth",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.0,
    show_default=True,
    metavar="S",
    help="Smooth scores over frames: weight of the past in [0, 1) (0.8: about 5 frames).",
)
@click.option(
    "--top-k", type=click.IntRange(min=1), default=5, show_default=True, metavar="K", help="Labels per frame."
)
@click.option("--show", is_flag=True, help="Show the annotated frames in a window (needs a display).")
@click.option("--record", type=click.Path(path_type=Path), metavar="OUT.mp4", help="Record the annotated frames.")
@click.option("--force", is_flag=True, help="Replace an existing --record file.")
@json_option
@click.option(
    "--serve",
    metavar="[HOST:]PORT",
    help="Serve a live page (frames, labels, a form to change them); localhost unless a host is given.",
)
@click.option(
    "--stall-timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    metavar="S",
    help="Seconds without a frame before a live source is reopened.",
)
@handle_errors
def stream(
    source: str,
    labels_text: str | None,
    labels_file: Path | None,
    templates: str | None,
    bundle: Path | None,
    backend: str,
    precision: str | None,
    preprocess: str,
    every: int,
    smooth: float,
    top_k: int,
    show: bool,
    record: Path | None,
    force: bool,
    as_json: bool,
    serve: str | None,
    stall_timeout: float,
) -> None:
    """Classify the frames of SRC against the labels, pipelined: capture, inference and output in their own threads.

    --json prints one {"frame", "time", "labels", "scores", "latency_ms", "state"} per processed frame (and
    {"event": ...} lines for faults and label changes). Live sources keep only their newest frame and reconnect
    after a fault; files and bags are read at their own pace, every frame. The counts go to stderr at the end.
    """
    from edgeclip import zeroshot
    from edgeclip.stream.app import StreamOptions, run_stream

    labels = zeroshot.labels_from_text(labels_text) if labels_text is not None else None
    opts = StreamOptions(
        source=source,
        labels=labels,
        labels_file=labels_file,
        bundle=bundle,
        backend=backend,
        precision=precision,
        preprocess=preprocess,
        templates=templates,
        every=every,
        smooth=smooth,
        top_k=top_k,
        show=show,
        record=record,
        force=force,
        as_json=as_json,
        serve=serve,
        stall_timeout=stall_timeout,
    )
    run_stream(opts)
