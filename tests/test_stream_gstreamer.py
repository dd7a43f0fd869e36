"""GStreamer sources for real: `videotestsrc ... ! appsink` pipelines through edgeclip's GStreamer source.

PyPI's OpenCV (the one in the project's environment) never has GStreamer, so these tests run edgeclip's source code
in a Python whose OpenCV has it: Debian's and Ubuntu's `python3-opencv` (`apt-get install python3-opencv`, for the
system's python3) as a Jetson has JetPack's. Every `python3` on PATH is probed for such an OpenCV (or the one named
by EDGECLIP_GSTREAMER_PYTHON); the checks run in a subprocess of it, with this checkout on its PYTHONPATH, and are
skipped with the reason where none has one. The error without GStreamer is tested in test_stream.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import cv2, numpy
line = next((l for l in cv2.getBuildInformation().splitlines() if l.strip().startswith("GStreamer:")), "")
print(cv2.__version__, numpy.__version__, "YES" in line)
"""


def _candidates() -> list[str]:
    named = os.environ.get("EDGECLIP_GSTREAMER_PYTHON")
    if named:
        return [named]
    found = [sys.executable]
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = Path(folder) / "python3"
        if path.is_file() and os.access(path, os.X_OK) and str(path) not in found:
            found.append(str(path))
    return found


def _gstreamer_python() -> tuple[str | None, str]:
    """A Python whose OpenCV has GStreamer, or None and why not."""
    tried = []
    for python in _candidates():
        try:
            proc = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{python}: {exc}")
            continue
        words = proc.stdout.split()
        if proc.returncode == 0 and words[-1:] == ["True"]:
            return python, f"cv2 {words[0]}, numpy {words[1]}"
        tried.append(f"{python}: " + ("cv2 without GStreamer" if proc.returncode == 0 else "no cv2"))
    return None, "no Python here has an OpenCV with GStreamer (apt-get install python3-opencv); tried " + "; ".join(
        tried
    )


PYTHON, WHY = _gstreamer_python()
pytestmark = pytest.mark.skipif(PYTHON is None, reason=WHY)

# Runs in the GStreamer Python: edgeclip's own open_source / GStreamerSource, each check's result as JSON.
CHECKS = r"""
import json, sys
import numpy as np
from edgeclip.stream import csi_pipeline, gstreamer_available, open_source, usb_pipeline
from edgeclip.stream.sources import GStreamerSource, SourceError, SourceFault

out = {"available": gstreamer_available()}

def frames(spec, n):
    source = open_source(spec)
    got = []
    with source:
        for _ in range(n):
            got.append(source.read())
    return source, got

# a red test picture, 64x48, BGR into appsink
source, got = frames("videotestsrc num-buffers=6 pattern=red ! video/x-raw,width=64,height=48,format=BGR ! appsink", 3)
out["kind"] = type(source).__name__
out["live"] = source.live
out["shapes"] = [list(f.image.shape) for f in got]
out["dtypes"] = sorted({str(f.image.dtype) for f in got})
out["indices"] = [f.index for f in got]
out["pixel"] = got[0].image[10, 10].tolist()
out["stamped"] = all(f.time is not None for f in got)

# gst: prefix, another format converted by the pipeline, and a grey appsink made BGR by edgeclip
_, got = frames("gst:videotestsrc num-buffers=3 pattern=blue ! video/x-raw,width=32,height=32,format=I420 ! "
                "videoconvert ! video/x-raw,format=BGR ! appsink", 1)
out["blue"] = got[0].image[5, 5].tolist()
_, got = frames("videotestsrc num-buffers=3 pattern=white ! video/x-raw,width=32,height=24,format=GRAY8 ! appsink", 1)
out["gray"] = [list(got[0].image.shape), got[0].image[3, 3].tolist()]

# the end of a live pipeline is a fault (the stream reopens it), and it opens again
source = open_source("videotestsrc num-buffers=2 ! video/x-raw,width=16,height=16,format=BGR ! appsink")
source.open()
source.read(); source.read()
try:
    source.read()
    out["end"] = "no fault"
except SourceFault as exc:
    out["end"] = str(exc)
source.close()
source.open()
out["reopened"] = source.read() is not None
source.close()

# a pipeline GStreamer cannot build: the user's error, with how to check it
try:
    open_source("videotestsrc ! nosuchelement ! appsink").open()
    out["bad"] = "opened"
except SourceError as exc:
    out["bad"] = str(exc)

# Jetson's pipelines with their NVIDIA elements swapped for desktop ones: the rest (caps, appsink) is as shipped
def desktop(pipeline, camera):
    text = pipeline.replace(camera, "videotestsrc num-buffers=3").replace("(memory:NVMM)", "")
    return text.replace("nvvidconv", "videoconvert")

shapes = {}
for name, pipeline, camera in [
    ("csi", csi_pipeline(0, 320, 240, 30), "nvarguscamerasrc sensor-id=0"),
    ("usb", usb_pipeline("/dev/video0", 160, 120, 30), "v4l2src device=/dev/video0"),
]:
    source = GStreamerSource(desktop(pipeline, camera), name=name)
    with source:
        shapes[name] = list(source.read().image.shape)
out["jetson"] = shapes
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def checks() -> dict[str, object]:
    assert PYTHON is not None
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GST_DEBUG": "0", "OPENCV_LOG_LEVEL": "ERROR"}
    proc = subprocess.run(
        [PYTHON, "-c", CHECKS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"{PYTHON} ({WHY}) failed:\n{proc.stderr[-4000:]}"
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_a_pipeline_string_is_a_live_gstreamer_source(checks: dict[str, object]) -> None:
    assert checks["available"] is True
    assert checks["kind"] == "GStreamerSource" and checks["live"] is True
    assert checks["shapes"] == [[48, 64, 3]] * 3 and checks["dtypes"] == ["uint8"]
    assert checks["indices"] == [0, 1, 2] and checks["stamped"] is True


def test_frames_are_bgr(checks: dict[str, object]) -> None:
    assert checks["pixel"] == [0, 0, 255]  # videotestsrc's red, in OpenCV's BGR order
    blue = checks["blue"]
    assert isinstance(blue, list) and blue[0] > 200 and blue[1] < 40 and blue[2] < 40  # through I420: near (255, 0, 0)
    shape, pixel = checks["gray"]  # type: ignore[misc]
    assert shape == [24, 32, 3] and len(set(pixel)) == 1 and pixel[0] > 200  # white GRAY8 (235: video range) as BGR


def test_the_end_of_a_live_pipeline_is_a_fault_and_it_reopens(checks: dict[str, object]) -> None:
    assert "gave no frame (disconnected or stalled)" in str(checks["end"])
    assert checks["reopened"] is True


def test_a_pipeline_gstreamer_cannot_build_says_how_to_check_it(checks: dict[str, object]) -> None:
    assert "could not be started by GStreamer; check it with 'gst-launch-1.0 videotestsrc ! nosuchelement" in str(
        checks["bad"]
    )


def test_the_jetson_pipelines_caps_and_appsink_work(checks: dict[str, object]) -> None:
    assert checks["jetson"] == {"csi": [240, 320, 3], "usb": [120, 160, 3]}
