"""Where a DALI batch's time goes, and which feeding variant keeps the GPU busiest.

For the `dali` backend on one converted dataset (shuffled epochs, augment, finetune):
  source     the external-source callback alone (gather of one chunk from the shards), ms/batch
  loader     the loader alone, no model: ms/batch and img/s (source + DALI's CPU and GPU
             stages + hand-over to torch); hand-over = time in the loader's _outputs call
             (once per chunk), per training batch
  train      a TrainStep's ceiling and end-to-end img/s with the loader (bench.train's method),
             and the loader thread's CPU ms per batch (what it takes from the step's GIL)
per variant: training batches per DALI iteration (`auto`: the default chunk; `chunk-1`: one
batch), and whether the loader runs in its background thread (the default on CUDA) or on
the training thread ("-fg"). resident and ffcv (auto and chunk-1) are measured beside it.
  python benchmarks/dali_profile.py --data DIR [--device cuda] [--compile cudagraphs] [--json F]
"""
from __future__ import annotations

import argparse
import json
import time


from normfast.bench import _bench_one, _endless, machine
from normfast.device import resolve_device, sync, use_device
from normfast.loaders import build_loader
from normfast.manifest import load_manifest
from normfast.precision import input_dtype, resolve_amp
from normfast.step import TrainStep

VARIANTS = {"auto": {}, "chunk-1": dict(chunk_batches=1), "auto-fg": dict(background=False),
            "chunk-1-fg": dict(chunk_batches=1, background=False), "auto-prefetch-3": dict(dali_prefetch=3)}


def loader_alone(ld, device, batches: int) -> dict:
    it = _endless(ld)
    for _ in range(5):
        next(it)
    handover = [0.0]
    real = ld._outputs

    def timed(pipe):
        t = time.perf_counter()
        out = real(pipe)
        handover[0] += time.perf_counter() - t
        return out
    ld._outputs = timed
    sync(device)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        x, y = next(it)
        n += len(y)
    sync(device)
    dt = time.perf_counter() - t0
    del ld._outputs          # back to the class's method (an instance attribute would be a cycle)
    it.close()
    return {"ms_per_batch": dt / batches * 1e3, "images_per_second": n / dt,
            "handover_ms_per_batch": handover[0] / batches * 1e3}


def source_alone(ld, chunks: int) -> float:
    order, offsets, flips = ld.plan(0)
    size = ld.chunk_size
    images = 0
    t = time.perf_counter()
    for c in range(chunks):
        s = (c * size) % max(1, len(order) - size)
        idx = order[s:s + size]
        ld.samples.images(idx), ld.samples.labels[idx]
        images += len(idx)
    return (time.perf_counter() - t) / (images / ld.cfg.batch_size) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--device", default=None)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--compile", default="cudagraphs")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-workers", type=int, default=4)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json")
    a = ap.parse_args()
    device = resolve_device(a.device)
    use_device(device)
    amp = resolve_amp("auto", device)
    dtype = input_dtype(amp)
    compile_mode = a.compile if device.type == "cuda" else "none"
    manifest = load_manifest(a.data)
    common = dict(augment=True, device=device, dtype=dtype, seed=223, shuffle=True, drop_last=True,
                  num_workers=a.num_workers)
    records = []
    variants = [v for v in a.variants.split(",") if v]
    for name in variants:
        with build_loader(a.data, "train", "dali", a.batch_size, "finetune", **common, **VARIANTS[name]) as ld:
            rec = {"what": "loader", "backend": "dali", "variant": name, "chunk_batches": ld.chunk,
                   "source_ms_per_batch": source_alone(ld, 20)}
            rec |= loader_alone(ld, device, 4 * a.steps)
        print(json.dumps(rec), flush=True)
        records.append(rec)
    step = TrainStep(a.model, manifest.num_classes, pretrained="none", device=device, amp=amp,
                     compile=compile_mode, lr=1e-3, epochs=1, scheduler="none", seed=223,
                     static_batch_sizes=(a.batch_size,))
    step.train(True)
    runs = [("dali", v, VARIANTS[v]) for v in variants] + [
        ("resident", "", {}), ("ffcv", "auto", {}), ("ffcv", "chunk-1", {"chunk_batches": 1}),
        ("ffcv", "auto-fg", {"background": False})]
    for backend, name, extra in runs:
        try:
            with build_loader(a.data, "train", backend, a.batch_size, "finetune", **common, **extra) as ld:
                rec = _bench_one(step, ld, device, a.steps, 10, a.repeats)
        except Exception as e:  # noqa: BLE001 - a backend missing here is reported, the rest goes on
            print(f"{backend} {name}: {type(e).__name__}: {e}", flush=True)
            continue
        rec |= {"what": "train", "backend": backend, "variant": name, "model": a.model, "compile": compile_mode,
                "amp": amp}
        print(json.dumps(rec), flush=True)
        records.append(rec)
    print("\n| backend | variant | batches/chunk | source ms/batch | loader alone ms/batch | hand-over ms/batch "
          "| loader img/s |")
    print("|---|---|---|---|---|---|---|")
    for r in records:
        if r["what"] == "loader":
            print(f"| dali | {r['variant']} | {r['chunk_batches']} | {r['source_ms_per_batch']:.3f} | "
                  f"{r['ms_per_batch']:.2f} | {r['handover_ms_per_batch']:.2f} | {r['images_per_second']:,.0f} |")
    print("\n| backend | variant | batches/chunk | ceiling img/s | end-to-end img/s | efficiency | data wait "
          f"| producer CPU ms/batch | ({a.model}, {compile_mode})")
    print("|---|---|---|---|---|---|---|---|")
    for r in records:
        if r["what"] == "train":
            print(f"| {r['backend']} | {r['variant'] or '—'} | {r['chunk_batches'] or '—'} | "
                  f"{r['ceiling_images_per_second']:,.0f} | {r['images_per_second']:,.0f} | {r['efficiency']:.0%} | "
                  f"{r['data_wait_fraction']:.0%} | {r['producer_cpu_ms_per_batch']:.3f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine(), "records": records}, f, indent=2)


if __name__ == "__main__":
    main()
