"""The stream: capture, inference and output in three threads.

capture thread ──frames──▶ inference thread ──results──▶ the consumer (iterating the Stream: outputs, robot code)

A live source hands over only its newest frame: when inference is slower than the camera the older frame is
replaced (and counted as dropped), so there is never a backlog. A recorded source (file, folder, bag) waits for
inference instead, so every frame (or every `every`-th) is processed and a run is reproducible. The capture thread
reopens a live source that fails, with backoff; a frame that cannot be decoded is skipped and counted.
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import EdgeClipError, InputError
from edgeclip.stream.classifier import FrameClassifier, LabelBank
from edgeclip.stream.sources import CorruptFrame, Frame, Source, SourceError, SourceFault, open_source

# States of a stream, as the JSON, the page and the window show them.
STARTING, RUNNING, RECONNECTING, STALLED, ENDED = "starting", "running", "reconnecting", "stalled", "ended"
RECOVERED = "recovered"  # the state of the first result after a reconnection


@dataclass
class Result:
    """One processed frame."""

    frame: int  # the frame's index in its source
    time: float | None  # the source's timestamp (seconds)
    labels: tuple[str, ...]  # best first
    scores: tuple[float, ...]  # smoothed where the stream smooths
    latency_ms: float  # capture to result
    state: str
    image: np.ndarray | None = field(default=None, repr=False)  # the BGR frame (None when not kept)
    embedding: np.ndarray | None = field(default=None, repr=False)  # (D,) float32
    model_ms: float = 0.0  # the model's part of latency_ms
    captured: float = 0.0  # time.monotonic() of the capture

    def to_json(self) -> dict[str, Any]:
        return {
            "frame": self.frame,
            "time": self.time,
            "labels": list(self.labels),
            "scores": list(self.scores),
            "latency_ms": round(self.latency_ms, 3),
            "state": self.state,
        }


@dataclass
class Event:
    """A change of the stream's state: a fault, a reconnection, new labels, the end."""

    state: str
    message: str
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"event": self.state, "message": self.message, "time": round(self.time, 3)}


@dataclass
class Stats:
    read: int = 0  # frames the source gave
    processed: int = 0  # frames classified
    dropped: int = 0  # live frames replaced by a newer one before inference took them
    skipped: int = 0  # frames that could not be decoded or classified
    reconnects: int = 0  # times a live source was reopened after a fault
    faults: int = 0

    def summary(self) -> str:
        return (
            f"frames read {self.read}, processed {self.processed}, dropped {self.dropped}, skipped {self.skipped}, "
            f"reconnects {self.reconnects}"
        )


class _Handoff:
    """Capture -> inference: the newest frame only (live) or a short blocking queue (recorded)."""

    def __init__(self, latest_only: bool, size: int = 4) -> None:
        self.latest_only = latest_only
        self.size = size
        self._items: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, frame: Frame, stop: threading.Event) -> bool:
        """Hand a frame over; True when an older one was dropped for it."""
        with self._cond:
            if self.latest_only:
                dropped = bool(self._items)
                self._items.clear()
                self._items.append(frame)
                self._cond.notify()
                return dropped
            while len(self._items) >= self.size and not stop.is_set():
                self._cond.wait(0.1)
            self._items.append(frame)
            self._cond.notify()
            return False

    def get(self, timeout: float) -> Frame | None:
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._items:
                item = self._items.popleft()
                self._cond.notify()
                return item
            return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._closed and not self._items


_END = object()


