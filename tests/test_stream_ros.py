"""ROS 2 without ROS: image messages to frames, bags as a source, the node's message fields and parameters.

Messages are the real ROS 2 definitions from rosbags' typestore (ROS 2 Humble), serialized to CDR and back as they
travel on the wire or sit in a bag. rosbags' typestores have no vision_msgs: its two messages the node publishes are
registered here from their .msg definitions (vision_msgs 4.x, the version of ROS 2 Humble and Jazzy).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edgeclip.errors import InputError, MissingExtraError
from edgeclip.stream import open_source
from edgeclip.stream.ros import (
    NODE_DEFAULTS,
    SUPPORTED_ENCODINGS,
    NodeCore,
    NodeParams,
    RateLimiter,
    UnsupportedEncoding,
    classification_fields,
    embedding_fields,
    frame_from_image_msg,
    parse_node_params,
)
from edgeclip.stream.sources import CorruptFrame, SourceError
from tests.stream_world import SIDE, WorldClip, world_clip, write_bag

rosbags = pytest.importorskip("rosbags", reason="the ROS 2 tests need rosbags (pip install 'edgeclip[ros]')")
from rosbags.typesys import Stores, get_types_from_msg, get_typestore  # noqa: E402

IMAGE, COMPRESSED = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
TOPIC = "/camera/image_raw"

# vision_msgs 4.x (ROS 2 Humble, Jazzy): msg/ObjectHypothesis.msg and msg/Classification.msg, comments left out.
VISION_MSGS = {
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/Classification": "std_msgs/Header header\nObjectHypothesis[] results\n",
}


@pytest.fixture(scope="module")
def store() -> Any:
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    types: dict[str, Any] = {}
    for name, text in VISION_MSGS.items():
        types.update(get_types_from_msg(text, name))
    typestore.register(types)
    return typestore


def _wire(store: Any, msg: Any) -> Any:
    """The message after a trip through CDR, as a subscriber or a bag reader gets it."""
    return store.deserialize_cdr(store.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)


def _header(store: Any, sec: int = 12, nanosec: int = 500_000_000) -> Any:
    Time, Header = store.types["builtin_interfaces/msg/Time"], store.types["std_msgs/msg/Header"]
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id="camera")


def _image(store: Any, pixels: np.ndarray, encoding: str, *, bigendian: bool = False, pad: int = 0) -> Any:
    """A sensor_msgs/Image of `pixels` (H, W[, C]) as they are, rows padded by `pad` bytes."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1).view(np.uint8).reshape(height, -1)
    if pad:
        rows = np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    return store.types[IMAGE](
        header=_header(store),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(bigendian),
        step=rows.shape[1],
        data=np.ascontiguousarray(rows).reshape(-1),
    )


def _compressed(store: Any, data: bytes, fmt: str) -> Any:
    return store.types[COMPRESSED](header=_header(store), format=fmt, data=np.frombuffer(data, np.uint8))


RNG = np.random.default_rng(7)
BGR = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (6, 8), dtype=np.uint8)


# ---------------------------------------------------------------- sensor_msgs/Image -> frame


@pytest.mark.parametrize(
    ("encoding", "pixels", "expected"),
    [
        ("bgr8", BGR, BGR),
        ("8UC3", BGR, BGR),
        ("rgb8", BGR[..., ::-1], BGR),
        ("bgra8", np.dstack([BGR, np.full(BGR.shape[:2], 255, np.uint8)]), BGR),
        ("rgba8", np.dstack([BGR[..., ::-1], np.zeros(BGR.shape[:2], np.uint8)]), BGR),
        ("mono8", GRAY, np.dstack([GRAY] * 3)),
        ("8UC1", GRAY, np.dstack([GRAY] * 3)),
        ("mono16", GRAY.astype("<u2") * 257, np.dstack([GRAY] * 3)),
        ("16UC1", GRAY.astype("<u2") * 256 + 201, np.dstack([GRAY] * 3)),  # the low byte is dropped
        ("bgr16", BGR.astype("<u2") * 257, BGR),
        ("rgb16", BGR[..., ::-1].astype("<u2") * 257, BGR),
    ],
)
def test_image_encodings_become_bgr_frames(store: Any, encoding: str, pixels: np.ndarray, expected: np.ndarray) -> None:
    frame = frame_from_image_msg(_wire(store, _image(store, pixels, encoding)), IMAGE)
    assert frame.dtype == np.uint8 and frame.flags.c_contiguous
    np.testing.assert_array_equal(frame, expected)


