"""Readers of source datasets, in their on-disk formats as distributed.

Every reader returns a `Source`: class names and, per split, an indexed dataset whose
`[i]` is `(uint8 HxWx3 array, int label)`, in the order the files list the samples.
`Source.grouped` says that this order runs class by class (folder layouts): conversion then
stores a seeded permutation instead (see `converters.convert.stored_order`). Readers check layout
and labels up front and raise NormfastError naming the file and what is wrong; images are decoded lazily.
"""
from __future__ import annotations

import errno
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from normfast.errors import NormfastError
from normfast.registry import Registry

sources: Registry[Callable[..., "Source"]] = Registry("source")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class Source:
    name: str
    classes: list[str]
    splits: dict = field(default_factory=dict)   # split name -> indexed dataset
    grouped: bool = False     # samples listed class by class: conversion stores a seeded shuffle
    roots: dict = field(default_factory=dict)     # split name -> its source folder (for messages)
    skipped: list = field(default_factory=list)   # hidden entries left out (convert names them)


class ArrayDataset:
    """Images already in memory (CIFAR, SVHN, synthetic): uint8 NHWC + labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


class FileDataset:
    """Image files decoded on access with Pillow; grayscale/palette/RGBA become RGB."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int]):
        self.paths, self.labels = list(paths), list(labels)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return decode_image_file(self.paths[i]), self.labels[i]


