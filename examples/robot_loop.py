"""A plain robot control loop over edgeclip's per-frame API: read a frame, classify it, decide, act.

    python examples/robot_loop.py --source 0 --labels "a person,a forklift,an empty aisle" --stop-on "a person"

Each tick reads the next frame of the source, classifies it with a `FrameClassifier` (the label bank is computed
once, before the loop) and decides an action: "stop" when the best label is one of --stop-on with a score of at
least --min-score, "go" otherwise. A real robot would send that to its controller where this prints it. A camera
that drops out is reopened; a frame that cannot be decoded is skipped. Any --source that `edgeclip stream` takes
works here too (a video file or a ROS 2 bag to try it without a camera). For a camera faster than the loop, where
only the newest frame matters, iterate an `edgeclip.stream.Stream` instead: it keeps the newest frame only.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from edgeclip.errors import EdgeClipError
from edgeclip.stream import CorruptFrame, FrameClassifier, SourceFault, open_source


def decide(labels: tuple[str, ...], scores: tuple[float, ...], stop_on: set[str], min_score: float) -> str:
    return "stop" if labels[0] in stop_on and scores[0] >= min_score else "go"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="0", help="camera index, video file, BAG#/topic, rtsp://... (default: 0)")
    parser.add_argument("--labels", required=True, help="comma-separated labels")
    parser.add_argument("--stop-on", action="append", default=[], help="a label that makes the robot stop")
    parser.add_argument("--min-score", type=float, default=0.5, help="score the stop label needs (default: 0.5)")
    parser.add_argument("--bundle", default=None, help="bundle directory (default: the built-in model)")
    parser.add_argument("--rate", type=float, default=10.0, help="control ticks per second (0: as fast as it can)")
    parser.add_argument("--ticks", type=int, default=0, help="stop after this many ticks (0: run until the end)")
    args = parser.parse_args(argv)

    try:
        labels = [label.strip() for label in args.labels.split(",") if label.strip()]
        classifier = FrameClassifier.load(labels, bundle=args.bundle)
        classifier.warmup()
        source = open_source(args.source)
        source.open()
    except EdgeClipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    stop_on = set(args.stop_on)
    period = 1.0 / args.rate if args.rate > 0 else 0.0
    ticks = 0
    try:
        while args.ticks == 0 or ticks < args.ticks:
            started = time.monotonic()
            try:
                frame = source.read()
            except CorruptFrame:
                continue
            except SourceFault as exc:  # the camera went away: tell the robot, wait, reopen
                print(f"camera lost ({exc}): holding still", file=sys.stderr)
                time.sleep(1.0)
                source.close()
                with contextlib.suppress(EdgeClipError):
                    source.open()
                continue
            if frame is None:  # the end of a file or bag
                break
            result = classifier.classify(frame.image, top_k=3)
            action = decide(result.labels, result.scores, stop_on, args.min_score)
            ms = (time.monotonic() - frame.captured) * 1000
            print(f"frame {frame.index}: {result.labels[0]} {result.scores[0]:.2f} -> {action} ({ms:.1f} ms)")
            ticks += 1
            if period:
                time.sleep(max(0.0, period - (time.monotonic() - started)))
    except KeyboardInterrupt:
        pass
    finally:
        source.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
