"""The report's vocabulary (canonical orders, seed constants) and tiny formatting helpers."""
from __future__ import annotations

from normfast.models import models
from normfast.normalization import settings

MODELS = tuple(models.names())          # the registries' order is the report's
DATASETS = ("cifar10", "cifar100", "svhn", "tiny-imagenet-200")
NORMS = tuple(settings.names())
DASH = "—"
NOISE = "≈"
TIE = "tie within noise"


def order(values, canonical) -> list:
    """values in the canonical order first, then any others sorted."""
    values = set(values)
    return [v for v in canonical if v in values] + sorted(values - set(canonical))


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def signed(x: float) -> str:
    """Signed percentage points: +0.12 / -0.10."""
    return f"{100 * x:+.2f}"
