"""Tokenizer speed: edgeclip against the reference (open_clip's `tokenize()`), measured in the same run.

    python benchmarks/bench_tokenizer.py [--repeats 15] [--json]

Cases: 1,000 zero-shot prompts ("a photo of a {label}.") with ASCII labels, and the same with labels in other
scripts, accents, emoji and HTML entities (the path through ftfy). Both tokenizers are warm (vocabulary loaded, BPE
caches filled by a first call), as in a service that tokenizes prompts over and over. Timings alternate between
the two so that load on a shared machine hits both alike; medians are reported. The outputs are checked equal.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for edgeclip and tests.reference

from timing import compare  # benchmarks/timing.py: run as python benchmarks/<script>.py

from edgeclip.tokenizer import Tokenizer
from tests.reference import load_by_path

ADJECTIVES = ["red", "small", "wooden", "old", "striped", "shiny", "broken", "tiny", "giant", "blue", "furry",
              "plastic", "wet", "frozen", "golden", "dusty", "electric", "paper", "glass", "spotted", "rusty",
              "velvet", "hollow", "curly", "sleepy"]  # fmt: skip
NOUNS = ["cat", "dog", "goldfish", "tench", "aircraft carrier", "espresso machine", "traffic light", "sea lion",
         "mountain bike", "teapot", "umbrella", "parrot", "lighthouse", "violin", "tractor", "pelican", "cactus",
         "chessboard", "submarine", "hedgehog", "kayak", "lantern", "microscope", "pretzel", "snowplow", "tortoise",
         "volcano", "waffle iron", "xylophone", "yurt", "zebra", "anvil", "barn owl", "canoe", "dragonfly",
         "echidna", "forklift", "gondola", "harmonica", "iguana"]  # fmt: skip
FOREIGN = ["café", "crème brûlée", "Straße", "日本の猫", "중국 요리", "пирог", "ﬁsh", "jalapeño 🌶️", "R&amp;B singer",
           "naïve painting", "smørrebrød", "Ελληνικό πλοίο", "piñata", "tiramisù", "Ångström meter", "👨‍👩‍👧 family",
           "façade", "déjà vu", "İstanbul street", "crêpe"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    labels = [f"{a} {n}" for a, n in itertools.product(ADJECTIVES, NOUNS)][:1000]
    foreign = [f"{a} {n}" for a, n in itertools.product(ADJECTIVES, FOREIGN * 2)][:1000]
    prompt_sets = {
        "ascii": [f"a photo of a {label}." for label in labels],
        "non-ascii": [f"a photo of a {label}." for label in foreign],
    }
    ours = Tokenizer()
    reference = load_by_path("open_clip", "tokenizer.py").tokenize
    results = {}
    for name, prompts in prompt_sets.items():
        np.testing.assert_array_equal(ours(prompts), reference(prompts).numpy())
        medians = compare({"edgeclip": lambda p=prompts: ours(p), "reference": lambda p=prompts: reference(p)},
                          args.repeats)  # fmt: skip
        results[name] = {
            "prompts": len(prompts),
            "edgeclip_ms": round(medians["edgeclip"], 2),
            "reference_ms": round(medians["reference"], 2),
            "edgeclip_prompts_per_s": round(len(prompts) / medians["edgeclip"] * 1e3),
            "reference_prompts_per_s": round(len(prompts) / medians["reference"] * 1e3),
            "speedup": round(medians["reference"] / medians["edgeclip"], 2),
        }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'case':<10} {'prompts':>7} {'edgeclip ms':>12} {'reference ms':>13} {'speedup':>8}")
    for name, r in results.items():
        ms = f"{r['edgeclip_ms']:>12.2f} {r['reference_ms']:>13.2f}"
        print(f"{name:<10} {r['prompts']:>7} {ms} {r['speedup']:>7.2f}x")


if __name__ == "__main__":
    main()
