"""`LoaderConfig`: everything a backend needs, resolved and checked once by `build_loader`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from normfast.errors import NormfastError
from normfast.manifest import Manifest
from normfast.normalization import NormSpec

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
