"""The one atomic writer: every file normfast writes whole (run files, checkpoints, manifest.json,
report files, bench and demo JSON) goes through `write_atomic`.

A file is written to `.<name>.tmp-<PID>` in the same directory, fsynced, then renamed over the
old one, so a kill at any moment leaves either the old or the new file, never a mix. The
temporary is removed on any error, Ctrl-C included. An OSError (full disk, read-only folder)
becomes one NormfastError naming the file. A target that exists and is not a regular file (a
device such as /dev/full or /dev/null, a FIFO, a directory, a socket) is refused: the rename
would replace the device node itself.
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from normfast.errors import NormfastError

TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")     # what temporary_for() names
KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
         (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def temporary_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def why(e: BaseException) -> str:
    """A short reason for a message: the OS's words for an OSError, else the first line."""
    if getattr(e, "strerror", None):
        return e.strerror
    text = str(e)
    return text.splitlines()[0][:200] if text.strip() else type(e).__name__


def unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def refuse_non_regular(path: Path, name: str | None = None) -> None:
    """NormfastError when `path` exists (links followed) and is not a regular file; the message
    starts with `name` (e.g. "--json PATH"), the path by default."""
    try:
        mode = os.stat(path).st_mode
    except OSError:              # absent (or a dangling link): the write itself says what is wrong
        return
    if stat.S_ISREG(mode):
        return
    kind = next((k for test, k in KINDS if test(mode)), "not a regular file")
    raise NormfastError(f"{name or path}: is {kind}, not a regular file; normfast writes only regular files "
                        f"and will not replace it (choose another path)")


def write_atomic(path: str | Path, data: bytes | bytearray | memoryview | str, what: str = "it") -> Path:
    """Replace `path` by `data` or leave it as it was; returns the path. `what` names the file in
    the error message ("cannot write <what> (No space left on device)")."""
    path = Path(path)
    refuse_non_regular(path)
    tmp = temporary_for(path)
    payload = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        unlink_quietly(tmp)
        if isinstance(e, OSError):
            raise NormfastError(f"{path}: cannot write {what} ({why(e)})") from None
        raise
    return path


def move_into_place(src: str | Path, dst: str | Path) -> Path:
    """Rename `src`, a file already written whole (by write_atomic), over `dst`: the second phase
    of a commit over several files (a fused run's last.pt files). An OSError is one NormfastError."""
    src, dst = Path(src), Path(dst)
    refuse_non_regular(dst)
    try:
        os.replace(src, dst)
    except OSError as e:
        raise NormfastError(f"{dst}: cannot put {src.name} in its place ({why(e)})") from None
    return dst


def write_json(path: str | Path, data) -> Path:
    """`data` as indented JSON with a final newline, written atomically."""
    return write_atomic(path, json.dumps(data, indent=2) + "\n")


__all__ = ["write_atomic", "write_json", "move_into_place", "refuse_non_regular", "temporary_for", "TEMPORARY"]
