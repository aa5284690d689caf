"""CPU proxy of what a loader thread costs the training step (the issue's "GIL wakes per
batch"): dali and ffcv run in their loader thread (`background=True`, as on CUDA) with
`--chunk` batches per chunk, and per training batch we count

  handovers      successful queue puts by the thread named `normfast-loader`: each one
                 hands the training thread an item and wakes it (a GIL hand-over);
  producer_ms    the loader's producer CPU ms (EpochLoader.producer_cpu_seconds);

over `--epochs` timed epochs after a warm-up epoch. It counts `queue.Queue.put` itself, so
it measures any normfast revision on PYTHONPATH the same way (for before/after figures).

  PYTHONPATH=. python benchmarks/handover_proxy.py --data DIR [--chunk 10] [--json OUT]
"""
from __future__ import annotations

import argparse
import queue
import threading
import time

puts = [0]
_put = queue.Queue.put


def _counting_put(self, *args, **kwargs):
    _put(self, *args, **kwargs)          # a put that times out raises: not counted
    if threading.current_thread().name == "normfast-loader":
        puts[0] += 1


queue.Queue.put = _counting_put


def measure(data, backend: str, chunk: int, epochs: int, batch_size: int) -> dict:
    from normfast.loaders import build_loader
    with build_loader(data, "train", backend, batch_size, "finetune", True, device="cpu", shuffle=True,
                      background=True, chunk_batches=chunk) as ld:
        for _ in ld:                     # warm-up: FFCV compiles, DALI builds its pipeline
            pass
        puts0, cpu0, made0, batches = puts[0], ld.producer_cpu_seconds, ld.producer_batches, 0
        t0 = time.perf_counter()
        for _ in range(epochs):
            for _ in ld:
                batches += 1
        seconds = time.perf_counter() - t0
        made = ld.producer_batches - made0
        return {"backend": backend, "chunk_batches": ld.chunk, "batches": batches,
                "handovers_per_batch": (puts[0] - puts0) / batches,
                "producer_cpu_ms_per_batch": (ld.producer_cpu_seconds - cpu0) / max(1, made) * 1e3,
                "images_per_second": batches * batch_size / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--backends", default="dali,ffcv")
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--json")
    a = ap.parse_args()
    records = [measure(a.data, b, a.chunk, a.epochs, a.batch_size) for b in a.backends.split(",") if b]
    for r in records:
        print(f"{r['backend']:5s} chunk {r['chunk_batches']:>2}  {r['handovers_per_batch']:.3f} hand-overs/batch  "
              f"producer {r['producer_cpu_ms_per_batch']:.3f} CPU ms/batch  {r['images_per_second']:,.0f} img/s")
    if a.json:
        from normfast.atomic import write_json
        write_json(a.json, {"records": records})


if __name__ == "__main__":
    main()
