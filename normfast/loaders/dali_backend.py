"""The `dali` backend: NVIDIA DALI decodes, augments and normalizes the webdataset shards.

One DALI pipeline per loader, for the whole run, fed by an `external_source` callback.
Each call hands DALI one planned chunk (`EpochLoader.chunks`: `chunk` training batches,
one batch on the CPU, about 8 MB of input on CUDA; an epoch's last chunk holds what is
left), in the contract's order: the images of the chunk's samples, their labels, and their
crop anchors and flips (the draws every backend shares). EpochLoader yields each chunk's
batches as views, so DALI's fixed cost per iteration (scheduling, the callback, hand-over
to torch, and in the loader thread one queue hand-over) is paid once per chunk. The
callback runs on the loader's thread each time an iteration is scheduled, so its cost is
one vectorized gather per shard and chunk, never a Python loop per sample for raw shards:

  raw:     a strided NumPy view (samples, H*W*C) of each memory-mapped tar (fixed-size
           members sit at a constant stride) and one fancy index per shard and batch;
  png/jpg: a list of zero-copy slices of the memory-mapped tars (one per sample: the
           sizes differ), decoded by DALI (nvJPEG, `device="mixed"`, on CUDA).

The graph, per sample (HWC throughout; on CUDA everything after the source runs on the GPU):

  images -> [decoders.image]                       (png/jpg)
  augment: slice(start=anchor, shape=HxW, pad with 0)  anchor = offset - PAD, offset in 0..2*PAD
  affine settings: crop_mirror_normalize(mirror, mean/std in pixel units) -> float32
  instance:        crop_mirror_normalize(mirror) -> float32 pixels, then
                   normalize(axes=HW, ddof=1, epsilon=0) (a constant channel gives 0)

DALI always produces float32 and torch casts to float16/bfloat16: DALI's GPU fp16
conversion was seen up to 1.5e-3 off (more than half an fp16 ulp), and it has no bfloat16.
Outputs are NHWC; `permute(0, 3, 1, 2)` makes them NCHW in channels-last memory at no cost.

The pipeline keeps PREFETCH chunks in flight, across epoch boundaries too: the callback's
stream runs on from epoch e into e+1. A jump (`set_epoch`, a resumed run) or an epoch
broken off early is detected from the tags of the chunks in flight, which are then
drained (at most PREFETCH chunks of work) before the stream restarts where asked.
"""
from __future__ import annotations

import mmap
import weakref
from collections import deque
from itertools import count

import numpy as np
import torch
from nvidia.dali import Pipeline, fn, types

from normfast.augment import PAD
from normfast.errors import NormfastError
from normfast.loaders.config import LoaderConfig
from normfast.loaders.epoch import EpochLoader
from normfast.manifest import Manifest
from normfast.shards import ShardReader

PREFETCH = 2      # pipeline iterations (chunks) in flight (LoaderConfig.dali_prefetch overrides)


# ---------------------------------------------------------------- the samples, vectorized

def _map(path) -> np.ndarray:
    """A read-only uint8 array over a whole file (a plain ndarray: slicing an np.memmap
    costs microseconds per slice, a plain view a fraction of that)."""
    with open(path, "rb") as f:
        return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)


