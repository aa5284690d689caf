#!/usr/bin/env bash
# The GPU acceptance check, sized for ONE device call of 10 minutes: every step runs under a
# time limit taken from BUDGET (seconds for the whole check, default 480), a step that runs
# out of time is cut and reported (SKIP ... out of time), and the summary is written at the
# end whatever happened (also when the check itself is interrupted).
#
# Needs, on a machine with one CUDA GPU and no network: Python 3.11/3.12 with torch,
# torchvision, numpy, click, pyyaml, tqdm, pillow, scipy, matplotlib and pytest (checked
# first). DALI and FFCV are optional: where one does not import, its error is printed and its
# rows and targets are skipped. FFCV 1.0.2 also needs numba, opencv-python and, on Python
# 3.12, setuptools (its `distutils`; normfast loads it from setuptools when missing).
# Packages carried in as bundles (/work/shared/tools/bundle-dali.sh, bundle-ffcv.sh):
#   DALI_SITE=DIR   the folder the DALI parts were unpacked into (prepended to PYTHONPATH)
#   FFCV_DIR=DIR    the FFCV bundle: DIR/site goes on PYTHONPATH, DIR/lib on LD_LIBRARY_PATH
# (or set PYTHONPATH / LD_LIBRARY_PATH yourself).
#
# Steps (each its own process, in this order, each with min(its cap, what is left)):
#   convert  the built-in synthetic dataset (no download): LIMIT images, raw (dali + ffcv
#            formats), 1,000 images for `train`, and LIMIT as JPEG shards (dali)
#   table    bench train: MODELS (resnet18,resnet50), 32 px, batch 256, bf16, channels-last,
#            COMPILES (cudagraphs: what the targets use), every backend against the
#            same-process ceiling, CHUNKS (auto; auto,1 adds one-batch-per-chunk rows)
#   jpg      bench train: dali on JPEG shards (nvJPEG), resnet18 eager
#   train    a short real `normfast train` per backend and TRAIN_COMPILES (none), on 1,000
#            train images (a partial last batch) and 200 test images, --test-batch-size 64
#   tests    the CUDA tests (pytest -k "cuda or gpu")
#   dense    bench train: DenseNet121/161 ceilings with resident, one step per model and
#            compile mode, with what is left (the slowest compiles: last)
#   fused    (not in the default STEPS_ONLY: a device call of its own, STEPS_ONLY=fused)
#            bench train --norm finetune,pretrain,instance,minmax: the four settings as one
#            fused model against the same four one after another, resident, per FUSED_ROWS
#            entry (model:compile; all four backbones, CUDA graphs and eager), each row its own
#            step within min(CAP_FUSED, what is left)
#   jobs     (not in the default STEPS_ONLY either: STEPS_ONLY=jobs) ResNet18 CUDA graphs,
#            `sweep --gpus 0 --jobs-per-gpu K` for K in JOBS (1,2,4): aggregate img/s on one GPU
#            and whether CUDA MPS was running, in $RESULTS.jobs.md
# and ends with one PASS/FAIL/SKIP line per target.
#
# Results: $RESULTS.{md,json} and per-step logs $RESULTS.<step>.log. RESULTS defaults to a
# scratch folder ($WORK/gpu-check-<gpu>): the committed files are written only on request,
# SAVE=1 (benchmarks/results/gpu-check-<gpu>). On the lent device machine, where only $OUT
# comes back:   RESULTS="$OUT/gpu-check" bash benchmarks/gpu_check.sh
#   bash benchmarks/gpu_check.sh                              # the whole check (< BUDGET s)
#   STEPS_ONLY="table train" bash benchmarks/gpu_check.sh     # a subset
#   DEVICE=cpu bash benchmarks/gpu_check.sh                   # dry run without a GPU (tiny, eager)
# Knobs: LIMIT (images), STEPS/WARMUP/REPEATS (bench), MODELS, COMPILES, CHUNKS, TRAIN_COMPILES,
# DENSE (empty: none), NUM_WORKERS (default min(8, nproc)), BUDGET (DEVICE=cpu: 1800), WORK (scratch folder),
# CAP_<STEP> (a step's own cap in seconds, e.g. CAP_TABLE=200), PYTHON.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -n "${DALI_SITE:-}" ] && export PYTHONPATH="$DALI_SITE${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${FFCV_DIR:-}" ]; then
  export PYTHONPATH="$FFCV_DIR/site${PYTHONPATH:+:$PYTHONPATH}"
  export LD_LIBRARY_PATH="$FFCV_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
