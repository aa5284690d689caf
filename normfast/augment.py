"""The seed's train augmentation, drawn once per epoch for every backend.

`Pad(4)` with zeros, `RandomCrop(native size)` (offsets uniform in 0..2*PAD per axis) and
`RandomHorizontalFlip(0.5)`. The random draws are made here, on the CPU with NumPy, for a
whole epoch at once: sample i of an epoch's order gets `offsets[i]`, `flips[i]`. The
`resident`, `ffcv` and `dali` backends all take their parameters from this one function,
so for one (seed, epoch) they crop and flip every image identically, on any device, and a
resumed run (which jumps to an epoch) sees the same augmentation as an uninterrupted one.
"""
from __future__ import annotations

import numpy as np

PAD = 4   # seed: Pad(4) with value 0, then RandomCrop(native size)


def draw_augmentation(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int32 (n, 2) as (dy, dx) in 0..2*PAD, flips bool (n,)) for n samples."""
    rng = np.random.default_rng(seed)
    offsets = rng.integers(0, 2 * PAD + 1, size=(n, 2), dtype=np.int32)
    flips = rng.integers(0, 2, size=n, dtype=np.int8).astype(bool)
    return offsets, flips