class Stream:
    """Classify the frames of a source in a pipeline; iterate it for the results.

    >>> with Stream("video.mp4", edgeclip.load(), ["a cat", "a dog"]) as stream:
    ...     for result in stream:
    ...         print(result.frame, result.labels[0])

    source: a Source or what `open_source` takes ("0", "rtsp://...", "bag#/topic", ...). model: a Model or a
    FrameClassifier. every: process every N-th frame. smooth: exponential moving average of the scores, the weight
    of the past in [0, 1) (0: none). stall_timeout: seconds without a frame before a live source counts as stalled
    and is reopened. max_reconnects: give up after that many failed attempts in a row (None: never).
    """

    def __init__(
        self,
        source: Source | str | int | os.PathLike[str],
        model: Any,
        labels: Sequence[str] | None = None,
        *,
        templates: str | os.PathLike[str] | Sequence[str] | None = None,
        every: int = 1,
        smooth: float = 0.0,
        top_k: int = 5,
        stall_timeout: float = 5.0,
        backoff: tuple[float, float] = (0.5, 8.0),
        max_reconnects: int | None = None,
        keep_images: bool = True,
        labels_file: str | os.PathLike[str] | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        from edgeclip import zeroshot

        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InputError(f"every must be a whole number >= 1, got {every!r}")
        if not (isinstance(smooth, (int, float)) and 0.0 <= smooth < 1.0):
            raise InputError(f"smooth is the weight of the past scores, in [0, 1) (0: no smoothing), got {smooth!r}")
        if not (isinstance(stall_timeout, (int, float)) and stall_timeout > 0 and math.isfinite(stall_timeout)):
            raise InputError(f"stall_timeout must be a number of seconds > 0, got {stall_timeout!r}")
        self.top_k = zeroshot.check_top_k(top_k)
        self.source = source if isinstance(source, Source) else open_source(source)
        self.source.set_timeout(float(stall_timeout))
        self.classifier = model if isinstance(model, FrameClassifier) else FrameClassifier(model, templates=templates)
        self.labels_file = Path(labels_file) if labels_file is not None else None
        if labels is None and self.labels_file is not None:
            labels = zeroshot.labels_from_file(self.labels_file)
        if labels is not None:
            self.classifier.set_labels(labels)
        self.classifier.bank  # noqa: B018 - no labels at all is an error now, not in a thread
        self.every = every
        self.smooth = float(smooth)
        self.stall_timeout = float(stall_timeout)
        self.backoff = backoff
        self.max_reconnects = max_reconnects
        self.keep_images = keep_images
        self.on_event = on_event
        self.stats = Stats()
        self.state = STARTING
        self._stop = threading.Event()
        self._handoff = _Handoff(latest_only=self.source.live)
        self._out: queue.Queue[Any] = queue.Queue(maxsize=8)
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None
        self._recovered = False
        self._last_frame = time.monotonic()
        self._labels_mtime = self._mtime()
        self._started = False
        self._finished = False
        self._closing = False  # close() was called: nobody reads the results any more

    # ------------------------------------------------------------ control

    def start(self) -> Stream:
        """Open the source (a SourceError is raised here) and start the threads."""
        if self._started:
            return self
        self.source.open()
        self._started = True
        self.state = RUNNING
        self._last_frame = time.monotonic()
        for target, name in ((self._capture, "edgeclip-capture"), (self._infer, "edgeclip-inference")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Ask the threads to finish; iteration then ends after the results already made (none is lost)."""
        self._stop.set()
        self._handoff.close()

    def close(self) -> None:
        """Stop, wait for the threads and release the source; results not yet read are discarded."""
        self._closing = True
        self.stop()
        for thread in self._threads:
            thread.join(timeout=10)
        self.source.close()

    def __enter__(self) -> Stream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def labels(self) -> tuple[str, ...]:
        return self.classifier.labels

    def set_labels(self, labels: Sequence[str]) -> None:
        """Change the labels while running: their bank is computed here, then swapped in (smoothing restarts)."""
        bank = self.classifier.set_labels(labels)
        self._emit(Event("labels", f"labels now: {', '.join(bank.labels)}"))

    # ------------------------------------------------------------ results

    def items(self, timeout: float | None = None) -> Iterator[Result | Event]:
        """Results and events, in order, until the stream ends (then the error of a thread, if one failed)."""
        self.start()
        while True:
            try:
                item = self._out.get(timeout=0.1 if timeout is None else timeout)
            except queue.Empty:
                if timeout is not None or self._closing:
                    return
                continue
            if item is _END:
                self._finished = True
                break
            yield item
        if self._error is not None:
            raise self._error

    def __iter__(self) -> Iterator[Result]:
        for item in self.items():
            if isinstance(item, Result):
                yield item

    async def results(self) -> AsyncIterator[Result]:
        """The results for an asyncio loop: the blocking waits run in the loop's executor."""
        self.start()
        loop = asyncio.get_running_loop()
        while True:
            item = await loop.run_in_executor(None, self._next_blocking)
            if item is _END:
                self._finished = True
                break
            if isinstance(item, Result):
                yield item
        if self._error is not None:
            raise self._error

    def _next_blocking(self) -> Any:
        while not self._closing:
            try:
                return self._out.get(timeout=0.2)
            except queue.Empty:
                continue
        return _END

    # ------------------------------------------------------------ threads

    def _emit(self, event: Event) -> None:
        if self.on_event is not None:
            self.on_event(event)
        self._put_out(event)

    def _put_out(self, item: Any) -> None:
        while True:
            try:
                self._out.put(item, timeout=0.2)
                return
            except queue.Full:
                if self._closing:
                    return  # the consumer closed the stream: nobody will read this
                if self._stop.is_set() and isinstance(item, Event):
                    return  # a consumer that stopped reading: state events may go, results never do

    def _capture(self) -> None:
        source = self.source
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    frame = source.read()
                except CorruptFrame as exc:
                    self.stats.read += 1
                    self.stats.skipped += 1
                    self._emit(Event("skipped", str(exc)))
                    continue
                except SourceFault as exc:
                    if not source.live:
                        raise
                    failures = self._reconnect(exc, failures)
                    if failures < 0:
                        return
                    continue
                if frame is None:
                    break
                failures = 0
                self.stats.read += 1
                self._last_frame = time.monotonic()
                if self.state == STALLED:  # frames came back without a reconnection
                    self.state, self._recovered = RUNNING, True
                if frame.index % self.every:
                    continue
                if self._handoff.put(frame, self._stop):
                    self.stats.dropped += 1
        except BaseException as exc:
            self._error = exc
        finally:
            self._handoff.close()

    def _reconnect(self, fault: SourceFault, failures: int) -> int:
        """Reopen a live source after a fault, waiting longer each time; -1 when giving up or stopping."""
        self.stats.faults += 1
        self.state = STALLED if fault.stalled else RECONNECTING
        first, longest = self.backoff
        while not self._stop.is_set():
            if self.max_reconnects is not None and failures >= self.max_reconnects:
                self._error = SourceFault(f"{self.source.name}: gave up after {failures} reconnection attempts")
                return -1
            wait = min(longest, first * (2**failures))
            self._emit(Event(self.state, f"{fault}; reconnecting in {wait:g} s"))
            if self._stop.wait(wait):
                return -1
            failures += 1
            self.source.close()
            try:
                self.source.open()
            except (SourceFault, SourceError, OSError) as exc:
                fault = exc if isinstance(exc, SourceFault) else SourceFault(str(exc))
                self.state = RECONNECTING
                continue
            self.stats.reconnects += 1
            self._recovered = True
            self.state = RUNNING
            self._emit(Event(RECOVERED, f"{self.source.name} is back after {failures} attempt(s)"))
            return 0
        return -1

    def _infer(self) -> None:
        smoothed: np.ndarray | None = None
        version = -1
        next_check = time.monotonic() + 1.0
        try:
            while True:
                frame = self._handoff.get(timeout=0.2)
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + 1.0
                    self._watch_labels_file()
                if frame is None:
                    if self._handoff.finished:
                        break
                    self._check_stall(now)
                    continue
                bank = self.classifier.bank
                if bank.version != version:
                    smoothed, version = None, bank.version
                made = self._classify(frame, bank, smoothed)
                if made is None:
                    continue
                result, smoothed = made
                self.stats.processed += 1
                self._put_out(result)
        except BaseException as exc:
            self._error = exc
        finally:
            self._stop.set()
            if self._error is None:
                self.state = ENDED
                self._put_out(Event(ENDED, self.stats.summary()))
            self._put_out(_END)

    def _classify(self, frame: Frame, bank: LabelBank, smoothed: np.ndarray | None) -> tuple[Result, np.ndarray] | None:
        start = time.monotonic()
        try:
            embedding = self.classifier.embed(frame.image)
        except InputError as exc:  # a frame the preprocessing refuses (empty, odd shape): skip it
            self.stats.skipped += 1
            self._emit(Event("skipped", f"frame {frame.index}: {exc}"))
            return None
        probs = self.classifier.probabilities(embedding, bank)
        if smoothed is not None and self.smooth > 0:
            probs = self.smooth * smoothed + (1.0 - self.smooth) * probs
        top = self.classifier.top(probs, bank, self.top_k)
        done = time.monotonic()
        state = RUNNING
        if self._recovered:
            state, self._recovered = RECOVERED, False
        result = Result(
            frame=frame.index,
            time=frame.time,
            labels=top.labels,
            scores=top.scores,
            latency_ms=(done - frame.captured) * 1000.0,
            state=state,
            image=frame.image if self.keep_images else None,
            embedding=embedding,
            model_ms=(done - start) * 1000.0,
            captured=frame.captured,
        )
        return result, probs

    def _check_stall(self, now: float) -> None:
        if self.source.live and self.state == RUNNING and now - self._last_frame > self.stall_timeout:
            self.state = STALLED
            self._emit(Event(STALLED, f"no frame from {self.source.name} for {now - self._last_frame:.1f} s"))

    def _mtime(self) -> float | None:
        try:
            return self.labels_file.stat().st_mtime if self.labels_file is not None else None
        except OSError:
            return None

    def _watch_labels_file(self) -> None:
        if self.labels_file is None:
            return
        mtime = self._mtime()
        if mtime is None or mtime == self._labels_mtime:
            return
        self._labels_mtime = mtime
        from edgeclip import zeroshot

        try:
            labels = zeroshot.labels_from_file(self.labels_file)
            if labels != self.classifier.labels:
                self.set_labels(labels)
        except EdgeClipError as exc:
            self._emit(Event("warning", f"{self.labels_file} changed but was not taken (labels kept): {exc}"))
