#!/usr/bin/env bash
# The CPU proxies of the GPU targets (run on an otherwise idle machine; writes
# benchmarks/results/proxies-cpu.{md,json}):
#   1. dali shuffled >= 90% of dali in stored order (the shuffled source costs nothing extra)
#   2. in `bench loaders`, a backend measured after others >= 90% of its figure alone
#      (each loader is closed before the next is built: nothing of one slows the next)
#   3. (information, no target) the CPU time per batch of the thread that produces dali's
#      and ffcv's batches (on a GPU: the time taken from the training step), one batch per
#      chunk against CHUNK (default 10: the CUDA default for 32 px batches of 256)
#   4. (information, no target) in the loader thread (as on CUDA), with CHUNK batches per
#      chunk: queue hand-overs to the training thread (GIL wake-ups) per batch, and the
#      producer CPU per batch (benchmarks/handover_proxy.py)
# LIMIT (default 50000) synthetic 32 px images, batch 256, finetune, float32, EPOCHS timed
# epochs after a warm-up epoch. Every measurement is repeated REPEATS times (default 3),
# the rounds interleaved, and each ratio is taken between medians (one round on this
# shared 2-core machine moves by +-20%).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
LIMIT=${LIMIT:-50000}
EPOCHS=${EPOCHS:-2}
R=${RESULTS:-benchmarks/results/proxies-cpu}
WORK=${WORK:-$(mktemp -d)}
"$PY" -m normfast convert synthetic --out "$WORK/syn" --limit "$LIMIT" --force -q
bench() { "$PY" -m normfast bench loaders --data "$WORK/syn" --device cpu --norm finetune --epochs "$EPOCHS" "$@"; }
REPEATS=${REPEATS:-3}
for i in $(seq "$REPEATS"); do
  bench --backend dali --order shuffled,stored --json "$WORK/order.$i.json"
  for b in dali ffcv resident; do bench --backend "$b" --json "$WORK/alone-$b.$i.json"; done
  bench --backend dali,ffcv,resident --json "$WORK/after-1.$i.json"
  bench --backend resident,ffcv,dali --json "$WORK/after-2.$i.json"
  bench --backend dali,ffcv --chunk-batches "1,${CHUNK:-10}" --json "$WORK/chunks.$i.json"
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" benchmarks/handover_proxy.py --data "$WORK/syn" --chunk "${CHUNK:-10}" --epochs "$EPOCHS" \
    --json "$WORK/handover.$i.json"
done
"$PY" - "$WORK" "$R" "$REPEATS" <<'PYEOF'
import json, statistics, sys
from pathlib import Path
from normfast.bench import machine
work, prefix, repeats = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
METRICS = ("images_per_second", "producer_cpu_ms_per_batch")
def load(name):
    """The records of `name`, each metric the median over the rounds (rounds kept in 'rounds')."""
    rounds = [json.loads((work / f"{name}.{i}.json").read_text())["records"] for i in range(1, repeats + 1)]
    out = []
    for k, rec in enumerate(rounds[0]):
        rec = dict(rec)
        for m in METRICS:
            rec[m] = statistics.median(r[k][m] for r in rounds)
        rec["rounds"] = [{m: r[k][m] for m in METRICS} for r in rounds]
        out.append(rec)
    return out
rate = {r["order"]: r["images_per_second"] for r in load("order")}
lines, rows = [], []
def verdict(name, value, target, detail):
    lines.append(f"{'PASS' if value >= target else 'FAIL'}  {name}: {value:.0%} (target >= {target:.0%}) {detail}")
verdict("dali shuffled / stored order", rate["shuffled"] / rate["stored"], 0.90,
        f"({rate['shuffled']:,.0f} vs {rate['stored']:,.0f} img/s)")
alone = {r["backend"]: r["images_per_second"] for b in ("dali", "ffcv", "resident") for r in load(f"alone-{b}")}
for run in ("after-1", "after-2"):
    recs = load(run)
    for i, r in enumerate(recs):
        if i == 0:
            continue
        before = ", ".join(x["backend"] for x in recs[:i])
        verdict(f"{r['backend']} after {before} / alone", r["images_per_second"] / alone[r["backend"]], 0.90,
                f"({r['images_per_second']:,.0f} vs {alone[r['backend']]:,.0f} img/s)")
chunks = load("chunks")
for b in ("dali", "ffcv"):
    one = [r for r in chunks if r["backend"] == b and r["chunk_batches"] == 1]
    big = [r for r in chunks if r["backend"] == b and r["chunk_batches"] != 1]
    if not (one and big):
        continue                      # CHUNK=1: nothing to compare
    one, big = one[0], big[0]
    lines.append(f"INFO  {b} producer CPU per batch, {big['chunk_batches']} batches per chunk / 1: "
                 f"{big['producer_cpu_ms_per_batch'] / one['producer_cpu_ms_per_batch']:.0%} "
                 f"({big['producer_cpu_ms_per_batch']:.3f} vs {one['producer_cpu_ms_per_batch']:.3f} ms; "
                 f"{big['images_per_second']:,.0f} vs {one['images_per_second']:,.0f} img/s)")
hand = [json.loads((work / f"handover.{i}.json").read_text())["records"] for i in range(1, repeats + 1)]
for k, rec in enumerate(hand[0]):
    per = statistics.median(r[k]["handovers_per_batch"] for r in hand)
    cpu = statistics.median(r[k]["producer_cpu_ms_per_batch"] for r in hand)
    lines.append(f"INFO  {rec['backend']} in the loader thread, {rec['chunk_batches']} batches per chunk: "
                 f"{per:.3f} hand-overs per batch, producer {cpu:.3f} CPU ms per batch")
m = machine()
text = (f"# CPU proxies of the GPU targets\n\n{m['cpu']} ({m['cpus']} cores), torch {m['torch']}, DALI {m['dali']}, "
        f"FFCV {m['ffcv']}, normfast commit {m['commit']} (source {m['source']}).\n`bash benchmarks/cpu_proxies.sh`: synthetic 32 px "
        f"images, batch 256, finetune, float32, timed epochs after a warm-up epoch; medians of {repeats} "
        "interleaved rounds.\n\n```\n" + "\n".join(lines) + "\n```\n")
Path(f"{prefix}.md").write_text(text)
Path(f"{prefix}.json").write_text(json.dumps({"machine": m, "verdicts": lines, "order": rate, "alone": alone,
                                              "after": {k: load(k) for k in ("after-1", "after-2")},
                                              "chunks": chunks, "handover": hand}, indent=2) + "\n")
print(text)
PYEOF
