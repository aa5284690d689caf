"""The `dali` backend: NVIDIA DALI reads the webdataset shards, decodes, augments, normalizes.

One DALI pipeline per epoch, seeded with `epoch_seed(seed, epoch, rank)`, so an epoch's
order and augmentation depend only on (seed, epoch) and `set_epoch` can jump anywhere.
Building one costs ~0.1 s, so once epoch e has produced its first batch, epoch e+1's
pipeline is built and started (`lookahead`); a jump elsewhere just discards it.
The graph, per sample (HWC throughout):

  source -> reshape (raw) | decoders.image (png/jpg; "mixed" on CUDA)
    [.gpu() on CUDA: everything below runs as GPU ops]
  augment: slice(start=offset-PAD, shape=HxW, pad with 0)   offset uniform in 0..2*PAD
           mirror = coin_flip(0.5)
  affine settings: crop_mirror_normalize(mirror, mean/std in pixel units) -> float32/16
  instance:        crop_mirror_normalize(mirror) -> float32 pixels, then
                   normalize(axes=HW, ddof=1, epsilon=0) (a constant channel gives 0)

Outputs are NHWC; `permute(0, 3, 1, 2)` makes them NCHW in channels-last memory at no
cost. bfloat16 (which DALI lacks) is produced as float32 and cast in torch.

The source: in stored order (shuffle off, and verify's read-back), DALI's own
`readers.webdataset` over this rank's block [n*r//w, n*(r+1)//w) (its sharding rule is the
one `shard_bounds` states for all backends), padding its last batch, which we trim. Shuffled,
an `external_source` that slices the memory-mapped shards in the contract's `epoch_order`:
DALI's reader shuffles through a buffer that must hold the whole shard for a full
permutation and is refilled every epoch, which cost a third to a half of the CPU
throughput here; the ordered source costs nothing extra and yields exactly the order the
other backends use.
"""
from __future__ import annotations

import numpy as np
import torch
from nvidia.dali import Pipeline, fn, types

from normfast.errors import NormfastError
from normfast.loaders import EpochLoader, LoaderConfig, epoch_order, epoch_seed, num_batches
from normfast.normalization import PAD
from normfast.shards import ShardReader, shard_files

PREFETCH = 2      # pipeline iterations in flight


class OrderedShardSource:
    """Feeds a DALI pipeline the samples of the shards in a given order, batch by batch.

    DALI's webdataset reader shuffles through a buffer: a full permutation needs a buffer as
    large as the shard, refilled every epoch, which halved CPU throughput here. Reading in
    the contract's `epoch_order` instead costs one slice of the memory-mapped tar per sample
    (no copy until DALI's), and gives the very order every other backend uses.
    """

    def __init__(self, reader: ShardReader, order: np.ndarray, batch_size: int):
        self.maps = [np.memmap(p, dtype=np.uint8, mode="r") for p in reader.shards]
        self.loc = reader.locations
        self.order, self.batch_size, self.pos = order, batch_size, 0
        self.dense = reader.encoding == "raw"

    def __iter__(self):
        return self

    def __next__(self):
        if self.pos >= len(self.order):
            raise StopIteration
        images, labels = [], []
        for i in self.order[self.pos:self.pos + self.batch_size]:
            k, off, size, label_off = self.loc[i]
            images.append(self.maps[k][off:off + size])
            labels.append(self.maps[k][label_off:label_off + 8].view("<i8"))
        self.pos += self.batch_size
        if self.dense:   # raw images all have one size: one dense batch is much cheaper for DALI
            return np.stack(images), np.stack(labels)
        return images, labels


