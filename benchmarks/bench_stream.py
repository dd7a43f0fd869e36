"""Streams: what the pipeline costs on top of the model, on this CPU.

    python benchmarks/bench_stream.py                      # built-in model, ViT-B/32 fp32 and int8 (export: minutes)
    python benchmarks/bench_stream.py --models builtin     # the built-in model alone, seconds
    python benchmarks/bench_stream.py --work DIR           # keep the ViT-B/32 bundles in DIR for the next run

Each measurement lasts about --seconds (a slow model gets fewer frames, at least 24; a fast one --frames).

For each model and precision, in turn, round after round (the machine is shared: medians of interleaved runs):

- model only: the image graph called on preprocessed pixels, batch 1 (frames per second);
- per frame: `FrameClassifier.classify` in a loop on 640x480 BGR frames (preprocessing + graph + label scores);
- decode: reading a 640x480 MJPEG video of the built-in model's world alone (OpenCV, frames per second);
- stream (file): `Stream` over that video, every frame processed: end-to-end FPS (from
  the call that opens the stream to its end; `steady_fps` from the first result to the last), and the overhead
  against the per-frame loop and against the model alone;
- stream (live): `Stream` over a camera-like source that makes 640x480 frames at a fixed rate, a little below what
  the per-frame loop reaches (so that frames are not dropped by design): capture-to-result latency p50 and p99,
  frames dropped, and the process's CPU use (user + system time over wall time; 100% is one core).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.stream import Frame, Source

sys.path.insert(0, str(Path(__file__).resolve().parent))

WIDTH, HEIGHT = 640, 480


def world_frames(n: int) -> list[np.ndarray]:
    """n 640x480 BGR frames of the built-in model's world, a new scene every 20 frames, each with its own noise."""
    import cv2

    from edgeclip.world import World, eval_set

    items = eval_set("color_shape", n=16, seed=7)
    world = World(7)
    rng = np.random.default_rng(7)
    frames = []
    for i in range(n):
        rgb = world.render(items[(i // 20) % len(items)].scene, rng)
        frames.append(cv2.cvtColor(cv2.resize(rgb, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR), cv2.COLOR_RGB2BGR))
    return frames


def write_video(frames: list[np.ndarray], path: Path) -> Path:
    import cv2

    # MJPEG, as most USB and IP cameras send: a few ms to decode a frame (FFV1 takes ten times that here)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise SystemExit(f"OpenCV cannot write MJPEG to {path}")
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def vitb32_bundles(work: Path) -> tuple[Path, Path]:
    """ViT-B/32-shaped random weights exported to a bundle, then int8 (CPU format) for the image tower; reused."""
    fp32, int8 = work / "vitb32", work / "vitb32-q"
    if (int8 / "edgeclip.json").is_file():
        return fp32, int8
    from bench_runtime import make_checkpoint

    from edgeclip.bench import synthetic_jpeg
    from edgeclip.export import bundle_from_checkpoint
    from edgeclip.precision.variants import PrecisionOptions, quantize_bundle

    if not (fp32 / "edgeclip.json").is_file():
        print("exporting ViT-B/32-shaped random weights (minutes) ...", file=sys.stderr)
        bundle_from_checkpoint(make_checkpoint("ViT-B-32-quickgelu", work), fp32)
    calib = work / "calib"
    calib.mkdir(exist_ok=True)
    for i in range(32):
        (calib / f"{i:02d}.jpg").write_bytes(synthetic_jpeg(WIDTH, HEIGHT, seed=i))
    captions = work / "captions.txt"
    captions.write_text("\n".join(f"a photo of a thing number {i}" for i in range(64)) + "\n")
    print("quantizing the image tower to int8 (minutes) ...", file=sys.stderr)
    options = PrecisionOptions(
        int8=True, int8_towers=("image",), calib=calib, calib_text=captions, cpu_scheme="dynamic-u8s8"
    )
    quantize_bundle(fp32, options, out=int8, log=lambda line: print(line, file=sys.stderr))
    return fp32, int8


class PacedSource(Source):
    """A camera-like live source: the frames, looped, at `fps` (a frame is made when its time comes)."""

    live = True

    def __init__(self, frames: list[np.ndarray], fps: float) -> None:
        super().__init__()
        self.frames = frames
        self.fps = fps
        self.name = f"paced source at {fps:g} FPS"
        self._start = 0.0

    def open(self) -> None:
        self._start = time.monotonic()

    def read(self) -> Frame:
        assert self.fps is not None
        delay = self._start + self._index / self.fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return self._frame(self.frames[self._index % len(self.frames)], time.time())


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def model_only(model: Any, repeats: int) -> float:
    runner = model.runner("image")
    size = model.contract.image.size
    feeds = {"pixels": np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)}
    for _ in range(3):
        runner.infer(feeds)
    start = time.perf_counter()
    for _ in range(repeats):
        runner.infer(feeds)
    return repeats / (time.perf_counter() - start)


def decode(video: Path) -> float:
    import cv2

    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    start, n = time.perf_counter(), 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n / (time.perf_counter() - start)


def per_frame(classifier: Any, frames: list[np.ndarray]) -> float:
    for frame in frames[:3]:
        classifier.classify(frame)
    start = time.perf_counter()
    for frame in frames:
        classifier.classify(frame)
    return len(frames) / (time.perf_counter() - start)


def stream_file(classifier: Any, video: Path) -> dict[str, float]:
    from edgeclip.stream import Stream

    cpu0 = cpu_seconds()
    start = time.perf_counter()
    done: list[float] = []
    with Stream(video, classifier, keep_images=False) as stream:
        latencies = []
        for result in stream:
            latencies.append(result.latency_ms)
            done.append(time.perf_counter())
    wall = time.perf_counter() - start
    return {
        "fps": stream.stats.processed / wall,
        "steady_fps": (len(done) - 1) / (done[-1] - done[0]),
        "cpu_pct": 100 * (cpu_seconds() - cpu0) / wall,
        "processed": stream.stats.processed,
        "p50_ms": float(np.percentile(latencies, 50)),
    }


def stream_live(classifier: Any, frames: list[np.ndarray], fps: float, count: int) -> dict[str, float]:
    from edgeclip.stream import Stream

    latencies: list[float] = []
    cpu0 = cpu_seconds()
    start = time.perf_counter()
    with Stream(PacedSource(frames, fps), classifier, keep_images=False) as stream:
        for result in stream:
            latencies.append(result.latency_ms)
            if len(latencies) >= count:
                stream.stop()
    wall = time.perf_counter() - start
    return {
        "fps": stream.stats.processed / wall,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "dropped": stream.stats.dropped,
        "read": stream.stats.read,
        "cpu_pct": 100 * (cpu_seconds() - cpu0) / wall,
    }


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 2) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="builtin,vitb32", help="builtin and/or vitb32 (comma-separated)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=120, help="frames per measurement at most")
    parser.add_argument("--seconds", type=float, default=4.0, help="about how long each measurement lasts")
    parser.add_argument("--work", type=Path, default=None, help="where the ViT-B/32 bundles are made (and kept)")
    args = parser.parse_args()

    import edgeclip
    from edgeclip.stream import FrameClassifier

    work = args.work or Path(tempfile.mkdtemp(prefix="edgeclip-bench-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    frames = world_frames(args.frames)
    labels = ["a red circle", "a blue square", "a green triangle", "a yellow star", "a purple hexagon", "a cross"]

    cases: list[tuple[str, Path | None, str]] = []
    models = [m.strip() for m in args.models.split(",")]
    if "builtin" in models:
        cases += [("built-in", None, "fp32"), ("built-in", None, "int8")]
    if "vitb32" in models:
        fp32, int8 = vitb32_bundles(work)
        cases += [("ViT-B/32", fp32, "fp32"), ("ViT-B/32", int8, "image=int8,text=fp32")]  # the frames' tower

    loaded = []
    for name, bundle, precision in cases:
        model = edgeclip.load(bundle, backend="onnxruntime", precision=precision)
        classifier = FrameClassifier(model, labels)
        classifier.warmup()
        loaded.append((name, precision.split(",")[0].replace("image=", ""), model, classifier))

    # Each measurement lasts about --seconds: a slow model gets fewer frames (at least 24), a fast one --frames.
    counts = {}
    for name, precision, _, classifier in loaded:
        rate = per_frame(classifier, frames[:8])
        counts[f"{name} {precision}"] = max(24, min(args.frames, int(args.seconds * rate)))
    videos = {n: write_video(frames[:n], work / f"world640-{n}.avi") for n in set(counts.values())}

    runs: dict[str, dict[str, list[dict[str, float]]]] = {f"{n} {p}": {} for n, p, _, _ in loaded}
    for _ in range(args.rounds):
        for name, precision, model, classifier in loaded:
            key = f"{name} {precision}"
            n = counts[key]
            graph_fps = model_only(model, n)
            loop_fps = per_frame(classifier, frames[:n])
            decode_fps = decode(videos[n])
            file = stream_file(classifier, videos[n])
            live = stream_live(classifier, frames, fps=round(0.8 * loop_fps, 1), count=n)
            runs[key].setdefault("model", []).append({"fps": graph_fps})
            runs[key].setdefault("loop", []).append({"fps": loop_fps})
            runs[key].setdefault("decode", []).append({"fps": decode_fps})
            runs[key].setdefault("file", []).append(file)
            runs[key].setdefault("live", []).append({**live, "camera_fps": round(0.8 * loop_fps, 1)})
            print(f"{key}: model {graph_fps:.1f} FPS, loop {loop_fps:.1f}, file {file['fps']:.1f}", file=sys.stderr)

    report: dict[str, Any] = {"rounds": args.rounds, "frames": counts, "size": f"{WIDTH}x{HEIGHT}", "cases": {}}
    for key, parts in runs.items():
        row = {part: median_of(values) for part, values in parts.items()}
        row["overhead_vs_loop_pct"] = round(100 * (1 - row["file"]["fps"] / row["loop"]["fps"]), 1)
        row["overhead_vs_model_pct"] = round(100 * (1 - row["file"]["fps"] / row["model"]["fps"]), 1)
        report["cases"][key] = row
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    report["cpus"] = os.cpu_count()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
