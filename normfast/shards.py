"""The webdataset shards: how a sample's members are encoded, and plain-Python random access.

Layout (format_version 2, README "Formats"): `<key>.npy` (raw: a .npy uint8 HxWx3 array),
`<key>.png` or `<key>.jpg`, and `<key>.cls` (the label as ASCII decimal, webdataset's
convention). Datasets of format_version 1 hold `<key>.raw` (bare pixels) and an 8-byte
little-endian int64 `.cls`: both are still read, told apart by the member's extension and
the label's bytes (ASCII digits never hold a NUL; an int64 below 2**56 always does).

`split_shards` reads a split's DALI index files once (one seek + read per sample after it),
checks the first sample of each shard against the manifest, parses every label into one
int64 array, and is cached per file state, so `load_manifest`'s check and the loaders that
follow share the work. Used by every backend's data access, `stats` and `verify`.
"""
from __future__ import annotations

import io
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normfast.errors import NormfastError
from normfast.manifest import ENCODINGS, Manifest

__all__ = ["ENCODINGS", "ShardReader", "SplitShards", "split_shards", "read_index", "image_member",
           "encode_label", "npy_header", "decode_bytes"]

LEGACY_RAW = "raw"          # format_version 1's image member: bare pixels, no shape


def hint(root: Path) -> str:
    return f"run `normfast verify {root}`, or re-convert"


def image_member(encoding: str) -> str:
    """The image member's extension a conversion writes for `encoding`."""
    return "npy" if encoding == "raw" else encoding


def encode_label(label: int) -> bytes:
    return str(int(label)).encode("ascii")    # webdataset's `.cls`: b"7"


def npy_header(shape) -> bytes:
    """The .npy (format 1.0) header of a uint8 array of `shape`: np.save's bytes, the same
    length for every image of one shape (readers skip it at a constant offset)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def parse_npy_header(data: bytes) -> tuple[tuple, np.dtype, bool, int]:
    """(shape, dtype, fortran_order, header length) of a .npy member's leading bytes."""
    f = io.BytesIO(data)
    major, _ = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    return tuple(shape), dtype, fortran, f.tell()


# ---------------------------------------------------------------- DALI's index files

_INDEX_CACHE: dict = {}


def read_index(path: Path) -> dict[str, np.ndarray]:
    """{ext: int64 (samples, 2) array of (data offset, size)} of a DALI v1.2 index file
    (`v1.2 N`, then per sample `ext offset size name` for each member); every sample must
    list the same members. Cached by the file's size and mtime."""
    try:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key in _INDEX_CACHE:
            return _INDEX_CACHE[key]
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise NormfastError(f"{path}: unreadable DALI index ({getattr(e, 'strerror', None) or e})") from None
    first, _, body = text.partition("\n")
    head = first.split()
    if len(head) != 2 or head[0] != "v1.2" or not head[1].isdigit():
        raise NormfastError(f"{path}: not a DALI webdataset index (first line must be 'v1.2 COUNT')")
    n = int(head[1])
    lines = body.split("\n", n)[:n]
    if len(lines) < n or (n and not lines[-1].strip()):
        found = sum(1 for line in lines if line.strip())
        raise NormfastError(f"{path}: header says {n} samples, found {found}")
    table: dict[str, np.ndarray] = {}
    if n:
        exts = lines[0].split()[0::4]
        width = 4 * len(exts)
        tokens = " ".join(lines).split()      # one split and C-level maps: no Python loop per line
        if len(tokens) != n * width or any(set(tokens[4 * k::width]) != {e} for k, e in enumerate(exts)):
            bad = next(i for i, line in enumerate(lines) if line.split()[0::4] != exts or len(line.split()) != width)
            raise NormfastError(f"{path}: line {bad + 2} lists members {lines[bad].split()[0::4]}, line 2 "
                                f"lists {exts}")
        for k, ext in enumerate(exts):
            cols = []
            for j in (4 * k + 1, 4 * k + 2):
                column = tokens[j::width]
                if not all(map(str.isdigit, column)):
                    i = next(i for i, v in enumerate(column) if not v.isdigit())
                    raise NormfastError(f"{path}: line {i + 2}: {column[i][:40]!r} is not a byte offset or "
                                        "size (a whole number)")
                cols.append(np.fromiter(map(int, column), np.int64, count=n))
            table[ext] = np.stack(cols, axis=1)
    if len(_INDEX_CACHE) > 4096:
        _INDEX_CACHE.clear()
    _INDEX_CACHE[key] = table
    return table


