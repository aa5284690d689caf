"""`torch`: the seed's pipeline exactly, as the baseline every other number is compared with.

A torchvision-style dataset reads the converted shards with plain Python, PIL transforms
run in DataLoader workers on the CPU (Pad(4, fill 0), RandomCrop, RandomHorizontalFlip,
ToTensor, Normalize or per-image normalization), batches are pinned and copied to the
device. Worker randomness comes from a generator seeded by (seed, epoch), so an epoch's
batches are reproducible with num_workers >= 1.
"""
from __future__ import annotations

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms as T

from normfast.loaders.config import LoaderConfig
from normfast.loaders.epoch import EpochLoader
from normfast.loaders.order import epoch_seed
from normfast.normalization import PAD, NormSpec
from normfast.ops import instance_normalize
from normfast.shards import ShardReader


class InstanceNormalize:
    """Per-image, per-channel normalization of a CHW float tensor (the shared formula)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return instance_normalize(x, dims=(1, 2))


def seed_transforms(spec: NormSpec, size: tuple[int, int], augment: bool, normalize: bool = True) -> T.Compose:
    """The seed's transforms; without `normalize`, the same crops and flips as uint8 CHW."""
    steps = [T.Pad(PAD, fill=0), T.RandomCrop(size), T.RandomHorizontalFlip(0.5)] if augment else []
    if not normalize:
        return T.Compose(steps + [T.PILToTensor()])
    steps.append(T.ToTensor())
    if spec.per_image:
        steps.append(InstanceNormalize())
    elif spec.setting != "minmax":
        steps.append(T.Normalize(spec.mean, spec.std))
    return T.Compose(steps)


class ShardDataset(Dataset):
    def __init__(self, reader: ShardReader, transform):
        self.reader, self.transform = reader, transform

    def __len__(self):
        return len(self.reader)

    def __getitem__(self, i):
        img, label = self.reader[i]
        return self.transform(Image.fromarray(img)), label


class FixedOrder(Sampler):
    def __init__(self, order):
        self.order = order

    def __iter__(self):
        return iter(self.order.tolist())

    def __len__(self):
        return len(self.order)


class TorchLoader(EpochLoader):
    CHUNK_BYTES = None      # the DataLoader's batches are its chunks

    def __init__(self, cfg: LoaderConfig):
        super().__init__(cfg)
        h, w, _ = cfg.image_shape
        reader = ShardReader(cfg.manifest, cfg.split)
        self.dataset = ShardDataset(reader, seed_transforms(cfg.spec, (h, w), cfg.augment, cfg.normalize))

    def iter_chunks(self, epoch: int):
        cfg = self.cfg
        order = self.epoch_indices(epoch)
        gen = torch.Generator()
        gen.manual_seed(epoch_seed(cfg.seed, epoch, cfg.rank))
        loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=FixedOrder(order),
                            num_workers=cfg.num_workers, pin_memory=cfg.device.type == "cuda",
                            drop_last=cfg.drop_last, generator=gen,
                            persistent_workers=False, prefetch_factor=4 if cfg.num_workers else None)
        if cfg.num_workers == 0:   # transforms draw from the global RNG in this process
            torch.manual_seed(epoch_seed(cfg.seed, epoch, cfg.rank))
        non_blocking = cfg.device.type == "cuda"
        for x, y in loader:
            x = x.to(cfg.device, non_blocking=non_blocking)
            yield (x.to(cfg.out_dtype).contiguous(memory_format=torch.channels_last),
                   y.to(cfg.device, non_blocking=non_blocking))


def make_loader(cfg: LoaderConfig) -> TorchLoader:
    return TorchLoader(cfg)
