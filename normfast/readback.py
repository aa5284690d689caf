"""Read a converted split back in stored order, through whichever format is present."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from normfast.errors import NormfastError


def iter_split(data_dir: Path, manifest: dict, split: str, batch_size: int = 1024):
    """Yield (uint8 NHWC, int64 labels) numpy batches of `split`, in stored order.

    Prefers the webdataset shards (plain Python, no JIT warm-up); falls back to FFCV.
    """
    if "dali" in manifest["formats"]:
        from normfast.shards import ShardReader
        yield from ShardReader(data_dir, manifest, split).batches(batch_size)
    elif "ffcv" in manifest["formats"]:
        yield from iter_ffcv(data_dir, split, batch_size)
    else:
        raise NormfastError(f"{data_dir}: manifest lists no formats")


def iter_ffcv(data_dir: Path, split: str, batch_size: int = 1024):
    """A split's images and labels exactly as stored in the .beton (no augmentation)."""
    from normfast.loaders.ffcv_backend import ffcv_uint8_loader
    from normfast.manifest import beton_path, load_manifest
    loader = ffcv_uint8_loader(beton_path(data_dir, load_manifest(data_dir), split), batch_size,
                               shuffle=False, seed=0, augment=False, drop_last=False)
    for images, labels in loader:
        yield images.numpy().copy(), labels.numpy().reshape(-1).astype(np.int64)
