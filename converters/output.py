"""The output directory of `normfast convert`: what --force may replace, and the atomic swap.

A conversion writes into a temporary sibling `.NAME.tmp-PID` and then swaps it into place
(the old dataset moves to `.NAME.old-PID` for the instant of the swap). Each such directory
holds a marker file, MARKER, written by normfast the moment it exists: only directories
carrying it are ever removed or restored, so a user's own `.NAME.old-2023` is never touched.

A kill at any moment leaves either the old or the new dataset at NAME, or (between the two
renames) only `.NAME.old-PID`; the next conversion to NAME (or `normfast convert --clean`)
restores that one, removes the other marked leftovers of dead processes, and says so.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from normfast.errors import NormfastError
from normfast.manifest import MANIFEST, load_manifest

MARKER = ".normfast-temporary"


def notice(message: str) -> None:
    print(f"notice: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- what --force may replace

def check_replaceable(out: Path) -> None:
    """Raise unless `out` is absent, an empty directory, or a normfast dataset holding
    nothing beyond what its manifest lists."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink():
        raise NormfastError(f"{out}: is a symlink; --force replaces only a real directory holding a normfast "
                            "dataset (pass the directory it points to)")
    if not out.is_dir():
        raise NormfastError(f"{out}: exists and is not a directory; --force replaces only a normfast dataset")
    entries = sorted(out.iterdir())
    if not entries:
        return
    if not (out / MANIFEST).is_file():
        raise NormfastError(f"{out}: exists and is not a converted dataset (no {MANIFEST}; it holds "
                            f"{_names(out, entries)}); --force replaces only those (or an empty directory)")
    try:
        m = load_manifest(out, check=False)      # a broken dataset may still be replaced
    except NormfastError as e:
        raise NormfastError(f"{out}: exists and is not a converted dataset ({e}); --force replaces only "
                            "those (or an empty directory)") from None
    allowed = {MANIFEST, MARKER}
    for f in m.files:
        parts = Path(f["path"]).parts
        allowed.update("/".join(parts[:k]) for k in range(1, len(parts) + 1))
    extra = []
    for root, dirs, files in os.walk(out):
        for name in sorted(dirs) + sorted(files):
            p = Path(root) / name
            if p.relative_to(out).as_posix() not in allowed:
                extra.append(p)
        dirs[:] = [d for d in dirs if (Path(root) / d).relative_to(out).as_posix() in allowed]
    if extra:
        raise NormfastError(f"{out}: holds what its {MANIFEST} does not list ({_names(out, sorted(extra))}); "
                            "--force replaces only a normfast dataset: move those away first")


def _names(root: Path, paths: list[Path], most: int = 5) -> str:
    names = [p.relative_to(root).as_posix() + ("/" if p.is_dir() and not p.is_symlink() else "")
             for p in paths[:most]]
    return ", ".join(names) + (f" and {len(paths) - most} more" if len(paths) > most else "")


def check_apart(src: Path | None, out: Path) -> None:
    """The output must neither contain the source nor lie inside it (symlinks resolved)."""
    if src is None:
        return
    s, o = Path(src).resolve(), Path(out).resolve()
    if s == o or o in s.parents:
        raise NormfastError(f"--out {out}: contains the source --src {src}; choose an output outside it")
    if s in o.parents:
        raise NormfastError(f"--out {out}: lies inside the source --src {src}; choose an output outside it")


# ---------------------------------------------------------------- temporaries

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_temporary(out: Path, kind: str) -> Path:
    """A fresh marked `.NAME.<kind>-PID` directory beside `out`."""
    path = out.parent / f".{out.name}.{kind}-{os.getpid()}"
    if path.exists() or path.is_symlink():
        if not is_ours(path):
            raise NormfastError(f"{path}: exists and was not made by normfast; move it away")
        shutil.rmtree(path)
    path.mkdir()
    mark(path, kind)
    return path


def mark(path: Path, kind: str) -> None:
    (path / MARKER).write_text(json.dumps({"pid": os.getpid(), "kind": kind}) + "\n")


def is_ours(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and (path / MARKER).is_file() \
        and not (path / MARKER).is_symlink()


def _marker_pid(path: Path) -> int | None:
    try:
        pid = json.loads((path / MARKER).read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None


def leftovers(out: Path) -> list[tuple[Path, str]]:
    """(path, kind) of the temporaries beside `out` whose process is gone: marked ones, and empty
    ones of exactly our name (a kill between mkdir and marker; removing them loses nothing)."""
    found = []
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(tmp|old)-(\d+)$")
    if not out.parent.is_dir():
        return found
    for p in sorted(out.parent.iterdir()):
        match = pattern.match(p.name)
        if match and not _alive(int(match.group(2))):
            if is_ours(p):
                found.append((p, match.group(1)))
            elif p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
                found.append((p, "empty"))    # killed between its mkdir and its marker: holds nothing
    return found


def du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def human(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


def free_shared_memory(path: Path) -> None:
    """Unlink the FFCV shared memory segments a killed writer named in `path` (see formats.py)."""
    from converters.formats import SHM_NOTE
    for note in path.rglob(SHM_NOTE):
        for name in note.read_text().split():
            if re.fullmatch(r"/?psm_[0-9a-f]+", name):
                try:
                    os.unlink(f"/dev/shm/{name.lstrip('/')}")
                except OSError:
                    pass


def recover(out: Path) -> None:
    """Finish what a killed conversion left: restore a dataset caught between the two renames
    of the swap, drop its marker, and remove its other temporaries (each named in a notice)."""
    for path, kind in leftovers(out):
        if kind == "old" and not out.exists() and not out.is_symlink():
            os.replace(path, out)
            (out / MARKER).unlink()
            notice(f"{out}: restored the dataset from {path.name}, left by a conversion killed while "
                   "replacing it")
            continue
        if kind == "empty":
            os.rmdir(path)                    # fails, rather than deletes, if something appeared
            notice(f"removed {path} (empty), left by a killed conversion")
            continue
        size = du(path)
        free_shared_memory(path)
        shutil.rmtree(path)
        notice(f"removed {path} ({human(size)}), left by a killed conversion")
    if (out / MARKER).is_file() and out.is_dir() and not out.is_symlink():
        pid = _marker_pid(out)
        if pid is not None and not _alive(pid):
            (out / MARKER).unlink()


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out`, replacing an existing dataset recoverably."""
    if out.exists():
        mark(out, "old")                      # the old dataset is ours to restore or remove
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)                  # a kill just before this: `recover` restores `old`
        (out / MARKER).unlink()
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
        (out / MARKER).unlink()


def clean(out: Path) -> int:
    """`normfast convert --clean --out X`: only recover/remove marked leftovers; returns how many."""
    try:
        n = len(leftovers(out))
        recover(out)
    except OSError as e:
        raise NormfastError(f"{e.filename or out}: {e.strerror or e}") from None
    return n