STEPS_ONLY=${STEPS_ONLY:-table jpg train tests dense}
WORK=${WORK:-$(mktemp -d)}
# seconds for the whole check: one device call is limited to 600 (the CPU dry run has no
# such limit, and a shared 2-core machine is slow)
BUDGET=${BUDGET:-$([ "$DEVICE" = cpu ] && echo 1800 || echo 480)}
RESERVE=15                # seconds kept for the summary
if [ "$DEVICE" = cpu ]; then
  LIMIT=${LIMIT:-1200}; STEPS=${STEPS:-2}; WARMUP=${WARMUP:-1}; REPEATS=${REPEATS:-1}
  COMPILES=${COMPILES:-none}; AMP=off; MODELS=${MODELS:-resnet18}; DENSE=${DENSE-}
  TRAIN_COMPILES=${TRAIN_COMPILES:-none}; JPG_COMPILE=none
else
  LIMIT=${LIMIT:-20000}; STEPS=${STEPS:-30}; WARMUP=${WARMUP:-10}; REPEATS=${REPEATS:-3}
  COMPILES=${COMPILES:-cudagraphs}; AMP=bf16; MODELS=${MODELS:-resnet18,resnet50}
  DENSE=${DENSE-densenet121,densenet161}; TRAIN_COMPILES=${TRAIN_COMPILES:-none}; JPG_COMPILE=none
fi
cores=$(nproc)
NW=${NUM_WORKERS:-$(( cores < 8 ? cores : 8 ))}   # DALI threads, numba threads, DataLoader processes
CHUNKS=${CHUNKS:-auto}
log() { echo "gpu_check $(date +%H:%M:%S) [${SECONDS}s]: $*"; }

missing=$("$PY" - <<'PYEOF'
import importlib
need = ["torch", "torchvision", "numpy", "click", "yaml", "tqdm", "PIL", "scipy", "matplotlib", "pytest"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
PYEOF
)
if [ -n "$missing" ]; then echo "gpu_check: missing Python packages: $missing (install them first)"; exit 1; fi

backends=resident,torch
formats=dali
probe() {  # module: imports it as normfast would; prints its error when it does not import
  "$PY" -c "import normfast.compat as c; c.ensure_distutils(); import $1" 2>&1 | tail -n 3
}
if err=$(probe nvidia.dali) && [ -z "$err" ]; then backends="$backends,dali"
else echo "gpu_check: DALI does not import here: no dali rows. Its error:"; echo "$err" | sed 's/^/    /'; fi
if err=$(probe ffcv) && [ -z "$err" ]; then backends="$backends,ffcv"; formats="dali,ffcv"
else echo "gpu_check: FFCV does not import here: no ffcv rows. Its error:"; echo "$err" | sed 's/^/    /'; fi
gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-') if torch.cuda.is_available() else 'cpu')")
if [ "${SAVE:-0}" = 1 ]; then RESULTS=${RESULTS:-benchmarks/results/gpu-check-$gpu}; fi
RESULTS=${RESULTS:-$WORK/gpu-check-$gpu}
mkdir -p "$(dirname "$RESULTS")"
status="$RESULTS.status"; : > "$status"
log "results: $RESULTS.{md,json}; scratch: $WORK; $NW workers; budget $BUDGET s; backends $backends"

run_step() {  # name cap command...: runs it within min(cap, what is left of BUDGET), records its exit status
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET - RESERVE - SECONDS ))
  [ "$cap" -gt "$left" ] && cap=$left
  if [ "$cap" -lt 10 ]; then
    log "$name: SKIP, out of time"; echo "$name 124" >> "$status"; return
  fi
  log "$name (within $cap s): $*"
  timeout -k 10 "$cap" "$@" > "$RESULTS.$name.log" 2>&1
  local rc=$?
  tail -n 25 "$RESULTS.$name.log"
  echo "$name $rc" >> "$status"
  log "$name exited $rc$([ "$rc" = 124 ] && echo ' (out of time)')"
}
cap() {  # step default: CAP_<STEP> if set, else the default (DEVICE=cpu: only what is left limits a step)
  local v="CAP_${1^^}"; v=${v//-/_}
  if [ "$DEVICE" = cpu ]; then echo "${!v:-$BUDGET}"; else echo "${!v:-$2}"; fi
}
want() { case " $STEPS_ONLY " in *" $1 "*) return 0;; esac; return 1; }

