"""The `ffcv` backend: FFCV's Loader reads and decodes the .beton; the shared torch op
(`normfast.ops.BatchTransform`) augments and normalizes, on the GPU when the device is cuda.

FFCV pipelines (all JIT ops come before ToTensor: a JIT op after it hangs the Loader,
ffcv issue #396):

  image: SimpleRGBImageDecoder -> ToTensor [-> ToDevice(cuda, non_blocking)]   uint8 NHWC
  label: IntDecoder -> ToTensor [-> ToDevice] -> Squeeze                        int64 (B,)

then `BatchTransform(spec, device, dtype, augment)` with the epoch's crop offsets and flips
from `EpochLoader.plan` (the same draws the `resident` and `dali` backends use): zero-pad
PAD, crop at offsets 0..2*PAD, flip with p=0.5, normalize -> NCHW channels-last in `dtype`.
FFCV's batches are the planned chunks (`EpochLoader.chunks`: one batch on the CPU, about
8 MB of input on CUDA), transformed in one pass and yielded as views: the op's dozen
launches and FFCV's hand-over are paid once per chunk, not per training batch.

Safety on CUDA: FFCV's own __next__ waits forever when its thread dies (`next_batch`
polls and checks the thread instead: one error line); its uploads are blocking in its own
thread (a pinned slot is rewritten 5 chunks later with no wait for its upload); its epoch
buffers are allocated once per stream instead of every epoch, so an epoch starts with the
consumer's stream synchronized and ends with FFCV's side streams synchronized.

Order: FFCV's traversal order is replaced by the contract's `epoch_order` (the same
permutation the `resident` backend uses), so with the same seed this backend yields the
same batches as `resident`, epoch e depends only on (seed, e, rank, world_size), and rank r
reads only its share of the epoch (a slice of a permutation of the WHOLE split when
shuffled, so the FFCV Loader spans the whole .beton; no torch.distributed needed).

`ffcv_augment="ffcv"` (LoaderConfig): FFCV's own RandomHorizontalFlip + RandomTranslate (CPU,
JIT, before ToTensor) do the augmentation and the torch op only normalizes. Faster on a CPU
but NOT reproducible: FFCV draws from numba's per-thread RNG, seeded from OS entropy, so
the same seed gives different crops/flips each run (the order is still seeded). Its numba
compile takes ~10-20 s instead of ~1 s.

numba compiles FFCV's generated code on a Loader's first epoch, in every process, and
NUMBA_CACHE_DIR does not help (FFCV neither asks for caching nor could cache its generated
closures). So FFCV Loaders are shared (`get_stream`): loaders that differ only in
normalization, dtype, seed or shuffle reuse one; each epoch still gets its own FFCV
iterator, thread and buffers.

FFCV side effects contained here: importing ffcv, constructing a Loader and starting an
epoch each call torch.set_num_threads (to 1 / num_workers); `keep_torch_threads` restores
the caller's count. FFCV hands out views of round-robin buffers; the torch op copies them.
An epoch broken off early stops FFCV's producer thread (`stop_epoch`) instead of leaking it.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from normfast.errors import NormfastError
from normfast.loaders import order as orders
from normfast.loaders.config import LoaderConfig
from normfast.loaders.epoch import EpochLoader, to_device
from normfast.augment import PAD
from normfast.compat import keep_torch_threads
from normfast.ops import BatchTransform

BATCHES_AHEAD = 3
POLL_SECONDS = 0.1   # how often a wait for FFCV's next batch checks that FFCV's thread still lives


def _ffcv():
    """The ffcv names we use, imported lazily (the import takes seconds)."""
    with keep_torch_threads():
        from ffcv import transforms
        from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.loader.epoch_iterator import EpochIterator
    _record_thread_errors(EpochIterator)
    return Loader, OrderOption, SimpleRGBImageDecoder, IntDecoder, transforms


def _record_thread_errors(cls) -> None:
    """Make FFCV's epoch thread keep the exception that ends it (a CUDA OOM in ToDevice, a
    numba error) as `normfast_error`, for `next_batch` to report, instead of dying silently
    while the training loop waits for a batch that never comes (FFCV's own __next__)."""
    if getattr(cls, "_normfast_records_errors", False):
        return
    run = cls.run

    def run_recording(self):
        try:
            run(self)
        except BaseException as e:  # noqa: BLE001 - reported by next_batch in the consumer
            self.normfast_error = e
    cls.run, cls._normfast_records_errors = run_recording, True


def next_batch(it, path, poll: float = POLL_SECONDS):
    """The next (images, labels) of FFCV's epoch iterator `it`, or None at the epoch's end:
    FFCV's __next__, but waiting in `poll`-second steps and checking that FFCV's thread is
    alive, so a thread that died is one error line within a second, not a hang."""
    while True:
        try:
            item = it.output_queue.get(timeout=poll)
            break
        except queue.Empty:
            if it.is_alive():
                continue
            try:                       # it may have put its last item just before ending
                item = it.output_queue.get_nowait()
                break
            except queue.Empty:
                error = getattr(it, "normfast_error", None)
                cause = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}" \
                    if error is not None else "no error recorded"
                raise NormfastError(f"{path}: FFCV's loader thread stopped in the middle of an epoch "
                                    f"({cause})") from None
    if item is None:
        it.close()
        return None
    slot, result = item
    stream = it.cuda_streams[slot]
    if stream is not None:                 # the slot's upload before anything reads it
        it.current_stream.wait_stream(stream)
    return result


