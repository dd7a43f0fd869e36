"""ONNX Runtime's spinning on (the default) against off (`edgeclip.load(..., spinning=False)`), in one process.

Two loops at batch 8 (text at the full context length): one model's image and text towers called in turn, and
the image tower back to back. Each case runs 3 calls; the cases alternate round after round, each after a 0.3 s
pause so that no case meets the spinning threads of the one before; medians are printed, with the off / on ratio.

    python benchmarks/bench_spinning.py BUNDLE [--precision int8] [--rounds 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

import edgeclip
from edgeclip.runtime import Model

CALLS = 3
PAUSE_S = 0.3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--precision", default=None, help="fp32 | fp16 | int8 (default: the bundle's fastest)")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    models = {
        spin: edgeclip.load(args.bundle, backend="onnxruntime", precision=args.precision, spinning=spin)
        for spin in (True, False)
    }
    rng = np.random.default_rng(0)
    image, text = models[True].runner("image"), models[True].runner("text")
    pixels = rng.standard_normal((8, *image.inputs[0].shape[1:])).astype(np.float32)
    context = models[True].contract.text.context_length
    ids = rng.integers(1, 49000, (8, context), dtype=np.int64)
    ids[:, min(20, context - 1)] = 49407

    def in_turn(model: Model) -> None:
        model.runner("image").infer({image.inputs[0].name: pixels})
        model.runner("text").infer({text.inputs[0].name: ids})

    def back_to_back(model: Model) -> None:
        model.runner("image").infer({image.inputs[0].name: pixels})

    loops: dict[str, Callable[[Model], None]] = {"image and text in turn": in_turn, "image back to back": back_to_back}
    times: dict[tuple[str, bool], list[float]] = {(loop, spin): [] for loop in loops for spin in models}
    for call in loops.values():  # warm-up
        for model in models.values():
            call(model)
    for r in range(args.rounds):
        order = list(models.items()) if r % 2 == 0 else list(models.items())[::-1]
        for loop, call in loops.items():
            for spin, model in order:
                time.sleep(PAUSE_S)
                start = time.perf_counter()
                for _ in range(CALLS):
                    call(model)
                times[loop, spin].append((time.perf_counter() - start) / CALLS)
    for loop in loops:
        on, off = (statistics.median(times[loop, spin]) for spin in (True, False))
        print(f"{loop}: spinning on {1000 * on:.1f} ms, off {1000 * off:.1f} ms, off / on {off / on:.3f}")
    for model in models.values():
        model.close()


if __name__ == "__main__":
    main()