summarize() {
  trap - EXIT INT TERM
  log "done in $SECONDS s (budget $BUDGET s); writing $RESULTS.md"
  "$PY" - "$RESULTS" "$status" "$WORK/runs" <<'PYEOF'
"""Pass/fail per target, and the markdown summary (whatever the steps left)."""
import json, sys
from pathlib import Path
from normfast.bench import format_train_table, machine

prefix, status_file, runs = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
status = dict(line.split() for line in status_file.read_text().splitlines() if line.strip())
def load(name):
    p = Path(f"{prefix}.{name}.json")
    try:
        return json.loads(p.read_text())["records"] if p.exists() else []
    except (ValueError, KeyError):
        return []
table, jpg = load("table"), load("jpg")
dense = [r for p in sorted(Path(prefix).parent.glob(Path(prefix).name + ".dense-*.json"))
         for r in json.loads(p.read_text())["records"]]
lines = []
def why(step):
    rc = status.get(step)
    if rc == "0":
        return f"no such row: the {step} step ran other models or compile modes"
    return "step not run" if rc is None else "out of time" if rc == "124" else f"step exit {rc}"
def verdict(name, value, target, what, step):
    if value is None:
        lines.append(f"SKIP  {name}: {what} (not measured: {why(step)})")
    else:
        lines.append(f"{'PASS' if value >= target else 'FAIL'}  {name}: {value:.0%} (target >= {target:.0%}) {what}")
def eff(model, compile_, backend, records=table):
    r = [x for x in records if (x["model"], x["compile"], x["backend"]) == (model, compile_, backend)
         and x.get("chunk_requested", "auto") == "auto"]
    return r[0]["efficiency"] if r else None
if "tests" in status:
    rc = status["tests"]
    lines.append(f"{'PASS' if rc == '0' else 'SKIP' if rc == '124' else 'FAIL'}  CUDA tests (exit {rc}"
                 f"{': out of time' if rc == '124' else ''})")
graphs = "cudagraphs"
verdict("resnet18 resident", eff("resnet18", graphs, "resident"), 0.95, "of the CUDA-graph ceiling", "table")
verdict("resnet18 dali raw", eff("resnet18", graphs, "dali"), 0.90, "of the CUDA-graph ceiling", "table")
verdict("resnet18 dali jpg (nvJPEG)", eff("resnet18", "none", "dali", jpg), 0.90, "of the eager ceiling", "jpg")
verdict("resnet18 ffcv", eff("resnet18", graphs, "ffcv"), 0.85, "of the CUDA-graph ceiling", "table")
for b in ("resident", "dali", "ffcv"):
    verdict(f"resnet50 {b}", eff("resnet50", graphs, b), 0.95, "of the CUDA-graph ceiling", "table")
for name, rc in sorted(status.items()):
    if name.startswith("train-"):
        rows = []
        metrics = runs / "synthetic" / ("check-" + name[len("train-"):]) / "metrics.jsonl"
        if metrics.exists():
            rows = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()]
        ok = rc == "0" and len(rows) == 2
        acc = f", test acc {rows[-1]['test_acc']:.3f}, {rows[-1]['train_images_per_second']:.0f} img/s" if rows else ""
        word = "PASS" if ok else "SKIP" if rc == "124" else "FAIL"
        lines.append(f"{word}  normfast train {name[len('train-'):]} (exit {rc}, {len(rows)}/2 epochs{acc})")
for name, rc in sorted(status.items()):
    if (name.startswith("dense-") or name in ("convert", "table", "jpg")) and rc != "0":
        lines.append(f"{'SKIP' if rc == '124' else 'FAIL'}  step {name} (exit {rc}{': out of time' if rc == '124' else ''})")
# fused settings (issue 16): aggregate img/s of the four settings fused / one after another
fused = [r for p in sorted(Path(prefix).parent.glob(Path(prefix).name + ".fused-*.json"))
         for r in json.loads(p.read_text())["records"]]
