"""ONNX Runtime CPU settings for a bundle's fp32 graphs: which session options, call forms and graph forms are fastest,
with their outputs against edgeclip's default session, measured in one run.

    python benchmarks/bench_ort_settings.py BUNDLE [--tower image] [--batch 8] [--repeats 10] [--memory] [--json]
    python benchmarks/bench_ort_settings.py BUNDLE --cases default,no-spin,fused --fused FUSED_DIR

Each case is one InferenceSession (or one way of calling the default one); the cases run in turn, round after round,
so that load on a shared machine hits all alike; medians and ratios to "default" (edgeclip's OrtOptions) are
reported. --memory adds the peak RSS (VmHWM) of a fresh process that starts the session and runs one batch.
"fused" runs the graph that `edgeclip.optimize.fuse_transformer` writes (made once into --fused DIR).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for edgeclip

from edgeclip.bench import peak_rss_kib
from edgeclip.runtime.backends.onnxruntime import OrtOptions

# case -> (session config entries, SessionOptions attributes, OrtOptions fields)
SESSION_CASES: dict[str, tuple[dict[str, str], dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}, {}),
    "threads=1": ({}, {}, {"intra_op_threads": 1}),
    "threads=2": ({}, {}, {"intra_op_threads": 2}),
    "opt=disable": ({}, {}, {"graph_optimization": "disable"}),
    "opt=basic": ({}, {}, {"graph_optimization": "basic"}),
    "opt=extended": ({}, {}, {"graph_optimization": "extended"}),
    "spin": ({"session.intra_op.allow_spinning": "1"}, {}, {}),
    "no-spin": ({"session.intra_op.allow_spinning": "0"}, {}, {}),
    "no-arena": ({}, {"enable_cpu_mem_arena": False}, {}),
    "no-mem-pattern": ({}, {"enable_mem_pattern": False}, {}),
    "no-prepack": ({"session.disable_prepacking": "1"}, {}, {}),
    "no-denormal": ({"session.set_denormal_as_zero": "1"}, {}, {}),
}
CALL_CASES = ("iobinding", "split-2", "split-batch")  # ways of calling the default session
DEFAULT_CASES = ("default", "threads=1", "opt=basic", "opt=extended", "no-spin", "no-arena", "no-mem-pattern",
                 "no-prepack", "iobinding", "split-2", "split-batch")  # fmt: skip


def session_options(case: str) -> ort.SessionOptions:
    entries, attrs, fields = SESSION_CASES[case]
    so = OrtOptions(**fields).session_options()
    for key, value in entries.items():
        so.add_session_config_entry(key, value)
    for key, value in attrs.items():
        setattr(so, key, value)
    return so


def graph_input(path: Path) -> tuple[str, list[int | str]]:
    """Name and shape of the graph's input, from the manifest beside it (no session: its memory would count)."""
    manifest = json.loads((path.parent / "edgeclip.json").read_text())
    tower = next(g for g in manifest["graphs"] if g["tower"] in path.stem)
    return tower["inputs"][0]["name"], tower["inputs"][0]["shape"]


