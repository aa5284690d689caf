#!/usr/bin/env bash
# The GPU acceptance check: on a machine with one CUDA GPU where torch, torchvision, numpy,
# click, pyyaml, tqdm, pillow, scipy and matplotlib are installed (DALI and FFCV optional:
# their rows and targets are skipped, and said so, when they do not import), with no
# network. Converts the built-in synthetic dataset (no download) and runs, each step in its
# own process, writing as it goes:
#   tests   the CUDA tests (pytest -k "cuda or gpu")
#   table   bench train: ResNet18 and ResNet50, 32 px, batch 256, bf16, channels-last,
#           eager and CUDA graphs, every backend against the same-process ceiling
#           (each loader built, measured and closed before the next); dali and ffcv with
#           their default chunk and with one batch at a time (CHUNKS; the targets use the
#           default); dali on JPEG shards (nvJPEG) eager
#   train   a short real `normfast train` per backend, eager and --compile cudagraphs, on a
#           train split of 1,000 images (1000 % 256 = 232: a partial last batch) and a
#           test split of 200 with --test-batch-size 64 (a partial test batch)
#   dense   bench train: the DenseNet121/161 eager and CUDA-graph ceilings with resident
#           (the slowest compiles)
#   fused   bench train --norm finetune,pretrain,instance,minmax: the four settings fused
#           against one after another, all four backbones, eager and CUDA graphs (own budget)
# and ends with one PASS/FAIL/SKIP line per target. Results: $RESULTS.{md,json,log}
# (default benchmarks/results/gpu-check-<gpu>), plus per-step logs beside them.
#   bash benchmarks/gpu_check.sh                         # the whole check (< 8 min on an H100/H200)
#   STEPS_ONLY="tests table train" bash benchmarks/gpu_check.sh   # a subset
#   DEVICE=cpu bash benchmarks/gpu_check.sh              # dry run without a GPU (tiny, eager only)
# Knobs: LIMIT (images), STEPS/WARMUP/REPEATS (bench), MODELS, DENSE (empty: none), COMPILES, CHUNKS,
# TRAIN_COMPILES, NUM_WORKERS, STEP_TIMEOUT (seconds per step), DENSE_TIMEOUT (the DenseNet step,
# default: what is left of BUDGET; it runs last, one step per model and compile mode: its compiles
# are the slowest part), BUDGET (seconds for the whole check, default 470), WORK (scratch folder).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
STEPS_ONLY=${STEPS_ONLY:-tests table train dense fused}
WORK=${WORK:-$(mktemp -d)}
if [ "$DEVICE" = cpu ]; then
  LIMIT=${LIMIT:-1200}; STEPS=${STEPS:-2}; WARMUP=${WARMUP:-1}; REPEATS=${REPEATS:-1}
  COMPILES=${COMPILES:-none}; AMP=off; MODELS=${MODELS:-resnet18}; DENSE=${DENSE-}
  TRAIN_COMPILES=${TRAIN_COMPILES:-none}
else
  LIMIT=${LIMIT:-20000}; STEPS=${STEPS:-30}; WARMUP=${WARMUP:-10}; REPEATS=${REPEATS:-3}
  COMPILES=${COMPILES:-none,cudagraphs}; AMP=bf16; MODELS=${MODELS:-resnet18,resnet50}
  DENSE=${DENSE-densenet121,densenet161}; TRAIN_COMPILES=${TRAIN_COMPILES:-none cudagraphs}
fi
NW=${NUM_WORKERS:-$(nproc)}
BUDGET=${BUDGET:-470}     # seconds the whole check may take (the issue: under 8 minutes)
CHUNKS=${CHUNKS:-auto,1}

backends=resident,torch
formats=dali
if "$PY" -c "import nvidia.dali" 2>/dev/null; then backends="$backends,dali"; else echo "gpu_check: DALI does not import here: no dali rows"; fi
if "$PY" -c "import ffcv" 2>/dev/null; then backends="$backends,ffcv"; formats="dali,ffcv"; else echo "gpu_check: FFCV does not import here: no ffcv rows"; fi
gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-') if torch.cuda.is_available() else 'cpu')")
RESULTS=${RESULTS:-benchmarks/results/gpu-check-$gpu}
mkdir -p "$(dirname "$RESULTS")"
status="$RESULTS.status"; : > "$status"
log() { echo "gpu_check $(date +%H:%M:%S): $*"; }
run_step() {  # name, command...: runs it, logs to $RESULTS.<name>.log, records its exit status
  local name=$1; shift
  log "$name: $*"
  ${STEP_TIMEOUT:+timeout "$STEP_TIMEOUT"} "$@" 2>&1 | tee "$RESULTS.$name.log"
  local rc=${PIPESTATUS[0]}
  echo "$name $rc" >> "$status"
  log "$name exited $rc"
}
want() { case " $STEPS_ONLY " in *" $1 "*) return 0;; esac; return 1; }

