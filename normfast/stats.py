"""`normfast stats`: the seed's Table 1 for one converted dataset.

The train split's per-channel mean/std (computed at conversion, exact) beside the seed's
published values, and the mean/std of the train split after each normalization setting.
The affine settings follow from the train statistics exactly; `instance` is measured by
streaming the split through the reference normalization (bounded memory).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from normfast.configfiles import reference_stats
from normfast.errors import NormfastError
from normfast.manifest import Manifest, load_manifest
from normfast.normalization import SETTINGS, reference_normalize, resolve_norm


class ChannelStats:
    """Exact per-channel sums of p and p^2 over uint8 pixels (Python ints: no overflow)."""

    def __init__(self):
        self.n, self.s1, self.s2 = 0, [0, 0, 0], [0, 0, 0]

    def add(self, img: np.ndarray) -> None:
        flat = img.reshape(-1, 3).astype(np.int64)
        self.n += flat.shape[0]
        for c in range(3):
            self.s1[c] += int(flat[:, c].sum())
            self.s2[c] += int((flat[:, c] * flat[:, c]).sum())

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Mean and population std in [0,1] units, in float64 from exact integer sums."""
        if self.n == 0:
            return [0.0] * 3, [0.0] * 3
        mean = [s / self.n / 255.0 for s in self.s1]
        var = [(s2 * self.n - s1 * s1) / (self.n * self.n) for s1, s2 in zip(self.s1, self.s2)]
        return mean, [float(np.sqrt(v)) / 255.0 for v in var]


def after_normalization(manifest: Manifest, batch_size: int = 1024) -> dict:
    mean, std = (np.asarray(v) for v in manifest.stats)
    out = {}
    for setting in SETTINGS:
        spec = resolve_norm(setting, manifest)
        if spec.per_image:
            out[setting] = _streamed_stats(manifest, spec, batch_size)
        else:
            m, s = np.asarray(spec.mean), np.asarray(spec.std)
            out[setting] = {"mean": ((mean - m) / s).tolist(), "std": (std / s).tolist()}
    return out


def _streamed_stats(manifest: Manifest, spec, batch_size: int) -> dict:
    from normfast.readback import iter_split
    n, s1, s2 = 0, np.zeros(3), np.zeros(3)
    for images, _ in iter_split(manifest, "train", batch_size):
        y = reference_normalize(images, spec)             # float64 NCHW
        n += y.shape[0] * y.shape[2] * y.shape[3]
        s1 += y.sum(axis=(0, 2, 3))
        s2 += np.square(y).sum(axis=(0, 2, 3))
    m = s1 / n
    return {"mean": m.tolist(), "std": np.sqrt(np.maximum(s2 / n - m * m, 0)).tolist()}


def table1(data_dir: str | Path, name: str | None = None) -> dict:
    """`name`: the dataset whose published statistics to compare with (`stats --name`);
    by default the manifest's name, else its recorded source (an ImageFolder conversion of
    CIFAR-10 is named after its folder)."""
    manifest = load_manifest(data_dir, splits=("train", "test"))
    if name is not None:
        ref = reference_stats(name)
        if ref is None:
            from normfast.configfiles import dataset_registry
            known = sorted(k for k, v in dataset_registry().items() if "mean" in v and "std" in v)
            raise NormfastError(f"--name {name}: no published statistics; known: {', '.join(known)}")
    else:
        ref = reference_stats(manifest.name) or reference_stats(manifest.source)
    mean, std = manifest.stats
    return {
        "dataset": manifest.name,
        "train_count": manifest.count("train"),
        "test_count": manifest.count("test"),
        "classes": manifest.num_classes,
        "image_shape": list(manifest.image_shape),
        "computed": {"mean": list(mean), "std": list(std)},
        "reference": None if ref is None else {"mean": list(ref[0]), "std": list(ref[1])},
        "after": after_normalization(manifest),
    }


def fmt3(values) -> str:
    return "(" + ", ".join(f"{round(v, 4) + 0.0:.4f}" for v in values) + ")"   # never "-0.0000"


def format_stats(t: dict) -> str:
    """What `normfast stats` prints for one dataset (the report's Table 1 is
    normfast.report.table1.format_table1, which embeds this per dataset under Details)."""
    h, w, _ = t["image_shape"]
    lines = [f"Table 1 — {t['dataset']}: {t['train_count']:,} train / {t['test_count']:,} test images, "
             f"{t['classes']} classes, {h}x{w}x3",
             "",
             "| statistics of the train split | mean (R, G, B) | std (R, G, B) |",
             "|---|---|---|",
             f"| computed by normfast | {fmt3(t['computed']['mean'])} | {fmt3(t['computed']['std'])} |"]
    if t["reference"]:
        d_mean = np.subtract(t["computed"]["mean"], t["reference"]["mean"])
        d_std = np.subtract(t["computed"]["std"], t["reference"]["std"])
        lines += [f"| seed's reference (stats.py) | {fmt3(t['reference']['mean'])} | {fmt3(t['reference']['std'])} |",
                  f"| difference | {fmt3(d_mean)} | {fmt3(d_std)} |"]
    else:
        lines.append("| seed's reference (stats.py) | — | — |")
    lines += ["", "| after normalization | mean (R, G, B) | std (R, G, B) |", "|---|---|---|"]
    for setting, v in t["after"].items():
        lines.append(f"| {setting} | {fmt3(v['mean'])} | {fmt3(v['std'])} |")
    return "\n".join(lines)
