"""`edgeclip stream` as a library call: check the outputs, open the source, run the Stream, feed the outputs.

Everything the user can get wrong is checked before the model loads: the --record path, the --serve port, the
display for --show, the source (a live one is opened once, when the stream starts). Ctrl-C and SIGTERM stop the
stream cleanly: the frames already read are still processed, the JSON is flushed and the recording is finished (a
playable file).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from edgeclip.errors import InputError
from edgeclip.fileio import silence_closed_pipe
from edgeclip.stream.outputs import (
    FpsMeter,
    JsonLines,
    Recorder,
    Window,
    annotate,
    check_record_path,
    display_problem,
    text_line,
)
from edgeclip.stream.pipeline import RECONNECTING, STALLED, Event, Result, Stats, Stream
from edgeclip.stream.sources import open_source


@dataclass
class StreamOptions:
    source: str
    labels: tuple[str, ...] | None = None
    labels_file: Path | None = None
    bundle: Path | None = None
    backend: str = "auto"
    precision: str | None = None
    preprocess: str = "exact"  # edgeclip.preprocess.MODES
    templates: str | None = None
    every: int = 1
    smooth: float = 0.0
    top_k: int = 5
    show: bool = False
    record: Path | None = None
    force: bool = False  # replace an existing --record file
    as_json: bool = False
    serve: str | None = None
    stall_timeout: float = 5.0
    backoff: tuple[float, float] = (0.5, 8.0)  # first and longest wait between reconnection attempts, seconds
    max_reconnects: int | None = None


def run_stream(
    opts: StreamOptions,
    *,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    on_ready: Callable[[Stream], None] | None = None,
) -> Stats:
    """Run a stream to its end (or until stopped by a signal); returns the counts, also printed on stderr."""
    out = out or sys.stdout
    err = err or sys.stderr
    if (opts.labels is None) == (opts.labels_file is None):
        raise InputError('give the labels with exactly one of --labels "a,b,c" or --labels-file FILE')
    if opts.record is not None:
        check_record_path(opts.record, force=opts.force)
    show = opts.show
    if show:
        problem = display_problem()
        if problem is not None:
            if not (opts.as_json or opts.record or opts.serve):
                raise InputError(f"--show: {problem}; add --json, --record or --serve to run headless")
            _say(err, f"warning: --show: {problem}; continuing headless with the other outputs")
            show = False
    source = open_source(opts.source)
    if not source.live:  # a file that is not a video is said now, not after the model has loaded (cameras are
        with source:  # opened once only: some, as Jetson CSI ones, refuse a reopen that comes too soon)
            pass
    web = None
    if opts.serve is not None:
        from edgeclip.stream.web import WebPage, parse_serve

        host, port = parse_serve(opts.serve)
        web = WebPage(host, port, on_labels=lambda labels: stream.set_labels(labels), title=f"edgeclip: {source.name}")
    try:
        from edgeclip.runtime import load

        model = load(opts.bundle, backend=opts.backend, precision=opts.precision, preprocess=opts.preprocess)
        stream = Stream(
            source,
            model,
            opts.labels,
            templates=opts.templates,
            every=opts.every,
            smooth=opts.smooth,
            top_k=opts.top_k,
            stall_timeout=opts.stall_timeout,
            backoff=opts.backoff,
            max_reconnects=opts.max_reconnects,
            labels_file=opts.labels_file,
        )
        stream.classifier.warmup()
        stream.start()
    except BaseException:
        if web is not None:
            web.close()
        raise
    if web is not None:
        web.start()
        _say(err, f"serving the stream page on {web.url}")
    restore = _stop_on_signals(stream)
    fps = source.fps / opts.every if source.fps else None  # the recording plays at the pace of the source
    recorder = Recorder(opts.record, fps, force=opts.force) if opts.record is not None else None
    window = Window() if show else None
    try:
        _consume(stream, opts, out, err, recorder, window, web, on_ready)
    except BrokenPipeError:  # `edgeclip stream --json | head`: the reader has gone; finish quietly
        stream.stop()
        silence_closed_pipe(out)
    finally:
        restore()
        stream.close()
        if recorder is not None:
            recorder.close()
        if window is not None:
            window.close()
        if web is not None:
            web.close()
        _say(err, f"edgeclip stream {source.name}: {stream.stats.summary()}")
    return stream.stats


def _consume(
    stream: Stream,
    opts: StreamOptions,
    out: IO[str],
    err: IO[str],
    recorder: Recorder | None,
    window: Window | None,
    web: Any,
    on_ready: Callable[[Stream], None] | None,
) -> None:
    page_state: Any = None
    if web is not None:
        from edgeclip.stream.web import page_state

    json_out = JsonLines(out) if opts.as_json else None
    text_out = not (opts.as_json or opts.record or opts.serve or window)
    fps = FpsMeter()
    rate = 0.0
    last: Result | None = None
    if on_ready is not None:
        on_ready(stream)
    for item in stream.items():
        if isinstance(item, Event):
            if json_out is not None:
                json_out.write(item)
            if item.state not in ("ended", "labels"):
                _say(err, f"warning: {item.message}")
            if stream.state in (RECONNECTING, STALLED):
                rate = 0.0  # no frames are coming: the page must not go on showing the last rate
            if web is not None:
                web.publish(None, page_state(last, rate, stream.state, stream.labels, stream.stats))
            continue
        last = item
        rate = fps.tick()
        if json_out is not None:
            json_out.write(item)
        elif text_out:
            out.write(text_line(item) + "\n")
            out.flush()
        if item.image is not None and (recorder or window or web):
            drawn = annotate(item.image, item, rate, stream.state)
            if recorder is not None:
                recorder.write(drawn)
            if window is not None:
                window.show(drawn)
                if window.closed:
                    stream.stop()
            if web is not None:
                web.publish(drawn, page_state(item, rate, stream.state, stream.labels, stream.stats))


def _stop_on_signals(stream: Stream) -> Callable[[], None]:
    """SIGINT and SIGTERM stop the stream cleanly; a second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    asked: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        asked.append(signum)
        stream.stop()

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def _say(err: IO[str], line: str) -> None:
    err.write(line + "\n")
    err.flush()
