"""Backends that turn a converted split into device batches, all with one contract.

`build_loader(...)` returns an iterable with `len()`; each pass over it is one epoch and
yields `(images, labels)`: images NCHW in channels-last memory on `device` in `dtype`,
already augmented (train) and normalized; labels int64 on `device`.

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

`subset` (sorted stored indices, e.g. `--val-fraction`'s held-out part of train): the
loader sees only those samples, as if the split held just them; `epoch_order` runs over
positions in `subset`, which `EpochLoader.epoch_indices` maps back to stored indices.
"""
from __future__ import annotations

import importlib
import queue
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from normfast.augment import draw_augmentation
from normfast.device import resolve_device
from normfast.errors import NormfastError
from normfast.manifest import Manifest, load_manifest
from normfast.normalization import NormSpec, resolve_norm
from normfast.compat import keep_torch_threads
from normfast.precision import resolve_dtype
from normfast.registry import Registry

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
        except ImportError:
            raise NormfastError(f"backend {self.name!r} needs the {self.package} package; install it with: "
                                f"{self.install}") from None

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


AUGMENT_MODES = ("torch", "ffcv")   # ffcv_augment: who crops and flips in the ffcv backend


@dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    """Everything a backend needs, resolved and checked once (`build_loader`), by keyword.

    `normalize` False: batches are augmented but not normalized: uint8 NCHW in channels-last
    memory, the very pixels (order, crops, flips) the normalizing loader would normalize;
    `normfast.ops.Normalizer(spec, device, dtype).nchw(x)` then gives what it yields.
    `chunk_batches`: training batches prepared at once (None: the backend's default, see
    `chunk_batches()`); `background`: run epochs in a loader thread (None: the backend's
    default, on CUDA); `dali_prefetch`: DALI iterations in flight (None: its PREFETCH);
    `ffcv_augment`: "torch" (the shared seeded op) or "ffcv" (FFCV's own, unseeded)."""
    manifest: Manifest
    split: str
    batch_size: int
    spec: NormSpec
    augment: bool
    device: torch.device
    dtype: torch.dtype
    seed: int = 0
    shuffle: bool = False
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1
    num_workers: int = 2
    subset: np.ndarray | None = None      # stored indices this loader reads (None: all)
    normalize: bool = True
    chunk_batches: int | None = None
    background: bool | None = None
    dali_prefetch: int | None = None
    ffcv_augment: str = "torch"

    def __post_init__(self):
        for name in ("chunk_batches", "dali_prefetch"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise NormfastError(f"{name} {value!r}: must be a whole number of at least 1")
        if self.ffcv_augment not in AUGMENT_MODES:
            raise NormfastError(f"ffcv_augment {self.ffcv_augment!r}: valid: {', '.join(AUGMENT_MODES)}")

    @property
    def out_dtype(self) -> torch.dtype:
        """The images' dtype: `dtype` when normalizing, else uint8."""
        return self.dtype if self.normalize else torch.uint8

    @property
    def data_dir(self) -> Path:
        return self.manifest.root

    @property
    def count(self) -> int:
        return self.manifest.count(self.split)

    @property
    def n(self) -> int:
        """Samples this loader covers per epoch over all ranks (the subset's, else the split's)."""
        return self.count if self.subset is None else len(self.subset)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.manifest.image_shape


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A NumPy array on `device`; to CUDA through pinned memory without blocking the host
    (a pageable copy would wait for the GPU to drain its queue: a bubble per epoch)."""
    t = torch.from_numpy(array)
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's share: a block of the stored order (unshuffled) or of the
    epoch's permutation of the whole split (shuffled). Sizes differ by at most one."""
    return n * rank // world_size, n * (rank + 1) // world_size


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """The sample indices this rank visits in `epoch`, in order (see the module docstring):
    shuffled, rank's slice of one permutation of all n drawn from (seed, epoch), the same on
    every rank; unshuffled, rank's block of the stored order."""
    start, stop = shard_bounds(n, rank, world_size)
    if not shuffle:
        return np.arange(start, stop)
    return np.random.default_rng([seed, epoch]).permutation(n)[start:stop]


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A seed for an epoch's augmentation randomness (independent of how we got there)."""
    return int(np.random.default_rng([seed, epoch, rank, 7919]).integers(2 ** 62))


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


BACKGROUND_DEPTH = 2     # batches a loader's thread prepares ahead of the training loop

CHUNK_BYTES = 8 << 20    # CUDA: uint8 input bytes a dali/ffcv loader prepares at once
MAX_CHUNK_BATCHES = 16


def chunk_batches(cfg: LoaderConfig) -> int:
    """Training batches a backend prepares in one go (one DALI iteration, one FFCV batch,
    one pass of the shared op), then yields as views (`batch_views`).

    A loader's work per iteration is mostly fixed: scheduling, hand-over to torch, a dozen
    kernel launches, all on a Python thread that shares the GIL with the training step
    (measured on an H200: about 1 ms per DALI iteration whatever its 256 images weigh).
    Preparing several batches at once divides that fixed cost by their number. On CUDA a
    chunk holds about CHUNK_BYTES of uint8 input (ten 32 px batches of 256; one 224 px
    batch); on the CPU one batch (there is no launch cost to save, and small working sets
    stay in cache). `cfg.chunk_batches` overrides (checked by LoaderConfig)."""
    if cfg.chunk_batches is not None:
        return cfg.chunk_batches
    if cfg.device.type != "cuda":
        return 1
    batch_bytes = cfg.batch_size * int(np.prod(cfg.image_shape))
    return int(max(1, min(MAX_CHUNK_BATCHES, CHUNK_BYTES // max(1, batch_bytes))))


def batch_views(x: torch.Tensor, y: torch.Tensor, batch_size: int):
    """The consecutive training batches of a chunk, as views (the last may be partial)."""
    for b in range(0, len(y), batch_size):
        yield x[b:b + batch_size], y[b:b + batch_size]


def in_background(batches, device: torch.device, depth: int = BACKGROUND_DEPTH):
    """Run an epoch's generator in its own thread, `depth` batches ahead.

    Measured on an H200 (benchmarks/dali_profile.py, ResNet18 with CUDA graphs): DALI alone
    delivered 3x what the step takes, yet its 1.2 ms a batch of work on the training thread
    (source, scheduling, hand-over) showed up as 26% data wait; in this thread the wait fell
    to 2%. (Our reading: the step leaves that thread little CPU to spare.) In a thread the
    loader's work overlaps the step's launches; the
    GIL is released in DALI's, FFCV's and torch's C++ calls. Batches keep CUDA stream order:
    both threads launch on the device's default stream, the producer before the consumer.
    An exception in the thread is raised in the consumer; closing the consumer stops the
    thread and closes the epoch's generator there.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            if device.type == "cuda":
                torch.cuda.set_device(device.index)     # the current device is per thread
            for batch in batches:
                if not put(("batch", batch)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(("error", e))
        finally:
            batches.close()
            put(("end", None))

    thread = threading.Thread(target=work, name="normfast-loader", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "batch":
                yield item
            elif kind == "error":
                raise item
            else:
                return
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


class EpochLoader:
    """Base for backends: `len()`, epoch counting, `set_epoch`, the epoch's plan, `close()`.

    A loader holds threads, pipelines or device memory: `close()` (or `with loader:`)
    releases them; a closed loader cannot be iterated again.

    `producer_cpu_seconds` adds up the CPU time of the thread that runs the epochs'
    generators while it is inside them, over `producer_batches` batches: the loader's own
    Python and C++ work, which competes with the training step for the GIL (`bench` reports
    the ratio). It includes host waits that spin (a CUDA sync may), so it is an upper bound
    of the GIL time.
    """

    BACKGROUND_ON_CUDA = True   # run epochs in a loader thread on CUDA (see in_background)
    chunk: int | None = None    # training batches prepared at once (None: one at a time)

    @property
    def chunk_size(self) -> int:
        """Samples prepared at once (one batch where the backend does not chunk)."""
        return (self.chunk or 1) * self.cfg.batch_size

    def __init__(self, cfg: LoaderConfig):
        self.cfg = cfg
        self.epoch = 0
        self.closed = False
        # the iterator of the epoch last started, for close(); a weak reference: the iterator
        # holds the loader, so a strong one would make a cycle that keeps an unclosed
        # loader's pipelines and threads alive until the cyclic GC runs (and a process that
        # forks meanwhile, a DataLoader worker or FFCV's writer, can hang on DALI's threads)
        self._running = None
        self.producer_cpu_seconds = 0.0   # CPU time spent producing batches, in whichever thread
        self.producer_batches = 0         # ...and the batches it produced
        self._indices = None              # (epoch, its indices): see epoch_indices
        self.background = (cfg.device.type == "cuda" and self.BACKGROUND_ON_CUDA) if cfg.background is None \
            else bool(cfg.background)
        start, stop = shard_bounds(cfg.n, cfg.rank, cfg.world_size)
        self.shard_count = stop - start

    def __len__(self) -> int:
        return num_batches(self.shard_count, self.cfg.batch_size, self.cfg.drop_last)

    @property
    def num_samples(self) -> int:
        """Samples yielded per epoch on this rank."""
        return len(self) * self.cfg.batch_size if self.cfg.drop_last else self.shard_count

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(sample indices, crop offsets, flips) of `epoch` on this rank, in the order they
        are yielded; offsets/flips are None without augmentation. Every backend but the
        `torch` baseline takes its order and augmentation from here."""
        cfg = self.cfg
        order = self.epoch_indices(epoch)
        if not cfg.augment:
            return order, None, None
        offsets, flips = draw_augmentation(len(order), epoch_seed(cfg.seed, epoch, cfg.rank))
        return order, offsets, flips

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Stored indices this rank yields in `epoch`, in order (drop_last applied). The last
        epoch's are kept: a backend may ask twice (ffcv: for its draws and for FFCV's order).
        Callers must not modify the array."""
        cached = self._indices
        if cached is not None and cached[0] == epoch:
            return cached[1]
        cfg = self.cfg
        order = epoch_order(cfg.n, cfg.seed, epoch, cfg.shuffle, cfg.rank, cfg.world_size)[:self.num_samples]
        order = order if cfg.subset is None else cfg.subset[order]
        self._indices = (epoch, order)
        return order

    def __iter__(self):
        if self.closed:
            raise NormfastError(f"{self.cfg.data_dir}: this {self.cfg.split} loader was closed")
        epoch = self.epoch
        self.epoch += 1
        batches = self._timed(self.iter_epoch(epoch))
        running = in_background(batches, self.cfg.device) if self.background else batches
        self._running = weakref.ref(running)
        return running

    def _timed(self, batches):
        clock = time.thread_time
        try:
            while True:
                t0 = clock()
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                finally:
                    self.producer_cpu_seconds += clock() - t0
                self.producer_batches += 1
                yield batch
        finally:
            batches.close()

    def iter_epoch(self, epoch: int):
        raise NotImplementedError

    def release(self) -> None:
        """Free what the backend holds (pipelines, threads, device memory)."""

    def close(self) -> None:
        """Stop the epoch last started (its loader thread first, so the epoch's generator is
        closed in the thread that runs it), then free what the backend holds."""
        if not self.closed:
            self.closed = True
            running = self._running() if self._running is not None else None
            self._running = None
            if running is not None:
                running.close()
            self.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