def test_big_endian_16_bit_images(store: Any) -> None:
    msg = _image(store, GRAY.astype(">u2") * 257, "mono16", bigendian=True)
    np.testing.assert_array_equal(frame_from_image_msg(_wire(store, msg)), np.dstack([GRAY] * 3))


def test_padded_rows_are_cut_at_the_width(store: Any) -> None:
    msg = _wire(store, _image(store, BGR[..., ::-1], "rgb8", pad=8))
    assert msg.step == BGR.shape[1] * 3 + 8
    np.testing.assert_array_equal(frame_from_image_msg(msg), BGR)


# Colours of flat 2x2 blocks, so that chroma subsampling and demosaicing give them back.
BLOCKS = np.array([[(40, 40, 200), (40, 200, 40)], [(200, 40, 40), (128, 128, 128)]], np.uint8)  # BGR
FLAT = np.kron(BLOCKS, np.ones((4, 4, 1), np.uint8))  # (8, 8, 3): 4x4 blocks of one colour each


def _yuv(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BT.601 limited range, as OpenCV's YUV2BGR conversions read it."""
    b, g, r = (bgr[..., i].astype(np.float64) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return tuple(np.clip(np.rint(c), 0, 255).astype(np.uint8) for c in (y, u, v))  # type: ignore[return-value]


def _packed_422(bgr: np.ndarray, order: str) -> np.ndarray:
    y, u, v = _yuv(bgr)
    out = np.empty((bgr.shape[0], bgr.shape[1], 2), np.uint8)
    out[..., 0 if order == "uyvy" else 1] = np.repeat(u[:, ::2], 2, axis=1)
    out[:, 1::2, 0 if order == "uyvy" else 1] = v[:, 1::2]
    out[..., 1 if order == "uyvy" else 0] = y
    return out  # uyvy: U Y0 V Y1; yuyv: Y0 U Y1 V


@pytest.mark.parametrize(
    ("encoding", "order"), [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuv422_yuy2", "yuyv"), ("yuyv", "yuyv")]
)
def test_yuv422_images(store: Any, encoding: str, order: str) -> None:
    frame = frame_from_image_msg(_wire(store, _image(store, _packed_422(FLAT, order), encoding)))
    assert np.abs(frame.astype(int) - FLAT).max() <= 3


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_images(store: Any, pattern: str) -> None:
    channel = {"b": 0, "g": 1, "r": 2}
    mosaic = np.empty(FLAT.shape[:2], np.uint8)
    for dy in (0, 1):
        for dx in (0, 1):
            mosaic[dy::2, dx::2] = FLAT[dy::2, dx::2, channel[pattern[2 * dy + dx]]]
    frame = frame_from_image_msg(_wire(store, _image(store, mosaic, f"bayer_{pattern}8")))
    inner = (slice(1, 3), slice(1, 3))  # the middle of the top-left block: no neighbour of another colour
    assert np.abs(frame[inner].astype(int) - FLAT[inner]).max() <= 2, (frame[inner], FLAT[inner])


def test_an_unsupported_encoding_is_named(store: Any) -> None:
    msg = _wire(store, _image(store, np.zeros((4, 4), np.float32), "32FC1"))
    with pytest.raises(
        UnsupportedEncoding, match=r"encoding '32FC1' is not one edgeclip can read; it reads bgr8, rgb8"
    ):
        frame_from_image_msg(msg)
    assert "mono8" in SUPPORTED_ENCODINGS and "32FC1" not in SUPPORTED_ENCODINGS


def test_an_image_with_too_little_data_is_a_corrupt_frame(store: Any) -> None:
    msg = _image(store, BGR, "bgr8")
    msg.data = msg.data[:-5]
    with pytest.raises(CorruptFrame, match=r"an Image of 8x6 bgr8 \(step 24\) carries 139 bytes, too few"):
        frame_from_image_msg(_wire(store, msg))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_compressed_images(store: Any, suffix: str) -> None:
    picture = np.kron(BLOCKS, np.ones((16, 16, 1), np.uint8))  # blocks large enough for JPEG's 8x8 and 4:2:0
    ok, data = cv2.imencode(suffix, picture)
    assert ok
    frame = frame_from_image_msg(_wire(store, _compressed(store, data.tobytes(), suffix[1:])), COMPRESSED)
    assert frame.shape == picture.shape
    assert np.abs(frame.astype(int) - picture).mean() < (1e-9 if suffix == ".png" else 4)


def test_a_compressed_image_that_does_not_decode_is_a_corrupt_frame(store: Any) -> None:
    with pytest.raises(CorruptFrame, match=r"a CompressedImage \(jpeg\) could not be decoded"):
        frame_from_image_msg(_wire(store, _compressed(store, b"\xff\xd8 not a jpeg", "jpeg")))


# ---------------------------------------------------------------- bags


def _clip(n: int = 12) -> WorldClip:
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8) for _ in range(n)]
    return WorldClip(frames, ["noise"] * n, ("noise",))


@pytest.fixture(scope="module")
def bags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bags")
    clip = _clip()
    return {
        "mcap": write_bag(clip, root / "mcap", "mcap"),
        "sqlite3": write_bag(clip, root / "sqlite3", "sqlite3"),
        "compressed": write_bag(clip, root / "compressed", "mcap", compressed=True),
    }


def _read_all(spec: str) -> list[Any]:
    source = open_source(spec)
    frames = []
    with source:
        while (frame := source.read()) is not None:
            frames.append(frame)
    return frames


@pytest.mark.parametrize(
    ("bag", "form"), [("mcap", "dir"), ("mcap", "file"), ("sqlite3", "dir"), ("sqlite3", "file"), ("compressed", "dir")]
)
def test_a_bag_topic_is_a_source(bags: dict[str, Path], bag: str, form: str) -> None:
    path = bags[bag]
    if form == "file":
        path = next(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
    source = open_source(f"{path}#{TOPIC}")
    assert not source.live and source.name == f"{path}#{TOPIC}"
    frames = _read_all(f"{path}#{TOPIC}")
    clip = _clip()
    assert [f.index for f in frames] == list(range(len(clip.frames)))
    for frame, expected in zip(frames, clip.frames, strict=True):
        np.testing.assert_array_equal(frame.image, expected)  # rgb8 and PNG are lossless
    assert [f.time for f in frames] == pytest.approx([1.0 + i / clip.fps for i in range(len(frames))])


def test_a_bag_can_be_read_again(bags: dict[str, Path]) -> None:
    source = open_source(f"{bags['mcap']}#{TOPIC}")
    for _ in range(2):
        with source:
            first = source.read()
            assert first is not None and first.index == 0


def test_a_bag_without_the_topic_names_its_topics(bags: dict[str, Path]) -> None:
    with pytest.raises(SourceError) as info:
        open_source(f"{bags['mcap']}#/camera/color")
    assert str(info.value) == (
        f"the ROS 2 bag {bags['mcap']} has no topic '/camera/color'; its topics: "
        f"{TOPIC} (sensor_msgs/msg/Image), /rosout_like (std_msgs/msg/String)"
    )


def test_a_topic_that_is_not_images_is_refused(bags: dict[str, Path]) -> None:
    with pytest.raises(SourceError, match=r"topic '/rosout_like' of .* carries std_msgs/msg/String, not sensor_msgs"):
        open_source(f"{bags['sqlite3']}#/rosout_like")


def test_a_bag_named_without_a_topic_lists_the_image_topics(bags: dict[str, Path]) -> None:
    with pytest.raises(
        SourceError, match=rf"is a ROS 2 bag: name its image topic as .*#TOPIC; .*\(image topics: {TOPIC}\)"
    ):
        open_source(str(bags["mcap"]))


def test_a_bag_of_an_unsupported_encoding_fails_before_the_stream(tmp_path: Path) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer

    typestore = get_typestore(Stores.ROS2_HUMBLE)
    with Writer(tmp_path / "depth", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection(TOPIC, IMAGE, typestore=typestore)
        msg = _image(typestore, np.zeros((4, 4), np.float32), "32FC1")
        writer.write(connection, 1, typestore.serialize_cdr(msg, IMAGE))
    with pytest.raises(UnsupportedEncoding, match="encoding '32FC1' is not one edgeclip can read"):
        open_source(f"{tmp_path / 'depth'}#{TOPIC}")


def test_a_damaged_bag_is_a_clear_error(bags: dict[str, Path], tmp_path: Path) -> None:
    mcap = next(p for p in bags["mcap"].iterdir() if p.suffix == ".mcap")
    damaged = tmp_path / "damaged.mcap"
    damaged.write_bytes(mcap.read_bytes()[:300])
    with pytest.raises(SourceError, match=rf"the ROS 2 bag {damaged} could not be read: "):
        open_source(f"{damaged}#{TOPIC}")


def test_a_folder_that_is_not_a_bag(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"is not a ROS 2 bag \(a rosbag2 directory with metadata.yaml"):
        open_source(f"{tmp_path}#{TOPIC}")


def test_without_rosbags_the_error_says_what_to_install(bags: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rosbags.highlevel", None)  # import fails as if rosbags were not installed
    with pytest.raises(
        MissingExtraError, match=r"needs the rosbags library \(the \[ros\] extra\): pip install 'edgeclip\[ros\]'"
    ):
        open_source(f"{bags['mcap']}#{TOPIC}")


def test_edgeclip_stream_classifies_a_bag(tmp_path: Path) -> None:
    """The whole command on a bag of the world's frames: every message is a frame, with its header's stamp."""
    from edgeclip.cli import main

    clip = world_clip(2)
    bag = write_bag(clip, tmp_path / "world", "mcap")
    result = CliRunner().invoke(
        main, ["stream", "--source", f"{bag}#{TOPIC}", "--labels", ",".join(clip.labels), "--json"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    frames = [line for line in lines if "frame" in line]
    assert [f["frame"] for f in frames] == list(range(len(clip.frames)))
    assert [f["time"] for f in frames] == pytest.approx([1.0 + i / clip.fps for i in range(len(clip.frames))])
    right = sum(f["labels"][0] == truth for f, truth in zip(frames, clip.truth, strict=True))
    assert right >= 0.9 * len(frames), f"{right} of {len(frames)} frames named right"
    assert lines[-1]["event"] == "ended"


# ---------------------------------------------------------------- results -> vision_msgs, std_msgs


def test_classification_fields_make_a_vision_msgs_classification(store: Any) -> None:
    Classification = store.types["vision_msgs/msg/Classification"]
    Hypothesis = store.types["vision_msgs/msg/ObjectHypothesis"]
    fields = classification_fields(("a red circle", "a blue star"), (np.float32(0.75), 0.25))
    msg = _wire(store, Classification(header=_header(store), results=[Hypothesis(**f) for f in fields]))
    assert [(h.class_id, h.score) for h in msg.results] == [("a red circle", 0.75), ("a blue star", 0.25)]
    assert msg.header.stamp.sec == 12 and msg.header.frame_id == "camera"


def test_embedding_fields_make_a_float32_multiarray(store: Any) -> None:
    Array = store.types["std_msgs/msg/Float32MultiArray"]
    Layout = store.types["std_msgs/msg/MultiArrayLayout"]
    Dimension = store.types["std_msgs/msg/MultiArrayDimension"]
    vector = RNG.normal(size=512).astype(np.float32)
    fields = embedding_fields(vector)
    layout = Layout(dim=[Dimension(**d) for d in fields["layout"]["dim"]], data_offset=fields["layout"]["data_offset"])
    msg = _wire(store, Array(layout=layout, data=fields["data"]))
    assert [(d.label, d.size, d.stride) for d in msg.layout.dim] == [("embedding", 512, 512)]
    np.testing.assert_array_equal(msg.data, vector)


# ---------------------------------------------------------------- node parameters


def test_node_params_defaults_and_labels_forms(tmp_path: Path) -> None:
    params = parse_node_params({"labels": ["a person", "a forklift"]})
    assert params == NodeParams(labels=("a person", "a forklift"))
    assert params.image_type == IMAGE and params.rate == 0.0 and params.publish_embedding
    assert parse_node_params({"labels": "a person, a forklift"}).labels == ("a person", "a forklift")
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("a person\na pallet\n")
    assert parse_node_params({"labels_file": str(labels_file)}).labels == ("a person", "a pallet")
    full = parse_node_params(
        {
            "labels": ["x"],
            "bundle": "export/b",
            "precision": "fp16",
            "rate": 5,
            "top_k": 2,
            "smooth": 0.5,
            "image_topic": "/camera/image_raw/compressed",
            "publish_embedding": False,
            "templates": "",
        }
    )
    assert (full.bundle, full.precision, full.rate, full.top_k, full.smooth, full.templates) == (
        "export/b",
        "fp16",
        5.0,
        2,
        0.5,
        None,
    )
    assert full.image_type == COMPRESSED and not full.publish_embedding
    assert set(NODE_DEFAULTS) >= {"bundle", "labels", "precision", "rate"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "the node needs labels: set the parameter 'labels' (a list) or 'labels_file' (a file)"),
        (
            {"labels": ["a"], "labels_file": "l.txt"},
            "give the labels with one of the parameters 'labels' or 'labels_file'",
        ),
        ({"labels": ["a", "a"]}, "duplicated labels: 'a'"),
        ({"labels": ["a"], "rate": -1.0}, "parameter 'rate' is classifications per second (0: every image), got -1.0"),
        ({"labels": ["a"], "rate": "fast"}, "parameter 'rate' must be a number, got 'fast'"),
        ({"labels": ["a"], "smooth": 1.0}, "parameter 'smooth' is the weight of the past in [0, 1), got 1.0"),
        ({"labels": ["a"], "top_k": 0}, "parameter 'top_k' must be a whole number >= 1, got 0"),
        ({"labels": ["a"], "top_k": 2.5}, "parameter 'top_k' must be a whole number >= 1, got 2.5"),
        ({"labels": ["a"], "image_topic": " "}, "parameter 'image_topic' is empty; give a topic name"),
        ({"labels": ["a"], "publish_embedding": "false"}, "parameter 'publish_embedding' must be true or false"),
        ({"labels": ["a"], "labes": ["b"]}, "unknown parameter(s) labes; the node takes bundle, labels"),
        ({"labels_file": "missing.txt"}, "labels file missing.txt does not exist"),
    ],
)
def test_bad_node_params_are_refused_with_the_reason(values: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError) as info:
        parse_node_params(values)
    assert message in str(info.value)


def test_a_bad_precision_is_refused() -> None:
    with pytest.raises(InputError):
        parse_node_params({"labels": ["a"], "precision": "fp13"})


def test_rate_limiter() -> None:
    limiter = RateLimiter(2.0)  # at most one every 0.5 s
    assert [limiter.ready(t) for t in (0.0, 0.1, 0.49, 0.5, 0.7, 1.2)] == [True, False, False, True, False, True]
    unlimited = RateLimiter(0.0)
    assert all(unlimited.ready(t) for t in (0.0, 0.0, 0.001))


# ---------------------------------------------------------------- the node's work, without ROS


@pytest.fixture(scope="module")
def world() -> WorldClip:
    return world_clip(2)


def test_node_core_classifies_image_messages(store: Any, world: WorldClip) -> None:
    core = NodeCore(parse_node_params({"labels": list(world.labels), "top_k": 3}))
    changes = world.changes
    for index in changes:
        bgr = world.frames[index]
        msg = _wire(store, _image(store, np.ascontiguousarray(bgr[..., ::-1]), "rgb8"))
        out = core.handle(msg, now=float(index))
        assert out is not None and len(out.results) == 3
        assert out.results[0]["class_id"] == world.truth[index]
        scores = [r["score"] for r in out.results]
        assert scores == sorted(scores, reverse=True) and all(isinstance(s, float) for s in scores)
        assert out.embedding is not None and out.embedding["data"].dtype == np.float32
        assert np.linalg.norm(out.embedding["data"]) == pytest.approx(1.0, abs=1e-4)
        assert out.latency_ms > 0
    assert core.processed == len(changes)


def test_node_core_rate_smoothing_and_labels(store: Any, world: WorldClip) -> None:
    first, second = world.frames[0], world.frames[world.changes[1]]
    msgs = [_wire(store, _image(store, frame, "bgr8")) for frame in (first, second)]
    every = len(world.labels)
    values = {"labels": list(world.labels), "top_k": every, "rate": 4.0, "smooth": 0.5, "publish_embedding": False}
    core = NodeCore(parse_node_params(values))
    plain = NodeCore(parse_node_params({"labels": list(world.labels), "top_k": every}), classifier=core.classifier)
    a = core.handle(msgs[0], now=0.0)
    assert a is not None and a.embedding is None
    assert core.handle(msgs[1], now=0.1) is None and core.limited == 1  # under 0.25 s after the last one
    b = core.handle(msgs[1], now=0.3)
    assert b is not None
    raw_a, raw_b = plain.handle(msgs[0]), plain.handle(msgs[1])
    assert raw_a is not None and raw_b is not None
    # smooth 0.5: the second image's scores are half its own and half the first's
    own_a = {r["class_id"]: r["score"] for r in raw_a.results}
    own_b = {r["class_id"]: r["score"] for r in raw_b.results}
    smoothed = {r["class_id"]: r["score"] for r in b.results}
    assert smoothed == pytest.approx({k: 0.5 * own_a[k] + 0.5 * own_b[k] for k in own_b}, abs=1e-6)
    assert {r["class_id"]: r["score"] for r in a.results} == pytest.approx(own_a, abs=1e-6)
    # new labels: smoothing starts again with them
    assert core.set_labels(["red circle", "blue star"]) == ("red circle", "blue star")
    c = core.handle(msgs[0], now=1.0)
    plain.set_labels(["red circle", "blue star"])
    c_own = plain.handle(msgs[0])
    assert c is not None and c_own is not None
    assert [r["class_id"] for r in c.results] == [r["class_id"] for r in c_own.results]
    assert [r["score"] for r in c.results] == pytest.approx([r["score"] for r in c_own.results], abs=1e-6)


def test_node_core_reports_an_unsupported_encoding(store: Any, world: WorldClip) -> None:
    core = NodeCore(parse_node_params({"labels": list(world.labels)}))
    with pytest.raises(UnsupportedEncoding, match="'32FC1'"):
        core.handle(_wire(store, _image(store, np.zeros((4, 4), np.float32), "32FC1")))


# ---------------------------------------------------------------- the node's rclpy shell (examples/ros2)

NODE_FILE = Path(__file__).resolve().parent.parent / "examples" / "ros2" / "edgeclip_node.py"


def test_the_node_and_launch_files_compile(tmp_path: Path) -> None:
    import py_compile

    for path in (NODE_FILE, NODE_FILE.parent / "edgeclip.launch.py"):
        py_compile.compile(str(path), cfile=str(tmp_path / f"{path.stem}.pyc"), doraise=True)  # nothing in examples/


class _FakeNode:
    """Just enough of rclpy's Node for the shell: parameters (with overrides, as --ros-args -p gives), publishers
    that keep what they publish, subscriptions, parameter callbacks, a logger that keeps its lines."""

    overrides: ClassVar[dict[str, Any]] = {}

    def __init__(self, name: str) -> None:
        self.node_name = name
        self.parameters: dict[str, Any] = {}
        self.published: dict[str, list[Any]] = {}
        self.subscriptions: dict[str, tuple[Any, Any]] = {}
        self.parameter_callbacks: list[Any] = []
        self.logged: list[tuple[str, str]] = []

    def declare_parameter(self, name: str, value: Any, descriptor: Any = None) -> None:
        assert descriptor.dynamic_typing is True
        self.parameters[name] = self.overrides.get(name, value)

    def get_parameter(self, name: str) -> Any:
        return type("Parameter", (), {"name": name, "value": self.parameters[name]})()

    def create_publisher(self, kind: Any, topic: str, qos: Any) -> Any:
        sent = self.published.setdefault(topic, [])
        return type("Publisher", (), {"publish": lambda _, msg: sent.append(msg), "kind": kind})()

    def create_subscription(self, kind: Any, topic: str, callback: Any, qos: Any) -> None:
        self.subscriptions[topic] = (kind, callback)

    def add_on_set_parameters_callback(self, callback: Any) -> None:
        self.parameter_callbacks.append(callback)

    def set(self, **values: Any) -> Any:
        """What `ros2 param set` does: the callbacks decide, then the values are taken."""
        parameters = [type("Parameter", (), {"name": k, "value": v})() for k, v in values.items()]
        result = self.parameter_callbacks[0](parameters)
        if result.successful:
            self.parameters.update(values)
        return result

    def get_logger(self) -> Any:
        logged = self.logged

        class Logger:
            def info(self, message: str, **kwargs: Any) -> None:
                logged.append(("info", message))

            def warning(self, message: str, **kwargs: Any) -> None:
                logged.append(("warning", message))

            def error(self, message: str, **kwargs: Any) -> None:
                logged.append(("error", message))

        return Logger()

    def destroy_node(self) -> None:
        pass


def _module(name: str, **attrs: Any) -> Any:
    import types

    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


@pytest.fixture
def node_module(store: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """examples/ros2/edgeclip_node.py imported over stand-ins of rclpy whose messages are the typestore's classes."""
    import importlib.util
    from types import SimpleNamespace

    t = store.types

    class Result:
        def __init__(self, successful: bool, reason: str = "") -> None:
            self.successful, self.reason = successful, reason

    fakes = {
        "rclpy": _module("rclpy", init=lambda args=None: None, ok=lambda: False, shutdown=lambda: None),
        "rclpy.node": _module("rclpy.node", Node=_FakeNode),
        "rclpy.qos": _module("rclpy.qos", qos_profile_sensor_data="sensor-data"),
        "rclpy.executors": _module("rclpy.executors", ExternalShutdownException=RuntimeError),
        "rcl_interfaces": _module("rcl_interfaces"),
        "rcl_interfaces.msg": _module(
            "rcl_interfaces.msg", ParameterDescriptor=lambda **kw: SimpleNamespace(**kw), SetParametersResult=Result
        ),
        "sensor_msgs": _module("sensor_msgs"),
        "sensor_msgs.msg": _module("sensor_msgs.msg", Image=t[IMAGE], CompressedImage=t[COMPRESSED]),
        "std_msgs": _module("std_msgs"),
        "std_msgs.msg": _module(
            "std_msgs.msg",
            Float32MultiArray=t["std_msgs/msg/Float32MultiArray"],
            MultiArrayLayout=t["std_msgs/msg/MultiArrayLayout"],
            MultiArrayDimension=t["std_msgs/msg/MultiArrayDimension"],
        ),
        "vision_msgs": _module("vision_msgs"),
        "vision_msgs.msg": _module(
            "vision_msgs.msg",
            Classification=t["vision_msgs/msg/Classification"],
            ObjectHypothesis=t["vision_msgs/msg/ObjectHypothesis"],
        ),
    }
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ in examples/
    spec = importlib.util.spec_from_file_location("edgeclip_node", NODE_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_node_publishes_classifications_and_embeddings(
    store: Any, world: WorldClip, node_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_FakeNode, "overrides", {"labels": ", ".join(world.labels), "top_k": 2, "rate": 0})
    node = node_module.EdgeClipNode()
    kind, on_image = node.subscriptions["image"]
    assert kind is store.types[IMAGE]
    index = world.changes[1]
    msg = _wire(store, _image(store, np.ascontiguousarray(world.frames[index][..., ::-1]), "rgb8"))
    on_image(msg)
    (classification,) = node.published["classification"]
    (embedding,) = node.published["embedding"]
    # what went out is a valid vision_msgs/Classification, with the image's header and the right label first
    sent = _wire(store, classification)
    assert sent.results[0].class_id == world.truth[index] and len(sent.results) == 2
    assert (sent.header.stamp.sec, sent.header.frame_id) == (12, "camera")
    # rclpy keeps float32[] as array.array('f'); rosbags' serializer wants numpy: same bytes either way
    assert embedding.data.typecode == "f"
    embedding.data = np.frombuffer(embedding.data.tobytes(), np.float32)
    vector = _wire(store, embedding)
    assert vector.layout.dim[0].size == len(vector.data) and np.linalg.norm(vector.data) == pytest.approx(1, abs=1e-4)

    # labels change while it runs; a bad value and a fixed parameter are refused with the reason
    assert node.set(labels=["red circle", "blue star"]).successful
    on_image(msg)
    assert {h.class_id for h in node.published["classification"][-1].results} == {"red circle", "blue star"}
    refused = node.set(labels=["a", "a"])
    assert not refused.successful and "duplicated labels: 'a'" in refused.reason
    refused = node.set(rate=1.0)
    assert not refused.successful and refused.reason.startswith("restart the node to change rate")
    assert node.core.labels == ("red circle", "blue star")

    # an encoding it cannot read: reported, skipped, nothing published
    on_image(_wire(store, _image(store, np.zeros((4, 4), np.float32), "32FC1")))
    assert len(node.published["classification"]) == 2
    assert node.logged[-1][0] == "error" and "'32FC1'" in node.logged[-1][1]


def test_the_node_reads_compressed_topics(
    store: Any, world: WorldClip, node_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = {"labels": list(world.labels), "image_topic": "/cam/image_raw/compressed", "publish_embedding": False}
    monkeypatch.setattr(_FakeNode, "overrides", overrides)
    node = node_module.EdgeClipNode()
    kind, on_image = node.subscriptions["/cam/image_raw/compressed"]
    assert kind is store.types[COMPRESSED] and "embedding" not in node.published
    ok, png = cv2.imencode(".png", world.frames[0])
    assert ok
    on_image(_wire(store, _compressed(store, png.tobytes(), "png")))
    assert node.published["classification"][0].results[0].class_id == world.truth[0]


def test_the_node_stops_at_bad_parameters_with_the_reason(
    node_module: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_FakeNode, "overrides", {"labels": ["a"], "rate": -1.0})
    assert node_module.main([]) == 1
    assert capsys.readouterr().err == (
        "edgeclip node: parameter 'rate' is classifications per second (0: every image), got -1.0\n"
    )


def test_the_params_file_holds_every_parameter() -> None:
    from ruamel.yaml import YAML  # rosbags' own YAML library

    values = YAML(typ="safe").load((NODE_FILE.parent / "params.yaml").read_text())["edgeclip"]["ros__parameters"]
    assert set(values) == set(NODE_DEFAULTS)
    params = parse_node_params(values)
    assert params.labels == ("red circle", "red square", "blue star", "green triangle") and params.rate == 5.0
