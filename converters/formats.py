"""Writers of the two fast formats, both fed from one validated uint8 staging file.

- ffcv: `ffcv/<split>.beton` with an RGBImageField `image` (raw or jpg) and IntField `label`.
- dali: `dali/<split>-NNNNN.tar` webdataset shards (`<key>.npy|png|jpg` + `<key>.cls`, the
  label as ASCII decimal: webdataset's conventions, README "Formats") with DALI index files
  `<split>-NNNNN.idx`.

With jpg both formats hold the very same JPEG bytes: FFCV's writer is handed Pillow's
encoding (`same_jpeg`) instead of re-encoding with OpenCV, so no format holds other pixels.
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np

from normfast.errors import NormfastError
from normfast.registry import Registry
from normfast.shards import encode_label, image_member, npy_header

formats: Registry = Registry("format")
SHARD_SAMPLES = 10_000
SHM_NOTE = ".ffcv-shared-memory"      # beside a .beton being written: FFCV's shared memory segment


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
    """A shard's image member: raw as .npy (np.save's bytes), else PNG or JPEG by Pillow."""
    if encoding == "raw":
        return npy_header(img.shape) + np.ascontiguousarray(img).tobytes()
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
        key = f"{self.count:09d}"    # the stored index: webdataset's key (README "Formats")
        ext = image_member(self.encoding)
        img_off = self._add(f"{key}.{ext}", encode_image(img, self.encoding, self.quality))
        cls_off = self._add(f"{key}.cls", encode_label(label))
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
    from normfast.compat import keep_torch_threads
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
        with keep_torch_threads(), same_jpeg():
            supervised(lambda: writer.from_indexed_dataset(staging, chunksize=256), path)
    finally:
        ffcv.writer.tqdm = tqdm
    if progress is not None:
        progress.update(len(staging))
    return {"file": f"{split}.beton", "image_encoding": mode}


class same_jpeg:
    """While open, FFCV's RGBImageField encodes JPEG with Pillow as the shards do (it would use
    OpenCV, whose bytes decode to other pixels: 44.9 dB apart). Its workers are forked inside,
    so they inherit it."""

    def __enter__(self):
        import ffcv.fields.rgb_image as rgb
        self.module, self.original = rgb, rgb.encode_jpeg
        rgb.encode_jpeg = lambda image, quality: np.frombuffer(encode_image(image, "jpg", quality), np.uint8)

    def __exit__(self, *exc):
        self.module.encode_jpeg = self.original


# ---------------------------------------------------------------- FFCV's writer, supervised
#
# FFCV's DatasetWriter forks workers and then polls a shared counter until every sample is
# done: a worker that dies (ENOSPC, MemoryError, a bad sample) makes it wait forever, its
# workers are not daemons (so an interrupted parent hangs at exit joining them), and a
# SIGKILLed parent leaves them spinning. So the writer runs in a child process that leads
# its own process group: workers report their failure on a pipe, the parent watches that
# pipe and the child, and on any failure or interrupt kills the whole group at once.
# Every process of the group also dies with its parent (PR_SET_PDEATHSIG).

def _die_with_parent(expected_parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies; exit now if it already has."""
    import ctypes
    import signal
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)   # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != expected_parent:
        os._exit(1)


def _failure(e: BaseException, path: Path) -> str:
    if isinstance(e, OSError):
        return f"{e.filename or path}: {e.strerror or e}"
    if isinstance(e, NormfastError):
        return str(e)
    return f"{path}: FFCV writer failed ({type(e).__name__}: {e})"


def _send(fd: int, kind: str, text: str) -> None:
    line = f"{kind} {' '.join(text.split())}"[:3000] + "\n"   # one line, under PIPE_BUF: atomic
    try:
        os.write(fd, line.encode("utf-8", "replace"))
    except OSError:
        pass