def build_pipeline(paths, indexes, encoding: str, shape, batch_size: int, *, seed: int,
                   num_threads: int, device_id, shard_size: int, rank: int = 0,
                   world_size: int = 1, augment: bool = False, norm=None,
                   out_dtype=types.FLOAT, source: OrderedShardSource | None = None) -> Pipeline:
    """A built pipeline with outputs (images NHWC, labels (N, 1) int64).

    Samples come from DALI's webdataset reader in stored order (this rank's block), or from
    `source` in the order it holds. `norm`: None for uint8 pixels, else the NormSpec to
    apply. `device_id` None keeps every op on the CPU; an int puts decoding, augmentation
    and normalization on that GPU.
    """
    h, w, c = shape
    gpu = device_id is not None
    pipe = Pipeline(batch_size=batch_size, num_threads=max(1, num_threads), device_id=device_id,
                    seed=seed, prefetch_queue_depth=PREFETCH)
    with pipe:
        if source is None:
            data, labels = fn.readers.webdataset(
                paths=[str(p) for p in paths], index_paths=[str(p) for p in indexes], ext=[encoding, "cls"],
                dtypes=[types.UINT8, types.INT64], missing_component_behavior="error",
                name="Reader", pad_last_batch=True, shard_id=rank, num_shards=world_size)
        else:
            data, labels = fn.external_source(source=source, num_outputs=2, batch=True,
                                              dtype=[types.UINT8, types.INT64], no_copy=False)
        if encoding == "raw":
            img = fn.reshape(data, shape=[h, w, c], layout="HWC")
            if gpu:
                img = img.gpu()
        else:
            img = fn.decoders.image(data, device="mixed" if gpu else "cpu", output_type=types.RGB)
        if gpu:
            labels = labels.gpu()
        mirror = 0
        if augment:
            offset = fn.random.uniform(values=list(range(2 * PAD + 1)), shape=[2], dtype=types.INT32)
            img = fn.slice(img, start=offset - PAD, shape=[h, w], axis_names="HW",
                           out_of_bounds_policy="pad", fill_values=0)
            mirror = fn.random.coin_flip(probability=0.5)
        if norm is not None:
            if norm.per_image:
                # stats on 0..255 floats (the scale cancels out of (x-m)/s): sums of integer
                # pixels are exact in float32 up to 2**24 (HW <= 65k), so a constant channel
                # has exactly zero variance, and DALI outputs 0 for it (epsilon=0).
                img = fn.crop_mirror_normalize(img, mirror=mirror, dtype=types.FLOAT, output_layout="HWC")
                img = fn.normalize(img, axes=[0, 1], ddof=1, epsilon=0.0)
                if out_dtype != types.FLOAT:
                    img = fn.cast(img, dtype=out_dtype)
            else:
                mean, std = norm.pixel_mean_std()
                img = fn.crop_mirror_normalize(img, mirror=mirror, dtype=out_dtype, output_layout="HWC",
                                               mean=mean, std=std)
        elif augment:
            img = fn.flip(img, horizontal=mirror)
        pipe.set_outputs(img, labels)
    pipe.build()
    return pipe


def check_size(pipe: Pipeline, count: int, data_dir, split: str) -> None:
    n = pipe.reader_meta("Reader")["epoch_size"]   # epoch_size() counts the padding
    if n != count:
        raise NormfastError(f"{data_dir}: DALI reads {n} {split} samples, manifest.json says {count}")


def _to_torch(tensor_list, device: torch.device, zero_copy: bool) -> torch.Tensor:
    t = tensor_list.as_tensor()
    with device:
        out = torch.from_dlpack(t)
    # The dynamic executor (DALI's default) hands out buffers it never reuses, so a view is
    # safe to keep; the classic executor recycles them on the next run().
    return out if zero_copy else out.clone()


def start(pipe: Pipeline) -> Pipeline:
    """Schedule the first iterations: the reader starts reading (and filling its shuffle
    buffer) in DALI's threads while the caller goes on."""
    pipe.schedule_run()
    return pipe


def run_epoch(pipe: Pipeline, count: int, batch_size: int, drop_last: bool, device: torch.device):
    """Yield one epoch of a started pipeline as (images NHWC, labels (N,)) torch batches, the
    last one trimmed. Schedules no iteration past the epoch's end."""
    zero_copy = bool(pipe.exec_dynamic)
    n = num_batches(count, batch_size, drop_last)
    scheduled = PREFETCH
    for b in range(n):
        if scheduled < n:
            pipe.schedule_run()
            scheduled += 1
        images, labels = pipe.outputs()
        k = min(batch_size, count - b * batch_size)
        x = _to_torch(images, device, zero_copy)
        y = _to_torch(labels, device, zero_copy).reshape(-1)
        yield x[:k], y[:k]


