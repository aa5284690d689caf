"""`normfast convert`: a source dataset -> ffcv/dali formats + manifest.json, atomically.

One pass per split decodes every image once (validating shape and label), writes it to a
uint8 staging file and accumulates exact integer statistics; the format writers then read
the staging file. Everything goes to a temporary sibling directory that is renamed into
place at the end, so a failure or an interrupt leaves no partial output (converters/output.py
holds what --force may replace, the swap, and the recovery after a kill).

Stored order: folder layouts (ImageFolder, Tiny ImageNet) list their samples class by class,
so every split of theirs is stored in a seeded random permutation (`stored_order`, seed
ORDER_SEED, recorded in manifest.json as `order`); otherwise `--limit N` would keep only the
first classes and a rank's block of stored order would hold only a few classes. CIFAR, SVHN
and the synthetic set keep the order they are distributed in: it is already class-mixed
(CIFAR's pickles are shuffled, SVHN's house-number crops are not grouped by digit), and
keeping it keeps their stored files identical to the published arrays. `--limit N` applies
AFTER the permutation: a random subset holding every class in proportion.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import normfast
from converters.formats import StagingDataset, encode_image, formats
from converters.output import (check_apart, check_replaceable, is_ours, make_temporary, notice, recover,
                               swap_into_place)
from converters.sources import Source, limit, sources, subset
from normfast.errors import NormfastError
from normfast.atomic import write_json
from normfast.manifest import ENCODINGS, FORMAT_VERSION, MANIFEST, file_entry
from normfast.progress import progress_bar
from normfast.registry import parse_list
from normfast.shards import decode_bytes
from normfast.stats import ChannelStats

ORDER_SEED = 20240229       # fixed: the same source always converts to the same stored order
SPLIT_STREAMS = {"train": 1, "test": 2}


def stored_order(n: int, split: str, seed: int = ORDER_SEED) -> np.ndarray:
    """The seeded permutation in which a grouped source's split is stored: a function of
    (seed, split, n) only."""
    return np.random.default_rng([seed, SPLIT_STREAMS[split], n]).permutation(n)


@dataclass
class ConvertConfig:
    source: str
    out: Path
    src: Path | None = None
    formats: tuple[str, ...] = ("ffcv", "dali")
    encoding: str = "raw"
    quality: int = 90
    limit: int | None = None
    size: int | None = None
    force: bool = False
    download: bool = False
    quiet: bool = False


def resize_to(img: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to `size` (bilinear), then a centre crop to size x size."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    from PIL import Image
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    im = Image.fromarray(img).resize((nw, nh), Image.BILINEAR)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


def describe(ds, i: int) -> str:
    paths = getattr(ds, "paths", None)
    return str(paths[i]) if paths is not None else f"sample {i}"


def stage_split(ds, path: Path, size: int | None, num_classes: int, stats: ChannelStats | None,
                bar, where: str = "the source", quality: int | None = None) -> StagingDataset:
    """Decode every image of `ds` once into `path`; check one shape and valid labels.
    `quality`: the images are stored as JPEG of that quality, so `stats` counts the pixels a
    reader decodes from them (Pillow's decode of Pillow's encoding, as the shards hold)."""
    shape, labels = None, np.empty(len(ds), dtype=np.int64)
    with open(path, "wb") as f:
        for i in range(len(ds)):
            img, label = ds[i]
            if size is not None:
                img = resize_to(img, size)
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise NormfastError(f"{describe(ds, i)}: image has shape {img.shape} {img.dtype}, expected HxWx3 uint8")
            if shape is None:
                shape, first = img.shape, i
            elif img.shape != shape:   # name both: in shuffled stored order "first" means nothing
                raise NormfastError(
                    f"{describe(ds, i)}: image is {img.shape[1]}x{img.shape[0]}, but "
                    f"{describe(ds, first)} is {shape[1]}x{shape[0]}; pass --size N to resize")
            if not 0 <= label < num_classes:
                raise NormfastError(f"{describe(ds, i)}: label {label} out of range 0..{num_classes - 1}")
            labels[i] = label
            f.write(np.ascontiguousarray(img).tobytes())
            if stats is not None:
                stats.add(img if quality is None else
                          decode_bytes(encode_image(img, "jpg", quality), "jpg", img.shape))
            bar.update(1)
    if shape is None:
        raise NormfastError(f"{where}: the {path.stem.removeprefix('.staging-')} split holds no images")
    return StagingDataset(path, shape, labels)


def load_source(cfg: ConvertConfig) -> Source:
    reader = sources.get(cfg.source)
    if cfg.source == "synthetic":
        n_train, n_test = (cfg.limit, max(1, cfg.limit // 5)) if cfg.limit else (5000, 1000)
        return reader(None, train_count=n_train, test_count=n_test)
    if cfg.src is None:
        raise NormfastError(f"source {cfg.source!r} needs --src PATH (or --download)")
    if cfg.download:
        from converters.download import download
        download(cfg.source, cfg.src)
    if not cfg.src.is_dir():
        raise NormfastError(f"{cfg.src}: source directory not found (pass --download to fetch it)")
    return reader(cfg.src)


def convert(cfg: ConvertConfig) -> dict:
    """Run the conversion; returns the manifest. Raises NormfastError on bad input."""
    fmts = list(dict.fromkeys(parse_list(cfg.formats, formats)))
    if not fmts:
        raise NormfastError(f"--format: names no format; valid: {', '.join(formats.names())}")
    if cfg.encoding not in ENCODINGS:
        raise NormfastError(f"unknown encoding {cfg.encoding!r}; valid: {', '.join(ENCODINGS)}")
    if not 1 <= cfg.quality <= 100:
        raise NormfastError(f"--quality {cfg.quality}: must be 1..100")
    if cfg.limit is not None and cfg.limit < 1:
        raise NormfastError(f"--limit {cfg.limit}: must be at least 1")
    if cfg.size is not None and cfg.size < 8:
        raise NormfastError(f"--size {cfg.size}: must be at least 8")
    out = Path(cfg.out)
    for parent in out.parents:          # `--out FILE/sub`: say so, not mkdir's "File exists"
        if parent.exists() and not parent.is_dir():
            raise NormfastError(f"--out {out}: {parent} is a file, not a folder")
    check_apart(cfg.src, out)
    try:
        recover(out)                   # leftovers of a killed run: restore or remove, with a notice
    except OSError as e:
        raise NormfastError(f"{e.filename or out}: {e.strerror or e}") from None
    if (out.exists() or out.is_symlink()) and not cfg.force:
        raise NormfastError(f"{out}: already exists; pass --force to replace it")
    check_replaceable(out)

    source = load_source(cfg)
    if source.skipped:         # what torchvision's ImageFolder would read, and normfast does not
        names = ", ".join(str(p) + ("/" if p.is_dir() else "") for p in source.skipped[:5])
        more = f" and {len(source.skipped) - 5} more" if len(source.skipped) > 5 else ""
        notice(f"skipped {len(source.skipped)} hidden entries (names starting with '.'; torchvision's "
               f"ImageFolder would read them): {names}{more}")
    tmp = None
    t0 = time.perf_counter()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temporary(out, "tmp")
        manifest = _convert_into(source, cfg, fmts, tmp)
        manifest["seconds"] = round(time.perf_counter() - t0, 3)
        write_json(tmp / MANIFEST, manifest)
        swap_into_place(tmp, out)
    except OSError as e:       # disk full, permissions, a read-only location, a path that is a file...
        _discard(tmp)
        raise NormfastError(f"{e.filename or out}: {e.strerror or e}") from None
    except BaseException:
        _discard(tmp)
        raise
    return manifest


def _discard(tmp: Path | None) -> None:
    if tmp is not None and is_ours(tmp):
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_into(source: Source, cfg: ConvertConfig, fmts: list[str], tmp: Path) -> dict:
    num_classes = len(source.classes)
    splits, stats, shape = {}, ChannelStats(), None
    for split in ("train", "test"):
        ds = source.splits[split]
        if source.grouped:
            ds = subset(ds, stored_order(len(ds), split))
        ds = limit(ds, cfg.limit)      # after the shuffle: a random, class-proportional subset
        with progress_bar(len(ds), f"{split}: decode", cfg.quiet) as bar:
            staging = stage_split(ds, tmp / f".staging-{split}.u8", cfg.size, num_classes,
                                  stats if split == "train" else None, bar,
                                  where=str(source.roots.get(split) or cfg.src or cfg.source),
                                  quality=cfg.quality if cfg.encoding == "jpg" else None)
        if shape is None:
            shape = staging.shape
        elif staging.shape != shape:
            raise NormfastError(f"test images are {staging.shape[1]}x{staging.shape[0]} but train images "
                                f"are {shape[1]}x{shape[0]}; pass --size N to resize both")
        counts = np.bincount(staging.labels, minlength=num_classes)
        splits[split] = {"count": len(staging), "class_counts": counts.tolist()}
        for fmt in fmts:
            with progress_bar(len(staging), f"{split}: {fmt}", cfg.quiet) as bar:
                info = formats.get(fmt)(staging, tmp / fmt, split, cfg.encoding, cfg.quality, bar)
            splits[split].setdefault("formats", {})[fmt] = info
        staging.path.unlink()
    mean, std = stats.mean_std()
    files = sorted(p for fmt in fmts for p in (tmp / fmt).rglob("*") if p.is_file())
    return {
        "name": source.name,
        "source": cfg.source,
        "classes": source.classes,
        "num_classes": num_classes,
        "image_shape": list(shape),
        "splits": splits,
        "stats": {"split": "train", "mean": mean, "std": std, "pixels": stats.n,
                  "units": "[0,1]", "std_ddof": 0},
        "encoding": cfg.encoding,
        "jpeg_quality": cfg.quality if cfg.encoding == "jpg" else None,
        "formats": {fmt: {"dir": fmt, "image_encoding": "raw" if fmt == "ffcv" and cfg.encoding == "png"
                          else cfg.encoding} for fmt in fmts},
        "files": [file_entry(tmp, p) for p in files],
        "version": normfast.__version__,
        "format_version": FORMAT_VERSION,
        "limit": cfg.limit,
        "order": {"shuffled": source.grouped, "seed": ORDER_SEED if source.grouped else None,
                  "rule": "numpy default_rng([seed, 1 (train) | 2 (test), source count]).permutation, "
                          "then --limit" if source.grouped else "as distributed (already class-mixed)"},
        "size": cfg.size,
    }
