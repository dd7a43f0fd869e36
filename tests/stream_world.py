"""Test streams made from the built-in model's world: a new object every two seconds, frames a little different
from each other (each one rendered again with its own noise), with the truth of every frame; written as a lossless
video, as ROS 2 bags, or served live by a local HTTP MJPEG server that the tests stop, stall and start again."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

FPS = 10
SECONDS_PER_OBJECT = 2
SIDE = 160  # frames of 160x160: larger than the model's 64 px input, small enough to stay fast
SEED = 4242


@dataclass(frozen=True)
class WorldClip:
    frames: list[np.ndarray]  # BGR uint8
    truth: list[str]  # label of each frame
    labels: tuple[str, ...]  # the candidate labels
    fps: int = FPS

    @property
    def changes(self) -> list[int]:
        """Frame indices where a new object appears."""
        return [i for i in range(len(self.truth)) if i == 0 or self.truth[i] != self.truth[i - 1]]


def world_clip(objects: int = 6) -> WorldClip:
    """`objects` scenes of one object each, SECONDS_PER_OBJECT seconds apiece at FPS.

    The stream tests check the pipeline, not the model: the scenes are the first ones of a fixed evaluation set that
    the built-in model names right on a clean frame, of distinct labels, among all 64 color-shape labels."""
    import edgeclip
    from edgeclip.world import World, eval_labels, eval_set

    labels = eval_labels("color_shape")
    pool = [item for item in eval_set("color_shape", n=64, seed=SEED) if not item.heldout]
    world = World(SEED)
    rng = np.random.default_rng(SEED)
    chosen = []
    with edgeclip.load() as model:
        for item in pool[::3]:
            frame = _frame(world.render(item.scene, np.random.default_rng(0)))
            if model.classify(frame, labels, top_k=1, color_order="BGR")[0].labels[0] == item.label:
                chosen.append(item)
            if len(chosen) == objects:
                break
    frames, truth = [], []
    for item in chosen:
        for _ in range(FPS * SECONDS_PER_OBJECT):
            image = _frame(world.render(item.scene, rng))
            noise = rng.normal(0, 4, image.shape)
            frames.append(np.clip(image.astype(np.float64) + noise, 0, 255).astype(np.uint8))
            truth.append(item.label)
    return WorldClip(frames, truth, labels)


def _frame(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.resize(rgb, (SIDE, SIDE), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)


def write_video(clip: WorldClip, path: Path) -> Path:
    """A lossless FFV1 video (.mkv), so that the video and the bags hold the same pixels."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"FFV1"), clip.fps, (SIDE, SIDE))
    assert writer.isOpened(), f"OpenCV cannot write FFV1 to {path}"
    for frame in clip.frames:
        writer.write(frame)
    writer.release()
    return path


def write_bag(
    clip: WorldClip, path: Path, storage: str, topic: str = "/camera/image_raw", compressed: bool = False
) -> Path:
    """The frames as sensor_msgs/Image (rgb8) or CompressedImage (png) in a rosbag2 of `storage` ("sqlite3"|"mcap"),
    written with rosbags' own writer; the header stamps follow FPS."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    Image = store.types["sensor_msgs/msg/Image"]
    Compressed = store.types["sensor_msgs/msg/CompressedImage"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    msgtype = Compressed.__msgtype__ if compressed else Image.__msgtype__
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connection = writer.add_connection(topic, msgtype, typestore=store)
        writer.add_connection("/rosout_like", "std_msgs/msg/String", typestore=store)
        for i, frame in enumerate(clip.frames):
            ns = 1_000_000_000 + i * 1_000_000_000 // clip.fps
            header = Header(stamp=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000), frame_id="camera")
            if compressed:
                ok, png = cv2.imencode(".png", frame)
                assert ok
                msg = Compressed(header=header, format="png", data=png.reshape(-1))
            else:
                rgb = np.ascontiguousarray(frame[:, :, ::-1])
                msg = Image(
                    header=header,
                    height=SIDE,
                    width=SIDE,
                    encoding="rgb8",
                    is_bigendian=0,
                    step=SIDE * 3,
                    data=rgb.reshape(-1),
                )
            writer.write(connection, ns, store.serialize_cdr(msg, msgtype))
    return path


class MjpegServer:
    """A local HTTP multipart MJPEG server of a clip's frames (looped) that fails on demand.

    `stop()` drops every connection and closes the port (a camera server that died); `start()` opens the same port
    again; `stall = True` keeps the connections but sends nothing; `corrupt_next()` sends one part that is not a JPEG.
    `sent` counts the frames sent since the start."""

    boundary = "frame"

    def __init__(self, frames: list[np.ndarray], fps: float = 25.0) -> None:
        self.jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes() for f in frames]
        self.fps = fps
        self.port = 0
        self.sent = 0
        self.stall = False
        self._corrupt = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._generation = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def corrupt_next(self) -> None:
        self._corrupt.set()

    def start(self) -> MjpegServer:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._generation += 1
            clients, self._clients = self._clients, []
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for sock in clients:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                with owner._lock:
                    generation = owner._generation
                    owner._clients.append(self.connection)
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={owner.boundary}")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                i = 0
                try:
                    while owner._generation == generation:
                        if owner.stall:
                            time.sleep(0.02)
                            continue
                        data = owner.jpegs[i % len(owner.jpegs)]
                        if owner._corrupt.is_set():
                            owner._corrupt.clear()
                            data = b"\xff\xd8" + b"not a jpeg at all" * 20 + b"\xff\xd9"
                        else:
                            i += 1
                        head = f"--{owner.boundary}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
                        self.wfile.write(head.encode() + data + b"\r\n")
                        self.wfile.flush()
                        owner.sent += 1
                        time.sleep(1.0 / owner.fps)
                except OSError:
                    pass

        return Handler