# ---------------------------------------------------------------- a split's shards, checked

@dataclass(frozen=True)
class SplitShards:
    """Where every sample of a split lies: shard number, offset and size of its image data
    (past a .npy header), and its label; `encoding` is "raw" (pixels) or png/jpg (bytes)."""
    paths: tuple[Path, ...]
    indexes: tuple[Path, ...]
    encoding: str
    member: str            # the image member's extension: npy, raw (format 1), png or jpg
    header: int            # bytes before the pixels in each image member (.npy header)
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    labels: np.ndarray


_SPLIT_CACHE: dict = {}


def split_shards(manifest: Manifest, split: str) -> SplitShards:
    """A split's samples from its index files, each shard checked against the manifest:
    members present, nothing beyond the tar's end, the first image's shape and encoding,
    every label parsed and in range. Raises one NormfastError line naming file and field."""
    paths, indexes, encoding = manifest.shards(split)
    try:
        state = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths + indexes)
    except OSError as e:
        raise NormfastError(f"{e.filename}: {e.strerror}") from None
    key = (state, encoding, manifest.image_shape, manifest.num_classes)
    if key not in _SPLIT_CACHE:
        if len(_SPLIT_CACHE) > 64:
            _SPLIT_CACHE.clear()
        _SPLIT_CACHE[key] = _read_split(manifest, paths, indexes, encoding)
    return _SPLIT_CACHE[key]


def _read_split(m: Manifest, paths, indexes, encoding: str) -> SplitShards:
    shape, nbytes, fix = m.image_shape, int(np.prod(m.image_shape)), hint(m.root)
    wanted = ("npy", LEGACY_RAW) if encoding == "raw" else (encoding,)
    parts, members, headers, total = [], set(), set(), 0
    for k, (tar, idx) in enumerate(zip(paths, indexes)):
        table = read_index(idx)
        n = len(next(iter(table.values()))) if table else 0
        if n == 0:
            continue
        member = next((e for e in wanted if e in table), None)
        if member is None or "cls" not in table:
            have = ", ".join(f".{e}" for e in table)
            need = f".{wanted[0]}" if member is None else ".cls"
            raise NormfastError(f"{idx}: its samples hold {have} members, no {need} (manifest.json: encoding "
                                f"{encoding}); {fix}")
        size = tar.stat().st_size
        end = max(int((t[:, 0] + t[:, 1]).max()) for t in table.values())
        if end > size:
            raise NormfastError(f"{tar}: {size} bytes, but {idx.name} lists members up to byte {end} "
                                f"(a truncated or replaced shard); {fix}")
        img, cls = table[member], table["cls"]
        with open(tar, "rb") as f:
            data = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)
        head = _check_first(tar, bytes(data[img[0, 0]:img[0, 0] + min(int(img[0, 1]), 1 << 16)]),
                            member, shape, fix)
        if encoding == "raw" and (img[:, 1] - head != nbytes).any():
            i = int(np.flatnonzero(img[:, 1] - head != nbytes)[0])
            raise NormfastError(f"{tar}: sample {i} has {int(img[i, 1]) - head} bytes of pixels, image_shape "
                                f"{list(shape)} in manifest.json needs {nbytes}; {fix}")
        labels = _labels(tar, data, cls)
        bad = (labels < 0) | (labels >= m.num_classes)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise NormfastError(f"{tar}: sample {i} has label {int(labels[i])}, but manifest.json lists "
                                f"{m.num_classes} classes (labels 0..{m.num_classes - 1}); {fix}")
        members.add(member)
        headers.add(head)
        parts.append((np.full(n, k, np.int64), img[:, 0] + head, img[:, 1] - head, labels))
        total += n
    if len(members) > 1 or len(headers) > 1:
        raise NormfastError(f"{paths[0].parent}: the shards mix image members {sorted(members)}; {fix}")
    cat = (lambda j: np.concatenate([p[j] for p in parts]) if parts else np.zeros(0, np.int64))
    return SplitShards(tuple(paths), tuple(indexes), encoding, members.pop() if members else wanted[0],
                       headers.pop() if headers else 0, cat(0), cat(1), cat(2), cat(3))


