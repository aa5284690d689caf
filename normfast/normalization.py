"""The one specification of the four normalization settings, and its implementations.

Settings (x is the augmented image as float in [0, 1]):
  finetune  (x - mean_dataset) / std_dataset, per channel (train-split statistics)
  pretrain  (x - mean_weights) / std_weights: the initial weights' own preprocessing
            (ImageNet's mean/std for torchvision's weights, from scratch and local files)
  instance  per image and channel: (x - mean_HW) / std_HW, std with N-1 like torch.std;
            a channel with std <= INSTANCE_EPS (a constant channel) gives zeros
  minmax    x itself (pixel / 255), the seed's ToTensor() alone

Three settings are per-channel affine maps of the uint8 pixel p:  y = p * scale + shift.
Every backend uses `NormSpec` for its constants (DALI's crop_mirror_normalize takes
`pixel_mean`/`pixel_std` in 0..255 units, the torch op takes scale/shift), and every
backend is tested against `reference_normalize`, a float64 NumPy implementation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from normfast.augment import PAD
from normfast.configfiles import IMAGENET_MEAN, IMAGENET_STD, reference_stats
from normfast.errors import NormfastError
from normfast.manifest import Manifest
from normfast.registry import Registry

INSTANCE_EPS = 1e-6   # [0,1] units; the smallest non-zero std of a uint8 channel is ~1e-4


@dataclass(frozen=True)
class NormSpec:
    """A resolved normalization: the setting and, for affine settings, mean/std in [0,1]."""
    setting: str
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    source: str = ""      # where mean/std came from ("manifest", "reference", "imagenet", ...)

    @property
    def per_image(self) -> bool:
        return self.setting == "instance"

    def pixel_mean_std(self) -> tuple[list[float], list[float]]:
        """mean/std in 0..255 pixel units (what DALI and FFCV ops take)."""
        return [m * 255.0 for m in self.mean], [s * 255.0 for s in self.std]

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """y = p * scale + shift for a uint8 pixel p (affine settings only)."""
        std = np.asarray(self.std, dtype=np.float64)
        return 1.0 / (255.0 * std), -np.asarray(self.mean, dtype=np.float64) / std


@dataclass(frozen=True)
class StatsSource:
    """Where `finetune` takes its mean/std ([0, 1] units, RGB)."""
    name: str
    read: Callable[[Manifest], tuple[tuple[float, ...], tuple[float, ...]]]


def _manifest_stats(manifest: Manifest):
    mean, std = manifest.stats
    if min(std) <= 0:
        raise NormfastError(f"dataset {manifest.name!r}: a channel has zero std in manifest")
    return tuple(mean), tuple(std)


def _reference_stats(manifest: Manifest):
    ref = reference_stats(manifest.name)
    if ref is None:
        raise NormfastError(f"no published reference statistics for dataset {manifest.name!r}; use --stats manifest")
    return tuple(ref[0]), tuple(ref[1])


# the train split's statistics, computed at conversion (manifest.json), or the seed's published
# figures (configs/datasets.yaml)
stats_sources: Registry[StatsSource] = Registry("stats source")
for _source in (StatsSource("manifest", _manifest_stats), StatsSource("reference", _reference_stats)):
    stats_sources.register(_source.name)(_source)


def _finetune(name: str, manifest: Manifest | None, stats: str, weights) -> NormSpec:
    source = stats_sources.get(stats)
    if manifest is None:
        raise NormfastError("finetune normalization needs the dataset's manifest.json")
    mean, std = source.read(manifest)
    return NormSpec(name, mean, std, source.name)


def _pretrain(name: str, manifest: Manifest | None, stats: str, weights) -> NormSpec:
    if weights is not None:
        return NormSpec(name, tuple(weights.mean), tuple(weights.std), weights.source)
    return NormSpec(name, IMAGENET_MEAN, IMAGENET_STD, "imagenet")


def _no_constants(name: str, manifest: Manifest | None, stats: str, weights) -> NormSpec:
    return NormSpec(name, source="none")


@dataclass(frozen=True)
class Setting:
    """One normalization setting: its name and how it builds its NormSpec from the dataset's
    manifest, the stats source (finetune) and the initial weights (pretrain)."""
    name: str
    build: Callable[[str, "Manifest | None", str, object], NormSpec]

    def spec(self, manifest: Manifest | None = None, stats: str = "manifest", weights=None) -> NormSpec:
        return self.build(self.name, manifest, stats, weights)


settings: Registry[Setting] = Registry("normalization setting")
for _setting in (Setting("finetune", _finetune), Setting("pretrain", _pretrain),
                 Setting("instance", _no_constants), Setting("minmax", _no_constants)):
    settings.register(_setting.name)(_setting)
SETTINGS = tuple(settings.names())


def resolve_norm(setting: str, manifest: Manifest | None = None, stats: str = "manifest",
                 weights=None) -> NormSpec:
    """Turn a setting name into a NormSpec (its registry entry builds it).

    `finetune` takes the train-split statistics from the manifest (`stats="manifest"`) or
    the seed's published values for the dataset (`stats="reference"`). `pretrain` takes the
    mean/std the initial weights were trained with (`weights`: a normfast.models.Weights;
    some timm weights use other values than ImageNet's), ImageNet's when none are given.
    """
    return settings.get(setting).spec(manifest, stats, weights)


# ---------------------------------------------------------------- NumPy reference (float64)

def reference_augment(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Pad PAD zeros, crop at (dy, dx) in 0..2*PAD, flip horizontally where flips is true.

    images: uint8 NHWC; offsets: int (N, 2) as (dy, dx); flips: bool (N,). Returns uint8 NHWC.
    """
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    out = np.empty_like(images)
    for i in range(n):
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[i, dy:dy + h, dx:dx + w]
        out[i] = crop[:, ::-1] if flips[i] else crop
    return out


def reference_normalize(images: np.ndarray, spec: NormSpec) -> np.ndarray:
    """uint8 NHWC -> float64 NCHW, normalized as `spec` says."""
    x = images.astype(np.float64).transpose(0, 3, 1, 2) / 255.0
    if spec.per_image:
        mean = x.mean(axis=(2, 3), keepdims=True)
        std = x.std(axis=(2, 3), ddof=1, keepdims=True)
        inv = np.where(std > INSTANCE_EPS, 1.0 / np.maximum(std, INSTANCE_EPS), 0.0)
        return (x - mean) * inv
    mean = np.asarray(spec.mean, dtype=np.float64).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float64).reshape(1, 3, 1, 1)
    return (x - mean) / std