class ShardSamples:
    """A split's samples in the shards, addressed by stored index, gathered by the batch."""

    def __init__(self, reader: ShardReader):
        self.encoding, self.shape = reader.encoding, tuple(reader.shape)
        loc = np.asarray(reader.locations, dtype=np.int64).reshape(-1, 4)   # shard, offset, size, label offset
        self.n = len(loc)
        self.maps = [_map(p) for p in reader.shards]
        self.shard, self.offset, self.size = loc[:, 0], loc[:, 1], loc[:, 2]
        self.labels = np.empty(self.n, np.int64)
        self.local = np.empty(self.n, np.int64)          # position within its shard
        self.views: list[np.ndarray | None] = []          # raw: (samples in shard, H*W*C) strided views
        nbytes = int(np.prod(self.shape))
        for k, data in enumerate(self.maps):
            rows = np.flatnonzero(self.shard == k)
            self.local[rows] = np.arange(len(rows))
            label_at = loc[rows, 3]
            self.labels[rows] = data[label_at[:, None] + np.arange(8)].view("<i8").reshape(-1)
            self.views.append(self._strided(data, self.offset[rows], self.size[rows], nbytes)
                              if self.encoding == "raw" else None)

    @staticmethod
    def _strided(data: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, nbytes: int):
        """(len(offsets), nbytes) view when the members are fixed-size at a constant stride
        (what the converter's USTAR writer produces); else None (gathered by index)."""
        if len(offsets) == 0 or (sizes != nbytes).any():
            return None
        stride = int(offsets[1] - offsets[0]) if len(offsets) > 1 else nbytes
        if stride <= 0 or (np.diff(offsets) != stride).any():
            return None
        return np.lib.stride_tricks.as_strided(data[offsets[0]:], shape=(len(offsets), nbytes),
                                               strides=(stride, 1), writeable=False)

    def images(self, idx: np.ndarray):
        """raw: one (B, H, W, C) uint8 array; png/jpg: a list of B byte arrays."""
        if self.encoding != "raw":
            return [self.maps[k][o:o + s] for k, o, s in zip(self.shard[idx].tolist(), self.offset[idx].tolist(),
                                                             self.size[idx].tolist())]
        out = np.empty((len(idx), int(np.prod(self.shape))), np.uint8)
        shards = self.shard[idx]
        for k in np.unique(shards).tolist():
            rows = np.flatnonzero(shards == k) if len(self.maps) > 1 else slice(None)
            view = self.views[k]
            if view is not None:
                out[rows] = view[self.local[idx[rows]]]
            else:
                at = self.offset[idx[rows]]
                out[rows] = self.maps[k][at[:, None] + np.arange(out.shape[1])]
        return out.reshape(len(idx), *self.shape)


class Feed:
    """The external source's callback: the next chunk of a stream that runs from a start
    epoch on through the following ones. Records the (epoch, chunk) tag of every chunk it
    hands DALI, in order, in `in_flight` (the consumer pops them with the outputs)."""

    def __init__(self, loader: "DaliLoader"):
        # a weak reference: the pipeline holds the feed, the loader the pipeline; a strong
        # one would make a cycle that keeps DALI's threads alive until the cyclic GC runs
        # (and a process that forks meanwhile, a DataLoader worker or FFCV's writer, hangs)
        self.loader = weakref.proxy(loader)
        self.stream = None
        self.in_flight: deque = deque()

    def start(self, epoch: int) -> None:
        self.stream = self._batches(epoch)

    def _batches(self, first: int):
        loader = self.loader
        samples, augment = loader.samples, loader.cfg.augment
        for epoch in count(first):
            for chunk in loader.chunks(epoch):
                out = [samples.images(chunk.indices), samples.labels[chunk.indices]]
                if augment:
                    out += [chunk.offsets - PAD, chunk.flips.astype(np.int32)]
                yield (epoch, chunk.index), out

    def __call__(self):
        tag, batch = next(self.stream)
        self.in_flight.append(tag)
        return batch


# ---------------------------------------------------------------- the pipeline

