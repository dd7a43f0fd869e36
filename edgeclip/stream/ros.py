"""ROS 2 without ROS: bags as a source (through `rosbags`, pure Python) and the ROS-free half of the ROS 2 node.

Everything here works on message objects with the fields of ROS 2's definitions (rosbags' typestore classes, or
rclpy's generated ones, which have the same attributes): `frame_from_image_msg` turns sensor_msgs/Image or
CompressedImage into a BGR frame, `classification_fields` and `embedding_fields` give the fields of
vision_msgs/Classification and std_msgs/Float32MultiArray, `parse_node_params` checks the node's parameters, and
`NodeCore` is what the node does with each image. examples/ros2/edgeclip_node.py is the rclpy shell over them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import InputError, MissingExtraError
from edgeclip.stream.sources import CorruptFrame, Frame, Source, SourceError

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
# encoding -> (channels, dtype, OpenCV conversion to BGR or None)
_ENCODINGS: dict[str, tuple[int, str, str | None]] = {
    "bgr8": (3, "uint8", None),
    "rgb8": (3, "uint8", "COLOR_RGB2BGR"),
    "bgra8": (4, "uint8", "COLOR_BGRA2BGR"),
    "rgba8": (4, "uint8", "COLOR_RGBA2BGR"),
    "mono8": (1, "uint8", "COLOR_GRAY2BGR"),
    "8UC1": (1, "uint8", "COLOR_GRAY2BGR"),
    "8UC3": (3, "uint8", None),
    "mono16": (1, "uint16", "COLOR_GRAY2BGR"),
    "16UC1": (1, "uint16", "COLOR_GRAY2BGR"),
    "bgr16": (3, "uint16", None),
    "rgb16": (3, "uint16", "COLOR_RGB2BGR"),
    "yuv422": (2, "uint8", "COLOR_YUV2BGR_UYVY"),
    "uyvy": (2, "uint8", "COLOR_YUV2BGR_UYVY"),
    "yuv422_yuy2": (2, "uint8", "COLOR_YUV2BGR_YUY2"),
    "yuyv": (2, "uint8", "COLOR_YUV2BGR_YUY2"),
    "bayer_rggb8": (1, "uint8", "COLOR_BayerBG2BGR"),
    "bayer_bggr8": (1, "uint8", "COLOR_BayerRG2BGR"),
    "bayer_gbrg8": (1, "uint8", "COLOR_BayerGR2BGR"),
    "bayer_grbg8": (1, "uint8", "COLOR_BayerGB2BGR"),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


class UnsupportedEncoding(SourceError):
    """A sensor_msgs/Image encoding edgeclip cannot turn into a frame."""


# ---------------------------------------------------------------- messages -> frames


def frame_from_image_msg(msg: Any, msgtype: str | None = None) -> np.ndarray:
    """(H, W, 3) uint8 BGR pixels of a sensor_msgs/Image or sensor_msgs/CompressedImage message.

    Raises UnsupportedEncoding for an Image encoding not in SUPPORTED_ENCODINGS (it names it), CorruptFrame for data
    that does not fit the message's size or a CompressedImage that does not decode.
    """
    import cv2

    compressed = msgtype.endswith("CompressedImage") if msgtype else hasattr(msg, "format")
    if compressed:
        image = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise CorruptFrame(f"a CompressedImage ({msg.format or 'no format'}) could not be decoded")
        return image
    encoding = str(msg.encoding)
    if encoding not in _ENCODINGS:
        raise UnsupportedEncoding(
            f"sensor_msgs/Image encoding {encoding!r} is not one edgeclip can read; it reads "
            f"{', '.join(SUPPORTED_ENCODINGS)} (and any sensor_msgs/CompressedImage)"
        )
    channels, dtype_name, conversion = _ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    dtype = np.dtype(dtype_name).newbyteorder(">" if msg.is_bigendian else "<")
    row = width * channels * dtype.itemsize  # bytes of pixels per row; `step` may pad it
    data = np.frombuffer(bytes(msg.data), np.uint8)
    if height == 0 or width == 0 or step < row or data.size < step * height:
        raise CorruptFrame(
            f"an Image of {width}x{height} {encoding} (step {step}) carries {data.size} bytes, too few for its size"
        )
    rows = data[: step * height].reshape(height, step)[:, :row]
    pixels = np.ascontiguousarray(rows).view(dtype)
    pixels = pixels.reshape(height, width) if channels == 1 else pixels.reshape(height, width, channels)
    if dtype.itemsize == 2:
        pixels = (pixels.astype(np.uint16) >> 8).astype(np.uint8)
    if conversion is not None:
        pixels = cv2.cvtColor(pixels, getattr(cv2, conversion))
    return np.ascontiguousarray(pixels, dtype=np.uint8)


def stamp_seconds(msg: Any, fallback_ns: int | None = None) -> float | None:
    """The message header's stamp in seconds; the bag's record time where the header has none."""
    header = getattr(msg, "header", None)
    stamp = getattr(header, "stamp", None)
    if stamp is not None and (stamp.sec or stamp.nanosec):
        return float(stamp.sec) + float(stamp.nanosec) * 1e-9
    return None if fallback_ns is None else fallback_ns * 1e-9


# ---------------------------------------------------------------- bags


def is_bag(path: Path) -> bool:
    """A rosbag2 directory (with metadata.yaml) or one of its storage files (.mcap, .db3)."""
    return (path.is_dir() and (path / "metadata.yaml").is_file()) or (
        path.is_file() and path.suffix in (".mcap", ".db3")
    )


def _reader(path: Path) -> Any:
    try:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore
    except ImportError as exc:
        raise MissingExtraError(
            f"reading the ROS 2 bag {path} needs the rosbags library (the [ros] extra): pip install 'edgeclip[ros]'"
        ) from exc
    # Older bags (sqlite3 without stored definitions) are read with ROS 2 Humble's standard messages.
    return AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE))


def bag_topics(path: Path) -> dict[str, str]:
    """{topic: message type} of a bag."""
    with _reader(path) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


class BagSource(Source):
    """The image messages of one topic of a ROS 2 bag, in record order; every message is a frame."""

    live = False

    def __init__(self, path: Path, topic: str | None) -> None:
        super().__init__()
        self.path = path
        self.topic = topic
        self.name = f"{path}#{topic}"
        self._reader: Any = None
        self._messages: Iterator[Any] | None = None
        if not is_bag(path):
            raise SourceError(
                f"{path} is not a ROS 2 bag (a rosbag2 directory with metadata.yaml, or its .mcap or .db3 file)"
            )
        try:
            topics = bag_topics(path)
        except MissingExtraError:
            raise
        except Exception as exc:  # rosbags raises its own errors for a damaged bag
            raise SourceError(f"the ROS 2 bag {path} could not be read: {exc}") from exc
        images = {t: k for t, k in topics.items() if k in IMAGE_TYPES}
        listed = ", ".join(f"{t} ({k})" for t, k in sorted(topics.items())) or "none"
        if topic is None:
            raise SourceError(
                f"{path} is a ROS 2 bag: name its image topic as {path}#TOPIC; its topics: {listed}"
                + (f" (image topics: {', '.join(sorted(images))})" if images else "")
            )
        if topic not in topics:
            raise SourceError(f"the ROS 2 bag {path} has no topic {topic!r}; its topics: {listed}")
        if topic not in images:
            raise SourceError(
                f"topic {topic!r} of {path} carries {topics[topic]}, not sensor_msgs/Image or CompressedImage; "
                f"its topics: {listed}"
            )
        self.msgtype = images[topic]
        self._check_first()

    def _check_first(self) -> None:
        """An encoding edgeclip cannot read fails here, before the stream starts, naming it."""
        self.open()
        try:
            for msg, _ in self._iter():
                try:
                    frame_from_image_msg(msg, self.msgtype)
                except CorruptFrame:
                    continue
                break
        finally:
            self.close()

    def open(self) -> None:
        self.close()
        self._reader = _reader(self.path)
        self._reader.open()
        self._messages = None
        self._index = 0

    def _iter(self) -> Iterator[tuple[Any, int]]:
        connections = [c for c in self._reader.connections if c.topic == self.topic]
        for connection, timestamp, raw in self._reader.messages(connections=connections):
            try:
                msg = self._reader.deserialize(raw, connection.msgtype)
            except Exception as exc:  # a truncated or garbled message: one corrupt frame
                yield exc, timestamp
                continue
            yield msg, timestamp

    def read(self) -> Frame | None:
        if self._reader is None:
            raise SourceError(f"{self.name} is not open")
        if self._messages is None:
            self._messages = self._iter()
        item = next(self._messages, None)
        if item is None:
            return None
        msg, timestamp = item
        if isinstance(msg, Exception):
            self._index += 1
            raise CorruptFrame(f"a message of {self.name} could not be deserialized: {msg}")
        try:
            image = frame_from_image_msg(msg, self.msgtype)
        except CorruptFrame:
            self._index += 1
            raise
        frame = self._frame(image, stamp_seconds(msg, timestamp))
        frame.captured = time.monotonic()
        return frame

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
            self._messages = None


# ---------------------------------------------------------------- results -> message fields


def classification_fields(labels: Sequence[str], scores: Sequence[float]) -> list[dict[str, Any]]:
    """The `results` of a vision_msgs/Classification: one ObjectHypothesis {class_id, score} per label, best first."""
    return [{"class_id": str(label), "score": float(score)} for label, score in zip(labels, scores, strict=True)]


def embedding_fields(vector: np.ndarray) -> dict[str, Any]:
    """The fields of a std_msgs/Float32MultiArray holding one embedding: a one-dimension layout and the data, a
    (D,) float32 array (rclpy takes it as `array.array("f", data.tobytes())`, rosbags as it is)."""
    data = np.ascontiguousarray(np.asarray(vector, np.float32).reshape(-1))
    return {
        "layout": {"dim": [{"label": "embedding", "size": int(data.size), "stride": int(data.size)}], "data_offset": 0},
        "data": data,
    }


# ---------------------------------------------------------------- node parameters


@dataclass(frozen=True)
class NodeParams:
    """The ROS 2 node's parameters, checked."""

    labels: tuple[str, ...]
    bundle: str | None = None
    precision: str | None = None
    backend: str = "auto"
    rate: float = 0.0  # classifications per second at most; 0: every image that arrives
    top_k: int = 5
    smooth: float = 0.0
    image_topic: str = "image"
    classification_topic: str = "classification"
    embedding_topic: str = "embedding"
    publish_embedding: bool = True
    templates: str | None = None

    @property
    def image_type(self) -> str:
        """The subscription's message type: image_transport names a CompressedImage topic .../compressed."""
        return IMAGE_TYPES[1] if self.image_topic.rstrip("/").endswith("/compressed") else IMAGE_TYPES[0]


