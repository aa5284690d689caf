#!/usr/bin/env bash
# The CPU benchmarks committed in benchmarks/results/ (run on an otherwise idle machine):
# loaders (4 backends x 4 settings, 50k synthetic images), training efficiency per backend
# (ResNet18, eager), and conversion speed/memory for 100k 64x64 images.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
R=benchmarks/results
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$R"
$PY -m normfast convert synthetic --out "$WORK/syn50k" --limit 50000 --force -q
$PY -m normfast bench loaders --data "$WORK/syn50k" --device cpu --epochs 2 --json "$R/loaders-cpu.json" | tee "$R/loaders-cpu.log"
$PY -m normfast bench train --data "$WORK/syn50k" --device cpu --model resnet18 --steps 10 --warmup 3 \
  --repeats 3 --json "$R/train-cpu.json" | tee "$R/train-cpu.log"
$PY benchmarks/bench_convert.py --limit 100000 --size 64 --out "$R/convert-cpu.json"
