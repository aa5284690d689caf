"""The run directory and its one owner, `RunDir`: what `normfast train` writes and everything
else (sweep, report, demo, cli) reads.

RUNS/<dataset>/<run>/ holds
  config.yaml        the resolved config (+ dataset, weights, amp, device, versions, data_identity)
  metrics.jsonl      one JSON object per finished epoch, appended in epoch order
  best_results.json  best_epoch, best_acc (the seed's keys) + epochs_done, epochs, finished, weights
  best.pt, last.pt   checkpoints (torch.save of a dict: model, optimizer, scheduler, scaler,
                     epoch, best, amp, config, weights, data_identity)
  .lock              held (flock) by the one process writing the run; holds its PID

Every file except metrics.jsonl is replaced atomically by normfast.atomic.write_atomic (the
one writer of whole files): written to `.<name>.tmp-<PID>` in the same directory, fsynced,
then renamed over the old one, so a kill at any moment leaves either the old or the new file,
never a mix. A checkpoint is serialized in memory first, so that its write errors are ours.
metrics.jsonl is appended one whole line per epoch; a kill (or a full disk) during the append
can leave a last line without its newline. The
metrics reader drops such a cut last line without a word (that epoch is trained again on
--resume, since its checkpoint came after it); any other unreadable line means the file was
damaged by something else and is reported with the file and line number.

A temporary left by a killed writer (up to the size of a checkpoint) is removed the next time
the run is started or resumed, and after a failed write: those of a process that is no longer
alive, and our own.
"""
from __future__ import annotations

import errno
import fcntl
import io
import json
import math
import os
from pathlib import Path

import yaml

from normfast.atomic import TEMPORARY, unlink_quietly as _unlink_quietly, why as _why, write_atomic
from normfast.configfiles import load_yaml
from normfast.errors import NormfastError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
BEST = "best_results.json"
LAST = "last.pt"
BEST_CKPT = "best.pt"
LOCK = ".lock"
FILES = (CONFIG, METRICS, BEST, LAST, BEST_CKPT)
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "best")
# best_results.json: key -> (accepted types, what the message says it must be)
BEST_TYPES = {"best_epoch": ((int,), "an integer"), "best_acc": ((int, float), "a number"),
              "epochs_done": ((int,), "an integer"), "epochs": ((int,), "an integer"),
              "finished": ((bool,), "true or false")}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # alive, owned by someone else
        return True
    return True


