"""The CPU training step of a recipe with and without `edgeclip.train.heap.keep_freed_memory`, measured in one run.

    python benchmarks/bench_train_step.py [--recipe edgeclip/builtin/recipe.json] [--steps 60] [--rounds 3] [--json]

Each round runs the recipe's first --steps steps twice, in fresh processes and in turn ("default": glibc's own
malloc thresholds; "keep": edgeclip's), through `edgeclip.train.run.run` without evaluation. Reported: the median
seconds per step after the first 10 steps (warm-up) and the trainer process's page faults per step, and whether
every run gave the same losses (the setting must change no arithmetic).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, for edgeclip

WARMUP = 10
CASES = ("default", "keep")
FIGURES = ("s_per_step", "faults_per_step", "user_s_per_step", "system_s_per_step")


def child(case: str, recipe: Path, steps: int) -> dict[str, Any]:
    import edgeclip.train.heap as heap
    from edgeclip.train.run import RunSpec, run

    if case == "default":
        heap.keep_freed_memory = lambda: False  # type: ignore[assignment]  # glibc's thresholds, as before
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        spec = RunSpec(out=out, recipe=recipe, train={"steps": steps, "log_every": 1, "ckpt_every": 10**6},
                       eval=False, progress=False)  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_SELF)
        result = run(spec)
        after = resource.getrusage(resource.RUSAGE_SELF)
        logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = {r["step"]: r["seconds"] for r in logged if "seconds" in r}
    per_step = (seconds[steps] - seconds[WARMUP]) / (steps - WARMUP)
    return {
        "case": case,
        "s_per_step": per_step,
        "faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
        # CPU seconds of the trainer process per step (its page faults show as system time)
        "user_s_per_step": (after.ru_utime - before.ru_utime) / steps,
        "system_s_per_step": (after.ru_stime - before.ru_stime) / steps,
        "losses": result.losses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "edgeclip" / "builtin" / "recipe.json")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps <= WARMUP:
        parser.error(f"--steps must be more than the {WARMUP} warm-up steps")
    if args.child:
        print(json.dumps(child(args.child, args.recipe, args.steps)))
        return
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    for r in range(args.rounds):
        for case in CASES:
            command = [
                sys.executable,
                __file__,
                "--child",
                case,
                "--recipe",
                str(args.recipe),
                "--steps",
                str(args.steps),
            ]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            runs[case].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {case}: {runs[case][-1]['s_per_step']:.3f} s/step", file=sys.stderr)
    losses = [run["losses"] for case in CASES for run in runs[case]]
    report: dict[str, Any] = {
        "recipe": str(args.recipe),
        "steps": args.steps,
        "rounds": args.rounds,
        "identical_losses": all(loss == losses[0] for loss in losses),
    }
    for case in CASES:
        report[case] = {key: statistics.median(run[key] for run in runs[case]) for key in FIGURES}
    report["speedup"] = report["default"]["s_per_step"] / report["keep"]["s_per_step"]
    if args.json:
        print(json.dumps(report))
        return
    for case in CASES:
        r = report[case]
        cpu = f"{r['user_s_per_step']:.3f} s user, {r['system_s_per_step']:.3f} s system"
        print(f"{case:8s} {r['s_per_step']:.3f} s/step ({cpu}), {r['faults_per_step']:.0f} page faults/step")
    print(f"speed-up {report['speedup']:.2f}x; identical losses in every run: {report['identical_losses']}")


if __name__ == "__main__":
    main()
