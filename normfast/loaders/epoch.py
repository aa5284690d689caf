"""`EpochLoader`: what every backend shares, so that a backend only turns planned chunks
into device tensors.

The loader owns the epoch: its order (`epoch_indices`), its plan (`plan`: indices, crop
offsets and flips, drawn once per epoch) cut into chunks of `chunk` training batches
(`chunks`), the slicing of each chunk into batch views (once, in `_views`), the producer
CPU accounting, and the optional loader thread (`in_background`). A backend implements
`load(chunk) -> (x, y)` on the device (or, for a streaming pipeline, `iter_chunks(epoch)`,
which yields one (x, y) per planned chunk), and `release()`.

The loader thread hands the training loop whole chunks (one queue hand-over, one GIL
wake-up, per chunk); the training thread slices them into batch views.
"""
from __future__ import annotations

import queue
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from normfast.augment import draw_augmentation
from normfast.errors import NormfastError
from normfast.loaders import order as orders
from normfast.loaders.config import LoaderConfig

BACKGROUND_DEPTH = 2     # chunks a loader's thread prepares ahead of the training loop

# CUDA: uint8 INPUT bytes a loader prepares at once (one DALI iteration, one FFCV batch, one
# pass of the shared op), whatever the output dtype; a backend may set its own (resident).
CHUNK_BYTES = 8 << 20
MAX_CHUNK_BATCHES = 16


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A NumPy array on `device`; to CUDA through pinned memory without blocking the host
    (a pageable copy would wait for the GPU to drain its queue). Each call pins a fresh
    buffer, which torch's host allocator keeps until the copy has run: never rewritten early."""
    t = torch.from_numpy(array)
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def chunk_batches(cfg: LoaderConfig, chunk_bytes: int = CHUNK_BYTES, max_batches: int = MAX_CHUNK_BATCHES) -> int:
    """Training batches a backend prepares in one go, then yields as views.

    A loader's work per iteration is mostly fixed: scheduling, hand-over to torch, a dozen
    kernel launches, all on a Python thread that shares the GIL with the training step
    (measured on an H200: about 1 ms per DALI iteration whatever its 256 images weigh).
    Preparing several batches at once divides that fixed cost by their number. On CUDA a
    chunk holds about `chunk_bytes` of uint8 input (CHUNK_BYTES: ten 32 px batches of 256;
    one 224 px batch); on the CPU one batch (there is no launch cost to save, and small
    working sets stay in cache). `cfg.chunk_batches` overrides (checked by LoaderConfig)."""
    if cfg.chunk_batches is not None:
        return cfg.chunk_batches
    if cfg.device.type != "cuda":
        return 1
    batch_bytes = cfg.batch_size * int(np.prod(cfg.image_shape))
    return int(max(1, min(max_batches, chunk_bytes // max(1, batch_bytes))))


@dataclass(frozen=True)
class Chunk:
    """One planned chunk of an epoch: the samples a backend turns into one (x, y)."""
    epoch: int
    index: int                     # its place in the epoch: 0, 1, ...
    start: int                     # position of its first sample in the epoch's order
    indices: np.ndarray            # stored indices, in the order they are yielded
    offsets: np.ndarray | None     # (n, 2) int32 crop offsets in 0..2*PAD (None: no augmentation)
    flips: np.ndarray | None       # (n,) bool

    def __len__(self) -> int:
        return len(self.indices)


def plan_chunks(epoch: int, order: np.ndarray, offsets, flips, size: int):
    """Chunks of `size` samples of one epoch's plan (see EpochLoader.chunks)."""
    for c, s in enumerate(range(0, len(order), size)):
        yield Chunk(epoch, c, s, order[s:s + size], None if offsets is None else offsets[s:s + size],
                    None if flips is None else flips[s:s + size])


def in_background(items, device: torch.device, depth: int = BACKGROUND_DEPTH):
    """Run an epoch's chunk generator in its own thread, `depth` chunks ahead.

    Measured on an H200 (benchmarks/dali_profile.py, ResNet18 with CUDA graphs): DALI alone
    delivered 3x what the step takes, yet its 1.2 ms a batch of work on the training thread
    (source, scheduling, hand-over) showed up as 26% data wait; in this thread the wait fell
    to 2%. In a thread the loader's work overlaps the step's launches; the GIL is released
    in DALI's, FFCV's and torch's C++ calls. Items keep CUDA stream order: both threads
    launch on the device's default stream, the producer before the consumer. An exception
    in the thread is raised in the consumer; closing the consumer stops the thread and
    closes the generator there.
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
            for item in items:
                if not put(("item", item)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(("error", e))
        finally:
            items.close()
            put(("end", None))

    thread = threading.Thread(target=work, name="normfast-loader", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "item":
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
    """Base of every backend: `len()`, epoch counting, `set_epoch`, the epoch's plan and
    chunks, batch views, the loader thread, `close()`.

    A loader holds threads, pipelines or device memory: `close()` (or `with loader:`)
    releases them; a closed loader cannot be iterated again.

    `producer_cpu_seconds` adds up the CPU time of the thread that produces the chunks while
    it is inside the backend, over `producer_batches` batches in `producer_chunks` chunks:
    the loader's own Python and C++ work, which competes with the training step for the GIL
    (`bench` reports it per batch). It includes host waits that spin (a CUDA sync may), so
    it is an upper bound of the GIL time. In a loader thread each chunk is one hand-over.
    """

    BACKGROUND_ON_CUDA = True       # run epochs in a loader thread on CUDA (see in_background)
    CHUNK_BYTES: int | None = CHUNK_BYTES     # None: the backend does not chunk (chunk None)
    MAX_CHUNK_BATCHES = MAX_CHUNK_BATCHES

    def __init__(self, cfg: LoaderConfig):
        self.cfg = cfg
        self.epoch = 0
        self.closed = False
        # the iterator of the epoch last started, for close(); a weak reference: the iterator
        # holds the loader, so a strong one would make a cycle that keeps an unclosed
        # loader's pipelines and threads alive until the cyclic GC runs (and a process that
        # forks meanwhile, a DataLoader worker or FFCV's writer, can hang on DALI's threads)
        self._running = None
        self.producer_cpu_seconds = 0.0   # CPU time spent producing chunks, in whichever thread
        self.producer_batches = 0         # ...the batches they held
        self.producer_chunks = 0          # ...and the chunks
        self._indices = None              # (epoch, its indices): see epoch_indices
        self._plan = None                 # (epoch, its plan): see plan
        self.background = (cfg.device.type == "cuda" and self.BACKGROUND_ON_CUDA) if cfg.background is None \
            else bool(cfg.background)
        start, stop = orders.shard_bounds(cfg.n, cfg.rank, cfg.world_size)
        self.shard_count = stop - start
        # training batches prepared at once (None: the backend yields one batch at a time)
        self.chunk = None if self.CHUNK_BYTES is None else chunk_batches(cfg, self.CHUNK_BYTES,
                                                                          self.MAX_CHUNK_BATCHES)

    @property
    def chunk_size(self) -> int:
        """Samples prepared at once (one batch where the backend does not chunk)."""
        return (self.chunk or 1) * self.cfg.batch_size

    def __len__(self) -> int:
        return orders.num_batches(self.shard_count, self.cfg.batch_size, self.cfg.drop_last)

    @property
    def num_samples(self) -> int:
        """Samples yielded per epoch on this rank."""
        return len(self) * self.cfg.batch_size if self.cfg.drop_last else self.shard_count

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # ------------------------------------------------------------------ the plan
    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Stored indices this rank yields in `epoch`, in order (drop_last applied). The last
        epoch's are kept: a backend may ask twice (ffcv: for its plan and for FFCV's order).
        Callers must not modify the array."""
        cached = self._indices
        if cached is not None and cached[0] == epoch:
            return cached[1]
        cfg = self.cfg
        order = orders.epoch_order(cfg.n, cfg.seed, epoch, cfg.shuffle, cfg.rank, cfg.world_size)
        order = order[:self.num_samples]
        order = order if cfg.subset is None else cfg.subset[order]
        self._indices = (epoch, order)
        return order

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(sample indices, crop offsets, flips) of `epoch` on this rank, in the order they
        are yielded; offsets/flips are None without augmentation. Every backend but the
        `torch` baseline takes its order and augmentation from here. The last epoch's plan is
        kept (dali's stream may ask for it again after a jump)."""
        cached = self._plan
        if cached is not None and cached[0] == epoch:
            return cached[1]
        cfg = self.cfg
        order = self.epoch_indices(epoch)
        offsets = flips = None
        if cfg.augment:
            offsets, flips = draw_augmentation(len(order), orders.epoch_seed(cfg.seed, epoch, cfg.rank))
        self._plan = (epoch, (order, offsets, flips))
        return order, offsets, flips

    def chunks(self, epoch: int):
        """The epoch's plan cut into `Chunk`s of `chunk_size` samples (the last one holds
        what is left), in order. The plan is made now and the generator holds only its
        arrays, never the loader (dali's feed keeps it: a reference to the loader would be
        a cycle that keeps an unclosed loader's DALI threads alive until the cyclic GC)."""
        return plan_chunks(epoch, *self.plan(epoch), self.chunk_size)

    # ------------------------------------------------------------------ what a backend implements
    def load(self, chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor]:
        """One planned chunk as (images NCHW channels-last in `cfg.out_dtype`, int64 labels)
        on the device, in fresh memory (its views live for several steps)."""
        raise NotImplementedError

    def iter_chunks(self, epoch: int):
        """One (x, y) per planned chunk of `epoch`; a streaming backend (dali, ffcv) overrides
        it to run its pipeline over `chunks(epoch)`."""
        for chunk in self.chunks(epoch):
            yield self.load(chunk)

    def release(self) -> None:
        """Free what the backend holds (pipelines, threads, device memory)."""

    # ------------------------------------------------------------------ the epoch
    def __iter__(self):
        if self.closed:
            raise NormfastError(f"{self.cfg.data_dir}: this {self.cfg.split} loader was closed")
        epoch = self.epoch
        self.epoch += 1
        chunks = self._timed(self.iter_chunks(epoch))
        if self.background:
            chunks = in_background(chunks, self.cfg.device)
        running = self._views(chunks)
        self._running = weakref.ref(running)
        return running

    def _timed(self, chunks):
        clock, bs = time.thread_time, self.cfg.batch_size
        try:
            while True:
                t0 = clock()
                try:
                    x, y = next(chunks)
                except StopIteration:
                    return
                finally:
                    self.producer_cpu_seconds += clock() - t0
                self.producer_chunks += 1
                self.producer_batches += -(-len(y) // bs)
                yield x, y
        finally:
            chunks.close()

    def _views(self, chunks):
        """The consecutive training batches of each chunk, as views (the last may be partial)."""
        bs = self.cfg.batch_size
        try:
            for x, y in chunks:
                if len(y) <= bs:
                    yield x, y
                    continue
                for b in range(0, len(y), bs):
                    yield x[b:b + bs], y[b:b + bs]
        finally:
            chunks.close()

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
