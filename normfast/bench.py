"""`normfast bench`: honest throughput numbers.

- loaders: images/s of fully augmented and normalized batches delivered on the device
  (synchronized), per backend and setting, and CPU seconds spent per 1,000 images
  (this process, its threads and its worker processes). The first epoch is a warm-up
  (FFCV compiles with numba, DALI builds its pipeline) and is not counted.
- train: per backend x model x compile mode, the model-bound ceiling (the same training
  step fed one batch that already sits on the device) and the end-to-end images/s with the
  real backend, measured in the same process; efficiency = end-to-end / ceiling.
Timing is synchronized on CUDA, warm-up is excluded, repeats give a median and a spread.
"""
from __future__ import annotations

import resource
import statistics
import time


from normfast.device import resolve_device, sync, use_device
from normfast.errors import NormfastError
from normfast.loaders import backends, build_loader
from normfast.normalization import settings
from normfast.provenance import provenance
from normfast.registry import parse_list
from normfast.validate import is_one_sample_batch, one_sample_batch


def machine() -> dict:
    """What every benchmark JSON records beside its figures (see normfast.provenance)."""
    return provenance()


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


# ---------------------------------------------------------------- loaders

ORDERS = ("shuffled", "stored")   # an epoch in the contract's shuffled order, or in stored order


def parse_chunks(text: str) -> list[int | None]:
    """`--chunk-batches`: comma-separated `auto` (the backend's default) or counts >= 1."""
    out = []
    for item in (t.strip() for t in str(text).split(",")):
        if item == "auto":
            out.append(None)
        elif item.isdigit() and int(item) >= 1:
            out.append(int(item))
        else:
            raise NormfastError(f"--chunk-batches {text!r}: give auto or whole numbers >= 1, comma-separated")
    return out


def _chunk_variants(backend: str, chunks: list[int | None]) -> list[int | None]:
    return chunks if backends.get(backend).chunked else [None]


def _producer_mark(loader) -> tuple[float, int, int]:
    return loader.producer_cpu_seconds, loader.producer_batches, loader.producer_chunks


def _loader_facts(loader, mark: tuple[float, int, int]) -> dict:
    """What a benchmark records of the loader itself: the training batches it prepares at
    once (None: one at a time), its producer thread's CPU milliseconds per batch since
    `mark` (over the batches the producer made, which may run ahead of those consumed), and
    the hand-overs from its loader thread per batch (one per chunk; 0 without the thread)."""
    cpu0, batches0, chunks0 = mark
    made = loader.producer_batches - batches0
    return {"chunk_batches": loader.chunk,
            "producer_cpu_ms_per_batch": (loader.producer_cpu_seconds - cpu0) / max(1, made) * 1000,
            "handovers_per_batch": (loader.producer_chunks - chunks0) / max(1, made) if loader.background else 0.0}


def bench_loaders(data_dir, backends_: str, norms: str, device=None, dtype: str = "float32",
                  batch_size: int = 256, epochs: int = 1, max_batches: int | None = None,
                  num_workers: int = 2, orders: str = "shuffled", chunks: str = "auto",
                  echo=print) -> list[dict]:
    device = resolve_device(device)
    chunk_list = parse_chunks(chunks)
    use_device(device)
    if epochs < 1 or (max_batches is not None and max_batches < 1):
        raise NormfastError("--epochs and --max-batches must be at least 1")
    order_list = [o.strip() for o in orders.split(",") if o.strip()]
    bad = [o for o in order_list if o not in ORDERS]
    if bad or not order_list:
        raise NormfastError(f"--order {orders!r}: valid: {', '.join(ORDERS)} (comma-separated)")
    records = []
    for backend in parse_list(backends_, backends):
        for norm in parse_list(norms, settings):
            for order in order_list:
                for chunk in _chunk_variants(backend, chunk_list):
                    with build_loader(data_dir, "train", backend, batch_size, norm, augment=True, device=device,
                                      dtype=dtype, seed=0, shuffle=order == "shuffled", num_workers=num_workers,
                                      chunk_batches=chunk) as loader:
                        for _ in _take(loader, max_batches):          # warm-up epoch: compile, caches
                            pass
                        sync(device)
                        images, cpu0, t0, mark = 0, cpu_seconds(), time.perf_counter(), _producer_mark(loader)
                        for _ in range(epochs):
                            for x, _ in _take(loader, max_batches):
                                images += x.shape[0]
                        sync(device)
                        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
                        facts = _loader_facts(loader, mark)
                    rec = {"backend": backend, "norm": norm, "order": order, "device": str(device), "dtype": dtype,
                           "batch_size": batch_size, "images": images, "seconds": seconds,
                           "images_per_second": images / seconds, "cpu_seconds_per_1000": cpu / images * 1000,
                           "chunk_requested": chunk or "auto", **facts}
                    echo(f"{backend:9s} {norm:9s} {order:8s} {_chunk_label(rec):>15s} "
                         f"{rec['images_per_second']:10.0f} img/s  {rec['cpu_seconds_per_1000']:.3f} CPU s/1000 img  "
                         f"producer {rec['producer_cpu_ms_per_batch']:.3f} CPU ms/batch")
                    records.append(rec)
    return records