log "converting synthetic data into $WORK"
"$PY" -m normfast convert synthetic --out "$WORK/syn" --limit "$LIMIT" --format "$formats" --force -q || exit 1
"$PY" -m normfast convert synthetic --out "$WORK/syn-small" --limit 1000 --format "$formats" --force -q || exit 1
if [[ $backends == *dali* ]]; then
  "$PY" -m normfast convert synthetic --out "$WORK/syn-jpg" --limit "$LIMIT" --format dali --encoding jpg --force -q || exit 1
fi

if want tests; then
  run_step tests "$PY" -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_loaders.py \
    tests/test_ffcv_backend.py -k "cuda or gpu"
fi

bench=("$PY" -m normfast bench train --device "$DEVICE" --amp "$AMP" --batch-size 256 --steps "$STEPS"
       --warmup "$WARMUP" --repeats "$REPEATS" --num-workers "$NW")
if want table; then
  run_step table "${bench[@]}" --data "$WORK/syn" --backend "$backends" --model "$MODELS" \
    --compile "$COMPILES" --chunk-batches "$CHUNKS" --json "$RESULTS.table.json"
  if [[ $backends == *dali* ]]; then
    run_step jpg "${bench[@]}" --data "$WORK/syn-jpg" --backend dali --model resnet18 --compile none \
      --json "$RESULTS.jpg.json"
  fi
