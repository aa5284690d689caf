"""Writers of the two fast formats, both fed from one validated uint8 staging file.

- ffcv: `ffcv/<split>.beton` with an RGBImageField `image` (raw or jpg) and IntField `label`.
- dali: `dali/<split>-NNNNN.tar` webdataset shards (`<key>.raw|png|jpg` + `<key>.cls`,
  label as 8-byte little-endian int64) with DALI index files `<split>-NNNNN.idx`.
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np

from normfast.errors import NormfastError
from normfast.registry import Registry

formats: Registry = Registry("format")
SHARD_SAMPLES = 10_000


class StagingDataset:
    """A split's images (uint8 NHWC) and labels in a flat file, read back with pread.

    It keeps nothing in memory and pickles as a path, so FFCV's writer processes can
    share it; reads never map the file, so the writer's memory stays bounded.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int], labels: np.ndarray):
        self.path, self.shape, self.labels = Path(path), tuple(shape), labels
        self.nbytes = int(np.prod(shape))
        self._fd = None

    def __len__(self):
        return len(self.labels)

    def __getstate__(self):
        return {"path": self.path, "shape": self.shape, "labels": self.labels}

    def __setstate__(self, s):
        self.__init__(s["path"], s["shape"], s["labels"])

    def __getitem__(self, i):
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        buf = os.pread(self._fd, self.nbytes, i * self.nbytes)
        return np.frombuffer(buf, dtype=np.uint8).reshape(self.shape), int(self.labels[i])


def encode_image(img: np.ndarray, encoding: str, quality: int) -> bytes:
    if encoding == "raw":
        return np.ascontiguousarray(img).tobytes()
    from PIL import Image
    buf = io.BytesIO()
    if encoding == "png":
        Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class ShardWriter:
    """Streams samples into webdataset tar shards and writes DALI's index beside each."""

    def __init__(self, out_dir: Path, split: str, encoding: str, quality: int,
                 shard_samples: int = SHARD_SAMPLES):
        self.out_dir, self.split, self.encoding, self.quality = out_dir, split, encoding, quality
        self.shard_samples = shard_samples
        self.count, self.tar, self.entries, self.shards = 0, None, [], []
        out_dir.mkdir(parents=True, exist_ok=True)

    def _open(self):
        name = f"{self.split}-{len(self.shards):05d}"
        self.shards.append(name)
        self.tar = tarfile.open(self.out_dir / f"{name}.tar", "w", format=tarfile.USTAR_FORMAT)
        self.entries = []

    def _add(self, member: str, data: bytes) -> tuple[int, int]:
        info = tarfile.TarInfo(member)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        # addfile() stores a copy of `info`, so compute where the data lands: after the header.
        data_offset = self.tar.offset + len(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
        self.tar.addfile(info, io.BytesIO(data))
        return data_offset, len(data)

    def write(self, img: np.ndarray, label: int) -> None:
        if self.tar is None or len(self.entries) == self.shard_samples:
            self._close()
            self._open()
        key = f"{self.count:09d}"
        ext = self.encoding          # the member's extension names its encoding
        img_off = self._add(f"{key}.{ext}", encode_image(img, self.encoding, self.quality))
        cls_off = self._add(f"{key}.cls", np.int64(label).tobytes())
        self.entries.append((key, (ext, *img_off), ("cls", *cls_off)))
        self.count += 1

    def _close(self):
        if self.tar is None:
            return
        self.tar.close()
        name = self.shards[-1]
        write_dali_index(self.out_dir / f"{name}.idx", self.entries)
        self.tar = None

    def close(self) -> list[str]:
        self._close()
        return self.shards


def write_dali_index(path: Path, entries) -> None:
    """DALI's webdataset index (format v1.2): a header, then one line per sample listing
    `ext offset size filename` for each of its components (offsets of the data, in bytes)."""
    lines = [f"v1.2 {len(entries)}"]
    for key, *components in entries:
        parts = []
        for ext, off, size in components:
            parts += [ext, str(off), str(size), f"{key}.{ext}"]
        lines.append(" ".join(parts))
    path.write_text("\n".join(lines) + "\n")


@formats.register("dali")
def write_dali(staging: StagingDataset, out_dir: Path, split: str, encoding: str, quality: int,
               progress=None) -> dict:
    writer = ShardWriter(out_dir, split, encoding, quality)
    for i in range(len(staging)):
        writer.write(*staging[i])
        if progress is not None:
            progress.update(1)
    shards = writer.close()
    return {"shards": [f"{s}.tar" for s in shards], "indexes": [f"{s}.idx" for s in shards]}


@formats.register("ffcv")
def write_ffcv(staging: StagingDataset, out_dir: Path, split: str, encoding: str, quality: int,
               progress=None) -> dict:
    from normfast.ops import keep_torch_threads
    try:
        with keep_torch_threads():
            from ffcv.fields import IntField, RGBImageField
            from ffcv.writer import DatasetWriter
    except ImportError as e:
        raise NormfastError(f"the ffcv format needs the ffcv package ({e}); "
                            "install it with `bash setup.sh` or `pip install ffcv`") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = "jpg" if encoding == "jpg" else "raw"       # png has no FFCV mode: raw is lossless too
    h, w, _ = staging.shape
    fields = {"image": RGBImageField(write_mode=mode, max_resolution=max(h, w), jpeg_quality=quality),
              "label": IntField()}
    path = out_dir / f"{split}.beton"
    # A sample must fit in one FFCV page (default 8 MiB): a larger one makes FFCV's writer
    # process fail and its parent wait forever. Pages are powers of two below 4 GiB.
    page = 1 << 23
    while page < 2 * h * w * 3 + (1 << 16):
        page <<= 1
    if page >= 1 << 32:
        raise NormfastError(f"images of {w}x{h} are too large for FFCV; pass --size N or --format dali")
    writer = DatasetWriter(str(path), fields, page_size=page, num_workers=min(2, os.cpu_count() or 1))
    # FFCV draws its own tqdm bar on stderr: show it only where ours would show
    import functools
    import ffcv.writer
    from tqdm import tqdm
    quiet = progress is None or progress.disable
    ffcv.writer.tqdm = functools.partial(tqdm, disable=quiet, leave=False, desc=f"{split}: ffcv", unit="img")
    try:
        with keep_torch_threads():
            writer.from_indexed_dataset(staging, chunksize=256)
    finally:
        ffcv.writer.tqdm = tqdm
    if progress is not None:
        progress.update(len(staging))
    return {"file": f"{split}.beton", "image_encoding": mode}
