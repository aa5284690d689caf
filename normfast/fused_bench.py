"""`normfast bench train --norm a,b,c,d`: the fused step against the same settings trained one
after another, in one process, per model x compile mode x backend.

fused       one unnormalized loader, each batch normalized per setting on the device, one
            FusedStep: aggregate img/s = settings x batch per step / step time
sequential  what separate runs do: per setting its own normalizing loader and TrainStep, measured
            as `bench train --norm X` measures it; the G settings one after another train G
            batches in the sum of their times, aggregate = G / sum(1 / img/s of each)
Both end to end (with the loader) and at the ceiling (the step alone on one resident batch).
"""
from __future__ import annotations

from normfast.bench import _bench_one, _chunk_variants, train_setup
from normfast.config import TrainConfig
from normfast.errors import NormfastError
from normfast.loaders import backends, build_loader
from normfast.registry import parse_list


def _sequential(values: list[float]) -> float:
    """Aggregate img/s of settings trained one after another at `values` img/s each."""
    return len(values) / sum(1.0 / v for v in values) if all(v > 0 for v in values) else 0.0


def bench_train_fused(data_dir, backends_: str, models_: str, compiles: str, norms: list[str], device=None,
                      amp: str = "auto", batch_size: int = 256, steps: int = 20, warmup: int = 5, repeats: int = 3,
                      num_workers: int = 2, chunks: str = "auto", echo=print) -> list[dict]:
    from normfast.fused import MECHANISM
    from normfast.fused_train import FusedStep
    from normfast.models import models
    from normfast.normalization import resolve_norm
    from normfast.ops import Normalizer
    from normfast.step import TrainStep
    device, manifest, amp, in_dtype, chunk_list, compile_modes = train_setup(
        data_dir, device, amp, chunks, compiles, steps, warmup, repeats)
    records = []
    for model in parse_list(models_, models):
        for compile_mode in compile_modes:
            cfgs = [TrainConfig(data=str(data_dir), model=model, norm=n, pretrained="none", lr=1e-3, epochs=1,
                                scheduler="none", seed=223, compile=compile_mode) for n in norms]
            fused = FusedStep(cfgs, manifest.num_classes, device=device, amp=amp, dist=None,
                              static_batch_sizes=(batch_size,))
            fused.normalizers = [Normalizer(resolve_norm(n, manifest, "manifest", weights=fused.weights), device,
                                            in_dtype) for n in norms]
            fused.train(True)
            single = TrainStep(model, manifest.num_classes, pretrained="none", device=device, amp=amp,
                               compile=compile_mode, lr=1e-3, epochs=1, scheduler="none", seed=223,
                               static_batch_sizes=(batch_size,))
            single.train(True)
            for backend in parse_list(backends_, backends):
                for chunk in _chunk_variants(backend, chunk_list):
                    opts = dict(augment=True, device=device, dtype=in_dtype, seed=223, shuffle=True, drop_last=True,
                                num_workers=num_workers, chunk_batches=chunk)
                    with build_loader(manifest, "train", backend, batch_size, norms[0], normalize=False,
                                      **opts) as loader:
                        if len(loader) == 0:
                            raise NormfastError(f"{data_dir}: fewer train images than --batch-size {batch_size}")
                        f = _bench_one(fused, loader, device, steps, warmup, repeats)
                    per = []
                    for n in norms:
                        with build_loader(manifest, "train", backend, batch_size, n, **opts) as loader:
                            r = _bench_one(single, loader, device, steps, warmup, repeats)
                        per.append({"norm": n, "images_per_second": r["images_per_second"],
                                    "ceiling_images_per_second": r["ceiling_images_per_second"],
                                    "data_wait_fraction": r["data_wait_fraction"], "spread": r["spread"]})
                    g = len(norms)
                    seq = _sequential([p["images_per_second"] for p in per])
                    seq_ceil = _sequential([p["ceiling_images_per_second"] for p in per])
                    rec = {"fused": True, "mechanism": MECHANISM, "norms": list(norms), "settings": g,
                           "backend": backend, "model": model, "compile": compile_mode, "device": str(device),
                           "amp": amp, "batch_size": batch_size, "image_shape": list(manifest.image_shape),
                           "chunk_requested": chunk or "auto", "steps": steps, "repeats": repeats,
                           "fused_images_per_second": g * f["images_per_second"],
                           "fused_ceiling_images_per_second": g * f["ceiling_images_per_second"],
                           "fused_spread": f["spread"], "fused_data_wait_fraction": f["data_wait_fraction"],
                           "sequential_images_per_second": seq, "sequential_ceiling_images_per_second": seq_ceil,
                           "speedup": g * f["images_per_second"] / seq if seq else 0.0,
                           "ceiling_speedup": g * f["ceiling_images_per_second"] / seq_ceil if seq_ceil else 0.0,
                           "per_setting": per}
                    echo(f"{model:11s} {compile_mode:10s} {backend:9s} {g} settings  "
                         f"fused {rec['fused_images_per_second']:9.0f}  one after another {seq:9.0f} img/s  "
                         f"x{rec['speedup']:.2f}  (ceilings {rec['fused_ceiling_images_per_second']:.0f} vs "
                         f"{seq_ceil:.0f}, x{rec['ceiling_speedup']:.2f})")
                    records.append(rec)
            del fused, single
    return records


def format_fused_table(records: list[dict]) -> str:
    lines = ["| model | compile | backend | device | amp | settings | fused img/s | one after another img/s "
             "| × | fused ceiling | one after another ceiling | × ceiling | each setting's ceiling |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        each = ", ".join(f"{p['norm']} {p['ceiling_images_per_second']:,.0f}" for p in r["per_setting"])
        lines.append(f"| {r['model']} | {r['compile']} | {r['backend']} | {r['device']} | {r['amp']} | "
                     f"{r['settings']} | "
                     f"{r['fused_images_per_second']:,.0f} | {r['sequential_images_per_second']:,.0f} | "
                     f"{r['speedup']:.2f} | {r['fused_ceiling_images_per_second']:,.0f} | "
                     f"{r['sequential_ceiling_images_per_second']:,.0f} | {r['ceiling_speedup']:.2f} | {each} |")
    return "\n".join(lines)
