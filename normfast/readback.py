"""Read a converted split back in stored order, through whichever format is present."""
from __future__ import annotations

import numpy as np

from normfast.errors import NormfastError
from normfast.manifest import Manifest


def iter_split(manifest: Manifest, split: str, batch_size: int = 1024):
    """Yield (uint8 NHWC, int64 labels) numpy batches of `split`, in stored order.

    Prefers the webdataset shards (plain Python, no JIT warm-up); falls back to FFCV.
    """
    if "dali" in manifest.formats:
        from normfast.shards import ShardReader
        yield from ShardReader(manifest, split).batches(batch_size)
    elif "ffcv" in manifest.formats:
        yield from iter_ffcv(manifest, split, batch_size)
    else:
        raise NormfastError(f"{manifest.root}: manifest lists no formats")


def iter_ffcv(manifest: Manifest, split: str, batch_size: int = 1024):
    """A split's images and labels exactly as stored in the .beton (no augmentation)."""
    from normfast.loaders.ffcv_backend import ffcv_uint8_loader
    loader = ffcv_uint8_loader(manifest.beton(split), batch_size,
                               shuffle=False, seed=0, augment=False, drop_last=False)
    for images, labels in loader:
        yield images.numpy().copy(), labels.numpy().reshape(-1).astype(np.int64)