for model, compile_, target in (("resnet18", graphs, 2.5), ("resnet50", graphs, 2.5),
                                ("densenet121", "none", 3.0), ("densenet121", graphs, 3.0),
                                ("densenet161", "none", 3.0), ("densenet161", graphs, 3.0)):
    r = [x for x in fused if (x["model"], x["compile"]) == (model, compile_)]
    name = f"fused x4 {model} {compile_}"
    lines.append(f"SKIP  {name}: not measured ({why(f'fused-{model}-{compile_}')})" if not r else
                 f"{'PASS' if r[0]['speedup'] >= target else 'FAIL'}  {name}: x{r[0]['speedup']:.2f} the four "
                 f"one after another (target >= x{target})")
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
}
trap summarize EXIT
trap 'exit 130' INT TERM      # ... through the EXIT trap: the summary is still written

convert() {
  "$PY" -m normfast convert synthetic --out "$WORK/syn" --limit "$LIMIT" --format "$formats" --force -q &&
  "$PY" -m normfast convert synthetic --out "$WORK/syn-small" --limit 1000 --format "$formats" --force -q &&
  if [[ $backends == *dali* ]] && want jpg; then
    "$PY" -m normfast convert synthetic --out "$WORK/syn-jpg" --limit "$LIMIT" --format dali --encoding jpg --force -q
  fi
}
export -f convert want; export PY LIMIT formats backends WORK STEPS_ONLY
run_step convert "$(cap convert 150)" bash -c convert
if [ "$(grep '^convert ' "$status" | cut -d' ' -f2)" != 0 ]; then log "no data: nothing else to run"; exit 1; fi

bench=("$PY" -m normfast bench train --device "$DEVICE" --amp "$AMP" --batch-size 256 --steps "$STEPS"
       --warmup "$WARMUP" --repeats "$REPEATS" --num-workers "$NW")
if want table; then
  run_step table "$(cap table 220)" "${bench[@]}" --data "$WORK/syn" --backend "$backends" --model "$MODELS" \
    --compile "$COMPILES" --chunk-batches "$CHUNKS" --json "$RESULTS.table.json"
fi
if want jpg && [[ $backends == *dali* ]]; then
  run_step jpg "$(cap jpg 45)" "${bench[@]}" --data "$WORK/syn-jpg" --backend dali --model resnet18 \
    --compile "$JPG_COMPILE" --json "$RESULTS.jpg.json"
