"""Backends that turn a converted split into device batches, all with one contract.

`build_loader(...)` returns an iterable with `len()`; each pass over it is one epoch and
yields `(images, labels)`: images NCHW in channels-last memory on `device` in `dtype`,
already augmented (train) and normalized; labels int64 on `device`. With
`normalize=False`: the same batches as uint8, not normalized (see `LoaderConfig`).

Order: with `shuffle` off, stored order. With it on, epoch e's order is a function of
(seed, e) only, so a resumed run sees the same batches as an uninterrupted one; call
`set_epoch(e)` to jump. `rank`/`world_size` split the split into disjoint shards that
together cover it exactly once (no padding, no duplicates; shard sizes differ by at most one
sample; rank r's share has `shard_bounds(n, r, w)`'s size):
  - shuffled (train): like torch's DistributedSampler, epoch e draws ONE permutation of the
    whole split from (seed, e) and rank r takes the slice [n*r//w, n*(r+1)//w) of it. Every
    rank therefore sees a fresh random sample of every class each epoch (never a fixed block
    of stored order), and the order depends only on (seed, epoch, rank, world_size), so a
    resumed run sees the same batches.
  - unshuffled (test, val): rank r takes the contiguous block [n*r//w, n*(r+1)//w) of the
    stored order. Conversion stores every split in a seeded shuffled order, so such a block
    is itself class-mixed.
Every backend takes its order from `EpochLoader.epoch_indices` / `plan`.

Layout (each module imports only those below it): this package holds the registry and
`build_loader`; `epoch.EpochLoader` owns the epoch (order, plan, chunks, batch views, the
loader thread); `order` the order math; `config.LoaderConfig` the settings; each backend
module (`dali_backend`, `ffcv_backend`, `resident`, `torch_backend`) only turns planned
chunks into device tensors.

`subset` (sorted stored indices, e.g. `--val-fraction`'s held-out part of train): the
loader sees only those samples, as if the split held just them; `epoch_order` runs over
positions in `subset`, which `EpochLoader.epoch_indices` maps back to stored indices.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from normfast.compat import keep_torch_threads
from normfast.device import resolve_device
from normfast.errors import NormfastError
from normfast.loaders.config import AUGMENT_MODES, LoaderConfig
from normfast.loaders.epoch import (CHUNK_BYTES, MAX_CHUNK_BATCHES, Chunk, EpochLoader, chunk_batches,
                                    in_background, to_device)
from normfast.loaders.order import epoch_order, epoch_seed, num_batches, shard_bounds
from normfast.manifest import Manifest, load_manifest
from normfast.normalization import NormSpec, resolve_norm
from normfast.precision import resolve_dtype
from normfast.registry import Registry

__all__ = ["AUGMENT_MODES", "Backend", "CHUNK_BYTES", "Chunk", "EpochLoader", "LoaderConfig", "MAX_CHUNK_BATCHES",
           "backends", "build_loader", "chunk_batches", "epoch_order", "epoch_seed", "in_background",
           "num_batches", "shard_bounds", "to_device"]


@dataclass(frozen=True)
class Backend:
    """A registered backend: the module holding its `make_loader`, the package it needs
    beyond normfast's own (None: none) with how to install that package, and whether it
    takes `chunk_batches` (see `chunk_batches`)."""
    name: str
    module: str
    package: str | None = None
    install: str | None = None
    chunked: bool = False

    def check_installed(self) -> None:
        """Raise a one-line NormfastError naming the install command when the package is missing."""
        if self.package is None:
            return
        try:
            with keep_torch_threads():
                importlib.import_module(self.package)
        except ImportError as e:      # the cause too: a missing dependency of the package (distutils, a .so)
            raise NormfastError(f"backend {self.name!r} needs the {self.package} package; install it with: "
                                f"{self.install} (import failed: {str(e).splitlines()[0][:160] if str(e) else e!r})"
                                ) from None

    def make_loader(self, cfg: "LoaderConfig"):
        self.check_installed()
        return importlib.import_module(self.module).make_loader(cfg)


backends: Registry[Backend] = Registry("backend")
for _backend in (
    Backend("dali", "normfast.loaders.dali_backend", "nvidia.dali", "pip install nvidia-dali-cuda120", chunked=True),
    Backend("ffcv", "normfast.loaders.ffcv_backend", "ffcv", "bash setup.sh (FFCV builds from source)", chunked=True),
    Backend("resident", "normfast.loaders.resident"),
    Backend("torch", "normfast.loaders.torch_backend"),
):
    backends.register(_backend.name)(_backend)


def build_loader(data, split: str, backend: str, batch_size: int, norm, augment: bool,
                 device=None, dtype="float32", seed: int = 0, shuffle: bool = False,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 stats: str = "manifest", num_workers: int = 2, subset=None, *, normalize: bool = True,
                 chunk_batches: int | None = None, background: bool | None = None,
                 dali_prefetch: int | None = None, ffcv_augment: str | None = None):
    """Build a backend's loader for one split. See the module docstring for the contract and
    `LoaderConfig` for the keywords. `data`: a loaded Manifest (a trainer's loaders share
    one), or a dataset directory."""
    entry = backends.get(backend)
    manifest = data if isinstance(data, Manifest) else load_manifest(data)
    data_dir = manifest.root
    count = manifest.count(split)       # an unknown split: an error listing the valid ones
    if batch_size < 1:
        raise NormfastError(f"batch size {batch_size}: must be at least 1")
    if not 0 <= rank < world_size:
        raise NormfastError(f"rank {rank} is not in 0..{world_size - 1}")
    if subset is not None:
        subset = np.asarray(subset, dtype=np.int64)
        if len(subset) and (subset.min() < 0 or subset.max() >= count or (np.diff(subset) <= 0).any()):
            raise NormfastError(f"{data_dir}: subset of {split} must be sorted distinct indices in 0..{count - 1}")
    spec = norm if isinstance(norm, NormSpec) else resolve_norm(norm, manifest, stats)
    cfg = LoaderConfig(manifest=manifest, split=split, batch_size=batch_size, spec=spec, augment=augment,
                       device=resolve_device(device), dtype=resolve_dtype(dtype), seed=seed, shuffle=shuffle,
                       drop_last=drop_last, rank=rank, world_size=world_size, num_workers=num_workers,
                       subset=subset, normalize=bool(normalize), chunk_batches=chunk_batches,
                       background=background, dali_prefetch=dali_prefetch, ffcv_augment=ffcv_augment or "torch")
    return entry.make_loader(cfg)
