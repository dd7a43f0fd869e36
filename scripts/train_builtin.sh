#!/usr/bin/env bash
# Train the built-in model "tiny" exactly as shipped: the recipe and seed in edgeclip/builtin/recipe.json.
# 5,400 steps on two torch threads: 51 minutes on a 2-core AVX-512 EPYC (Zen 4); the recipe before the vivid
# backgrounds took 85 on a 2-core AVX2 one (Zen 3), with nothing else running (edgeclip/builtin/README.md). Writes runs/tiny/ (checkpoints, metrics.jsonl) and, at the end,
# edgeclip/builtin/tiny.safetensors (fp16). Extra arguments go to `edgeclip train`: add `--resume runs/tiny` to
# continue an interrupted run exactly.
set -euo pipefail
cd "$(dirname "$0")/.."
EDGECLIP="${EDGECLIP:-.venv/bin/edgeclip}"
exec "$EDGECLIP" train --recipe edgeclip/builtin/recipe.json --out runs/tiny \
    --final edgeclip/builtin/tiny.safetensors --final-dtype fp16 "$@"