fi
if want train; then
  for c in $TRAIN_COMPILES; do
    for b in ${backends//,/ }; do
      run_step "train-$b-$c" "$(cap train 50)" "$PY" -m normfast train --data "$WORK/syn-small" --backend "$b" \
        --compile "$c" --model resnet18 --norm finetune --epochs 2 --batch-size 256 --test-batch-size 64 \
        --device "$DEVICE" --amp "$AMP" --num-workers "$NW" \
        --pretrained none --runs "$WORK/runs" --run-name "check-$b-$c" -q
    done
  done
fi
if want tests; then
  run_step tests "$(cap tests 150)" "$PY" -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_loaders.py \
    tests/test_ffcv_backend.py -k "cuda or gpu"
fi
if want dense && [ -n "$DENSE" ]; then
  # one step per model and compile mode, each with what is left: a slow compile costs its own row
  for m in ${DENSE//,/ }; do
    for c in ${COMPILES//,/ }; do
      run_step "dense-$m-$c" "$(cap dense 600)" "${bench[@]}" --data "$WORK/syn" --backend resident --model "$m" \
        --compile "$c" --json "$RESULTS.dense-$m-$c.json"
    done
  done
fi

# ---- fused settings (issue 16; owned by normfast/fused_bench.py) ------------------------------
if [ "$DEVICE" = cpu ]; then FUSED_ROWS=${FUSED_ROWS:-resnet18:none}; FUSED_BATCH=${FUSED_BATCH:-16}
else
  FUSED_ROWS=${FUSED_ROWS:-resnet18:cudagraphs resnet50:cudagraphs densenet121:none densenet161:none \
densenet121:cudagraphs densenet161:cudagraphs resnet18:none resnet50:none}
  FUSED_BATCH=${FUSED_BATCH:-256}   # per setting (a step trains 4 x this)
fi
if want fused; then
  for row in $FUSED_ROWS; do
    m=${row%%:*}; c=${row##*:}
    run_step "fused-$m-$c" "$(cap fused 150)" "$PY" -m normfast bench train --device "$DEVICE" --amp "$AMP" \
      --batch-size "$FUSED_BATCH" --steps "$(( STEPS < 10 ? STEPS : 10 ))" --warmup "$(( WARMUP < 3 ? WARMUP : 3 ))" \
      --repeats "$(( REPEATS < 2 ? REPEATS : 2 ))" --num-workers "$NW" --data "$WORK/syn" --backend resident \
      --model "$m" --compile "$c" --norm finetune,pretrain,instance,minmax --json "$RESULTS.fused-$m-$c.json"
  done
fi
# ---- end of the fused block ------------------------------------------------------------------

# ---- jobs per GPU (issue 17; the sweep's --jobs-per-gpu) ----------------------------------------
# K sweep workers on one GPU: K runs of JOBS_EPOCHS epochs on $WORK/syn at once (--no-fuse, so
# each is its own process), and their aggregate train img/s (the sum of the runs' mean img/s over
# the epochs after the first). Without CUDA MPS the K processes time-share the GPU; with it their
# kernels run side by side. MPS on: `nvidia-cuda-mps-control -d` (as the GPU's user, before the
# workers start); off: `echo quit | nvidia-cuda-mps-control`.
if want jobs; then
  JOBS=${JOBS:-1,2,4}; JOBS_EPOCHS=${JOBS_EPOCHS:-4}
  mps="not running"; pgrep -x nvidia-cuda-mps-control >/dev/null 2>&1 && mps="running"
  jobs_compile=cudagraphs; [ "$DEVICE" = cpu ] && jobs_compile=none
  for k in ${JOBS//,/ }; do
    norms=$(echo finetune,pretrain,instance,minmax | cut -d, -f1-"$k")
    printf '%s\n' "data_root: $WORK" "runs: $WORK/jobs-runs-$k" "datasets: [syn]" "models: [resnet18]" \
      "norms: [$norms]" "backends: [resident]" \
      "train: {epochs: $JOBS_EPOCHS, batch_size: 256, pretrained: none, compile: $jobs_compile, num_workers: 2}" \
      > "$WORK/jobs-$k.yaml"
    if [ "$DEVICE" = cpu ]; then where=(--workers "$k" --device cpu); else where=(--gpus 0 --jobs-per-gpu "$k"); fi
    run_step "jobs-$k" "$(cap jobs 150)" "$PY" -m normfast sweep "$WORK/jobs-$k.yaml" "${where[@]}" --no-fuse
  done
  "$PY" - "$RESULTS.jobs.md" "$WORK" "$JOBS" "$mps" "$jobs_compile" "$DEVICE" <<'JOBSEOF'
import json, sys
from pathlib import Path
out, work, jobs, mps, compile_, device = sys.argv[1], Path(sys.argv[2]), sys.argv[3].split(","), *sys.argv[4:7]
where = "one GPU" if device != "cpu" else "the CPU (a dry run)"
lines = [f"ResNet18 compile {compile_}, 32 px, batch 256, resident; K sweep workers on {where}; CUDA MPS {mps}.", "",
         "| jobs per GPU | runs | mean img/s per run | aggregate img/s | vs 1 job |", "|---|---|---|---|---|"]
base = None
for k in jobs:
    per_run = []
    for m in sorted((work / f"jobs-runs-{k}").glob("*/*/metrics.jsonl")):
        rows = [json.loads(x) for x in m.read_text().splitlines()]
        ips = [r["train_images_per_second"] for r in (rows[1:] or rows)]
        per_run.append(sum(ips) / len(ips))
    if not per_run:
        lines.append(f"| {k} | 0 | — | — | — |")
        continue
    agg = sum(per_run)
    base = base or (agg if k == "1" else None)
    ratio = f"{agg / base:.2f}×" if base else "—"
    lines.append(f"| {k} | {len(per_run)} | {agg / len(per_run):,.0f} | {agg:,.0f} | {ratio} |")
Path(out).write_text("\n".join(lines) + "\n")
print("\n".join(lines))
JOBSEOF
fi
# ---- end of the jobs block ----------------------------------------------------------------------
