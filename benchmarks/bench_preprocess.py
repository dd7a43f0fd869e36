"""Preprocessing speed: edgeclip against the PIL reference pipeline, measured in the same run.

    python benchmarks/bench_preprocess.py [--repeats 30] [--json]

Cases: one 1920x1080 camera frame (numpy BGR, as from cv2.VideoCapture), a batch of 8 such frames, and one
1920x1080 JPEG given as bytes (decode included). The reference is what a PyTorch user runs: cv2.cvtColor to RGB,
PIL's resize (bicubic, shortest side to 224), center crop, ToTensor and Normalize (in numpy, as torch computes them).
edgeclip runs in both modes: "exact" (the reference's pixels) and "fast" (JPEGs decoded at reduced scale, large
images box-reduced before the bicubic pass; `Preprocessor(mode="fast")`), and the mean and largest difference of
each from the reference are printed in 8-bit steps. Timings alternate between the pipelines so that load on a shared
machine hits them alike; medians are reported.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for edgeclip and tests.images

from timing import compare  # benchmarks/timing.py: run as python benchmarks/<script>.py

from edgeclip.contract import ImageSpec
from edgeclip.preprocess import Preprocessor
from tests.images import encode, make_photo, pil_reference


def reference(images: list[Image.Image], spec: ImageSpec) -> np.ndarray:
    """torchvision's Resize(size, BICUBIC), CenterCrop(size), ToTensor(), Normalize(mean, std), on PIL images."""
    return np.ascontiguousarray(np.stack([pil_reference(image, spec) for image in images]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    spec = ImageSpec()
    frames = [np.ascontiguousarray(make_photo(1920, 1080, seed)[:, :, ::-1]) for seed in range(8)]  # BGR
    jpeg = encode(frames[0][:, :, ::-1], "JPEG", quality=90)
    edgeclip_1 = Preprocessor(spec)
    edgeclip_2 = Preprocessor(spec, threads=2)
    fast_1 = Preprocessor(spec, mode="fast")

    def ref_frames(batch: list[np.ndarray]) -> np.ndarray:
        return reference([Image.fromarray(cv2.cvtColor(f, cv2.COLOR_BGR2RGB)) for f in batch], spec)

    def ref_jpeg() -> np.ndarray:
        return reference([Image.open(io.BytesIO(jpeg)).convert("RGB")], spec)

    results = {
        "frame 1920x1080 BGR, batch 1": compare(
            {
                "reference": lambda: ref_frames(frames[:1]),
                "edgeclip": lambda: edgeclip_1(frames[0], color_order="BGR"),
                "edgeclip fast": lambda: fast_1(frames[0], color_order="BGR"),
            },
            args.repeats,
        ),
        "frame 1920x1080 BGR, batch 8": compare(
            {
                "reference": lambda: ref_frames(frames),
                "edgeclip": lambda: edgeclip_1(frames, color_order="BGR"),
                "edgeclip threads=2": lambda: edgeclip_2(frames, color_order="BGR"),
                "edgeclip fast": lambda: fast_1(frames, color_order="BGR"),
            },
            max(3, args.repeats // 4),
        ),
        "JPEG 1920x1080 bytes, batch 1": compare(
            {"reference": ref_jpeg, "edgeclip": lambda: edgeclip_1(jpeg), "edgeclip fast": lambda: fast_1(jpeg)},
            args.repeats,
        ),
    }
    step = 1 / 255 / min(spec.std)  # one 8-bit level after normalisation (the largest one)
    diffs = {
        f"{mode} {source}": np.abs(got - want) / step
        for want, source, pair in [
            (ref_frames(frames), "frames", (edgeclip_1(frames, color_order="BGR"), fast_1(frames, color_order="BGR"))),
            (ref_jpeg(), "jpeg", (edgeclip_1(jpeg), fast_1(jpeg))),
        ]
        for mode, got in zip(("exact", "fast"), pair, strict=True)
    }
    levels = {name: {"mean": float(d.mean()), "max": float(d.max())} for name, d in diffs.items()}
    if args.json:
        print(json.dumps({"median_ms": results, "diff_vs_reference_8bit_levels": levels}, indent=2))
        return
    for case, timings in results.items():
        base = timings["reference"]
        print(case)
        for name, ms in timings.items():
            print(f"  {name:<20} {ms:8.2f} ms   {base / ms:5.2f}x")
    for name, level in levels.items():
        print(f"|edgeclip {name} - reference|: mean {level['mean']:.3f}, max {level['max']:.1f} 8-bit levels")


if __name__ == "__main__":
    main()
