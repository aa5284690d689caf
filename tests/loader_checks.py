"""Helpers shared by the loader tests: fixture writers and checks against the reference."""
from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

from converters.formats import ShardWriter, StagingDataset, write_ffcv
from normfast.manifest import load_manifest
from normfast.normalization import PAD
from normfast.precision import tolerance
from normfast.shards import ShardReader

EDGE_N = 60


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


# The optional backends' packages: a missing one skips only that backend's cases.
NEEDS = {"dali": "nvidia.dali", "ffcv": "ffcv"}
HAVE = {name: _importable(module) for name, module in NEEDS.items()}


def backend_params(*names: str) -> list:
    """`names` as pytest parameters; dali/ffcv cases skip when their package is missing."""
    return [pytest.param(n, marks=pytest.mark.skipif(not HAVE.get(n, True), reason=f"needs {NEEDS.get(n)}"))
            for n in names]


def needs(*names: str):
    """Skip a test that uses these backends together when one's package is missing."""
    missing = [NEEDS[n] for n in names if not HAVE[n]]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")


def convert_formats() -> tuple[str, ...]:
    """The formats a test dataset can be converted to on this machine."""
    return ("ffcv", "dali") if HAVE["ffcv"] else ("dali",)


def write_dataset(out, images, labels, shard_samples):
    """Raw webdataset shards + an FFCV .beton + a manifest for arbitrary uint8 images
    (labels < 256), so every backend reads the very same stored images."""
    writer = ShardWriter(out / "dali", "train", "raw", 90, shard_samples=shard_samples)
    for img, label in zip(images, labels):
        writer.write(img, int(label))
    shards = writer.close()
    split = {"count": len(labels), "class_counts": np.bincount(labels, minlength=256).tolist(),
             "formats": {"dali": {"shards": [f"{s}.tar" for s in shards],
                                  "indexes": [f"{s}.idx" for s in shards]}}}
    formats = {"dali": {"dir": "dali", "image_encoding": "raw"}}
    if HAVE["ffcv"]:
        staging = out / "staging.u8"
        staging.write_bytes(np.ascontiguousarray(images).tobytes())
        split["formats"]["ffcv"] = write_ffcv(StagingDataset(staging, images.shape[1:], np.asarray(labels)),
                                              out / "ffcv", "train", "raw", 90)
        staging.unlink()
        formats["ffcv"] = {"dir": "ffcv", "image_encoding": "raw"}
    manifest = {"name": out.name, "classes": [str(k) for k in range(256)], "num_classes": 256,
                "image_shape": list(images.shape[1:]), "splits": {"train": split},
                "stats": {"mean": [0.5] * 3, "std": [0.25] * 3}, "encoding": "raw", "files": [],
                "formats": formats}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return shards


def edge_images() -> np.ndarray:
    """60 images 16x16. Channel 0 of image k is the constant k+1 and its label is k (so an
    image can be matched to its label after augmentation); channel 2 is noise spanning
    0..255; every fifth image is constant in all three channels."""
    rng = np.random.default_rng(0)
    images = np.empty((EDGE_N, 16, 16, 3), np.uint8)
    images[..., 0] = (np.arange(EDGE_N) + 1)[:, None, None]
    images[..., 1:] = rng.integers(0, 256, (EDGE_N, 16, 16, 2))
    images[:, 0, 0, 2], images[:, 0, 1, 2] = 0, 255
    images[::5, :, :, 1], images[::5, :, :, 2] = 0, 255
    return images


def stored(data_dir, split="train"):
    reader = ShardReader(load_manifest(data_dir), split)
    images, labels = zip(*reader.batches(4096))
    return np.concatenate(images), np.concatenate(labels)


def epoch(ld):
    batches = list(ld)
    assert len(batches) == len(ld)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]), batches


def check_close(x: torch.Tensor, ref: np.ndarray, dtype: str):
    rtol, atol = tolerance(dtype)
    got = x.float().numpy().astype(np.float64)
    assert not np.isnan(got).any()
    bad = np.abs(got - ref) > atol + rtol * np.abs(ref)
    assert not bad.any(), f"{bad.sum()} values off, max error {np.abs(got - ref).max():.3g}"


def to_u8(x: torch.Tensor) -> np.ndarray:
    """minmax output NCHW -> uint8 NHWC."""
    return np.rint(x.float().cpu().numpy().transpose(0, 2, 3, 1) * 255).astype(np.uint8)


def infer_augmentation(out_u8: np.ndarray, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dy, dx) and flip per image: the first of the 9x9x2 candidates equal to the output."""
    n, h, w, _ = src.shape
    padded = np.pad(src, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    offsets, flips = np.full((n, 2), -1), np.zeros(n, bool)
    for i in range(n):
        for flip in (False, True):
            target = out_u8[i, :, ::-1] if flip else out_u8[i]
            windows = np.lib.stride_tricks.sliding_window_view(padded[i], (h, w, 3))[:, :, 0]
            hits = np.argwhere((windows == target).all(axis=(2, 3, 4)))
            if len(hits):
                offsets[i], flips[i] = hits[0], flip
                break
        assert offsets[i, 0] >= 0, f"image {i}: output is no pad+crop+flip of the stored image"
    return offsets, flips


def check_offsets_and_flips(offsets, flips):
    for axis in (0, 1):   # uniform over 0..8: about 67 each of 600, binomial sd ~8
        counts = np.bincount(offsets[:, axis], minlength=2 * PAD + 1)
        assert len(counts) == 2 * PAD + 1 and counts.min() > 30 and counts.max() < 110, counts
    assert 0.4 < flips.mean() < 0.6