fi
if want train; then
  for c in $TRAIN_COMPILES; do
    for b in ${backends//,/ }; do
      run_step "train-$b-$c" "$PY" -m normfast train --data "$WORK/syn-small" --backend "$b" --compile "$c" \
        --model resnet18 --norm finetune --epochs 2 --batch-size 256 --test-batch-size 64 \
        --device "$DEVICE" --amp "$([ "$DEVICE" = cpu ] && echo off || echo bf16)" --num-workers "$NW" \
        --pretrained none --runs "$WORK/runs" --run-name "check-$b-$c" -q
    done
  done
fi

if want dense && [ -n "$DENSE" ]; then
  # one step per model and compile mode, each with what is left of BUDGET seconds (at least
  # 30): a slow compile costs its own row, never the rows already measured or the check's time
  for m in ${DENSE//,/ }; do
    for c in ${COMPILES//,/ }; do
      left=$(( BUDGET - SECONDS )); [ "$left" -lt 30 ] && left=30
      STEP_TIMEOUT=${DENSE_TIMEOUT:-$left} run_step "dense-$m-$c" "${bench[@]}" --data "$WORK/syn" \
        --backend resident --model "$m" --compile "$c" --json "$RESULTS.dense-$m-$c.json"
    done
  done
fi
# ---- fused settings (issue 16; owned by normfast/fused_bench.py) ------------------------------
# bench train --norm finetune,pretrain,instance,minmax: the four settings as one fused model
# against the same four one after another, resident, per model and compile mode. Its own time
# budget FUSED_BUDGET (seconds, default 240) on top of BUDGET; each row gets what is left of it
# (at least 30 s), so a slow compile costs only its own row. STEPS_ONLY without "fused" skips it.
FUSED_BUDGET=${FUSED_BUDGET:-240}
FUSED_MODELS=${FUSED_MODELS:-$([ "$DEVICE" = cpu ] && echo resnet18 || echo resnet18,resnet50,densenet121,densenet161)}
FUSED_BATCH=${FUSED_BATCH:-$([ "$DEVICE" = cpu ] && echo 16 || echo 256)}   # per setting; 4 x 256 on a CPU takes minutes
if want fused; then
  fused_start=$SECONDS
  for m in ${FUSED_MODELS//,/ }; do
    for c in ${COMPILES//,/ }; do
      left=$(( FUSED_BUDGET - (SECONDS - fused_start) )); [ "$left" -lt 30 ] && left=30
      STEP_TIMEOUT=$left run_step "fused-$m-$c" "$PY" -m normfast bench train --device "$DEVICE" --amp "$AMP" \
        --batch-size "$FUSED_BATCH" --steps "$(( STEPS < 10 ? STEPS : 10 ))" --warmup "$(( WARMUP < 3 ? WARMUP : 3 ))" \
        --repeats "$(( REPEATS < 2 ? REPEATS : 2 ))" --num-workers "$NW" --data "$WORK/syn" --backend resident \
        --model "$m" --compile "$c" --norm finetune,pretrain,instance,minmax --json "$RESULTS.fused-$m-$c.json"
    done
  done
fi
# ---- end of the fused block ------------------------------------------------------------------
log "done in $SECONDS s (budget $BUDGET s${FUSED_BUDGET:+ + fused $FUSED_BUDGET s})"
"$PY" - "$RESULTS" "$status" "$WORK/runs" <<'PYEOF'
"""Pass/fail per target, and the markdown summary."""
import json, sys
from pathlib import Path
from normfast.bench import format_train_table, machine

prefix, status_file, runs = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
status = dict(line.split() for line in status_file.read_text().splitlines() if line.strip())
def load(name):
    p = Path(f"{prefix}.{name}.json")
    return json.loads(p.read_text())["records"] if p.exists() else []
table, jpg = load("table"), load("jpg")
dense = [r for p in sorted(Path(prefix).parent.glob(Path(prefix).name + ".dense-*.json"))
         for r in json.loads(p.read_text())["records"]]
lines = []
def verdict(name, value, target, what):
    if value is None:
        lines.append(f"SKIP  {name}: {what} (not measured)")
    else:
        lines.append(f"{'PASS' if value >= target else 'FAIL'}  {name}: {value:.0%} (target >= {target:.0%}) {what}")
def eff(model, compile_, backend, records=table):
    r = [x for x in records if (x["model"], x["compile"], x["backend"]) == (model, compile_, backend)
         and x.get("chunk_requested", "auto") == "auto"]
    return r[0]["efficiency"] if r else None
if "tests" in status:
    lines.append(f"{'PASS' if status['tests'] == '0' else 'FAIL'}  CUDA tests (exit {status['tests']})")
graphs = "cudagraphs"
verdict("resnet18 resident", eff("resnet18", graphs, "resident"), 0.95, "of the CUDA-graph ceiling")
verdict("resnet18 dali raw", eff("resnet18", graphs, "dali"), 0.90, "of the CUDA-graph ceiling")
verdict("resnet18 dali jpg (nvJPEG)", eff("resnet18", "none", "dali", jpg), 0.90, "of the eager ceiling")
verdict("resnet18 ffcv", eff("resnet18", graphs, "ffcv"), 0.85, "of the CUDA-graph ceiling")
for b in ("resident", "dali", "ffcv"):
    verdict(f"resnet50 {b}", eff("resnet50", graphs, b), 0.95, "of the CUDA-graph ceiling")
for name, rc in sorted(status.items()):
    if name.startswith("train-"):
        rows = []
        metrics = runs / "synthetic" / ("check-" + name[len("train-"):]) / "metrics.jsonl"
        if metrics.exists():
            rows = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()]
        ok = rc == "0" and len(rows) == 2
        acc = f", test acc {rows[-1]['test_acc']:.3f}, {rows[-1]['train_images_per_second']:.0f} img/s" if rows else ""
        lines.append(f"{'PASS' if ok else 'FAIL'}  normfast train {name[len('train-'):]} (exit {rc}, {len(rows)}/2 epochs{acc})")
for name, rc in sorted(status.items()):
    if name.startswith("dense-") and rc != "0":
        lines.append(f"{'SKIP' if rc == '124' else 'FAIL'}  {name} (exit {rc}{': out of time' if rc == '124' else ''})")
# fused settings (issue 16): aggregate img/s of the four settings fused / one after another
fused = [r for p in sorted(Path(prefix).parent.glob(Path(prefix).name + ".fused-*.json"))
         for r in json.loads(p.read_text())["records"]]
def ratio(model, compile_):
    r = [x for x in fused if (x["model"], x["compile"]) == (model, compile_)]
    return r[0]["speedup"] if r else None
for model, compile_, target in (("resnet18", graphs, 2.5), ("resnet50", graphs, 2.5),
                                ("densenet121", "none", 3.0), ("densenet121", graphs, 3.0),
                                ("densenet161", "none", 3.0), ("densenet161", graphs, 3.0)):
    v = ratio(model, compile_)
    name = f"fused x4 {model} {compile_}"
    lines.append(f"SKIP  {name}: not measured" if v is None else
                 f"{'PASS' if v >= target else 'FAIL'}  {name}: x{v:.2f} the four one after another (target >= x{target})")
for name, rc in sorted(status.items()):
    if name.startswith("fused-") and rc != "0":
        lines.append(f"{'SKIP' if rc == '124' else 'FAIL'}  {name} (exit {rc}{': out of time' if rc == '124' else ''})")
m = machine()
head = (f"# GPU check\n\nGPU: {m['gpu']}; CPU: {m['cpu']} ({m['cpus']} cores); torch {m['torch']} (CUDA {m['cuda']}), "
        f"torchvision {m['torchvision']}, DALI {m['dali']}, FFCV {m['ffcv']}; normfast {m['normfast']} "
        f"(commit {m['commit']}, source {m['source']}).\nSynthetic 32 px data, batch 256, channels-last; ceiling = the same step "
        "on a batch already on the device, measured in the same process.\n\n")
body = "## Targets\n\n```\n" + "\n".join(lines) + "\n```\n"
for title, recs in (("Training throughput (raw shards)", table), ("DALI on JPEG shards (nvJPEG)", jpg),
                    ("DenseNet ceilings (resident)", dense), ("Four settings fused (resident)", fused)):
    if recs:
        body += f"\n## {title}\n\n" + format_train_table(recs) + "\n"
Path(f"{prefix}.md").write_text(head + body)
Path(f"{prefix}.json").write_text(json.dumps({"machine": m, "targets": lines, "table": table, "jpg": jpg,
                                             "dense": dense, "fused": fused, "steps": status}, indent=2) + "\n")
print(head + body)
PYEOF