NODE_DEFAULTS: dict[str, Any] = {
    "bundle": "",
    "labels": [],
    "labels_file": "",
    "precision": "",
    "backend": "auto",
    "rate": 0.0,
    "top_k": 5,
    "smooth": 0.0,
    "image_topic": "image",
    "classification_topic": "classification",
    "embedding_topic": "embedding",
    "publish_embedding": True,
    "templates": "",
}


def parse_node_params(values: Mapping[str, Any]) -> NodeParams:
    """NodeParams from the node's parameter values (ROS gives "" for an unset string, [] for an unset list)."""
    from edgeclip import zeroshot

    unknown = sorted(set(values) - set(NODE_DEFAULTS))
    if unknown:
        raise InputError(f"unknown parameter(s) {', '.join(unknown)}; the node takes {', '.join(NODE_DEFAULTS)}")
    v = {**NODE_DEFAULTS, **values}
    labels_value, labels_file = v["labels"], str(v["labels_file"] or "")
    if isinstance(labels_value, str):
        labels_value = zeroshot.labels_from_text(labels_value) if labels_value.strip() else ()
    if labels_value and labels_file:
        raise InputError("give the labels with one of the parameters 'labels' or 'labels_file', not both")
    if labels_file:
        labels = zeroshot.labels_from_file(labels_file)
    elif labels_value:
        labels = zeroshot.check_labels([str(x) for x in labels_value])
    else:
        raise InputError("the node needs labels: set the parameter 'labels' (a list) or 'labels_file' (a file)")
    rate = _number(v["rate"], "rate")
    smooth = _number(v["smooth"], "smooth")
    if rate < 0:
        raise InputError(f"parameter 'rate' is classifications per second (0: every image), got {rate}")
    if not 0.0 <= smooth < 1.0:
        raise InputError(f"parameter 'smooth' is the weight of the past in [0, 1), got {smooth}")
    top_k = v["top_k"]
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"parameter 'top_k' must be a whole number >= 1, got {top_k!r}")
    for name in ("image_topic", "classification_topic", "embedding_topic"):
        if not str(v[name]).strip():
            raise InputError(f"parameter {name!r} is empty; give a topic name")
    from edgeclip.runtime.backends import BACKEND_CHOICES

    backend = str(v["backend"] or "auto")
    if backend not in BACKEND_CHOICES:
        raise InputError(f"parameter 'backend' is one of {', '.join(BACKEND_CHOICES)}, got {backend!r}")
    precision = str(v["precision"] or "") or None
    if precision is not None:
        from edgeclip.runtime import parse_precision

        parse_precision(precision)
    return NodeParams(
        labels=labels,
        bundle=str(v["bundle"] or "") or None,
        precision=precision,
        backend=backend,
        rate=rate,
        top_k=top_k,
        smooth=smooth,
        image_topic=str(v["image_topic"]),
        classification_topic=str(v["classification_topic"]),
        embedding_topic=str(v["embedding_topic"]),
        publish_embedding=_flag(v["publish_embedding"], "publish_embedding"),
        templates=str(v["templates"] or "") or None,
    )


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise InputError(f"parameter {name!r} must be a number, got {value!r}")
    return float(value)


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):  # "false" as a string would be true
        raise InputError(f"parameter {name!r} must be true or false, got {value!r}")
    return value