def max_workers() -> int:
    """numba refuses more threads than NUMBA_NUM_THREADS (the core count by default)."""
    try:
        import numba
        return max(1, int(numba.config.NUMBA_NUM_THREADS))
    except ImportError:   # pragma: no cover - ffcv depends on numba
        return 1 << 30


class ContractOrder:
    """Stands in for FFCV's TraversalOrder: epoch e visits `epoch_order(n, seed, e, ...)`,
    cut to its first `limit` samples (drop_last) when given, or, for a loader, exactly
    `EpochLoader.epoch_indices(e)` (`loader`: its subset and drop_last included)."""

    def __init__(self, n: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1,
                 loader: EpochLoader | None = None):
        self.n, self.seed, self.shuffle, self.rank, self.world_size = n, seed, shuffle, rank, world_size
        self.loader = loader

    def sample_order(self, epoch: int) -> np.ndarray:
        if self.loader is not None:
            order = self.loader.epoch_indices(epoch)
        else:
            order = orders.epoch_order(self.n, self.seed, epoch, self.shuffle, self.rank, self.world_size)
        return order.astype(np.uint64)   # FFCV's own index dtype


class FfcvStream:
    """One FFCV Loader over a whole .beton. `epoch(e, order)` yields
    (uint8 NHWC images, int64 (B,) labels) on `device` in `order.sample_order(e)`; the images
    are views into FFCV's round-robin buffers, valid until the next batch or two.

    The Loader's numba code is compiled on its first epoch (~1 s; ~20 s with
    `ffcv_augment`: FFCV's flip + translate, unseeded, before ToTensor) and never cached on
    disk, so streams are shared (`get_stream`): loaders that differ only in normalization,
    dtype, seed or shuffle reuse one. Each epoch gets its own FFCV iterator and buffers.
    """

    def __init__(self, path, batch_size: int, *, drop_last: bool,
                 ffcv_augment: bool = False, device=torch.device("cpu"), num_workers: int = 2,
                 expected_count: int | None = None):
        Loader, OrderOption, SimpleRGBImageDecoder, IntDecoder, T = _ffcv()
        self.device, self.path = torch.device(device), path
        image = [SimpleRGBImageDecoder()]
        if ffcv_augment:
            image += [T.RandomHorizontalFlip(0.5), T.RandomTranslate(padding=PAD, fill=(0, 0, 0))]
        image += [T.ToTensor()]
        label = [IntDecoder(), T.ToTensor()]
        if self.device.type == "cuda":   # on the CPU ToDevice would only add a copy
            # Blocking (for FFCV's thread, on its slot's side stream; the GIL is released):
            # FFCV rewrites a pinned slot 5 chunks later without waiting for that slot's
            # upload, so a non-blocking upload could still be reading it.
            image += [T.ToDevice(self.device, non_blocking=False)]
            label += [T.ToDevice(self.device, non_blocking=False)]
        label += [T.Squeeze()]
        with keep_torch_threads():
            try:
                self.loader = Loader(str(path), batch_size=batch_size,
                                     num_workers=max(1, min(num_workers, max_workers())),
                                     os_cache=True, order=OrderOption.SEQUENTIAL, seed=0,
                                     indices=None,     # the whole split: ranks take their share by order
                                     pipelines={"image": image, "label": label},
                                     drop_last=drop_last, batches_ahead=BATCHES_AHEAD)
            except (OSError, ValueError, AssertionError) as e:
                raise NormfastError(f"{path}: FFCV cannot read it ({e}); re-run `normfast convert`") from None
        fields = set(self.loader.reader.handlers)
        if not {"image", "label"} <= fields:
            raise NormfastError(f"{path}: has fields {sorted(fields)}, expected image and label")
        self.count = self.loader.reader.num_samples
        if expected_count is not None and self.count != expected_count:
            raise NormfastError(f"{path}: holds {self.count} samples, manifest.json says {expected_count}")
        self.lock = threading.Lock()
        self.users = 0      # loaders holding this stream (see get_stream / release_stream)
        self.running = 0    # epochs of this stream now running
        self._memory = None  # the epoch buffers FFCV allocates, kept for the next epoch
        allocate = self.loader.graph.allocate_memory

        def allocate_once(batch_size, slots):
            """FFCV allocates every epoch's pinned and device buffers anew (5 x chunk images of
            pinned memory: about 30 ms on the CPU proxy, against ~215 ms epochs); here once
            per stream, and fresh only for an epoch that overlaps another."""
            if self.running > 1 or self._memory is None or self._memory[0] != (batch_size, slots):
                memory = allocate(batch_size, slots)
                if self.running > 1:
                    return memory
                self._memory = ((batch_size, slots), memory)
            return self._memory[1]
        self.loader.graph.allocate_memory = allocate_once

    def __len__(self) -> int:
        """Batches of an epoch over the whole split (a rank's share has fewer: EpochLoader)."""
        return len(self.loader)

    def epoch(self, epoch: int, order: ContractOrder):
        if order.n != self.count:
            raise ValueError(f"order is over {order.n} samples, this stream holds {self.count}")
        cuda = self.device.type == "cuda"
        device_ctx = torch.cuda.device(self.device) if cuda else contextlib.nullcontext()
        with self.lock, keep_torch_threads(), device_ctx:
            self.running += 1
            if cuda:
                # the buffers are reused from the last epoch: what the consumer queued on
                # them must have run before FFCV's side streams write them again
                torch.cuda.current_stream(self.device).synchronize()
            self.loader.traversal_order = order   # FFCV asks it for epoch `next_epoch`'s order
            self.loader.next_epoch = epoch
            try:
                it = iter(self.loader)
            except BaseException:
                self.running -= 1
                raise
        finished = False
        try:
            while (batch := next_batch(it, self.path)) is not None:
                images, labels = batch
                # labels are copied (tiny); Squeeze makes a batch of one a 0-d tensor
                yield images, labels.reshape(-1).clone()
            finished = True
        finally:
            if not finished:
                stop_epoch(it)
            if cuda:              # no upload of this epoch still running when the buffers are reused
                for s in it.cuda_streams:
                    s.synchronize()
            with self.lock:
                self.running -= 1