def _supervisor(job, path: Path, fd: int, parent: int) -> None:
    """The child: run FFCV's writer with each worker wrapped to report failure and die with us."""
    import signal
    os.setpgid(0, 0)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    _die_with_parent(parent)
    import multiprocessing
    import ffcv.writer
    me, original = os.getpid(), ffcv.writer.worker_job_indexed_dataset
    real_prepare = ffcv.writer.DatasetWriter.prepare

    def worker(*args):
        _die_with_parent(me)
        try:
            original(*args)
        except BaseException as e:   # noqa: BLE001 - reported to the parent, which stops everything
            _send(fd, "error", _failure(e, path))
            os._exit(1)

    def prepare(self):               # say where FFCV's shared memory is, to free it after a kill
        real_prepare(self)
        _send(fd, "shm", self.metadata_sm._name)

    ffcv.writer.worker_job_indexed_dataset = worker
    ffcv.writer.DatasetWriter.prepare = prepare
    try:
        job()
        for child in multiprocessing.active_children():
            child.join()
        _send(fd, "ok", "")
    except BaseException as e:       # noqa: BLE001
        _send(fd, "error", _failure(e, path))
        os._exit(1)
    os._exit(0)


def supervised(job, path: Path) -> None:
    """Run `job` (an FFCV write into `path`) in a supervised process group; raise NormfastError
    on any failure in it, and kill it all on an interrupt of ours."""
    import multiprocessing
    import select
    from multiprocessing import resource_tracker
    shared_tracker = resource_tracker._resource_tracker._fd is not None   # inherited by the child
    r, w = os.pipe()
    proc = multiprocessing.get_context("fork").Process(target=_supervisor, args=(job, path, w, os.getpid()))
    proc.start()
    os.close(w)
    try:
        os.setpgid(proc.pid, proc.pid)     # also here: a kill right away must reach the group
    except OSError:
        pass
    state = {"shm": None, "error": None, "ok": False, "buf": b""}

    def read(timeout: float) -> bool:
        """Read what the pipe holds (waiting up to `timeout`); False at end of file."""
        ready, _, _ = select.select([r], [], [], timeout)
        if not ready:
            return True
        chunk = os.read(r, 65536)
        state["buf"] += chunk
        while b"\n" in state["buf"]:
            line, state["buf"] = state["buf"].split(b"\n", 1)
            kind, _, text = line.decode("utf-8", "replace").partition(" ")
            if kind == "shm":
                state["shm"] = text
                # a SIGKILL of ours leaves it behind: the next run's cleanup frees what is named here
                (path.parent / SHM_NOTE).write_text(text + "\n")
            elif kind == "error" and state["error"] is None:
                state["error"] = text
            elif kind == "ok":
                state["ok"] = True
        return bool(chunk)

    try:
        while state["error"] is None and not state["ok"]:
            open_ = read(0.2)
            if state["error"] is None and not state["ok"] and (not open_ or not proc.is_alive()):
                while read(0.05) and state["error"] is None and not state["ok"] and proc.is_alive():
                    pass                   # drain what it wrote before it ended
                if state["error"] is None and not state["ok"]:
                    proc.join(5)
                    state["error"] = (f"{path}: the FFCV writer process ended unexpectedly "
                                      f"(exit status {proc.exitcode})")
    except BaseException:
        _kill_group(proc, state["shm"], shared_tracker)
        raise
    finally:
        os.close(r)
    if state["error"] is not None:
        _kill_group(proc, state["shm"], shared_tracker)
        raise NormfastError(state["error"])
    proc.join()
    (path.parent / SHM_NOTE).unlink(missing_ok=True)


def _kill_group(proc, shm: str | None, shared_tracker: bool) -> None:
    import signal
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except OSError:
            pass
    proc.join()
    if shm:                          # FFCV's metadata segment (its owner was killed)
        try:
            os.unlink(f"/dev/shm/{shm.lstrip('/')}")
        except OSError:
            pass
        if shared_tracker:           # it registered there: keep that tracker from warning at exit
            from multiprocessing import resource_tracker
            resource_tracker.unregister(shm, "shared_memory")
