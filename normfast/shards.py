"""Plain-Python random access to the webdataset shards (no DALI needed).

Reads the DALI index files written beside each shard to find every sample's bytes, so
one sample is one seek + read. Used by the `torch` baseline backend, `stats` and `verify`.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from normfast.errors import NormfastError
from normfast.manifest import Manifest


ENCODINGS = ("raw", "png", "jpg")   # also the image member's extension in the tar


def parse_dali_index(path: Path) -> list[dict]:
    """[{ext: (offset, size)} per sample] from a v1.2 index file."""
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith("v1.2 "):
        raise NormfastError(f"{path}: not a DALI webdataset index (v1.2)")
    n = int(lines[0].split()[1])
    samples = []
    for line in lines[1:n + 1]:
        parts = line.split()
        samples.append({parts[k]: (int(parts[k + 1]), int(parts[k + 2])) for k in range(0, len(parts), 4)})
    if len(samples) != n:
        raise NormfastError(f"{path}: header says {n} samples, found {len(samples)}")
    return samples


def decode_bytes(data: bytes, encoding: str, shape) -> np.ndarray:
    if encoding == "raw":
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


class ShardReader:
    """Indexed access to one split: reader[i] -> (uint8 HxWx3, int label), in stored order."""

    def __init__(self, manifest: Manifest, split: str):
        self.shards, indexes, self.encoding = manifest.shards(split)
        self.shape = manifest.image_shape
        self.locations = []   # (shard index, image offset, size, label offset)
        for k, idx in enumerate(indexes):
            for s in parse_dali_index(idx):
                off, size = s[self.encoding]
                self.locations.append((k, off, size, s["cls"][0]))
        self._fds: dict[int, int] = {}

    def __len__(self):
        return len(self.locations)

    def __getstate__(self):   # file descriptors do not cross into DataLoader workers
        state = self.__dict__.copy()
        state["_fds"] = {}
        return state

    def _fd(self, k: int) -> int:
        if k not in self._fds:
            self._fds[k] = os.open(self.shards[k], os.O_RDONLY)
        return self._fds[k]

    def raw(self, i: int) -> tuple[bytes, int]:
        k, off, size, label_off = self.locations[i]
        fd = self._fd(k)
        data = os.pread(fd, size, off)
        label = int(np.frombuffer(os.pread(fd, 8, label_off), dtype="<i8")[0])
        return data, label

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        data, label = self.raw(i)
        return decode_bytes(data, self.encoding, self.shape), label

    def batches(self, batch_size: int = 1024):
        """Stream the split in order as (uint8 NHWC, int64 labels) numpy batches."""
        for start in range(0, len(self), batch_size):
            items = [self[i] for i in range(start, min(start + batch_size, len(self)))]
            yield np.stack([x for x, _ in items]), np.array([y for _, y in items], dtype=np.int64)