def build_pipeline(encoding: str, shape, batch_size: int, *, num_threads: int, device_id,
                   augment: bool = False, norm=None, feed=None, reader=None, prefetch: int = PREFETCH) -> Pipeline:
    """A built pipeline with outputs (images NHWC, labels).

    Samples come from `feed` (a Feed: images, labels and, with `augment`, crop anchors and
    flips), or from DALI's webdataset reader in stored order when `reader` is a dict of
    `paths` and `indexes` (verify's read-back). `norm`: None for uint8 pixels, else the
    NormSpec to apply (float32 out). `device_id` None keeps every op on the CPU.
    """
    h, w, c = shape
    gpu = device_id is not None
    pipe = Pipeline(batch_size=batch_size, num_threads=max(1, num_threads), device_id=device_id,
                    seed=0, prefetch_queue_depth=prefetch)
    with pipe:
        anchor = mirror = None
        if reader is not None:
            data, labels = fn.readers.webdataset(
                paths=[str(p) for p in reader["paths"]], index_paths=[str(p) for p in reader["indexes"]],
                ext=[encoding, "cls"], dtypes=[types.UINT8, types.INT64], missing_component_behavior="error",
                name="Reader", pad_last_batch=True)
        elif augment:
            data, labels, anchor, mirror = fn.external_source(
                source=feed, num_outputs=4, batch=True, no_copy=False,
                dtype=[types.UINT8, types.INT64, types.INT32, types.INT32])
        else:
            data, labels = fn.external_source(source=feed, num_outputs=2, batch=True, no_copy=False,
                                              dtype=[types.UINT8, types.INT64])
        if encoding == "raw":
            img = fn.reshape(data, shape=[h, w, c], layout="HWC")
            if gpu:
                img = img.gpu()
        else:
            img = fn.decoders.image(data, device="mixed" if gpu else "cpu", output_type=types.RGB)
        if gpu:
            labels = labels.gpu()
        if anchor is not None:
            img = fn.slice(img, start=anchor, shape=[h, w], axis_names="HW",
                           out_of_bounds_policy="pad", fill_values=0)
        if norm is not None:
            mirror = 0 if mirror is None else mirror
            if norm.per_image:
                # stats on 0..255 floats (the scale cancels out of (x-m)/s): sums of integer
                # pixels are exact in float32 up to 2**24 (HW <= 65k), so a constant channel
                # has exactly zero variance, and DALI outputs 0 for it (epsilon=0).
                img = fn.crop_mirror_normalize(img, mirror=mirror, dtype=types.FLOAT, output_layout="HWC")
                img = fn.normalize(img, axes=[0, 1], ddof=1, epsilon=0.0)
            else:
                mean, std = norm.pixel_mean_std()
                img = fn.crop_mirror_normalize(img, mirror=mirror, dtype=types.FLOAT, output_layout="HWC",
                                               mean=mean, std=std)
        elif mirror is not None:
            img = fn.flip(img, horizontal=mirror)
        pipe.set_outputs(img, labels)
    pipe.build()
    return pipe


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    with device:
        # A view of DALI's buffer. On the CPU it is kept for the chunk's steps: the dynamic
        # executor (DALI's default) hands out buffers it never reuses (the classic executor
        # recycles them on the next run()). On CUDA `_outputs` copies out of it at once.
        return torch.from_dlpack(tensor_list.as_tensor())


def shutdown(pipe: Pipeline | None) -> None:
    """Stop a pipeline's threads and free its buffers now, not whenever GC runs."""
    if pipe is None:
        return
    stop = getattr(pipe, "_shutdown", None)     # DALI's own teardown (what __del__ calls)
    if stop is not None:
        stop()


