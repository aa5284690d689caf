"""`normfast verify`: every file against the manifest, the manifest against the data, then
samples read back through the formats' own readers (FFCV's Loader, DALI's webdataset
reader) and compared.

What it proves: every listed file is present with its size and sha256 and nothing else is
in the directory; the cheap check every verb runs on load holds (normfast.datacheck: paths
inside the dataset, counts against index entries and .beton headers, each shard's first
image, labels in range); each split's sample count, per-class counts and label range agree with
the manifest, recomputed from the stored labels; the train split's per-channel mean/std
agree with the manifest, recomputed in one streaming pass over its stored pixels; and the
first --samples samples of each split are identical through every reader present.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from normfast.errors import NormfastError
from normfast.datacheck import check_dataset
from normfast.manifest import MANIFEST, Manifest, load_manifest, sha256_file
from normfast.shards import ShardReader, read_index

# Stored statistics are computed from exact integer sums of the pixels a reader decodes
# (for jpg: Pillow's decode of the stored JPEG, as the shards and DALI's CPU decoder give),
# as here: they agree to rounding. FFCV's decoder turns the same JPEG bytes into pixels a
# few levels apart, so a jpg dataset with only a .beton is compared more loosely.
STATS_ATOL = {"exact": 1e-9, "ffcv-jpg": 0.02}


def check_files(manifest: Manifest) -> int:
    data_dir = manifest.root
    listed = {f["path"] for f in manifest.files}
    for i, f in enumerate(manifest.files):
        p = manifest.path(f["path"], f"files[{i}].path")
        if not p.is_file():
            raise NormfastError(f"{p}: listed in the manifest but missing")
        if p.stat().st_size != f["size"]:
            raise NormfastError(f"{p}: size {p.stat().st_size} bytes, manifest says {f['size']}")
        if sha256_file(p) != f["sha256"]:
            raise NormfastError(f"{p}: sha256 differs from the manifest (file changed or corrupt)")
    dirs = {p.as_posix() for f in listed for p in Path(f).parents if p.parts}
    for p in sorted(data_dir.rglob("*")):
        rel = p.relative_to(data_dir).as_posix()
        if rel == MANIFEST or rel in listed or (rel in dirs and p.is_dir() and not p.is_symlink()):
            continue
        raise NormfastError(f"{p}: not listed in the manifest")
    return len(listed)


def check_contents(m: Manifest) -> str:
    """Recompute from the stored data what the manifest says about it: per split the count,
    the per-class counts and the label range; for train the per-channel mean/std."""
    from normfast.readback import iter_split
    from normfast.stats import ChannelStats
    data_dir = m.root
    path, k = data_dir / MANIFEST, m.num_classes
    for split in m.splits:
        counts, stats = np.zeros(0, np.int64), ChannelStats() if split == "train" else None
        want_count, want_counts = m.count(split), list(m.class_counts(split))
        for x, y in iter_split(m, split):
            if y.size and (y.min() < 0 or y.max() >= k):
                bad = int(y.min() if y.min() < 0 else y.max())
                raise NormfastError(f"{data_dir}: {split} holds label {bad} but {MANIFEST} lists {k} classes")
            counts = np.pad(counts, (0, max(0, k - len(counts)))) + np.bincount(y, minlength=k)
            if stats is not None:
                stats.add(x)
        n = int(counts.sum())
        if n != want_count:
            raise NormfastError(f"{path}: splits.{split}.count is {want_count}, the data holds {n} samples")
        if counts.tolist() != want_counts:
            c = int(np.flatnonzero(counts != np.asarray(want_counts))[0])
            raise NormfastError(f"{path}: splits.{split}.class_counts[{c}] ({m.classes[c]}) is "
                                f"{want_counts[c]}, the stored labels give {int(counts[c])}")
        if stats is not None:
            lossy = m.encoding == "jpg" and "dali" not in m.formats      # read through FFCV's decoder
            atol = STATS_ATOL["ffcv-jpg" if lossy else "exact"]
            mean, std = stats.mean_std()
            for key, want, got in zip(("mean", "std"), m.stats, (mean, std)):
                if not np.allclose(want, got, rtol=0, atol=atol):
                    raise NormfastError(
                        f"{path}: stats.{key} is {_fmt(want)}, the train split's stored pixels give "
                        f"{_fmt(got)}{' (FFCV-decoded jpg; tolerance ' + str(atol) + ')' if lossy else ''}")
            pixels = m.raw["stats"].get("pixels")     # optional; older manifests lack it
            if pixels is not None and pixels != stats.n:
                raise NormfastError(f"{path}: stats.pixels is {pixels}, the train split "
                                    f"holds {stats.n}")
    return (f"manifest: counts, class counts and labels of {', '.join(m.splits)} and the train "
            f"mean/std match the stored data")


def apart_names(apart: dict) -> set:
    return {name for pair in apart for name in pair.split("/")}


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.6f}" for v in values) + ")"


def first_n(batches, n: int):
    xs, ys, got = [], [], 0
    for x, y in batches:
        xs.append(x[: n - got])
        ys.append(y[: n - got])
        got += len(xs[-1])
        if got >= n:
            break
    return np.concatenate(xs), np.concatenate(ys)


def verify(data_dir: str | Path, samples: int = 512):
    """Yields one line per check passed; raises NormfastError on the first failure."""
    data_dir = Path(data_dir)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise NormfastError(f"--samples {samples}: must be at least 1")
    m = load_manifest(data_dir, splits=("train", "test"), check=False)
    yield f"files: {check_files(m)} files match sizes and sha256, and nothing else is there"
    check_dataset(m)
    yield check_contents(m)
    lossless = m.encoding != "jpg"
    shape = m.image_shape
    for split in m.splits:
        count, seen = m.count(split), {}
        if "dali" in m.formats:
            n = sum(len(read_index(i).get("cls", ())) for i in m.shards(split)[1])
            if n != count:
                raise NormfastError(f"{data_dir / 'dali'}: {split} shards hold {n} samples, manifest says {count}")
            from normfast.loaders.dali_backend import dali_uint8_batches
            seen["dali"] = first_n(dali_uint8_batches(m, split, 256), samples)
            seen["plain"] = first_n(ShardReader(m, split).batches(256), samples)
        if "ffcv" in m.formats:
            from ffcv.reader import Reader
            path = m.beton(split)
            n = Reader(str(path)).num_samples
            if n != count:
                raise NormfastError(f"{path}: holds {n} samples, manifest says {count}")
            from normfast.readback import iter_ffcv
            seen["ffcv"] = first_n(iter_ffcv(m, split, 256), samples)
        k = min(samples, count)
        for name, (x, y) in seen.items():
            if x.shape != (k,) + shape:
                raise NormfastError(f"{data_dir}: {split} read through {name} has shape {x.shape[1:]}, "
                                    f"expected {shape}")
            if y.min() < 0 or y.max() >= m.num_classes:
                raise NormfastError(f"{data_dir}: {split} read through {name} has a label out of range")
        names, apart = list(seen), {}
        for a, b in zip(names, names[1:]):
            (xa, ya), (xb, yb) = seen[a], seen[b]
            if not np.array_equal(ya, yb):
                raise NormfastError(f"{data_dir}: {split} labels differ between {a} and {b}")
            if lossless and not np.array_equal(xa, xb):
                raise NormfastError(f"{data_dir}: {split} pixels differ between {a} and {b}")
            if not lossless and len(xa):
                apart[f"{a}/{b}"] = int(np.abs(xa.astype(np.int16) - xb).max())
        same = "identical" if lossless else "labels identical" + (
            "; decoded pixels at most " + ", ".join(f"{v} apart ({pair})" for pair, v in apart.items())
            if apart else "") + (" (the shards and the .beton hold the same JPEG bytes; FFCV's JPEG "
                                 "decoder gives other pixels)" if "ffcv" in apart_names(apart) else "")
        yield f"{split}: {count} samples; first {k} read back through {', '.join(names)} {same}"
