"""The shared device-side op: uint8 batch in, augmented and normalized batch out.

Used by the `resident` and `ffcv` backends (and the GPU check). Works on any device:
the crop/flip is one gather from a zero-padded copy, the normalization one fused
multiply-add (affine settings) or a per-image mean/std (instance). Output is NCHW in
channels-last memory, which is what an NHWC tensor permuted to NCHW already is.
"""
from __future__ import annotations

import contextlib

import torch

from normfast.normalization import INSTANCE_EPS, PAD, NormSpec

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
    from normfast.errors import NormfastError
    try:
        return DTYPES[aliases.get(name, name)]
    except KeyError:
        raise NormfastError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}") from None


@contextlib.contextmanager
def keep_torch_threads():
    """Undo any torch.set_num_threads done inside: FFCV sets it on import (to 1) and on
    every Loader() and iter() (to its worker count), which would silently slow CPU training."""
    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def random_crop_flip_params(n: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets (N, 2) uniform in 0..2*PAD and flips (N,) with probability 0.5."""
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator, device=device)
    flips = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    return offsets, flips


def pad_crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> uint8 NHWC: zero-pad PAD, crop at offsets (dy, dx), flip where flips.

    The 81 possible crops are strided views of the padded batch (unfold), so the crop is
    one gather of the chosen view per image; the flip is a select between two views.
    """
    n, h, w, c = x.shape
    padded = x.new_zeros((n, h + 2 * PAD, w + 2 * PAD, c))
    padded[:, PAD:PAD + h, PAD:PAD + w] = x
    windows = padded.unfold(1, h, 1).unfold(2, w, 1)          # (N, 9, 9, C, H, W) view
    crops = windows[torch.arange(n, device=x.device), offsets[:, 0], offsets[:, 1]]
    crops = crops.permute(0, 2, 3, 1)                          # (N, H, W, C)
    return torch.where(flips[:, None, None, None], crops.flip(2), crops)


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
    """Holds one NormSpec's constants on a device; call it on uint8 NHWC batches."""

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


class BatchTransform:
    """Augmentation (optional) + normalization on the device, seeded per loader."""

    def __init__(self, spec: NormSpec, device, dtype, augment: bool, seed: int):
        self.device = torch.device(device)
        self.normalize = Normalizer(spec, self.device, resolve_dtype(dtype))
        self.augment = augment
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __call__(self, x_nhwc: torch.Tensor) -> torch.Tensor:
        if self.augment:
            offsets, flips = random_crop_flip_params(x_nhwc.shape[0], self.generator, self.device)
            x_nhwc = pad_crop_flip(x_nhwc, offsets, flips)
        return self.normalize(x_nhwc)