class DaliLoader(EpochLoader):
    def __init__(self, cfg: LoaderConfig):
        super().__init__(cfg)
        self.samples = ShardSamples(ShardReader(cfg.manifest, cfg.split))
        if self.samples.n != cfg.count:
            raise NormfastError(f"{cfg.data_dir}: the {cfg.split} shards hold {self.samples.n} samples, "
                                f"manifest.json says {cfg.count}")
        self.device = cfg.device
        self.device_id = cfg.device.index if cfg.device.type == "cuda" else None
        self.feed = Feed(self)
        self.pipe: Pipeline | None = None
        self._current = 0          # the live epoch generator (an older one stops at once)
        self._held: deque = deque()  # CUDA: (event, DALI outputs) until the copy out of them ran
        self.prefetch = cfg.dali_prefetch or PREFETCH

    def _pipeline(self) -> Pipeline:
        if self.pipe is None:
            cfg = self.cfg
            self.pipe = build_pipeline(self.samples.encoding, cfg.image_shape, self.chunk_size,
                                       num_threads=cfg.num_workers, device_id=self.device_id,
                                       augment=cfg.augment, norm=cfg.spec if cfg.normalize else None, feed=self.feed,
                                       prefetch=self.prefetch)
        return self.pipe

    def _start(self, epoch: int) -> None:
        """Make the chunks in flight epoch `epoch`'s first ones (draining any others)."""
        pipe, feed = self._pipeline(), self.feed
        if feed.in_flight and feed.in_flight[0] == (epoch, 0):
            return
        while feed.in_flight:               # a jump, or an epoch broken off: discard
            pipe.outputs()                  # (nothing reads these buffers: no copy, no hold)
            feed.in_flight.popleft()
        feed.start(epoch)
        while len(feed.in_flight) < self.prefetch:   # DALI's first call already fills its queue
            pipe.schedule_run()

    def iter_chunks(self, epoch: int):
        """One (x, y) per DALI iteration: a planned chunk, images NCHW (channels-last)."""
        n = -(-len(self) // self.chunk)     # chunks this epoch
        if n == 0:
            return
        self._current += 1
        me = self._current
        self._start(epoch)
        pipe, feed = self.pipe, self.feed
        for c in range(n):
            if me != self._current or self.closed:
                return
            pipe.schedule_run()             # one more in flight (it may be the next epoch's)
            tag = feed.in_flight[0]
            assert tag == (epoch, c), f"DALI chunk {tag} where {(epoch, c)} was expected"
            x, y = self._outputs(pipe)
            feed.in_flight.popleft()
            yield x.permute(0, 3, 1, 2), y

    def _outputs(self, pipe: Pipeline) -> tuple[torch.Tensor, torch.Tensor]:
        """The next chunk as torch tensors in the loader's dtype (images NHWC, labels (N,)).
        The host waits in `outputs()` for DALI's GPU work of that chunk.

        On CUDA the chunk is copied (cast) into torch's own memory on torch's current stream
        of the loader's device, and DALI's buffers are kept until an event recorded after
        that copy has passed: the copy may run well after this call returns (the stream
        holds the steps queued before it), and a chunk's views live for several steps, so
        neither may depend on when DALI reuses a buffer it handed out. On the CPU the view
        is used directly (nothing is queued)."""
        images, labels = pipe.outputs()
        x, y = _to_torch(images, self.device), _to_torch(labels, self.device).reshape(-1)
        dtype = self.cfg.out_dtype
        if self.device_id is None:
            return (x if x.dtype == dtype else x.to(dtype)), y
        xt, yt = x.to(dtype, copy=True), y.clone()    # on self.device's current stream
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))   # after the copies, whatever device is current
        self._held.append((done, images, labels, x, y))
        while self._held and self._held[0][0].query():
            self._held.popleft()
        return xt, yt

    def _drop_held(self) -> None:
        """Wait for the copies out of DALI's buffers still queued, then let the buffers go."""
        while self._held:
            self._held.popleft()[0].synchronize()

    def release(self) -> None:
        self._drop_held()
        shutdown(self.pipe)
        self.pipe = None
        self.feed.in_flight.clear()
        if self.device_id is not None:
            from nvidia.dali.backend import ReleaseUnusedMemory
            ReleaseUnusedMemory()


def make_loader(cfg: LoaderConfig) -> DaliLoader:
    return DaliLoader(cfg)


def dali_uint8_batches(manifest: Manifest, split: str, batch_size: int, num_threads: int = 2):
    """A split read back through DALI's own webdataset reader on the CPU, in stored order,
    without augmentation or normalization: yields (uint8 NHWC numpy, int64 labels numpy)
    batches (used by verify)."""
    paths, indexes, encoding = manifest.shards(split)
    count_ = manifest.count(split)
    pipe = build_pipeline(encoding, manifest.image_shape, batch_size, num_threads=num_threads,
                          device_id=None, reader={"paths": paths, "indexes": indexes})
    try:
        n = pipe.reader_meta("Reader")["epoch_size"]   # epoch_size() counts the padding
        if n != count_:
            raise NormfastError(f"{manifest.root}: DALI reads {n} {split} samples, manifest.json says {count_}")
        for b in range(0, count_, batch_size):
            images, labels = pipe.run()
            k = min(batch_size, count_ - b)
            x = _to_torch(images, torch.device("cpu"))[:k]
            y = _to_torch(labels, torch.device("cpu")).reshape(-1)[:k]
            yield x.numpy().copy(), y.numpy().copy()
    finally:
        shutdown(pipe)