_STREAMS: OrderedDict = OrderedDict()   # key -> FfcvStream, least recently used first
_STREAMS_KEPT = 8
_STREAMS_LOCK = threading.Lock()


def get_stream(path, batch_size: int, *, drop_last: bool, ffcv_augment: bool = False,
               device=torch.device("cpu"), num_workers: int = 2, expected_count: int | None = None) -> FfcvStream:
    """A cached FfcvStream (a rewritten .beton gets a new one: the key has its inode/size/mtime)."""
    st = Path(path).stat()
    device = torch.device(device)
    num_workers = max(1, min(num_workers, max_workers()))
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns, batch_size,
           bool(drop_last), bool(ffcv_augment), str(device), num_workers)
    with _STREAMS_LOCK:
        stream = _STREAMS.get(key)
        if stream is not None:
            _STREAMS.move_to_end(key)
    if stream is None:
        stream = FfcvStream(path, batch_size, drop_last=drop_last, ffcv_augment=ffcv_augment,
                            device=device, num_workers=num_workers)
        with _STREAMS_LOCK:
            stream = _STREAMS.setdefault(key, stream)
            while len(_STREAMS) > _STREAMS_KEPT:
                _STREAMS.popitem(last=False)
    if expected_count is not None and stream.count != expected_count:
        raise NormfastError(f"{path}: holds {stream.count} samples, manifest.json says {expected_count}")
    with _STREAMS_LOCK:
        stream.users += 1
    return stream


