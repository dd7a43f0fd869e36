"""What a stream's results go to: JSON lines, an annotated recording, a window, a text line per frame.

All of them are fed by the one consumer thread that iterates the Stream; `annotate` draws the top labels, scores,
FPS, latency and state onto a copy of the frame for the window, the recording and the web page.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgeclip.errors import InputError
from edgeclip.stream.pipeline import RECOVERED, RUNNING, Event, Result

RECORD_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}


class FpsMeter:
    """Frames per second over the last `window` results."""

    def __init__(self, window: int = 30) -> None:
        self._times: deque[float] = deque(maxlen=window)

    def tick(self, now: float | None = None) -> float:
        self._times.append(time.monotonic() if now is None else now)
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


# Frames narrower than this are enlarged before the labels are drawn on them (the drawing is for people to read).
MIN_ANNOTATED_WIDTH = 480


def annotate(image: np.ndarray, result: Result, fps: float, state: str | None = None, lines: int = 3) -> np.ndarray:
    """A copy of the BGR frame with the top labels and scores, FPS, latency and the stream state drawn on it.

    A frame narrower than MIN_ANNOTATED_WIDTH is enlarged first (bilinear) so that the text stays readable.
    """
    import cv2

    height, width = image.shape[:2]
    if width < MIN_ANNOTATED_WIDTH:  # text on a tiny frame is unreadable, and the page scales frames up: enlarge first
        factor = MIN_ANNOTATED_WIDTH / width
        out = cv2.resize(image, (MIN_ANNOTATED_WIDTH, max(1, round(height * factor))), interpolation=cv2.INTER_LINEAR)
    else:
        out = image.copy()
    height, width = out.shape[:2]
    scale = max(0.4, min(1.2, width / 640))
    thick = max(1, round(scale * 2))
    step = int(26 * scale)
    rows = [f"{label}  {score:.2f}" for label, score in zip(result.labels[:lines], result.scores[:lines], strict=True)]
    shown = state or result.state
    status = f"{fps:.1f} FPS  {result.latency_ms:.1f} ms  frame {result.frame}"
    if shown not in (RUNNING, RECOVERED):
        status += f"  [{shown.upper()}]"
    rows.append(status)
    box_h = step * len(rows) + step // 2
    overlay = out.copy()
    cv2.rectangle(overlay, (0, 0), (width, min(height, box_h)), (0, 0, 0), -1)
    out = cv2.addWeighted(overlay, 0.55, out, 0.45, 0)
    for i, text in enumerate(rows):
        color = (80, 255, 80) if i == 0 else (255, 255, 255)
        if i == len(rows) - 1:
            color = (0, 200, 255) if shown not in (RUNNING, RECOVERED) else (200, 200, 200)
        y = step * (i + 1)
        cv2.putText(out, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, color, thick, cv2.LINE_AA)
    return out


class JsonLines:
    """One JSON object per line, flushed at once (a consumer of a pipe sees each frame as it is made)."""

    def __init__(self, stream: IO[str] | None = None, events: bool = True) -> None:
        self.stream = stream or sys.stdout
        self.events = events

    def write(self, item: Result | Event) -> None:
        if isinstance(item, Event) and not self.events:
            return
        self.stream.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
        self.stream.flush()


def text_line(result: Result) -> str:
    best = ", ".join(f"{label} {score:.2f}" for label, score in zip(result.labels[:3], result.scores[:3], strict=True))
    state = "" if result.state == RUNNING else f"  [{result.state}]"
    return f"frame {result.frame:>6}  {best}  ({result.latency_ms:.1f} ms){state}"


def check_record_path(path: Path, *, force: bool = False) -> Path:
    """Refuse a --record path that cannot be written, before the stream starts: the folder must exist and be
    writable, the name must have a suffix OpenCV writes, and it must not be a folder. A file that exists is the
    user's and is kept unless `force`."""
    if path.is_dir():
        raise InputError(f"--record {path} is a folder; give a file name such as {path / 'stream.mp4'}")
    if path.exists() and not force:
        raise InputError(f"--record {path} exists; give another name, or --force to replace it")
    suffix = path.suffix.lower()
    if suffix not in RECORD_CODECS:
        raise InputError(
            f"--record {path}: give a file ending in {', '.join(RECORD_CODECS)} (the suffix picks the codec)"
        )
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"--record {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"--record {path}: {folder if not path.exists() else path} is not writable")
    try:  # permissions can lie (read-only mounts, ACLs): really create a file there
        probe = folder / f".{path.name}.edgeclip-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"--record {path}: cannot write in {folder}: {exc.strerror or exc}") from exc
    return path


class Recorder:
    """The annotated frames into a video file; opened at the first frame (its size), finished by `close()`."""

    def __init__(self, path: Path, fps: float | None, *, force: bool = False) -> None:
        self.path = check_record_path(path, force=force)
        self.fps = fps if fps and fps > 0 else 15.0
        self.frames = 0
        self._writer: Any = None
        self._size: tuple[int, int] | None = None

    def write(self, image: np.ndarray) -> None:
        import cv2

        height, width = image.shape[:2]
        if self._writer is None:
            codec = cv2.VideoWriter.fourcc(*RECORD_CODECS[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self.path), codec, self.fps, (width, height))
            if not self._writer.isOpened():
                raise InputError(f"--record {self.path}: OpenCV could not start a video writer for it")
            self._size = (width, height)
        if (width, height) != self._size:  # a camera that came back at another resolution
            image = cv2.resize(image, self._size)
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        """Finish the file (an MP4 is playable only after this writes its index)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def display_problem() -> str | None:
    """Why no window can be shown here (None: one can)."""
    import cv2

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY and WAYLAND_DISPLAY are not set)"
    gui = next((ln for ln in cv2.getBuildInformation().splitlines() if ln.strip().startswith("GUI:")), "")
    if "NONE" in gui:
        return (
            f"this OpenCV (cv2 {cv2.__version__}) is built without a GUI (opencv-python-headless); "
            "install opencv-python or use JetPack's OpenCV for --show"
        )
    return None


class Window:
    """An OpenCV window showing the annotated frames; closing it or pressing q or Esc stops the stream."""

    name = "edgeclip stream"

    def __init__(self) -> None:
        self.closed = False

    def show(self, image: np.ndarray) -> None:
        import cv2

        cv2.imshow(self.name, image)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27) or cv2.getWindowProperty(self.name, cv2.WND_PROP_VISIBLE) < 1:
            self.closed = True

    def close(self) -> None:
        import cv2

        with contextlib.suppress(cv2.error):
            cv2.destroyWindow(self.name)
