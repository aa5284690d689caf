"""Precision names: the one vocabulary of every verb, and what each name means.

A dtype is named float32, float16 or bfloat16, or by its short name fp32, fp16, bf16
(`bench loaders --dtype`, the loaders' `dtype`). Mixed precision (`train --amp`, `bench
train --amp`) is auto, bf16, fp16 or off, and accepts the long names too (bfloat16,
float16; float32/fp32 mean off): auto is bf16 on a GPU that has it, fp16 with a grad
scaler on an older GPU, and off on the CPU (bf16 autocast is ~4x slower than fp32 there;
fp16 2x to 80x, so it is refused on the CPU).
The loaders deliver batches in the autocast dtype (fp32 when off).
"""
from __future__ import annotations

import torch

from normfast.errors import NormfastError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SHORT = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
AMP_NAMES = ("auto", "bf16", "fp16", "off")
AMP_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "float32": "off", "fp32": "off"}   # accepted too
AMP_CHOICES = (*AMP_NAMES, *AMP_ALIASES)     # what --amp accepts
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# (rtol, atol) a backend's output must meet against the float64 reference: 1e-5 absolute in
# float32; in fp16/bf16 the rounding of the final cast, half a unit in the last place
# (2**-11 and 2**-8 relative), plus 1e-5 absolute.
TOLERANCE = {"float32": (0.0, 1e-5), "float16": (2.0 ** -11, 1e-5), "bfloat16": (2.0 ** -8, 1e-5)}


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[SHORT.get(name, name)]
    except KeyError:
        raise NormfastError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)} "
                            f"(or {', '.join(SHORT)})") from None


def amp_name(name: str) -> str:
    """An --amp value in the canonical vocabulary (auto, bf16, fp16, off)."""
    value = AMP_ALIASES.get(str(name), str(name))
    if value not in AMP_NAMES:
        raise NormfastError(f"unknown amp {name!r}; valid: {', '.join(AMP_NAMES)}")
    return value


def resolve_amp(amp: str, device: torch.device) -> str:
    """auto -> bf16 where the GPU has it (Ampere and newer), else fp16 with a scaler; off on
    the CPU. fp16 on the CPU is refused."""
    amp = amp_name(amp)
    if amp == "auto":
        if device.type != "cuda":
            return "off"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "fp16" and device.type == "cpu":
        # refused, not warned: most CPUs have no fast fp16 convolutions, so it only costs time
        # (a ResNet18 step at 32 px: 2.2x fp32's on a 2-core EPYC; an epoch elsewhere 90 s against
        # 1.1 s, ~80x), and a warning scrolls away above hours of progress bars
        raise NormfastError("--amp fp16 on the CPU: slower than fp32 there (2x to 80x measured), with nothing "
                            "gained; use --amp off (auto is fp32 on the CPU) or bf16, or a CUDA --device")
    return amp


def input_dtype(amp: str) -> torch.dtype:
    """The dtype batches are delivered in under a resolved amp setting."""
    return AMP_DTYPES.get(amp, torch.float32)


def tolerance(dtype: str | torch.dtype) -> tuple[float, float]:
    """(rtol, atol) against the float64 reference for outputs in `dtype`."""
    d = resolve_dtype(dtype)
    return TOLERANCE[next(k for k, v in DTYPES.items() if v == d)]