DALI_DTYPES = {torch.float32: types.FLOAT, torch.float16: types.FLOAT16,
               torch.bfloat16: types.FLOAT}   # DALI has no bfloat16: cast in torch


class DaliLoader(EpochLoader):
    lookahead = True    # build and start epoch e+1's pipeline during epoch e

    def __init__(self, cfg: LoaderConfig):
        super().__init__(cfg)
        self.paths, self.indexes, self.encoding = shard_files(cfg.data_dir, cfg.manifest, cfg.split)
        self.device = cfg.device
        if cfg.device.type == "cuda":
            self.device_id = cfg.device.index if cfg.device.index is not None else torch.cuda.current_device()
            self.device = torch.device("cuda", self.device_id)
        else:
            self.device_id = None
        self.dali_dtype = DALI_DTYPES[cfg.dtype]
        self._ahead: tuple[int, Pipeline] | None = None   # (epoch, started pipeline)
        # shuffled epochs read in the contract's order (see OrderedShardSource)
        self.shards = ShardReader(cfg.data_dir, cfg.manifest, cfg.split) if cfg.shuffle else None

    def pipeline(self, epoch: int) -> Pipeline:
        cfg = self.cfg
        source = None
        if cfg.shuffle:
            order = epoch_order(cfg.count, cfg.seed, epoch, True, cfg.rank, cfg.world_size)
            source = OrderedShardSource(self.shards, order[:self.num_samples], cfg.batch_size)
        return build_pipeline(
            self.paths, self.indexes, self.encoding, cfg.image_shape, cfg.batch_size,
            seed=epoch_seed(cfg.seed, epoch, cfg.rank) % 2 ** 31, num_threads=cfg.num_workers,
            device_id=self.device_id, shard_size=self.shard_count,
            rank=cfg.rank, world_size=cfg.world_size, augment=cfg.augment, norm=cfg.spec,
            out_dtype=self.dali_dtype, source=source)

    def iter_epoch(self, epoch: int):
        cfg = self.cfg
        ahead, self._ahead = self._ahead, None
        if len(self) == 0:
            return
        pipe = ahead[1] if ahead is not None and ahead[0] == epoch else start(self.pipeline(epoch))
        del ahead
        if not cfg.shuffle:
            check_size(pipe, cfg.count, cfg.data_dir, cfg.split)
        for b, (x, y) in enumerate(run_epoch(pipe, self.shard_count, cfg.batch_size, cfg.drop_last,
                                             self.device)):
            if b == 0 and self.lookahead:
                # the next epoch's pipeline builds and fills its shuffle buffer meanwhile
                self._ahead = (epoch + 1, start(self.pipeline(epoch + 1)))
            if x.dtype != cfg.dtype:
                x = x.to(cfg.dtype)
            yield x.permute(0, 3, 1, 2), y


def make_loader(cfg: LoaderConfig) -> DaliLoader:
    return DaliLoader(cfg)


def dali_uint8_batches(data_dir, manifest: dict, split: str, batch_size: int, num_threads: int = 2):
    """A split read back through DALI on the CPU, in stored order, without augmentation or
    normalization: yields (uint8 NHWC numpy, int64 labels numpy) batches (used by verify)."""
    paths, indexes, encoding = shard_files(data_dir, manifest, split)
    count = manifest["splits"][split]["count"]
    pipe = start(build_pipeline(paths, indexes, encoding, tuple(manifest["image_shape"]),
                                batch_size, seed=0, num_threads=num_threads, device_id=None,
                                shard_size=count))
    check_size(pipe, count, data_dir, split)
    for x, y in run_epoch(pipe, count, batch_size, False, torch.device("cpu")):
        yield x.numpy().copy(), y.numpy().copy()
