"""The shared device-side op: uint8 batch in, augmented and normalized batch out.

Used by the `resident` and `ffcv` backends (and the GPU check). Works on any device:
the crop/flip is one gather (the padding is a mask, never a padded copy), the
normalization one fused multiply-add (affine settings) or a per-image mean/std
(instance). The crop/flip parameters come from `normfast.augment.draw_augmentation`. Output is NCHW in
channels-last memory, which is what an NHWC tensor permuted to NCHW already is.
"""
from __future__ import annotations

import torch

from normfast.augment import PAD
from normfast.normalization import INSTANCE_EPS, NormSpec
from normfast.precision import resolve_dtype

def pad_crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> uint8 NHWC: zero-pad PAD, crop at offsets (dy, dx), flip where flips.

    One gather: output pixel (y, x) of image i is input pixel (y + dy - PAD, x' + dx - PAD)
    with x' = W-1-x where flipped, else x; pixels that fall in the padding become 0. No
    padded copy is made, so a whole epoch can be augmented in a few kernels.
    """
    n, h, w, _ = x.shape
    dev = x.device
    offsets = offsets.to(dev, torch.int64)
    rows = torch.arange(h, device=dev)[None, :] + (offsets[:, :1] - PAD)              # (N, H)
    cols = torch.arange(w, device=dev)[None, :].expand(n, w)
    cols = torch.where(flips.to(dev)[:, None], (w - 1) - cols, cols) + (offsets[:, 1:] - PAD)  # (N, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    out = x[torch.arange(n, device=dev)[:, None, None], rows.clamp(0, h - 1)[:, :, None],
            cols.clamp(0, w - 1)[:, None, :]]                                          # (N, H, W, C)
    return out.masked_fill_(~inside[..., None], 0)


def instance_normalize(x: torch.Tensor, dims) -> torch.Tensor:
    """(x - mean) / std over `dims` (std with N-1); a constant channel gives zeros."""
    mean = x.mean(dim=dims, keepdim=True)
    centred = x - mean
    n = 1
    for d in dims:
        n *= x.shape[d]
    std = centred.square().sum(dim=dims, keepdim=True).div(n - 1).sqrt()
    inv = torch.where(std > INSTANCE_EPS, 1.0 / std.clamp_min(INSTANCE_EPS), torch.zeros_like(std))
    return centred * inv


class Normalizer:
    """Holds one NormSpec's constants on a device; call it on uint8 NHWC batches, or `nchw`
    on what a loader built with `normalize=False` yields."""

    def __init__(self, spec: NormSpec, device, dtype: torch.dtype):
        self.spec, self.device, self.dtype = spec, torch.device(device), dtype
        scale, shift = spec.scale_shift()
        self.scale = torch.tensor(scale, dtype=torch.float32, device=self.device)
        self.shift = torch.tensor(shift, dtype=torch.float32, device=self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> dtype NCHW (channels-last memory)."""
        if self.spec.per_image:
            y = instance_normalize(x.to(torch.float32) / 255.0, dims=(1, 2))
        else:
            y = torch.addcmul(self.shift, x.to(torch.float32), self.scale)
        return y.to(self.dtype).permute(0, 3, 1, 2)

    def nchw(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW in channels-last memory (an unnormalized loader's batch) -> exactly
        what the normalizing loader for this spec yields: `dtype` NCHW, channels-last, equal
        up to the dtype's rounding. The permute is free: such a tensor's memory is NHWC."""
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"Normalizer.nchw takes a uint8 NCHW batch, got {x.dtype} with shape {tuple(x.shape)}")
        return self(x.permute(0, 2, 3, 1))


class BatchTransform:
    """Augmentation (optional) + normalization (optional) on the device.

    Call it with a uint8 NHWC batch and, when augmenting, that batch's offsets and flips
    (rows of `draw_augmentation` for the batch's samples, on any device). Out: NCHW in
    channels-last memory, `dtype` when normalizing, else uint8 (see `Normalizer.nchw`); never
    a view of the input (FFCV hands out buffers it rewrites a few batches later)."""

    def __init__(self, spec: NormSpec, device, dtype, augment: bool, normalize: bool = True):
        self.device = torch.device(device)
        self.normalize = Normalizer(spec, self.device, resolve_dtype(dtype)) if normalize else None
        self.augment = augment

    def __call__(self, x_nhwc: torch.Tensor, offsets=None, flips=None) -> torch.Tensor:
        if self.augment:
            x_nhwc = pad_crop_flip(x_nhwc, offsets, flips)
        if self.normalize is None:
            return (x_nhwc if self.augment else x_nhwc.clone()).permute(0, 3, 1, 2)
        return self.normalize(x_nhwc)
