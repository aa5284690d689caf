"""Claims: which worker trains which run, on a filesystem that several machines may share.

A claim is the file RUNS/.sweep/claims/<dataset>--<run>.claim, created with O_CREAT|O_EXCL
(atomic on local filesystems and on NFS v3+, where flock may not work across hosts). It holds
JSON: host, pid, started, heartbeat (time.time() seconds), token, worker. Its worker rewrites
the heartbeat through its own open descriptor every `heartbeat` seconds (a daemon thread), so a
worker that lost its claim never writes into the claim of the next one.

A claim is stale when its worker is gone: on this host, when its PID is no longer alive; on any
host, when its heartbeat is older than `timeout` seconds (a dead node, or a reused PID). A
stale claim is taken over without a race: the taker renames it to a unique name, checks that
the file it moved is the very one it judged stale (same inode), and only then creates its own
claim with O_EXCL; if it moved a fresh claim (another taker was quicker) it links it back.
Of several takers only one can succeed at O_EXCL.

The run directory's own lock (RunDir.lock, flock on RUN/.lock) still guards against a second
writer; a claim only decides who tries.

Failures are recorded beside the claims, RUNS/.sweep/failed/<key>.json: error, host, pid, time.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from normfast.errors import NormfastError
from normfast.rundir import _pid_alive, write_atomic

SWEEP_DIR = ".sweep"
CLAIM_BYTES = 1024        # a claim file's length, its JSON padded with blanks


def hostname() -> str:
    # NORMFAST_HOSTNAME: tests fake a second machine with it
    return os.environ.get("NORMFAST_HOSTNAME") or socket.gethostname()


@dataclass
class ClaimInfo:
    data: dict
    ino: int
    mtime: float

    @property
    def host(self) -> str: return str(self.data.get("host", "?"))
    @property
    def pid(self) -> int: return int(self.data.get("pid", 0) or 0)
    @property
    def heartbeat(self) -> float: return float(self.data.get("heartbeat", self.mtime) or self.mtime)

    def stale(self, timeout: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if now - self.heartbeat > timeout:
            return True
        return self.host == hostname() and self.pid > 0 and not _pid_alive(self.pid)

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        return f"host {self.host}, PID {self.pid}, heartbeat {max(0.0, now - self.heartbeat):.0f} s ago"


class Claim:
    """A claim we hold: its open descriptor and content."""

    def __init__(self, path: Path, fd: int, data: dict):
        self.path, self.fd, self.data = path, fd, data
        self.lost = False
        # refresh (heartbeat thread) and release (worker) never interleave: a closed descriptor's
        # number may be reused by another file at once
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        if self.fd < 0:
            return
        self.data["heartbeat"] = time.time()
        # one write of a constant length (padded with blanks), so a reader never sees an empty file
        payload = (json.dumps(self.data) + "\n").encode()
        payload += b" " * max(0, CLAIM_BYTES - len(payload))
        try:
            os.pwrite(self.fd, payload, 0)
            os.ftruncate(self.fd, len(payload))
            os.fsync(self.fd)
            self.lost = os.stat(self.path).st_ino != os.fstat(self.fd).st_ino
        except OSError:
            self.lost = True

    def release(self) -> None:
        """Remove the claim file if it is still ours (same inode), then close it."""
        with self._lock:
            self._release()

    def _release(self) -> None:
        if self.fd < 0:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1


class ClaimStore:
    def __init__(self, runs_root: str | Path, timeout: float = 300.0, heartbeat: float = 30.0,
                 worker: str = ""):
        self.root = Path(runs_root) / SWEEP_DIR
        self.claims = self.root / "claims"
        self.failed_dir = self.root / "failed"
        self.timeout, self.heartbeat, self.worker = timeout, heartbeat, worker
        self.held: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _path(self, key: str) -> Path:
        return self.claims / f"{key}.claim"

    # ------------------------------------------------------------------ reading
    def read(self, key: str) -> ClaimInfo | None:
        """The claim on `key`, or None. A claim still being written (empty) counts as fresh
        until its file is `timeout` old."""
        return self._read_path(self._path(key))

    @staticmethod
    def _read_path(path: Path) -> ClaimInfo | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            raw = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
        try:
            data = json.loads(raw.decode())
            data = data if isinstance(data, dict) else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            data = {}
        return ClaimInfo(data, st.st_ino, st.st_mtime)

    # ------------------------------------------------------------------ claiming
    def try_claim(self, key: str, job: str = "") -> Claim | None:
        """Our claim on `key`, or None when a live worker holds it."""
        try:
            self.claims.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NormfastError(f"{self.claims}: cannot create the claims folder ({e.strerror or e})") from None
        path = self._path(key)
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            except FileExistsError:
                info = self.read(key)
                if info is None:
                    continue                  # released meanwhile: try again
                if not info.stale(self.timeout) or not self._take_over(path, info):
                    return None
                continue
            now = time.time()
            claim = Claim(path, fd, {"host": hostname(), "pid": os.getpid(), "started": now, "heartbeat": now,
                                     "token": uuid.uuid4().hex, "worker": self.worker, "job": job})
            claim.refresh()
            with self._lock:
                self.held[key] = claim
            return claim
        return None

    def _take_over(self, path: Path, info: ClaimInfo) -> bool:
        """Move the stale claim `info` out of the way; False when it was not the one we judged."""
        grave = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex[:12]}")
        try:
            os.rename(path, grave)
        except FileNotFoundError:
            return True                      # someone removed it: O_EXCL decides
        try:
            # the same file as judged: same inode (numbers are reused) and the same content (the
            # token is unique per claim, the heartbeat changes with every refresh)
            moved = self._read_path(grave)
            if moved is not None and moved.ino == info.ino and moved.data == info.data:
                return True
            try:                             # we moved a fresh claim: give it back
                os.link(grave, path)
            except OSError:
                pass
            return False
        finally:
            try:
                os.unlink(grave)
            except OSError:
                pass

    def release(self, key: str) -> None:
        with self._lock:
            claim = self.held.pop(key, None)
        if claim is not None:
            claim.release()

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)

    # ------------------------------------------------------------------ heartbeat
    def start_heartbeat(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="normfast-claims", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with self._lock:
                claims = list(self.held.values())
            for c in claims:
                c.refresh()

    def stop(self) -> None:
        self._stop.set()
        self.release_all()

    # ------------------------------------------------------------------ failures
    def record_failure(self, key: str, error: str) -> None:
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        record = {"error": error, "host": hostname(), "pid": os.getpid(), "time": time.time(), "worker": self.worker}
        write_atomic(self.failed_dir / f"{key}.json", json.dumps(record) + "\n")

    def failure(self, key: str) -> dict | None:
        try:
            data = json.loads((self.failed_dir / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def clear_failure(self, key: str) -> None:
        try:
            (self.failed_dir / f"{key}.json").unlink()
        except OSError:
            pass
