"""`normfast verify`: every file against the manifest, then samples read back through the
formats' own readers (FFCV's Loader, DALI's webdataset reader) and compared."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from normfast.errors import NormfastError
from normfast.manifest import load_manifest, sha256_file
from normfast.shards import ShardReader, parse_dali_index


def check_files(data_dir: Path, manifest: dict) -> int:
    listed = {f["path"] for f in manifest["files"]}
    for f in manifest["files"]:
        p = data_dir / f["path"]
        if not p.is_file():
            raise NormfastError(f"{p}: listed in the manifest but missing")
        if p.stat().st_size != f["size"]:
            raise NormfastError(f"{p}: size {p.stat().st_size} bytes, manifest says {f['size']}")
        if sha256_file(p) != f["sha256"]:
            raise NormfastError(f"{p}: sha256 differs from the manifest (file changed or corrupt)")
    for fmt in manifest["formats"]:
        for p in (data_dir / fmt).rglob("*"):
            if p.is_file() and p.relative_to(data_dir).as_posix() not in listed:
                raise NormfastError(f"{p}: not listed in the manifest")
    return len(listed)


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
    m = load_manifest(data_dir)
    yield f"files: {check_files(data_dir, m)} files match sizes and sha256"
    lossless = m["encoding"] != "jpg"
    shape = tuple(m["image_shape"])
    for split, info in m["splits"].items():
        count, seen = info["count"], {}
        if "dali" in m["formats"]:
            n = sum(len(parse_dali_index(data_dir / "dali" / i)) for i in info["formats"]["dali"]["indexes"])
            if n != count:
                raise NormfastError(f"{data_dir / 'dali'}: {split} shards hold {n} samples, manifest says {count}")
            from normfast.loaders.dali_backend import dali_uint8_batches
            seen["dali"] = first_n(dali_uint8_batches(data_dir, m, split, 256), samples)
            seen["plain"] = first_n(ShardReader(data_dir, m, split).batches(256), samples)
        if "ffcv" in m["formats"]:
            from ffcv.reader import Reader

            from normfast.loaders.ffcv_backend import beton_path
            path = beton_path(data_dir, m, split)
            n = Reader(str(path)).num_samples
            if n != count:
                raise NormfastError(f"{path}: holds {n} samples, manifest says {count}")
            from normfast.readback import iter_ffcv
            seen["ffcv"] = first_n(iter_ffcv(data_dir, split, 256), samples)
        k = min(samples, count)
        for name, (x, y) in seen.items():
            if x.shape != (k,) + shape:
                raise NormfastError(f"{data_dir}: {split} read through {name} has shape {x.shape[1:]}, expected {shape}")
            if y.min() < 0 or y.max() >= len(m["classes"]):
                raise NormfastError(f"{data_dir}: {split} read through {name} has a label out of range")
        names = list(seen)
        for a, b in zip(names, names[1:]):
            (xa, ya), (xb, yb) = seen[a], seen[b]
            if not np.array_equal(ya, yb):
                raise NormfastError(f"{data_dir}: {split} labels differ between {a} and {b}")
            if lossless and not np.array_equal(xa, xb):
                raise NormfastError(f"{data_dir}: {split} pixels differ between {a} and {b}")
        yield (f"{split}: {count} samples; first {k} read back through {', '.join(names)} "
               f"{'identical' if lossless else 'labels identical (jpg is lossy)'}")
