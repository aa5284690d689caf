"""The order math of the loader contract: which samples a rank visits in an epoch, in which
order, and the seed of an epoch's augmentation (see `normfast.loaders` for the rules).
Pure functions of (n, seed, epoch, rank, world size): a resumed run sees the same batches."""
from __future__ import annotations

import numpy as np


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's share: a block of the stored order (unshuffled) or of the
    epoch's permutation of the whole split (shuffled). Sizes differ by at most one."""
    return n * rank // world_size, n * (rank + 1) // world_size


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """The sample indices this rank visits in `epoch`, in order: shuffled, rank's slice of
    one permutation of all n drawn from (seed, epoch), the same on every rank; unshuffled,
    rank's block of the stored order."""
    start, stop = shard_bounds(n, rank, world_size)
    if not shuffle:
        return np.arange(start, stop)
    return np.random.default_rng([seed, epoch]).permutation(n)[start:stop]


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A seed for an epoch's augmentation randomness (independent of how we got there)."""
    return int(np.random.default_rng([seed, epoch, rank, 7919]).integers(2 ** 62))