class RateLimiter:
    """At most `rate` events per second (0: no limit); `ready(now)` says whether one may happen now."""

    def __init__(self, rate: float) -> None:
        self.period = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0

    def ready(self, now: float) -> bool:
        if now < self._next:
            return False
        self._next = now + self.period
        return True


# ---------------------------------------------------------------- the node without ROS


@dataclass(frozen=True)
class NodeOutput:
    """What the node publishes for one image."""

    results: list[dict[str, Any]]  # vision_msgs/ObjectHypothesis fields, best first
    embedding: dict[str, Any] | None  # std_msgs/Float32MultiArray fields (None: publish_embedding is off)
    latency_ms: float  # from the message's arrival to its result


class NodeCore:
    """The ROS 2 node's work, without ROS: rate limit, message to frame, embedding, scores (smoothed), message fields.

    classifier: a FrameClassifier to use (None: load one from the parameters' bundle, backend and precision).
    """

    def __init__(self, params: NodeParams, classifier: Any = None) -> None:
        from edgeclip.stream.classifier import FrameClassifier

        self.params = params
        if classifier is None:
            classifier = FrameClassifier.load(
                params.labels,
                bundle=params.bundle,
                backend=params.backend,
                precision=params.precision,
                templates=params.templates,
            )
        else:
            classifier.set_labels(params.labels)
        self.classifier: FrameClassifier = classifier
        self.classifier.warmup()
        self.processed = 0
        self.limited = 0  # images left out by the rate limit
        self._rate = RateLimiter(params.rate)
        self._smoothed: np.ndarray | None = None
        self._version = -1

    @property
    def labels(self) -> tuple[str, ...]:
        return self.classifier.labels

    def set_labels(self, labels: Sequence[str]) -> tuple[str, ...]:
        """New labels (their bank is computed here); smoothing starts again with them."""
        return self.classifier.set_labels(labels).labels

    def handle(self, msg: Any, now: float | None = None, msgtype: str | None = None) -> NodeOutput | None:
        """The fields to publish for an image message, or None when the rate limit leaves it out.

        Raises UnsupportedEncoding (the node reports it) and CorruptFrame (the node skips the message)."""
        start = time.monotonic()
        if not self._rate.ready(start if now is None else now):
            self.limited += 1
            return None
        image = frame_from_image_msg(msg, msgtype)
        bank = self.classifier.bank  # one bank for the whole message, even if the labels change meanwhile
        embedding = self.classifier.embed(image)
        probs = self.classifier.probabilities(embedding, bank)
        if self.params.smooth > 0 and self._smoothed is not None and self._version == bank.version:
            probs = self.params.smooth * self._smoothed + (1.0 - self.params.smooth) * probs
        self._smoothed, self._version = probs, bank.version
        top = self.classifier.top(probs, bank, self.params.top_k)
        self.processed += 1
        return NodeOutput(
            results=classification_fields(top.labels, top.scores),
            embedding=embedding_fields(embedding) if self.params.publish_embedding else None,
            latency_ms=(time.monotonic() - start) * 1000.0,
        )