def decode_image_file(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
                return _sixteen_bit_gray(np.asarray(im))
            if im.mode in ("I", "F"):
                raise NormfastError(f"{path}: {'32-bit integer' if im.mode == 'I' else 'floating-point'} "
                                    "pixels have no defined 8-bit scale; convert the image to 8 bits first")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as e:
        raise NormfastError(f"{path}: image too large to decode safely ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise NormfastError(f"{path}: corrupt or unreadable image ({e})") from None


def _sixteen_bit_gray(a: np.ndarray) -> np.ndarray:
    """A 16-bit grayscale image scaled to 8 bits (0..65535 -> 0..255, rounded), as RGB.
    Pillow's own convert("RGB") clips it instead, so nearly every pixel became 255."""
    a = np.asarray(a).astype(np.uint32)
    g = ((a * 255 + 32767) // 65535).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def check_labels(labels, num_classes: int, where: str) -> np.ndarray:
    """Labels as int64, or an error naming the first that is not an integer in range."""
    try:
        labels = np.asarray(labels).reshape(-1)
    except ValueError:
        raise NormfastError(f"{where}: labels are not a flat list of integers") from None
    if labels.dtype.kind not in "iu":
        for i, v in enumerate(labels.tolist()):
            integral = isinstance(v, (int, float)) and not isinstance(v, bool) \
                and np.isfinite(v) and float(v).is_integer()
            if not integral:      # 1.7 would become 1, "3" is no label at all: refuse, never guess
                raise NormfastError(f"{where}: label {v!r} at index {i} is not an integer")
        labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
        raise NormfastError(
            f"{where}: label {int(labels[bad])} at index {bad} is out of range 0..{num_classes - 1}")
    return labels.astype(np.int64)


def limit(ds, n: int | None):
    """The first n samples of an indexed dataset (all when n is None)."""
    if n is None or n >= len(ds):
        return ds
    return subset(ds, np.arange(n))


def subset(ds, indices: np.ndarray):
    """The samples `indices` of an indexed dataset, in that order (each image keeps its label)."""
    indices = np.asarray(indices, dtype=np.int64)
    if isinstance(ds, ArrayDataset):
        return ArrayDataset(ds.images[indices], ds.labels[indices])
    return FileDataset([ds.paths[i] for i in indices], [ds.labels[i] for i in indices])


def _dangling(path: Path) -> str | None:
    """Why a symlink cannot be followed ("symlink loop" or "broken symlink"), else None."""
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except OSError as e:
        kind = "symlink loop" if e.errno == errno.ELOOP else "broken symlink"
        return f"{kind} (points to {os.readlink(path)})"
    return None


def require(path: Path, what: str) -> Path:
    if (why := _dangling(path)) is not None:
        raise NormfastError(f"{path}: {why[:-1]}; {what})")
    if not path.exists():
        raise NormfastError(f"{path}: missing ({what})")
    return path


# ---------------------------------------------------------------- CIFAR10 / CIFAR100

def _unpickle(path: Path) -> dict:
    require(path, "CIFAR python batch")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise NormfastError(f"{path}: corrupt or truncated pickle ({type(e).__name__})") from None
    if not isinstance(d, dict):
        raise NormfastError(f"{path}: not a CIFAR batch (expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_batches(files: list[Path], label_key: str, num_classes: int) -> ArrayDataset:
    images, labels = [], []
    for path in files:
        d = _unpickle(path)
        if "data" not in d or label_key not in d:
            raise NormfastError(f"{path}: missing key 'data' or {label_key!r}")
        data = np.asarray(d["data"])
        if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
            raise NormfastError(f"{path}: 'data' has shape {data.shape} {data.dtype}, expected (N, 3072) uint8")
        lab = check_labels(np.asarray(d[label_key]), num_classes, str(path))
        if len(lab) != len(data):
            raise NormfastError(f"{path}: {len(data)} images but {len(lab)} labels")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    return ArrayDataset(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))


@sources.register("cifar10")
def read_cifar10(src: Path) -> Source:
    meta = _unpickle(src / "batches.meta")
    classes = [c.decode() if isinstance(c, bytes) else c for c in meta.get("label_names", [])]
    if len(classes) != 10:
        raise NormfastError(f"{src / 'batches.meta'}: expected 10 label_names, found {len(classes)}")
    train = _cifar_batches([src / f"data_batch_{i}" for i in range(1, 6)], "labels", 10)
    test = _cifar_batches([src / "test_batch"], "labels", 10)
    return Source("cifar10", classes, {"train": train, "test": test})


@sources.register("cifar100")
def read_cifar100(src: Path) -> Source:
    meta = _unpickle(src / "meta")
    classes = [c.decode() if isinstance(c, bytes) else c for c in meta.get("fine_label_names", [])]
    if len(classes) != 100:
        raise NormfastError(f"{src / 'meta'}: expected 100 fine_label_names, found {len(classes)}")
    train = _cifar_batches([src / "train"], "fine_labels", 100)
    test = _cifar_batches([src / "test"], "fine_labels", 100)
    return Source("cifar100", classes, {"train": train, "test": test})


# ---------------------------------------------------------------- SVHN

def _svhn_mat(path: Path) -> ArrayDataset:
    import scipy.io
    require(path, "SVHN .mat file")
    try:
        d = scipy.io.loadmat(path)
    except Exception as e:  # noqa: BLE001 - scipy raises many types for bad files
        raise NormfastError(f"{path}: corrupt or truncated .mat file ({type(e).__name__})") from None
    if "X" not in d or "y" not in d:
        raise NormfastError(f"{path}: missing variable 'X' or 'y'")
    x, y = np.asarray(d["X"]), np.asarray(d["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise NormfastError(f"{path}: X has shape {x.shape} {x.dtype}, expected (32, 32, 3, N) uint8")
    if len(y) != x.shape[3]:
        raise NormfastError(f"{path}: {x.shape[3]} images but {len(y)} labels")
    y = check_labels(y, 11, str(path) + " (y must be 1..10)")
    if (y == 0).any():
        raise NormfastError(f"{path} (y must be 1..10): label 0 at index {int(np.argmax(y == 0))} is out of range")
    y[y == 10] = 0   # SVHN stores digit 0 as label 10
    return ArrayDataset(np.ascontiguousarray(x.transpose(3, 0, 1, 2)), y)


@sources.register("svhn")
def read_svhn(src: Path) -> Source:
    return Source("svhn", [str(d) for d in range(10)],
                  {"train": _svhn_mat(src / "train_32x32.mat"), "test": _svhn_mat(src / "test_32x32.mat")})


# ---------------------------------------------------------------- Tiny ImageNet-200

def _hidden(p: Path) -> bool:
    """A hidden entry that torchvision's ImageFolder would read (a folder, or an image file):
    normfast leaves it out and convert names it. Others (.DS_Store) both leave out silently."""
    return p.is_dir() or p.suffix.lower() in IMAGE_EXTENSIONS


def _images_in(folder: Path, recursive: bool = False, skipped: list | None = None,
               _above: frozenset = frozenset()) -> list[Path]:
    """The image files in `folder` (hidden names skipped, and added to `skipped` where
    torchvision would read them), sorted. With `recursive`, those in its subfolders too, as
    torchvision's ImageFolder reads them; without, a subfolder is an error rather than images
    silently left out. A folder symlink back to a folder above is an error, not a descent."""
    files, here = [], _above | {folder.resolve()}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            if skipped is not None and _hidden(p):
                skipped.append(p)
            continue
        if (why := _dangling(p)) is not None:
            raise NormfastError(f"{p}: {why}")
        if p.is_dir():
            if not recursive:
                raise NormfastError(f"{p}: unexpected folder (images must lie directly in {folder})")
            target = p.resolve()
            if any(target == h or target in h.parents for h in here):   # it would list itself again
                raise NormfastError(f"{p}: symlink loop (points to "
                                 f"{os.readlink(p) if p.is_symlink() else target}, a folder above it)")
            files += _images_in(p, recursive=True, skipped=skipped, _above=here)
            continue
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise NormfastError(f"{p}: not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})")
        files.append(p)
    return files


@sources.register("tiny-imagenet-200")
def read_tiny_imagenet(src: Path) -> Source:
    wnids = [w.strip() for w in require(src / "wnids.txt", "class list").read_text().splitlines() if w.strip()]
    if not wnids:
        raise NormfastError(f"{src / 'wnids.txt'}: empty class list")
    lines = [n for n, w in enumerate((src / "wnids.txt").read_text().splitlines(), 1) if w.strip()]
    for i, w in enumerate(wnids):
        if w in wnids[:i]:      # one class twice: its images would be stored twice, under two labels
            raise NormfastError(f"{src / 'wnids.txt'}: lines {lines[wnids.index(w)]} and {lines[i]} both "
                                f"list {w!r}")
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    for w in wnids:
        folder = require(src / "train" / w / "images", f"train images of class {w}")
        files = _images_in(folder)
        if not files:
            raise NormfastError(f"{folder}: empty class folder")
        paths += files
        labels += [index[w]] * len(files)
    train = FileDataset(paths, labels)

    ann = require(src / "val" / "val_annotations.txt", "val labels")
    img_dir = require(src / "val" / "images", "val images")
    listed = {}
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise NormfastError(f"{ann}:{n}: expected 'file<TAB>wnid...', got {line!r}")
        if parts[1] not in index:
            raise NormfastError(f"{ann}:{n}: unknown class {parts[1]!r} (not in wnids.txt)")
        if parts[0] in listed and listed[parts[0]][0] != index[parts[1]]:
            raise NormfastError(f"{ann}:{n}: {parts[0]} listed again with class {parts[1]!r}; line "
                                f"{listed[parts[0]][1]} gave {wnids[listed[parts[0]][0]]!r}")
        listed.setdefault(parts[0], (index[parts[1]], n))
    present = {p.name: p for p in _images_in(img_dir)}
    missing = sorted(set(listed) - set(present))
    if missing:
        raise NormfastError(f"{img_dir / missing[0]}: listed in val_annotations.txt but missing")
    unlisted = sorted(set(present) - set(listed))
    if unlisted:
        raise NormfastError(f"{present[unlisted[0]]}: image has no label in val_annotations.txt")
    names = sorted(listed)
    test = FileDataset([present[n] for n in names], [listed[n][0] for n in names])
    # train is listed class by class; val is in file-name order (already mixed), shuffled too
    return Source("tiny-imagenet-200", wnids, {"train": train, "test": test}, grouped=True,
                  roots={"train": src / "train", "test": img_dir})


# ---------------------------------------------------------------- ImageFolder

@sources.register("imagefolder")
def read_imagefolder(src: Path) -> Source:
    train_dir = require(src / "train", "ImageFolder layout needs train/<class>/ and test/<class>/")
    test_dir = src / "test" if (src / "test").exists() or (src / "test").is_symlink() else src / "val"
    require(test_dir, "ImageFolder layout needs test/<class>/ (or val/<class>/)")
    if not test_dir.is_dir():
        raise NormfastError(f"{test_dir}: not a folder (ImageFolder layout needs {test_dir.name}/<class>/)")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise NormfastError(f"{train_dir}: no class folders")
    index = {c: i for i, c in enumerate(classes)}
    splits, skipped = {}, []
    for split, root in (("train", train_dir), ("test", test_dir)):
        paths, labels = [], []
        for entry in sorted(root.iterdir()):
            if entry.name.startswith("."):
                if _hidden(entry):
                    skipped.append(entry)
                continue
            if not entry.is_dir():
                raise NormfastError(f"{entry}: expected only class folders in {root}")
            if entry.name not in index:
                raise NormfastError(f"{entry}: class {entry.name!r} is not among the train classes")
            files = _images_in(entry, recursive=True, skipped=skipped)
            if not files:
                raise NormfastError(f"{entry}: empty class folder")
            paths += files
            labels += [index[entry.name]] * len(files)
        splits[split] = FileDataset(paths, labels)
    from normfast.manifest import safe_name
    name = src.resolve().name              # `--src data/..` is named after the folder itself
    return Source(name if safe_name(name) else "imagefolder", classes, splits, grouped=True,
                  roots={"train": train_dir, "test": test_dir}, skipped=skipped)


# ---------------------------------------------------------------- synthetic demo

@sources.register("synthetic")
def read_synthetic(src: Path | None = None, train_count: int = 5000, test_count: int = 1000,
                   seed: int = 0) -> Source:
    from converters.synthetic import make_split, CLASSES
    return Source("synthetic", list(CLASSES), {
        "train": ArrayDataset(*make_split(train_count, seed=seed * 2 + 1)),
        "test": ArrayDataset(*make_split(test_count, seed=seed * 2 + 2))})
