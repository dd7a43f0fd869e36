"""`edgeclip stream` and its Python API, on streams made from the built-in model's world (tests/stream_world.py):
a lossless video, the same frames in ROS 2 bags (sqlite3 and MCAP), and a local HTTP MJPEG server that the tests
stop, stall and start again. Every check is against the truth of the frames, or against the same frames read
another way; nothing is mocked."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import edgeclip
from edgeclip.cli import main
from edgeclip.errors import InputError
from edgeclip.stream import Event, FrameClassifier, Result, Stream, gstreamer_available, open_source
from edgeclip.stream.app import StreamOptions, run_stream
from edgeclip.stream.outputs import MIN_ANNOTATED_WIDTH
from edgeclip.stream.pipeline import _Handoff
from edgeclip.stream.sources import Frame, SourceError
from tests.stream_world import SIDE, MjpegServer, WorldClip, world_clip, write_bag, write_video

pytest.importorskip("rosbags")

TOPIC = "/camera/image_raw"
SMOOTH = 0.6
SETTLE = 5  # frames after each change of object that are not scored (the smoothing follows within them)
RESULT_KEYS = {"frame", "time", "labels", "scores", "latency_ms", "state"}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip() -> WorldClip:
    return world_clip()


@pytest.fixture(scope="module")
def model():
    with edgeclip.load() as m:
        yield m


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory, clip: WorldClip) -> Path:
    folder = tmp_path_factory.mktemp("stream")
    write_video(clip, folder / "world.mkv")
    (folder / "labels.txt").write_text("\n".join(clip.labels) + "\n")
    return folder


@pytest.fixture(scope="module")
def video_results(media: Path, clip: WorldClip, model) -> list[Result]:
    with Stream(media / "world.mkv", model, clip.labels, smooth=SMOOTH, keep_images=False) as stream:
        return list(stream)


def agreement(frames: list[int], labels: list[str], clip: WorldClip) -> float:
    """Share of the frames (those SETTLE or more after a change of object) whose best label is the truth."""
    changes = clip.changes
    scored = [
        (f, label) for f, label in zip(frames, labels, strict=True) if f - max(c for c in changes if c <= f) >= SETTLE
    ]
    assert len(scored) >= len(frames) // 2
    return sum(label == clip.truth[f] for f, label in scored) / len(scored)


def json_lines(text: str) -> tuple[list[dict], list[dict]]:
    """(results, events) of `--json` output; every line must parse."""
    items = [json.loads(line) for line in text.splitlines() if line.strip()]
    results = [x for x in items if "frame" in x]
    events = [x for x in items if "event" in x]
    assert len(results) + len(events) == len(items)
    return results, events


def run_cli(*args: object) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "edgeclip"
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- (a) a world video through the command


def test_cli_json_on_world_video_names_the_objects(media: Path, clip: WorldClip) -> None:
    done = run_cli(
        "stream", "--source", media / "world.mkv", "--labels-file", media / "labels.txt", "--json", "--smooth", SMOOTH
    )
    assert done.returncode == 0, done.stderr
    results, events = json_lines(done.stdout)
    assert [e["event"] for e in events] == ["ended"]
    assert all(set(r) == RESULT_KEYS for r in results)
    frames = [r["frame"] for r in results]
    assert frames == list(range(len(clip.frames)))  # a file: every frame, in order
    for r in results:
        assert r["scores"] == sorted(r["scores"], reverse=True) and len(r["labels"]) == 5
        assert r["state"] == "running" and r["latency_ms"] > 0
        assert r["time"] == pytest.approx(r["frame"] / clip.fps, abs=1e-6)
    assert agreement(frames, [r["labels"][0] for r in results], clip) >= 0.9
    n = len(clip.frames)
    assert f"frames read {n}, processed {n}, dropped 0, skipped 0, reconnects 0" in done.stderr


def test_every_n_and_video_agreement(media: Path, clip: WorldClip, model, video_results: list[Result]) -> None:
    assert agreement([r.frame for r in video_results], [r.labels[0] for r in video_results], clip) >= 0.9
    with Stream(media / "world.mkv", model, clip.labels, every=3) as stream:
        frames = [r.frame for r in stream]
    assert frames == list(range(0, len(clip.frames), 3))
    assert stream.stats.read == len(clip.frames) and stream.stats.processed == len(frames)


# ---------------------------------------------------------------- (b) the same frames in ROS 2 bags


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_gives_the_answers_of_the_video(
    storage: str, tmp_path: Path, clip: WorldClip, video_results: list[Result]
) -> None:
    bag = write_bag(clip, tmp_path / f"world_{storage}", storage)
    out, err = io.StringIO(), io.StringIO()
    opts = StreamOptions(source=f"{bag}#{TOPIC}", labels=clip.labels, smooth=SMOOTH, as_json=True)
    stats = run_stream(opts, out=out, err=err)
    results, _ = json_lines(out.getvalue())
    assert stats.processed == len(clip.frames) and stats.skipped == 0
    assert [r["frame"] for r in results] == [r.frame for r in video_results]
    assert [r["labels"] for r in results] == [list(r.labels) for r in video_results]
    np.testing.assert_allclose([r["scores"] for r in results], [r.scores for r in video_results], atol=1e-5)
    # the bag's own clock: the header stamps the writer gave (1 s, then one frame period apart)
    assert [r["time"] for r in results] == pytest.approx([1.0 + i / clip.fps for i in range(len(clip.frames))])


def test_bag_by_storage_file_and_compressed_images(
    tmp_path: Path, clip: WorldClip, model, video_results: list[Result]
) -> None:
    bag = write_bag(clip, tmp_path / "png", "mcap", compressed=True)
    (storage_file,) = bag.glob("*.mcap")
    with Stream(f"{storage_file}#{TOPIC}", model, clip.labels, smooth=SMOOTH) as stream:
        labels = [r.labels for r in stream]
    assert labels == [r.labels for r in video_results]  # PNG is lossless: the same pixels, the same answers


# ---------------------------------------------------------------- (c) a live source that fails and comes back


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the stream")
        time.sleep(0.02)


def test_http_source_drops_stalls_and_recovers(clip: WorldClip) -> None:
    out, err = io.StringIO(), io.StringIO()
    with MjpegServer(clip.frames, fps=30) as server:
        opts = StreamOptions(
            source=server.url, labels=clip.labels, smooth=SMOOTH, as_json=True, stall_timeout=0.6, backoff=(0.1, 0.4)
        )
        phases: list[str] = []

        def drive(stream: Stream) -> None:
            def fault_injection() -> None:
                stats = stream.stats
                try:
                    wait_for(lambda: stats.processed >= 10)
                    server.corrupt_next()
                    wait_for(lambda: stats.skipped >= 1)
                    server.stop()  # the camera server dies ...
                    phases.append("down")
                    time.sleep(1.0)
                    server.start()  # ... and comes back on the same port
                    wait_for(lambda: stats.reconnects >= 1 and stats.processed >= 30)
                    server.stall = True  # connected, but no frame
                    phases.append("stalled")
                    time.sleep(1.5)
                    server.stall = False
                    wait_for(lambda: stats.reconnects >= 2 and stats.processed >= 50)
                    phases.append("done")
                finally:
                    stream.stop()

            threading.Thread(target=fault_injection, daemon=True).start()

        stats = run_stream(opts, out=out, err=err, on_ready=drive)
    assert phases == ["down", "stalled", "done"]
    results, events = json_lines(out.getvalue())
    kinds = [e["event"] for e in events]
    assert {"skipped", "reconnecting", "stalled", "recovered"} <= set(kinds), kinds
    assert kinds[-1] == "ended"
    assert [r["state"] for r in results].count("recovered") >= 2  # the first result after each fault says so
    frames = [r["frame"] for r in results]
    assert frames == sorted(set(frames))
    assert stats.skipped >= 1 and stats.reconnects >= 2 and stats.faults >= 2
    assert stats.processed == len(results)
    assert "reconnecting in" in err.getvalue() and "reconnects" in err.getvalue()
    # what the stream said about the frames it saw stays right through the faults
    truth = set(clip.truth)
    assert sum(r["labels"][0] in truth for r in results) >= 0.9 * len(results)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_record_leaves_a_playable_video(stop: signal.Signals, tmp_path: Path, clip: WorldClip) -> None:
    record = tmp_path / "out.mp4"
    script = Path(sys.executable).parent / "edgeclip"
    outputs = ["--record", str(record), "--json"]
    with MjpegServer(clip.frames, fps=30) as server:
        proc = subprocess.Popen(
            [str(script), "stream", "--source", server.url, "--labels", ",".join(clip.labels), *outputs],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        lines = []
        try:
            while len(lines) < 15:
                line = proc.stdout.readline()
                assert line, proc.stderr.read() if proc.stderr else ""
                lines.append(line)
            proc.send_signal(stop)
            rest, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    results, events = json_lines("".join(lines) + rest)
    assert events[-1]["event"] == "ended"
    assert "frames read" in err and "Traceback" not in err
    cap = cv2.VideoCapture(str(record))
    assert cap.isOpened()
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    assert len(frames) == len(results) >= 15  # every processed frame was recorded and the file is complete
    side = max(SIDE, MIN_ANNOTATED_WIDTH)  # the annotated frames: small ones are enlarged to keep the text readable
    assert frames[0].shape == (side, side, 3)


# ---------------------------------------------------------------- pipeline parts


def test_corrupt_image_in_a_folder_is_skipped_and_counted(tmp_path: Path, clip: WorldClip, model) -> None:
    for i in range(6):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), clip.frames[i * 20])
    (tmp_path / "03.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with Stream(tmp_path, model, clip.labels) as stream:
        items = list(stream.items())
    results = [x for x in items if isinstance(x, Result)]
    assert [r.frame for r in results] == [0, 1, 2, 4, 5]
    # The pipeline's answers are the model's own on those files (the model, not the pipeline, may miss a frame).
    alone = [model.classify(clip.frames[i * 20], clip.labels, top_k=1, color_order="BGR")[0] for i in (0, 1, 2, 4, 5)]
    assert [r.labels[0] for r in results] == [c.labels[0] for c in alone]
    assert sum(r.labels[0] == clip.truth[r.frame * 20] for r in results) >= 4
    assert any(isinstance(x, Event) and x.state == "skipped" and "03.png" in x.message for x in items)
    assert (stream.stats.read, stream.stats.processed, stream.stats.skipped) == (6, 5, 1)


def test_folder_frames_are_the_pixels_the_runtime_decodes(tmp_path: Path) -> None:
    # A 16-bit PNG (OpenCV's imread would shift it to 8 bits, not scale it as `classify` does) and a GIF (which the
    # folder source used to leave out) give the frames that `edgeclip.images.load_image` gives, in BGR order.
    from PIL import Image

    from edgeclip.images import load_image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 65536, (24, 32), dtype=np.uint16)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(tmp_path / "b.gif")
    source = open_source(str(tmp_path))
    with source:
        frames = [source.read(), source.read()]
        assert source.read() is None
    for frame, name in zip(frames, ("a.png", "b.gif"), strict=True):
        assert frame is not None
        np.testing.assert_array_equal(frame.image, load_image(tmp_path / name)[:, :, ::-1])


def test_live_handoff_keeps_the_newest_frame_and_counts_the_dropped() -> None:
    stop = threading.Event()
    handoff = _Handoff(latest_only=True)
    image = np.zeros((2, 2, 3), np.uint8)
    dropped = [handoff.put(Frame(i, image, None, 0.0), stop) for i in range(4)]
    assert dropped == [False, True, True, True]
    got = handoff.get(timeout=0.1)
    assert got is not None and got.index == 3 and handoff.get(timeout=0.01) is None


def test_labels_file_is_watched_while_running(tmp_path: Path, clip: WorldClip, model) -> None:
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("red circle\nblue circle\n")
    new = ("green hexagon", "yellow square", "red hexagon")
    with MjpegServer(clip.frames, fps=30) as server, Stream(server.url, model, labels_file=labels_file) as stream:
        changed_at = None
        after = []
        for item in stream.items():
            if isinstance(item, Result):
                if changed_at is None and item.frame >= 3:
                    time.sleep(0.05)  # a later mtime than the first write on coarse clocks
                    labels_file.write_text("\n".join(new) + "\n")
                    changed_at = item.frame
                elif changed_at is not None and set(item.labels) == set(new):
                    after.append(item)
                    if len(after) >= 3:
                        stream.stop()
            elif item.state == "labels":
                assert all(label in item.message for label in new)
    assert stream.labels == new and len(after) >= 3


def test_frame_classifier_is_thread_safe_while_labels_change(clip: WorldClip, model) -> None:
    a, b = ("red circle", "blue hexagon"), ("green hexagon", "yellow square", "red hexagon")
    clf = FrameClassifier(model, a)
    want = model.classify(clip.frames[0], list(a), top_k=2, color_order="BGR")[0]
    got = clf.classify(clip.frames[0], top_k=2)
    assert got.labels == want.labels and got.scores == pytest.approx(want.scores, abs=1e-6)
    assert clf.embed(clip.frames[0]).shape == (model.contract.head.embed_dim,)
    seen: list[tuple[str, ...]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for i in range(15):
                seen.append(tuple(sorted(clf.classify(clip.frames[i * 7 % len(clip.frames)], top_k=3).labels)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for labels in (b, a, b):
        clf.set_labels(labels)
    for t in threads:
        t.join()
    assert not errors
    assert set(seen) <= {tuple(sorted(a)), tuple(sorted(b))}  # each call saw one label set, never a mix
    assert clf.labels == b and clf.bank.version == 4


def test_async_results_match_the_loop(media: Path, clip: WorldClip, model, video_results: list[Result]) -> None:
    async def collect() -> list[Result]:
        stream = Stream(media / "world.mkv", model, clip.labels, smooth=SMOOTH)
        try:
            got = []
            async for result in stream.results():
                got.append(result)
                await asyncio.sleep(0)  # the loop stays free between results
            return got
        finally:
            stream.close()

    got = asyncio.run(collect())
    assert [r.labels for r in got] == [r.labels for r in video_results]


def test_leaving_the_loop_early_closes_at_once(media: Path, clip: WorldClip, model) -> None:
    started = time.monotonic()
    with Stream(media / "world.mkv", model, clip.labels) as stream:
        for result in stream:
            if result.frame == 2:
                break
    assert time.monotonic() - started < 5.0
    assert not any(t.is_alive() for t in stream._threads)


def test_robot_loop_example_runs_on_a_video(media: Path) -> None:
    labels = ["--labels", "red circle,blue hexagon,yellow square", "--stop-on", "red circle"]
    ticks = ["--ticks", "5", "--rate", "0"]
    done = subprocess.run(
        [sys.executable, REPO / "examples" / "robot_loop.py", "--source", media / "world.mkv", *labels, *ticks],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 5 and all(line.startswith(f"frame {i}: red circle") for i, line in enumerate(lines))
    assert all(line.split("-> ")[1].startswith("stop") for line in lines)


# ---------------------------------------------------------------- bad input: a clear error, before the stream starts


def cli(*args: object):
    result = CliRunner().invoke(main, ["stream", *map(str, args)])
    assert "Traceback" not in result.output + result.stderr
    return result


def test_unknown_scheme() -> None:
    result = cli("--source", "ftp://camera/feed", "--labels", "a,b")
    assert result.exit_code == 1
    assert "unknown source scheme 'ftp://'" in result.stderr and "rtsp://" in result.stderr


@pytest.mark.skipif(gstreamer_available(), reason="this OpenCV has GStreamer")
@pytest.mark.parametrize("source", ["csi://0", "videotestsrc ! videoconvert ! appsink"])
def test_gstreamer_source_without_gstreamer_says_how_to_get_it(source: str) -> None:
    result = cli("--source", source, "--labels", "a,b")
    assert result.exit_code == 1
    assert "GStreamer sources need an OpenCV built with GStreamer" in result.stderr
    assert "--system-site-packages" in result.stderr


def test_camera_index_that_does_not_exist() -> None:
    result = cli("--source", "57", "--labels", "a,b", "--json")
    assert result.exit_code == 1
    assert "camera 57 does not exist" in result.stderr and "/dev/video57" in result.stderr


def test_file_that_is_not_a_video_keeps_an_existing_recording(tmp_path: Path) -> None:
    bad = tmp_path / "notes.mp4"
    bad.write_text("these are notes, not a video\n")
    record = tmp_path / "old.mp4"
    record.write_bytes(b"an earlier recording")
    result = cli("--source", bad, "--labels", "a,b", "--record", record, "--force")
    assert result.exit_code == 1
    assert f"{bad} is not a video OpenCV can read" in result.stderr
    assert record.read_bytes() == b"an earlier recording"  # even with --force: nothing was recorded over it


def test_existing_recording_is_kept_without_force(tmp_path: Path, clip: WorldClip) -> None:
    video = write_video(WorldClip(clip.frames[:3], clip.truth[:3], clip.labels), tmp_path / "clip.avi")
    record = tmp_path / "old.mp4"
    record.write_bytes(b"an earlier recording")
    result = cli("--source", video, "--labels", "a,b", "--record", record, "--json")
    assert result.exit_code == 1
    assert f"--record {record} exists; give another name, or --force to replace it" in result.stderr
    assert "Traceback" not in result.stderr
    assert record.read_bytes() == b"an earlier recording"


def test_bag_without_the_topic_names_its_topics(tmp_path: Path, clip: WorldClip) -> None:
    short = WorldClip(clip.frames[:2], clip.truth[:2], clip.labels)
    bag = write_bag(short, tmp_path / "bag", "sqlite3")
    result = cli("--source", f"{bag}#/front/image", "--labels", "a,b")
    assert result.exit_code == 1
    assert "has no topic '/front/image'" in result.stderr
    assert f"{TOPIC} (sensor_msgs/msg/Image)" in result.stderr and "/rosout_like" in result.stderr
    result = cli("--source", bag, "--labels", "a,b")  # no topic at all
    assert result.exit_code == 1 and f"{bag}#TOPIC" in result.stderr and f"image topics: {TOPIC}" in result.stderr


def test_bag_with_an_encoding_edgeclip_cannot_read_names_it(tmp_path: Path) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    image_t = store.types["sensor_msgs/msg/Image"]
    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id="depth"
    )
    depth = np.zeros((4, 4), np.float32)
    msg = image_t(
        header=header, height=4, width=4, encoding="32FC1", is_bigendian=0, step=16, data=depth.view(np.uint8).ravel()
    )
    bag = tmp_path / "depth"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/depth", image_t.__msgtype__, typestore=store)
        writer.write(conn, 1, store.serialize_cdr(msg, image_t.__msgtype__))
    result = cli("--source", f"{bag}#/depth", "--labels", "a,b")
    assert result.exit_code == 1
    assert "encoding '32FC1' is not one edgeclip can read" in result.stderr and "rgb8" in result.stderr


def test_show_without_a_display(monkeypatch: pytest.MonkeyPatch, media: Path, clip: WorldClip) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = cli("--source", media / "world.mkv", "--labels", "a,b", "--show")
    assert result.exit_code == 1
    assert "--show: no display" in result.stderr and "--json" in result.stderr
    # with another output asked for, it says so and runs headless
    result = cli("--source", media / "world.mkv", "--labels", ",".join(clip.labels[:8]), "--show", "--json")
    assert result.exit_code == 0, result.stderr
    assert "warning: --show: no display" in result.stderr and "continuing headless" in result.stderr
    results, _ = json_lines(result.stdout)
    assert len(results) == len(clip.frames)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing/out.mp4", "the folder {folder}/missing does not exist"),
        ("out.gif", "give a file ending in .mp4"),
        (".", "is a folder"),
    ],
)
def test_unwritable_record_path_is_refused_before_the_stream(
    tmp_path: Path, media: Path, name: str, message: str
) -> None:
    result = cli("--source", media / "world.mkv", "--labels", "a,b", "--record", tmp_path / name)
    assert result.exit_code == 1
    assert message.format(folder=tmp_path) in result.stderr
    assert "frames read" not in result.stderr  # refused before the stream started
    assert not (tmp_path / "missing").exists()


def test_no_labels_and_bad_options_through_the_api(media: Path, model) -> None:
    result = cli("--source", media / "world.mkv")
    assert result.exit_code == 1 and "--labels" in result.stderr
    with pytest.raises(InputError, match="every must be a whole number"):
        Stream(media / "world.mkv", model, ["a"], every=0)
    with pytest.raises(InputError, match="smooth is the weight of the past"):
        Stream(media / "world.mkv", model, ["a"], smooth=1.0)
    with pytest.raises(InputError, match="no labels yet"):
        Stream(media / "world.mkv", model)
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source(media / "nothing.mp4")


def test_annotate_enlarges_small_frames_and_keeps_large_ones():
    from edgeclip.stream.outputs import annotate

    result = Result(
        frame=3, time=None, labels=("red star", "blue heart"), scores=(0.9, 0.1), latency_ms=4.0, state="running"
    )
    small = np.full((120, 160, 3), 90, dtype=np.uint8)
    out = annotate(small, result, fps=10.0)
    assert out.shape == (360, MIN_ANNOTATED_WIDTH, 3)  # aspect ratio kept
    assert not np.array_equal(out[:60], np.full_like(out[:60], 90))  # the text box was drawn
    large = np.full((480, 640, 3), 90, dtype=np.uint8)
    out = annotate(large, result, fps=10.0)
    assert out.shape == large.shape
    assert np.array_equal(large, np.full_like(large, 90))  # the caller's frame is never drawn on