def _check_first(tar: Path, data: bytes, member: str, shape, fix: str) -> int:
    """Check a shard's first image member against image_shape; returns its header length."""
    if member == LEGACY_RAW:
        return 0
    if member == "npy":
        try:
            got, dtype, fortran, head = parse_npy_header(data)
        except (ValueError, EOFError, SyntaxError) as e:
            raise NormfastError(f"{tar}: its first .npy member is not a NumPy array ({e}); {fix}") from None
        if got != tuple(shape) or dtype != np.uint8 or fortran:
            raise NormfastError(f"{tar}: its first image is a {dtype} array of shape {list(got)}, manifest.json "
                                f"image_shape is {list(shape)} (uint8); {fix}")
        return head
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad bytes
        raise NormfastError(f"{tar}: its first .{member} member is not an image ({type(e).__name__}); {fix}") from None
    if fmt != {"png": "PNG", "jpg": "JPEG"}[member]:
        raise NormfastError(f"{tar}: its first .{member} member holds a {fmt} image; {fix}")
    if (h, w) != tuple(shape[:2]):
        raise NormfastError(f"{tar}: its first image is {w}x{h}, manifest.json image_shape is "
                            f"{list(shape)}; {fix}")
    return 0


def _labels(tar: Path, data: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Every `.cls` of a shard as int64: ASCII decimal, or format 1's 8-byte little-endian."""
    off, size = cls[:, 0], cls[:, 1]
    if (size == 8).all():
        b = data[off[:, None] + np.arange(8)]
        if (b[:, 7] == 0).all():
            return b.view("<i8").reshape(-1).astype(np.int64)
    width = int(size.max())
    if size.min() < 1 or width > 18:
        i = int(np.flatnonzero((size < 1) | (size > 18))[0])
        raise NormfastError(f"{tar}: sample {i}'s .cls has {int(size[i])} bytes, not a label")
    j = np.arange(width)
    valid = j < size[:, None]
    b = data[np.minimum(off[:, None] + j, len(data) - 1)].astype(np.int64)
    digit = b - 48
    ok = ~valid | ((digit >= 0) & (digit <= 9))
    if not ok.all():
        i = int(np.flatnonzero(~ok.all(axis=1))[0])
        text = bytes(data[off[i]:off[i] + size[i]])
        raise NormfastError(f"{tar}: sample {i}'s .cls is {text[:20]!r}, not a decimal label")
    power = np.where(valid, 10 ** np.maximum(size[:, None] - 1 - j, 0), 0)
    return (np.where(valid, digit, 0) * power).sum(axis=1)


# ---------------------------------------------------------------- reading samples

def decode_bytes(data: bytes, encoding: str, shape, where: str = "sample") -> np.ndarray:
    if encoding == "raw":
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            img = np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for corrupt bytes
        raise NormfastError(f"{where}: corrupt {encoding} image ({type(e).__name__}: {e})") from None
    if img.shape != tuple(shape):
        raise NormfastError(f"{where}: image of shape {list(img.shape)}, manifest.json image_shape is "
                            f"{list(shape)}")
    return img


class ShardReader:
    """Indexed access to one split: reader[i] -> (uint8 HxWx3, int label), in stored order."""

    def __init__(self, manifest: Manifest, split: str):
        t = split_shards(manifest, split)
        self.shards, self.encoding, self.shape = list(t.paths), t.encoding, manifest.image_shape
        self.shard, self.offset, self.size, self.labels = t.shard, t.offset, t.size, t.labels
        self.member, self.header = t.member, t.header
        self._fds: dict[int, int] = {}

    def __len__(self):
        return len(self.labels)

    def __getstate__(self):   # file descriptors do not cross into DataLoader workers
        state = self.__dict__.copy()
        state["_fds"] = {}
        return state

    def _fd(self, k: int) -> int:
        if k not in self._fds:
            self._fds[k] = os.open(self.shards[k], os.O_RDONLY)
        return self._fds[k]

    def raw(self, i: int) -> tuple[bytes, int]:
        """Sample i's stored image bytes (pixels for raw, past any .npy header) and label."""
        k = int(self.shard[i])
        return os.pread(self._fd(k), int(self.size[i]), int(self.offset[i])), int(self.labels[i])

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        data, label = self.raw(i)
        return decode_bytes(data, self.encoding, self.shape, f"{self.shards[int(self.shard[i])]} (stored "
                            f"index {i})"), label

    def batches(self, batch_size: int = 1024):
        """Stream the split in order as (uint8 NHWC, int64 labels) numpy batches."""
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield np.stack([self[i][0] for i in range(start, stop)]), self.labels[start:stop].copy()