def feed_for(name: str, shape: list[int | str], tower: str, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if tower == "image":
        size = int(shape[-1])
        return {name: rng.standard_normal((batch, 3, size, size)).astype(np.float32)}
    length = shape[1] if isinstance(shape[1], int) else 77
    ids = rng.integers(1, 49000, (batch, length), dtype=np.int64)
    ids[:, length // 2] = 49407  # an end-of-text token in every row
    return {name: ids}


def make_call(case: str, path: Path, sessions: dict[str, ort.InferenceSession], feed: dict[str, np.ndarray]):
    """The callable of one case and the session it runs on."""
    if case in CALL_CASES:
        session = sessions.setdefault("default", _session(path, "default"))
        name, array = next(iter(feed.items()))
        if case == "iobinding":
            binding = session.io_binding()
            out = session.get_outputs()[0]
            dim = out.shape[-1]
            result = ort.OrtValue.ortvalue_from_shape_and_type([len(array), dim], np.float32)
            binding.bind_cpu_input(name, array)
            binding.bind_ortvalue_output(out.name, result)

            def bound() -> np.ndarray:
                session.run_with_iobinding(binding)
                return result.numpy()

            return bound
        parts = 2 if case == "split-2" else len(array)
        chunks = np.array_split(array, parts)
        return lambda: np.concatenate([session.run(None, {name: c})[0] for c in chunks])
    session = sessions.setdefault(case, _session(path, case))
    return lambda: session.run(None, feed)[0]


def _session(path: Path, case: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), sess_options=session_options(case), providers=["CPUExecutionProvider"])


def alternate(cases: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    for fn in cases.values():
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def memory(path: Path, case: str, tower: str, batch: int, plain: Path) -> float:
    """Peak RSS (MiB) of a fresh process that starts the session of `case` and runs one batch."""
    name, shape = graph_input(plain)
    request = json.dumps({"path": str(path), "case": case, "tower": tower, "batch": batch, "input": [name, shape]})
    proc = subprocess.run([sys.executable, __file__, "--child", request], capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1]) / 1024


def child(request: dict[str, Any]) -> None:
    path, case = Path(request["path"]), request["case"]
    sessions: dict[str, ort.InferenceSession] = {}
    feed = feed_for(*request["input"], request["tower"], request["batch"])
    make_call(case if case != "fused" else "default", path, sessions, feed)()
    print(peak_rss_kib())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, nargs="?")
    parser.add_argument("--tower", default="image", choices=("image", "text"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES))
    parser.add_argument("--fused", type=Path, default=None, help="folder for the fused graphs (made if missing)")
    parser.add_argument("--memory", action="store_true", help="also the peak RSS of each case, in a fresh process")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(json.loads(args.child))
        return
    if args.bundle is None:
        parser.error("give the bundle directory")

    plain = args.bundle / f"{args.tower}.onnx"
    cases = args.cases.split(",")
    paths = {case: plain for case in cases}
    fusion: dict[str, Any] | None = None
    if "fused" in cases:
        from edgeclip.optimize import fuse_transformer

        if args.fused is None:
            parser.error("the case 'fused' needs --fused DIR")
        fused = args.fused / f"{args.tower}.onnx"
        if not fused.is_file():
            fusion = fuse_transformer(plain, fused)
        paths["fused"] = fused

    sessions: dict[str, ort.InferenceSession] = {}
    base = _session(plain, "default")
    sessions["default"] = base
    feed = feed_for(*graph_input(plain), args.tower, args.batch)
    calls = {}
    for case in cases:
        if case == "fused":
            fused_sessions: dict[str, ort.InferenceSession] = {}
            calls[case] = make_call("default", paths["fused"], fused_sessions, feed)
        else:
            calls[case] = make_call(case, plain, sessions, feed)
    reference = np.asarray(base.run(None, feed)[0], dtype=np.float64)
    parity = {}
    for case, fn in calls.items():
        out = np.asarray(fn(), dtype=np.float64)
        cos = (out * reference).sum(-1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(reference, axis=-1))
        parity[case] = {"min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(out - reference).max())}
    times = alternate(calls, args.repeats)
    medians = {case: statistics.median(t) for case, t in times.items()}
    results: dict[str, Any] = {
        "tower": args.tower,
        "batch": args.batch,
        "repeats": args.repeats,
        "onnxruntime": ort.__version__,
        "fusion": fusion,
        "cases": {
            case: {
                "median_ms": round(ms, 2),
                "items_per_s": round(args.batch * 1e3 / ms, 2),
                "vs_default": round(medians.get("default", ms) / ms, 3),
                **parity[case],
            }
            for case, ms in medians.items()
        },
    }
    if args.memory:
        for case in cases:
            results["cases"][case]["peak_rss_mib"] = round(memory(paths[case], case, args.tower, args.batch, plain), 1)
        results["graph_mib"] = round(plain.stat().st_size / 2**20, 1)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{args.tower} tower, batch {args.batch}, {args.repeats} rounds, onnxruntime {ort.__version__}")
    for case, r in results["cases"].items():
        rss = f"  {r['peak_rss_mib']:7.1f} MiB" if "peak_rss_mib" in r else ""
        print(
            f"  {case:<15} {r['median_ms']:9.2f} ms  {r['items_per_s']:7.2f}/s  {r['vs_default']:5.2f}x  "
            f"cos {r['min_cosine']:.9f}  max|d| {r['max_abs_diff']:.2e}{rss}"
        )


if __name__ == "__main__":
    main()
