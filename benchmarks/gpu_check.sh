#!/usr/bin/env bash
# GPU check: on a machine with one CUDA GPU where torch, torchvision, numpy, click, pyyaml,
# tqdm, pillow, scipy and matplotlib are installed (DALI and FFCV optional), with no network,
# measure for ResNet18 and ResNet50 at 32 px, batch 256, bf16, channels-last, eager and CUDA
# graphs: the model-bound ceiling and each backend's end-to-end images/s and efficiency.
# Converts the built-in synthetic dataset; needs no download. Prints one markdown table and
# writes it (with the machine) to $OUT (default benchmarks/results/gpu-check-<gpu>.{md,json}).
#   bash benchmarks/gpu_check.sh            # DEVICE=cpu STEPS=3 for a dry run without a GPU
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-30}
LIMIT=${LIMIT:-20000}
MODELS=${MODELS:-resnet18,resnet50}
COMPILES=${COMPILES:-none,cudagraphs}
WORK=${WORK:-$(mktemp -d)}
[ "$DEVICE" = cpu ] && COMPILES=${COMPILES/cudagraphs/default}

backends=resident,torch
formats=dali
if "$PY" -c "import nvidia.dali" 2>/dev/null; then backends="$backends,dali"; else echo "gpu_check: DALI not importable here; no dali rows"; fi
if "$PY" -c "import ffcv" 2>/dev/null; then backends="$backends,ffcv"; formats="dali,ffcv"; else echo "gpu_check: FFCV not importable here; no ffcv rows"; fi

"$PY" -m normfast convert synthetic --out "$WORK/synthetic" --limit "$LIMIT" --format "$formats" --force -q
gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-') if torch.cuda.is_available() else 'cpu')")
OUT=${OUT:-benchmarks/results/gpu-check-$gpu}
"$PY" -m normfast bench train --data "$WORK/synthetic" --backend "$backends" --model "$MODELS" \
  --compile "$COMPILES" --device "$DEVICE" --amp "$([ "$DEVICE" = cpu ] && echo off || echo bf16)" \
  --batch-size 256 --steps "$STEPS" --warmup 10 --repeats 3 --num-workers "$(nproc)" --json "$OUT.json" \
  | tee "$OUT.log"
"$PY" - "$OUT.json" "$OUT.md" <<'PYEOF'
import json, sys
from normfast.bench import format_train_table
d = json.load(open(sys.argv[1]))
m = d["machine"]
head = (f"# GPU check\n\nGPU: {m['gpu']}; CPU: {m['cpu']} ({m['cpus']} cores); torch {m['torch']}, "
        f"torchvision {m['torchvision']}, DALI {m['dali']}, FFCV {m['ffcv']}.\n"
        "ResNets at 32 px, batch 256, channels-last; ceiling = the same step on a batch already on the device.\n\n")
open(sys.argv[2], "w").write(head + format_train_table(d["records"]) + "\n")
print(open(sys.argv[2]).read())
PYEOF