def release_stream(stream: FfcvStream) -> None:
    """A loader is done with `stream`: once no loader uses it, it leaves the cache (its FFCV
    Loader, memory map and buffers are freed with it)."""
    with _STREAMS_LOCK:
        stream.users -= 1
        if stream.users <= 0:
            for key, s in list(_STREAMS.items()):
                if s is stream:
                    del _STREAMS[key]


def stop_epoch(it) -> None:
    """Stop FFCV's producer thread of an epoch broken off early (it would otherwise live on,
    blocked on its full output queue, holding the epoch's buffers)."""
    it.iter_ixes = iter(())    # no batch after the one in flight
    it.close()                 # a put blocked on a full queue gives up within 0.5 s
    while it.is_alive():       # ...and a final put(None) needs room: drain
        try:
            it.output_queue.get(timeout=0.1)
        except queue.Empty:
            pass


class FfcvLoader(EpochLoader):
    def __init__(self, cfg: LoaderConfig):
        super().__init__(cfg)
        self.path = cfg.manifest.beton(cfg.split)
        self.device = cfg.device          # a CUDA device always has its index (normfast.device)
        self.augment_mode = cfg.ffcv_augment
        self.ffcv_augment = cfg.augment and self.augment_mode == "ffcv"
        self.torch_augment = cfg.augment and not self.ffcv_augment
        self.order = ContractOrder(cfg.count, cfg.seed, cfg.shuffle, cfg.rank, cfg.world_size, loader=self)
        self.stream = None
        # built once (its constants' upload is a blocking copy); epochs sync explicitly
        self.transform = BatchTransform(cfg.spec, self.device, cfg.dtype, self.torch_augment, cfg.normalize)
        if self.shard_count > 0:
            # drop_last is already in the order (epoch_indices): FFCV must not drop a chunk's rest
            self.stream = get_stream(self.path, self.chunk_size, drop_last=False,
                                     ffcv_augment=self.ffcv_augment, device=self.device,
                                     num_workers=cfg.num_workers, expected_count=cfg.count)

    def iter_chunks(self, epoch: int):
        """FFCV's chunks of `epoch` (its order is `epoch_indices`, so chunk k of FFCV's is
        planned chunk k), each through the shared op with that chunk's crops and flips."""
        if self.stream is None or len(self) == 0:
            return
        dev = self.device
        chunks = self.stream.epoch(epoch, self.order)
        plans = self.chunks(epoch)
        try:
            for (images, labels), plan in zip(chunks, plans):    # FFCV's first: its end ends the epoch
                assert len(labels) == len(plan), f"FFCV chunk of {len(labels)} where {len(plan)} were planned"
                params = (to_device(plan.offsets, dev), to_device(plan.flips, dev)) if self.torch_augment else ()
                yield self.transform(images, *params), labels
        finally:
            chunks.close()        # an epoch broken off stops FFCV's thread now, not at GC

    def release(self) -> None:
        """Give the shared stream back (close() has already stopped a running epoch)."""
        if self.stream is not None:
            release_stream(self.stream)
            self.stream = None
        self.transform = None


def make_loader(cfg: LoaderConfig) -> FfcvLoader:
    return FfcvLoader(cfg)


class Uint8Loader:
    """A .beton's uint8 images and labels through FFCV on the CPU (each pass is an epoch)."""

    def __init__(self, stream: FfcvStream, order: ContractOrder):
        self.stream, self.order, self.epoch = stream, order, 0

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        for images, labels in self.stream.epoch(epoch, self.order):
            yield images.clone(), labels     # FFCV reuses its image buffers


def ffcv_uint8_loader(path, batch_size: int, shuffle: bool = False, seed: int = 0,
                      augment: bool = False, drop_last: bool = False, num_workers: int = 2) -> Uint8Loader:
    """Iterable of (uint8 NHWC CPU tensor, int64 labels) batches of a whole .beton: stored
    order unless `shuffle` (then `epoch_order(n, seed, e)`); `augment` applies FFCV's own
    (unseeded) flip + translate. Used by readback/verify."""
    path = Path(path)
    if not path.is_file():
        raise NormfastError(f"{path}: missing; run `normfast convert`")
    with keep_torch_threads():
        from ffcv.reader import Reader
        n = Reader(str(path)).num_samples
    stream = get_stream(path, batch_size, drop_last=drop_last, ffcv_augment=augment,
                        num_workers=num_workers, expected_count=n)
    return Uint8Loader(stream, ContractOrder(n, seed, shuffle))
