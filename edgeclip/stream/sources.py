"""Frame sources: cameras, files, image folders, HTTP MJPEG, RTSP, GStreamer pipelines, ROS 2 bags.

`open_source(spec)` turns what the user typed into a `Source`. A source reads BGR frames one at a time. Live sources
(cameras, network streams) may fail and are reopened by the pipeline; recorded ones (files, folders, bags) are read
at their own pace and end. Errors of the user's input are `SourceError` (raised at open, never retried); a lost or
stalled connection is a `SourceFault` (the pipeline reconnects); a frame that cannot be decoded is a `CorruptFrame`
(skipped and counted).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import EdgeClipError, InputError

SOURCE_FORMS = (
    "a camera index (0), /dev/videoN, csi://N (Jetson CSI camera), rtsp://..., http://... (MJPEG), a video file, "
    "a folder of images, a ROS 2 bag with its image topic (BAG#/camera/image_raw), or a GStreamer pipeline "
    "('videotestsrc ! videoconvert ! appsink', or gst:PIPELINE)"
)
JETSON_OPENCV_HINT = (
    "PyPI's opencv-python builds never have GStreamer. On a Jetson use JetPack's OpenCV: make the environment with "
    "'python3 -m venv --system-site-packages .venv' and 'pip uninstall opencv-python-headless opencv-python' in it "
    "(on Debian or Ubuntu: 'apt-get install python3-opencv' gives one with GStreamer too)"
)


class SourceError(InputError):
    """A source that cannot be used as given: unknown scheme, missing camera or file, bag without the topic."""


class SourceFault(EdgeClipError):
    """A live source that failed while running (disconnected, stalled): the pipeline reopens it.

    `stalled` tells a source that is still connected but gave no frame in time from one that was lost."""

    def __init__(self, message: str, *, stalled: bool = False) -> None:
        super().__init__(message)
        self.stalled = stalled


class CorruptFrame(EdgeClipError):
    """One frame that cannot be decoded: skipped and counted, the stream goes on."""


@dataclass
class Frame:
    """One frame of a source."""

    index: int  # position in the source, from 0 (live sources: frames read since the stream started)
    image: np.ndarray  # (H, W, 3) uint8, BGR (OpenCV's order)
    time: float | None  # the source's timestamp in seconds (file: position; bag: message stamp; live: wall clock)
    captured: float  # time.monotonic() when the frame was read, for capture-to-result latency


class Source:
    """Base class. `open()` then `read()` until it returns None (end); `close()` always."""

    live: bool = False
    name: str = "source"
    fps: float | None = None  # the source's frame rate where it says one

    def __init__(self) -> None:
        self._index = 0

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> Frame | None:
        """The next frame, None at the end. Raises SourceFault (live source lost) or CorruptFrame (skip it)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or connection; `open()` may be called again after it."""

    def set_timeout(self, seconds: float) -> None:
        """How long a read may wait for a frame before it is a stall (sources that can bound their reads)."""

    def _frame(self, image: np.ndarray, stamp: float | None) -> Frame:
        frame = Frame(self._index, image, stamp, time.monotonic())
        self._index += 1
        return frame

    def __enter__(self) -> Source:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# ---------------------------------------------------------------- OpenCV VideoCapture


class CaptureSource(Source):
    """Anything OpenCV's VideoCapture opens: a video file, a camera, an RTSP or HTTP stream, a GStreamer pipeline."""

    def __init__(self, target: str | int, *, api: int | None = None, live: bool, name: str | None = None) -> None:
        super().__init__()
        self.target = target
        self.api = api
        self.live = live
        self.name = name or str(target)
        self.timeout_s = 5.0
        self._cap: Any = None

    def set_timeout(self, seconds: float) -> None:
        self.timeout_s = seconds

    def open(self) -> None:
        import cv2

        api = cv2.CAP_ANY if self.api is None else self.api
        params: list[int] = []
        if api == cv2.CAP_FFMPEG and self.live:  # network streams: bounded waits, so a dead server is a fault
            ms = int(self.timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        cap = cv2.VideoCapture(self.target, api, params) if params else cv2.VideoCapture(self.target, api)
        if not cap.isOpened():
            cap.release()
            raise self._open_error()
        self._cap = cap
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.0 < fps < 1000.0 else None

    def _open_error(self) -> EdgeClipError:
        return SourceFault(f"could not open {self.name}")

    def read(self) -> Frame | None:
        if self._cap is None:
            raise SourceFault(f"{self.name} is not open")
        ok, image = self._cap.read()
        if not ok or image is None:
            if self.live:
                raise SourceFault(f"{self.name} gave no frame (disconnected or stalled)", stalled=True)
            return None
        stamp = time.time() if self.live else (self._index / self.fps if self.fps else None)
        return self._frame(_as_bgr(image), stamp)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class VideoFileSource(CaptureSource):
    def __init__(self, path: Path) -> None:
        import cv2

        super().__init__(str(path), api=cv2.CAP_FFMPEG, live=False, name=str(path))
        self._checked = False

    def _open_error(self) -> EdgeClipError:
        return SourceError(f"{self.name} is not a video OpenCV can read (it could not be opened as one); {_forms()}")

    def open(self) -> None:
        import cv2

        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # our message says it; OpenCV's WARN not
        try:
            super().open()
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not self._checked:  # some non-videos open and then have no frame: say so before the stream starts
            ok, _ = self._cap.read()
            if not ok:
                self.close()
                raise SourceError(f"{self.name} is not a video OpenCV can read (no frame could be decoded)")
            self.close()
            self._checked = True
            super().open()


class CameraSource(CaptureSource):
    def __init__(self, index: int, device: str | None = None) -> None:
        import cv2

        api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        super().__init__(device or index, api=api, live=True, name=device or f"camera {index}")
        self._opened_once = False

    def _open_error(self) -> EdgeClipError:
        if self._opened_once:
            return SourceFault(f"{self.name} could not be opened again (unplugged?)")
        found = sorted(glob.glob("/dev/video*"))
        have = f"cameras here: {', '.join(found)}" if found else "no /dev/video* device exists here"
        return SourceError(f"{self.name} does not exist or cannot be opened ({have})")

    def open(self) -> None:
        super().open()
        self._opened_once = True


class GStreamerSource(CaptureSource):
    def __init__(self, pipeline: str, *, name: str | None = None) -> None:
        import cv2

        require_gstreamer()  # a property of this installation: said when the source is named, before any load
        super().__init__(pipeline, api=cv2.CAP_GSTREAMER, live=True, name=name or f"GStreamer pipeline {pipeline!r}")
        self._opened_once = False

    def open(self) -> None:
        require_gstreamer()
        super().open()
        self._opened_once = True

    def _open_error(self) -> EdgeClipError:
        if self._opened_once:
            return SourceFault(f"{self.name} could not be started again")
        return SourceError(
            f"{self.name} could not be started by GStreamer; check it with 'gst-launch-1.0 {self.target}' "
            "(it must end in appsink and give BGR or a format videoconvert turns into BGR)"
        )


def gstreamer_available() -> bool:
    """Whether this OpenCV was built with GStreamer (JetPack's and Debian's are; PyPI's never are)."""
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def require_gstreamer() -> None:
    import cv2

    if not gstreamer_available():
        raise SourceError(
            f"GStreamer sources need an OpenCV built with GStreamer; this one (cv2 {cv2.__version__} from "
            f"{Path(cv2.__file__).parent}) has none. {JETSON_OPENCV_HINT}"
        )


def csi_pipeline(sensor: int = 0, width: int = 1280, height: int = 720, fps: int = 30) -> str:
    """A Jetson CSI camera through nvarguscamerasrc: NVMM frames converted by nvvidconv, BGR into appsink."""
    return (
        f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width={width},height={height},"
        f"framerate={fps}/1,format=NV12 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
        "video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"
    )


def usb_pipeline(device: str = "/dev/video0", width: int = 640, height: int = 480, fps: int = 30) -> str:
    """A USB (V4L2) camera on a Jetson, converted through NVMM by nvvidconv, BGR into appsink."""
    return (
        f"v4l2src device={device} ! video/x-raw,width={width},height={height},framerate={fps}/1 ! nvvidconv ! "
        "video/x-raw(memory:NVMM) ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=true max-buffers=1 sync=false"
    )


# ---------------------------------------------------------------- image folders


class FolderSource(Source):
    """The images of a folder in name order; an image that cannot be decoded is a CorruptFrame."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.name = str(folder)
        from edgeclip.images import IMAGE_SUFFIXES

        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise SourceError(f"folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)}); {_forms()}")

    def open(self) -> None:
        self._index = 0

    def read(self) -> Frame | None:
        import cv2

        from edgeclip.images import load_image

        if self._index >= len(self.files):
            return None
        path = self.files[self._index]
        try:  # the runtime's decoder: the same pixels as `edgeclip classify` of the file (16-bit, CMYK, GIF)
            image = cv2.cvtColor(load_image(path), cv2.COLOR_RGB2BGR)
        except InputError as exc:
            self._index += 1
            raise CorruptFrame(f"{path} could not be decoded as an image: {exc}") from None
        return self._frame(image, None)


# ---------------------------------------------------------------- HTTP MJPEG


class MjpegSource(Source):
    """An HTTP multipart MJPEG stream (IP cameras, `edgeclip stream --serve`), read with a bounded wait per frame."""

    live = True

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.name = url
        self.timeout_s = 5.0
        self._response: Any = None
        self._buffer = b""
        self._opened_once = False

    def set_timeout(self, seconds: float) -> None:
        self.timeout_s = seconds

    def open(self) -> None:
        try:
            response = urllib.request.urlopen(self.url, timeout=self.timeout_s)
        except (urllib.error.URLError, OSError) as exc:
            if self._opened_once:
                raise SourceFault(f"{self.url}: {_reason(exc)}") from exc
            raise SourceError(f"{self.url} could not be opened: {_reason(exc)}") from exc
        kind = response.headers.get("Content-Type", "")
        if not kind.startswith("multipart/"):
            response.close()
            raise SourceError(
                f"{self.url} sends {kind or 'no content type'}, not an MJPEG stream (multipart/x-mixed-replace); "
                "for another video over HTTP give it as a file URL OpenCV opens: ffmpeg:URL"
            )
        self._response = response
        self._buffer = b""
        self._opened_once = True

    def read(self) -> Frame | None:
        import cv2

        if self._response is None:
            raise SourceFault(f"{self.url} is not connected")
        jpeg = self._next_jpeg()
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            self._index += 1
            raise CorruptFrame(f"a frame of {self.url} is not a decodable JPEG ({len(jpeg)} bytes)")
        return self._frame(image, time.time())

    def _next_jpeg(self) -> bytes:
        # Parts are cut at JPEG start/end markers: that works with or without Content-Length headers.
        deadline = time.monotonic() + self.timeout_s
        while True:
            start = self._buffer.find(b"\xff\xd8")
            end = self._buffer.find(b"\xff\xd9", start + 2) if start >= 0 else -1
            if end >= 0:
                jpeg = self._buffer[start : end + 2]
                self._buffer = self._buffer[end + 2 :]
                return jpeg
            if time.monotonic() > deadline:
                raise SourceFault(f"{self.url}: no frame for {self.timeout_s:g} s (stalled)", stalled=True)
            try:
                chunk = self._response.read1(65536)
            except (TimeoutError, OSError) as exc:
                raise SourceFault(f"{self.url}: {_reason(exc)}") from exc
            if not chunk:
                raise SourceFault(f"{self.url}: the server closed the stream")
            self._buffer = self._buffer[-(1 << 22) :] + chunk if start < 0 else self._buffer + chunk

    def close(self) -> None:
        if self._response is not None:
            with contextlib.suppress(OSError):
                self._response.close()
            self._response = None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason if reason is not None else exc) or type(exc).__name__


# ---------------------------------------------------------------- parsing what the user typed

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def open_source(spec: str | int | os.PathLike[str]) -> Source:
    """The Source for a --source value (not opened yet). Raises SourceError for what cannot be a source."""
    if isinstance(spec, int):
        return _camera(spec)
    text = os.fspath(spec).strip()
    if not text:
        raise SourceError(f"the source is empty; {_forms()}")
    if text.isdigit():
        return _camera(int(text))
    if text.startswith("gst:"):
        return GStreamerSource(text[4:].strip())
    if " ! " in text:
        return GStreamerSource(text)
    if text.startswith("ffmpeg:"):
        import cv2

        return CaptureSource(text[7:], api=cv2.CAP_FFMPEG, live=True)
    match = _SCHEME.match(text)
    if match:
        scheme = match.group(1).lower()
        if scheme == "csi":
            rest = text[len("csi://") :]
            if not rest.isdigit():
                raise SourceError(f"{text!r}: a CSI camera is csi://N with N its sensor id (csi://0)")
            return GStreamerSource(csi_pipeline(int(rest)), name=f"CSI camera {rest}")
        if scheme in ("rtsp", "rtsps", "rtmp"):
            import cv2

            return CaptureSource(text, api=cv2.CAP_FFMPEG, live=True)
        if scheme in ("http", "https"):
            return MjpegSource(text)
        if scheme == "file":
            text = text[len("file://") :]
        else:
            raise SourceError(f"unknown source scheme '{scheme}://' in {text!r}; a source is {SOURCE_FORMS}")
    device = re.fullmatch(r"/dev/video(\d+)", text)
    if device:
        if not Path(text).exists():
            return _camera(int(device.group(1)), device=text)
        return CameraSource(int(device.group(1)), device=text)
    if "#" in text:
        bag, topic = text.rsplit("#", 1)
        if Path(bag).exists():
            from edgeclip.stream.ros import BagSource

            return BagSource(Path(bag), topic)
    path = Path(text)
    if not path.exists():
        raise SourceError(f"{text!r}: no such file or folder; {_forms()}")
    from edgeclip.stream.ros import is_bag

    if is_bag(path):
        from edgeclip.stream.ros import BagSource

        return BagSource(path, None)
    if path.is_dir():
        return FolderSource(path)
    return VideoFileSource(path)


def _camera(index: int, device: str | None = None) -> CameraSource:
    name = device or f"/dev/video{index}"
    if sys.platform.startswith("linux") and not Path(name).exists():
        found = sorted(glob.glob("/dev/video*"))
        have = f"cameras here: {', '.join(found)}" if found else "no /dev/video* device exists here"
        raise SourceError(f"camera {index} does not exist ({name} is missing; {have})")
    return CameraSource(index, device)


def _forms() -> str:
    return f"a source is {SOURCE_FORMS}"


def _as_bgr(image: np.ndarray) -> np.ndarray:
    import cv2

    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image
