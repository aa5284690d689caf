"""normfast.ops (the device-side op of the resident and ffcv backends) against the float64
NumPy reference in normfast.normalization: random shapes (non-square included), every crop
offset and flip, constant channels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from loader_checks import check_close
from normfast.normalization import PAD, SETTINGS, NormSpec, reference_augment, reference_normalize
from normfast.ops import BatchTransform, Normalizer, instance_normalize, pad_crop_flip

SHAPES = [(1, 1), (2, 3), (5, 4), (7, 13), (32, 32), (9, 40)]      # (H, W); smaller and larger than PAD


def _images(rng, n, h, w):
    return rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def _every_offset_and_flip():
    """All (dy, dx, flip) combinations: (2*PAD+1)**2 * 2 rows."""
    grid = np.array([(dy, dx, f) for dy in range(2 * PAD + 1) for dx in range(2 * PAD + 1) for f in (0, 1)])
    return grid[:, :2].astype(np.int64), grid[:, 2].astype(bool)


@pytest.mark.parametrize("h,w", SHAPES)
def test_pad_crop_flip_matches_reference_for_every_offset_and_flip(h, w):
    rng = np.random.default_rng(h * 100 + w)
    offsets, flips = _every_offset_and_flip()
    images = _images(rng, len(flips), h, w)
    got = pad_crop_flip(torch.from_numpy(images), torch.from_numpy(offsets), torch.from_numpy(flips))
    assert got.dtype == torch.uint8 and got.shape == images.shape
    assert np.array_equal(got.numpy(), reference_augment(images, offsets, flips))


def test_pad_crop_flip_centre_without_flip_is_identity():
    images = _images(np.random.default_rng(0), 4, 6, 11)
    offsets = np.full((4, 2), PAD, np.int64)
    got = pad_crop_flip(torch.from_numpy(images), torch.from_numpy(offsets), torch.zeros(4, dtype=torch.bool))
    assert np.array_equal(got.numpy(), images)


def _with_constant_channels(images):
    images = images.copy()
    images[0, ..., 1] = 0          # a black channel
    images[1] = 200                # a whole constant image
    if images.shape[1] * images.shape[2] > 1:
        images[2, ..., 2] = 7
        images[2, 0, 0, 2] = 8     # nearly constant: one pixel differs by one level
    return images


@pytest.mark.parametrize("h,w", [(2, 3), (5, 4), (7, 13), (32, 32)])
def test_instance_normalize_matches_reference(h, w):
    images = _with_constant_channels(_images(np.random.default_rng(h + w), 6, h, w))
    x = torch.from_numpy(images).to(torch.float32) / 255.0
    got = instance_normalize(x, dims=(1, 2)).permute(0, 3, 1, 2)
    ref = reference_normalize(images, NormSpec("instance"))
    assert (ref[0, 1] == 0).all() and (ref[1] == 0).all()
    assert torch.isfinite(got).all()
    check_close(got, ref, "float32")


SPECS = {"finetune": NormSpec("finetune", (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), "manifest"),
         "pretrain": NormSpec("pretrain", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "imagenet"),
         "instance": NormSpec("instance"), "minmax": NormSpec("minmax")}


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("setting", SETTINGS)
def test_normalizer_matches_reference(setting, dtype):
    rng = np.random.default_rng(len(setting))
    for h, w in [(4, 9), (16, 16)]:
        images = _with_constant_channels(_images(rng, 5, h, w))
        got = Normalizer(SPECS[setting], "cpu", getattr(torch, dtype))(torch.from_numpy(images))
        assert got.dtype == getattr(torch, dtype) and got.shape == (5, 3, h, w)
        assert got.is_contiguous(memory_format=torch.channels_last)
        check_close(got, reference_normalize(images, SPECS[setting]), dtype)


@pytest.mark.parametrize("setting", SETTINGS)
def test_batch_transform_is_augment_then_normalize(setting):
    rng = np.random.default_rng(3)
    offsets, flips = _every_offset_and_flip()
    images = _images(rng, len(flips), 7, 10)
    got = BatchTransform(SPECS[setting], "cpu", "float32", augment=True)(
        torch.from_numpy(images), torch.from_numpy(offsets), torch.from_numpy(flips))
    ref = reference_normalize(reference_augment(images, offsets, flips), SPECS[setting])
    check_close(got, ref, "float32")


@pytest.mark.parametrize("setting", SETTINGS)
def test_normalizer_nchw_takes_an_unnormalized_batch(setting):
    """`nchw` on uint8 NCHW channels-last (what `normalize=False` loaders yield) is the
    normalizing op on the same pixels; anything but uint8 NCHW is refused, not misread."""
    images = _with_constant_channels(_images(np.random.default_rng(3), 5, 7, 9))
    spec = NormSpec(setting, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    x = torch.from_numpy(images).permute(0, 3, 1, 2)          # NCHW, channels-last memory
    out = Normalizer(spec, "cpu", torch.float32).nchw(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and out.shape == (5, 3, 7, 9)
    check_close(out, reference_normalize(images, spec), "float32")
    for bad in (x.float(), x[0]):
        with pytest.raises(ValueError, match="uint8 NCHW"):
            Normalizer(spec, "cpu", torch.float32).nchw(bad)
