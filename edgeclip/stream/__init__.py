"""Camera streams and robots: classify the frames of cameras, files, network streams and ROS 2 bags.

The per-frame API for robot code is `FrameClassifier` (one frame in, labels or an embedding out; thread-safe; label
banks computed once). `Stream` runs a source through a capture / inference / output pipeline and yields `Result`s,
from a plain loop or (`Stream.results()`) an asyncio loop. `edgeclip stream` is the command over both. Uses the
runtime's public API only.
"""

from __future__ import annotations

from edgeclip.stream.classifier import FrameClassifier, LabelBank
from edgeclip.stream.pipeline import Event, Result, Stats, Stream
from edgeclip.stream.sources import (
    CorruptFrame,
    Frame,
    Source,
    SourceError,
    SourceFault,
    csi_pipeline,
    gstreamer_available,
    open_source,
    usb_pipeline,
)

__all__ = [
    "CorruptFrame",
    "Event",
    "Frame",
    "FrameClassifier",
    "LabelBank",
    "Result",
    "Source",
    "SourceError",
    "SourceFault",
    "Stats",
    "Stream",
    "csi_pipeline",
    "gstreamer_available",
    "open_source",
    "usb_pipeline",
]