class RunDir:
    """One run directory: its file names, formats, lock and atomic writes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._created = False

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path: return self.path / CONFIG
    @property
    def metrics_path(self) -> Path: return self.path / METRICS
    @property
    def best_path(self) -> Path: return self.path / BEST
    @property
    def last_checkpoint(self) -> Path: return self.path / LAST
    @property
    def best_checkpoint(self) -> Path: return self.path / BEST_CKPT
    @property
    def lock_path(self) -> Path: return self.path / LOCK

    def has_checkpoint(self) -> bool:
        return self.last_checkpoint.is_file()

    # ------------------------------------------------------------------ config.yaml
    def write_config(self, config: dict) -> None:
        write_atomic(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict:
        """The saved config; NormfastError naming the file when it is missing or unreadable."""
        return load_yaml(self.config_path, missing="missing")

    # ------------------------------------------------------------------ metrics.jsonl
    def read_metrics(self, strict: bool = True) -> list[dict]:
        """The rows up to the first unreadable line. A cut last line (no newline: a kill during
        the append) is dropped silently. Any other unreadable line raises NormfastError naming the
        file and line (strict), or just ends the rows (strict=False, for summaries)."""
        try:
            data = self.metrics_path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise NormfastError(f"{self.metrics_path}: cannot read it ({_why(e)})") from None
        lines = data.split(b"\n")
        rows = []
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
                problem = _metrics_row_problem(row)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                problem = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else "not a JSON line"
            if problem is None:
                rows.append(row)
                continue
            if number == len(lines) and not data.endswith(b"\n"):
                break                # cut by a kill during the append: documented drop
            if strict:
                raise NormfastError(f"{self.metrics_path}: line {number} is {problem}; the file is damaged "
                                    f"({len(rows)} good rows before it)")
            break
        return rows

    def append_metrics(self, row: dict) -> None:
        try:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise NormfastError(f"{self.metrics_path}: cannot write it ({_why(e)})") from None

    def truncate_metrics(self, epochs: int) -> list[dict]:
        """Keep the rows of epochs < `epochs` (those a checkpoint covers); returns them. A fresh
        start (epochs=0) keeps nothing and so does not need to read the old file."""
        rows = [r for r in self.read_metrics() if r["epoch"] < epochs] if epochs > 0 else []
        write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    # ------------------------------------------------------------------ best_results.json
    def read_best(self) -> dict:
        """best_results.json ({} when there is none yet); NormfastError naming the file and key
        when it is not what `normfast train` writes."""
        try:
            text = self.best_path.read_text()
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as e:
            raise NormfastError(f"{self.best_path}: cannot read it ({_why(e)})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise NormfastError(f"{self.best_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, dict):
            raise NormfastError(f"{self.best_path}: expected a JSON object")
        for key, (types, what) in BEST_TYPES.items():
            value = data.get(key)
            if key in data and (not isinstance(value, types) or (bool not in types and isinstance(value, bool))
                                or (isinstance(value, float) and not math.isfinite(value))):
                raise NormfastError(f"{self.best_path}: {key} is {value!r}, expected {what}")
        _check_best_epoch(self.best_path, data)
        return data

    def write_best(self, best: dict) -> None:
        write_atomic(self.best_path, json.dumps(best, indent=2) + "\n")

    def finished(self, epochs: int | None = None) -> bool:
        """True when the run finished its schedule (and, when `epochs` is given, that schedule
        was `epochs` long: a run of another length is another run)."""
        res = self.read_best()
        if not res:
            return False
        scheduled = res.get("epochs", epochs if epochs is not None else 0)
        if epochs is not None and scheduled != epochs:
            return False
        return res.get("epochs_done", 0) >= scheduled > 0

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: dict, name: str = LAST) -> None:
        """torch.save into memory first, then the atomic writer: torch's zip writer turns an error
        of the file it writes to (ENOSPC, Ctrl-C during a write) into a RuntimeError that hides
        it ("enforce fail at inline_container.cc"); written by us, a full disk is one line naming
        the errno and Ctrl-C stays a KeyboardInterrupt. Costs one checkpoint's size in memory."""
        import torch
        path = self.path / name
        buf = io.BytesIO()
        torch.save(state, buf)
        try:
            write_atomic(path, buf.getbuffer(), what="the checkpoint")
        except NormfastError:
            self.remove_stale_temporaries()       # give the space of older leftovers back
            raise

    def load_checkpoint(self, name: str = LAST, map_location=None) -> dict:
        import torch
        path = self.path / name
        if not path.is_file():
            raise NormfastError(f"{path}: no checkpoint there")
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e:  # noqa: BLE001 - a cut or foreign file fails in many ways
            raise NormfastError(f"{path}: not a readable checkpoint ({type(e).__name__}); it is damaged. "
                                f"Remove it to train this run again from the start, or use --run-name") from None
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        if missing:
            raise NormfastError(f"{path}: not a normfast checkpoint (no {missing[0]!r}); "
                                "remove it to train this run again from the start, or use --run-name")
        return ckpt

    # ------------------------------------------------------------------ lock + leftovers
    def open_for_writing(self, resume: bool) -> "RunDir":
        """Claim the directory for this process: create it (unless resuming), take the lock,
        remove stale temporaries, and check that --resume has something to resume."""
        if resume and not self.has_checkpoint():
            raise NormfastError(f"{self.path}: nothing to resume (no {LAST}); check --runs and --run-name, "
                                "or leave out --resume to start a new run")
        self._created = not self.path.exists()
        self._mkdir()
        self.lock()
        try:
            self.remove_stale_temporaries()
            if resume and not self.has_checkpoint():      # removed while we waited for the lock
                raise NormfastError(f"{self.path}: nothing to resume (no {LAST})")
            if not resume and self.has_checkpoint():
                raise NormfastError(f"{self.path}: a run is already there; pass --resume to continue it "
                                    "or --run-name to start another")
        except BaseException:
            self.release()
            raise
        return self

    def _mkdir(self) -> None:
        for parent in [self.path, *self.path.parents]:
            if parent.exists() or parent.is_symlink():
                if not parent.is_dir():
                    raise NormfastError(f"{parent}: is a file, not a directory (the run directory "
                                        f"{self.path} would be inside it; check --runs)")
                break
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NormfastError(f"{self.path}: cannot create the run directory ({_why(e)}; check --runs)") from None

    def lock(self) -> None:
        """An advisory lock (flock) on RUN/.lock, holding our PID: a second writer is refused."""
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise NormfastError(f"{self.lock_path}: cannot create the lock file ({_why(e)})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise NormfastError(f"{self.path}: in use by another normfast process (PID {holder}, "
                                        f"lock {self.lock_path}); wait for it to end, or use --run-name") from None
                raise NormfastError(f"{self.lock_path}: cannot lock it ({_why(e)})") from None
            try:        # the file we locked must still be the one at that path (see release())
                same = os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        """Give the lock up. A directory that we created and that holds nothing but the lock
        (the run failed before writing anything) is removed again."""
        if self._lock_fd is None:
            return
        try:
            if self._created and {p.name for p in self.path.iterdir()} == {LOCK}:
                self.lock_path.unlink()
                self.path.rmdir()
        except OSError:
            pass
        os.close(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def remove_stale_temporaries(self) -> list[Path]:
        """Remove `.<file>.tmp-<PID>` leftovers of our files whose writer is gone (or is us)."""
        removed = []
        try:
            entries = list(self.path.iterdir())
        except OSError:
            return removed
        for p in entries:
            m = TEMPORARY.match(p.name)
            if m and m["name"] in FILES:
                pid = int(m["pid"])
                if pid == os.getpid() or not _pid_alive(pid):
                    _unlink_quietly(p)
                    removed.append(p)
        return removed


def _check_best_epoch(path: Path, data: dict) -> None:
    """best_epoch is -1 (no epoch yet) or one of the epochs done: 0 .. epochs_done - 1 (0-based,
    as metrics.jsonl counts), and best_acc a fraction from 0 to 1."""
    best, done = data.get("best_epoch"), data.get("epochs_done", data.get("epochs"))
    if best is not None and done is not None and not -1 <= best < max(done, 0):
        raise NormfastError(f"{path}: best_epoch is {best}, beyond the run's {done} epoch(s) done "
                            f"(expected -1 .. {done - 1}); the file is damaged")
    acc = data.get("best_acc")
    if acc is not None and not 0.0 <= acc <= 1.0:
        raise NormfastError(f"{path}: best_acc is {acc!r}, expected a fraction from 0 to 1; the file is damaged")


def _metrics_row_problem(row) -> str | None:
    if not isinstance(row, dict):
        return "not a JSON object"
    if not isinstance(row.get("epoch"), int) or isinstance(row.get("epoch"), bool):
        return "a row without an integer epoch"
    acc = row.get("test_acc")
    if not isinstance(acc, (int, float)) or isinstance(acc, bool):
        return "a row without a numeric test_acc"
    for key in ("test_acc", "val_acc"):      # a fraction of samples right; NaN would reach the report
        value = row.get(key, 0.0)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            return f"a row with {key} {value!r} (expected a fraction from 0 to 1)"
    return None


__all__ = ["RunDir", "write_atomic"]
