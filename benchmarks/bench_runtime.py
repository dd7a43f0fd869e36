"""Runtime throughput: edgeclip on ONNX Runtime (CPU, fp32) vs PyTorch eager of the same model, in one run.

    python benchmarks/bench_runtime.py                 # ViT-B/32-shaped random weights (export takes minutes)
    python benchmarks/bench_runtime.py --preset tiny   # the built-in model, seconds

Reports medians and ratios (the machines are shared and noisy: only same-run ratios mean much), the export time,
the cold start of `edgeclip classify` with a cached label bank, and the runtime's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_checkpoint(preset: str, folder: Path) -> Path:
    import torch

    if preset == "tiny":
        from edgeclip.builtin import checkpoint_path

        return checkpoint_path()
    from edgeclip.models import CLIP
    from edgeclip.models.config import preset as get_preset

    torch.manual_seed(0)
    model = CLIP(get_preset(preset))
    path = folder / f"{preset}.pt"
    torch.save(model.state_dict(), path)
    return path


def run_cli(args: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one `edgeclip` process."""
    code = (
        "import resource, sys, time; t = time.perf_counter(); from edgeclip.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
        "print('BENCH', time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("BENCH")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"edgeclip {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return wall, int(line[-1].split()[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ViT-B-32-quickgelu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="threads for both (default: all cores)")
    args = parser.parse_args()

    import torch

    import edgeclip
    from edgeclip.checkpoint import load_checkpoint
    from edgeclip.export import bundle_from_checkpoint

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="edgeclip-bench-"))
    source = make_checkpoint(args.preset, work)
    t0 = time.perf_counter()
    report = bundle_from_checkpoint(source, work / "bundle")
    export_s = time.perf_counter() - t0

    ckpt = load_checkpoint(source)
    torch_model, contract = ckpt.model.eval(), ckpt.contract
    size, ctx = contract.image.size, contract.text.context_length
    rng = np.random.default_rng(0)
    results: dict[str, object] = {"preset": args.preset, "threads": threads, "export_s": round(export_s, 1)}
    with edgeclip.load(report.path, backend="onnxruntime", threads=threads) as model:
        image_runner, text_runner = model.runner("image"), model.runner("text")
        for batch in (1, 8):
            pixels = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
            tp = torch.from_numpy(pixels)
            with torch.inference_mode():
                t_torch = median_seconds(lambda tp=tp: torch_model.encode_image(tp), args.repeats)
            t_ort = median_seconds(lambda p=pixels: image_runner.infer({"pixels": p}), args.repeats)
            results[f"image_b{batch}"] = {
                "torch_img_per_s": round(batch / t_torch, 2),
                "edgeclip_img_per_s": round(batch / t_ort, 2),
                "ratio": round(t_torch / t_ort, 2),
            }
        ids = np.asarray(model.tokenizer([f"a photo of a thing number {i}" for i in range(8)]), dtype=np.int64)
        ti = torch.from_numpy(ids)
        with torch.inference_mode():
            t_torch = median_seconds(lambda: torch_model.encode_text(ti), args.repeats)
        t_ort = median_seconds(lambda: text_runner.infer({"input_ids": ids}), args.repeats)
        results["text_b8"] = {
            "torch_txt_per_s": round(8 / t_torch, 1),
            "edgeclip_txt_per_s": round(8 / t_ort, 1),
            "ratio": round(t_torch / t_ort, 2),
            "context_length": ctx,
        }

    # Cold start of the CLI with the label bank already cached: the second of two identical runs.
    image = work / "frame.png"
    import cv2

    cv2.imwrite(str(image), rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    env = dict(os.environ, EDGECLIP_CACHE=str(work / "cache"))
    cmd = ["classify", str(image), "--labels", "cat,dog,robot,car", "--bundle", str(report.path)]
    run_cli(cmd, env)
    walls, rss = [], []
    for _ in range(3):
        wall, peak = run_cli(cmd, env)
        walls.append(wall)
        rss.append(peak)
    results["classify_cold_start_s"] = round(statistics.median(walls), 2)
    results["classify_peak_rss_mib"] = round(max(rss) / 1024, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