def _chunk_label(rec: dict) -> str:
    cell = _chunk_cell(rec)
    return cell if cell == "—" else f"chunk {cell}"


def _chunk_cell(rec: dict) -> str:
    """Training batches per chunk, marked `(auto)` where it is the backend's default."""
    if rec.get("chunk_batches") is None:
        return "—"
    return f"{rec['chunk_batches']}{' (auto)' if rec.get('chunk_requested') == 'auto' else ''}"


def _take(loader, max_batches):
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        yield batch


def format_loader_table(records: list[dict]) -> str:
    key = lambda r: (r["norm"], r.get("order", "shuffled"))   # noqa: E731
    base = {key(r): r["images_per_second"] for r in records if r["backend"] == "torch"}
    lines = ["| backend | norm | order | batches/chunk | device | images/s | × torch | CPU s / 1000 img "
             "| producer CPU ms / batch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        ratio = f"{r['images_per_second'] / base[key(r)]:.1f}×" if key(r) in base else "—"
        produced = r.get("producer_cpu_ms_per_batch")
        lines.append(f"| {r['backend']} | {r['norm']} | {r.get('order', 'shuffled')} | "
                     f"{_chunk_cell(r)} | {r['device']} | "
                     f"{r['images_per_second']:,.0f} | {ratio} | {r['cpu_seconds_per_1000']:.3f} | "
                     f"{'—' if produced is None else format(produced, '.3f')} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- training

def train_setup(data_dir, device, amp: str, chunks: str, compiles: str, steps: int, warmup: int, repeats: int):
    """`bench train`'s checked settings (also the fused bench's): (device, manifest, amp, input
    dtype, chunk sizes, compile modes)."""
    from normfast import recipe
    from normfast.manifest import load_manifest
    from normfast.precision import input_dtype, resolve_amp
    if steps < 1 or warmup < 0 or repeats < 1:
        raise NormfastError("--steps and --repeats must be at least 1, --warmup at least 0")
    device = resolve_device(device)
    use_device(device)
    manifest = load_manifest(data_dir)
    amp = resolve_amp(amp, device)
    in_dtype = input_dtype(amp)
    chunk_list = parse_chunks(chunks)
    compile_modes = [c.strip() for c in compiles.split(",") if c.strip()]
    for c in compile_modes:
        if c not in recipe.compile_modes:
            raise NormfastError(f"--compile {c!r}: valid: {', '.join(recipe.compile_modes.names())}")
        if recipe.compile_modes.get(c).cuda_graphs and device.type != "cuda":
            raise NormfastError(f"--compile {c} needs a CUDA device")
    return device, manifest, amp, in_dtype, chunk_list, compile_modes


def bench_train(data_dir, backends_: str, models_: str, compiles: str = "none", norm: str = "finetune",
                device=None, amp: str = "auto", batch_size: int = 256, steps: int = 20, warmup: int = 5,
                repeats: int = 3, num_workers: int = 2, chunks: str = "auto", echo=print) -> list[dict]:
    """Per model x compile mode, one TrainStep (one compilation); per backend, its loader is
    built, measured against that step's ceiling in alternating repeats, and closed."""
    from normfast.models import models
    from normfast.step import TrainStep
    if "," in norm or norm == "all":        # several settings: fused against one after another
        from normfast.fused_bench import bench_train_fused
        from normfast.fused_train import parse_norms
        return bench_train_fused(data_dir, backends_, models_, compiles, parse_norms(norm), device, amp, batch_size,
                                 steps, warmup, repeats, num_workers, chunks, echo)
    device, manifest, amp, in_dtype, chunk_list, compile_modes = train_setup(
        data_dir, device, amp, chunks, compiles, steps, warmup, repeats)
    records = []
    backend_names = parse_list(backends_, backends)
    for model in parse_list(models_, models):
        for compile_mode in compile_modes:
            step = TrainStep(model, manifest.num_classes, pretrained="none", device=device, amp=amp,
                             compile=compile_mode, lr=1e-3, epochs=1, scheduler="none", seed=223,
                             static_batch_sizes=(batch_size,))
            step.train(True)
            for backend in backend_names:
                for chunk in _chunk_variants(backend, chunk_list):
                    # full batches only: a partial batch would run eagerly (see TrainStep)
                    with build_loader(manifest, "train", backend, batch_size, norm, augment=True, device=device,
                                      dtype=in_dtype, seed=223, shuffle=True, drop_last=True,
                                      num_workers=num_workers, chunk_batches=chunk) as loader:
                        if len(loader) == 0:
                            raise NormfastError(f"{data_dir}: fewer train images than --batch-size {batch_size}")
                        try:
                            rec = _bench_one(step, loader, device, steps, warmup, repeats)
                        except ValueError as e:     # BatchNorm on a batch of one: train's one line
                            if not is_one_sample_batch(e):
                                raise
                            raise one_sample_batch(manifest.image_shape[:2], batch_size) from None
                    rec |= {"backend": backend, "model": model, "compile": compile_mode, "norm": norm,
                            "device": str(device), "amp": amp, "batch_size": batch_size,
                            "image_shape": list(manifest.image_shape), "chunk_requested": chunk or "auto"}
                    echo(f"{model:11s} {compile_mode:10s} {backend:9s} {_chunk_label(rec):>15s} "
                         f"ceiling {rec['ceiling_images_per_second']:9.0f}  "
                         f"end-to-end {rec['images_per_second']:9.0f} img/s  efficiency {rec['efficiency']:.0%}  "
                         f"data wait {rec['data_wait_fraction']:.0%}  "
                         f"producer {rec['producer_cpu_ms_per_batch']:.3f} CPU ms/batch")
                    records.append(rec)
            del step
    return records



def _bench_one(step, loader, device, steps: int, warmup: int, repeats: int) -> dict:
    stream = _endless(loader)
    x0, y0 = next(stream)
    x0, y0 = x0.clone(), y0.clone()
    ceil, e2e, waits, produced = [], [], [], []
    for _ in range(warmup):
        step(x0, y0)
    for _ in range(warmup):
        step(*next(stream))
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step(x0, y0)
        sync(device)
        ceil.append(steps * len(y0) / (time.perf_counter() - t0))
        images, wait, mark = 0, 0.0, _producer_mark(loader)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            t1 = time.perf_counter()
            x, y = next(stream)
            wait += time.perf_counter() - t1
            step(x, y)
            images += len(y)
        sync(device)
        seconds = time.perf_counter() - t0
        e2e.append(images / seconds)
        waits.append(wait / seconds)
        produced.append(_loader_facts(loader, mark)["producer_cpu_ms_per_batch"])
    stream.close()
    c, e = statistics.median(ceil), statistics.median(e2e)
    return {"ceiling_images_per_second": c, "ceiling_spread": (max(ceil) - min(ceil)) / c,
            "images_per_second": e, "spread": (max(e2e) - min(e2e)) / e, "efficiency": e / c,
            "data_wait_fraction": statistics.median(waits), "steps": steps, "repeats": repeats,
            "chunk_batches": loader.chunk,
            "producer_cpu_ms_per_batch": statistics.median(produced)}


def _endless(loader):
    while True:
        yield from loader


def format_train_table(records: list[dict]) -> str:
    if records and records[0].get("fused"):
        from normfast.fused_bench import format_fused_table
        return format_fused_table(records)
    lines = ["| model | compile | backend | batches/chunk | device | amp | ceiling img/s | end-to-end img/s "
             "| efficiency | data wait | producer CPU ms / batch | spread |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        produced = r.get("producer_cpu_ms_per_batch")
        lines.append(f"| {r['model']} | {r['compile']} | {r['backend']} | {_chunk_cell(r)} | "
                     f"{r['device']} | {r['amp']} | "
                     f"{r['ceiling_images_per_second']:,.0f} | {r['images_per_second']:,.0f} | "
                     f"{r['efficiency']:.0%} | {r['data_wait_fraction']:.0%} | "
                     f"{'—' if produced is None else format(produced, '.3f')} | "
                     f"{'±' + format(r['spread'] / 2, '.0%') if r['repeats'] > 1 else '—'} |")
    return "\n".join(lines)
