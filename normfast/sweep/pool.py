"""`--workers N`: N local worker processes, each pinned to one GPU (CUDA_VISIBLE_DEVICES) or to
the CPU, sharing the queue through claim files.

--gpus all|0,2,5 picks the GPUs (default: all of them), --jobs-per-gpu K lets K workers share a
GPU (worker i gets the GPU i mod len(gpus), so K workers per GPU fill them evenly), --device cpu
runs every worker on the CPU with CUDA hidden. Ctrl-C or SIGTERM stops every worker; each
releases its claims and leaves its run resumable from its last checkpoint.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from normfast.errors import NormfastError
from normfast.sweep.planning import SweepRequest
from normfast.validate import usable_workers

STOP_GRACE_S = 30.0      # s a worker gets to release its claims after SIGTERM before SIGKILL


@dataclass
class Slot:
    label: str
    cuda: str            # CUDA_VISIBLE_DEVICES for the worker; "" hides every GPU (a CPU worker)


def gpu_count() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parse_gpus(gpus: str, count: int) -> list[int]:
    if gpus.strip() == "all":
        if count == 0:
            raise NormfastError("--gpus all: this machine has no CUDA GPU (--device cpu runs the workers on the CPU)")
        return list(range(count))
    try:
        ids = [int(g) for g in gpus.split(",") if g.strip()]
    except ValueError:
        raise NormfastError(f"--gpus {gpus!r}: expected all or GPU numbers such as 0,2,5") from None
    if not ids:
        raise NormfastError(f"--gpus {gpus!r}: expected all or GPU numbers such as 0,2,5")
    for g in ids:
        if not 0 <= g < count:
            have = f"GPUs 0..{count - 1}" if count else "no CUDA GPU"
            raise NormfastError(f"--gpus {gpus}: there is no GPU {g} on this machine (it has {have}; "
                                "--device cpu runs the workers on the CPU)")
    if len(set(ids)) != len(ids):
        raise NormfastError(f"--gpus {gpus}: a GPU is listed twice (--jobs-per-gpu K puts K workers on each)")
    return ids


def check_counts(workers: int | None, jobs_per_gpu: int | None) -> None:
    if workers is not None and workers < 1:
        raise NormfastError(f"--workers {workers}: must be at least 1")
    if jobs_per_gpu is not None and jobs_per_gpu < 1:
        raise NormfastError(f"--jobs-per-gpu {jobs_per_gpu}: must be at least 1")


def assign(workers: int | None, gpus: str | None, jobs_per_gpu: int | None, device: str | None,
           count: int | None = None) -> list[Slot]:
    """The worker slots: one per worker, each a GPU or the CPU."""
    check_counts(workers, jobs_per_gpu)
    if device not in (None, "auto", "cuda", "cpu"):
        raise NormfastError(f"--device {device} with --workers: each worker is pinned to its GPU by --gpus; "
                            "use --device cuda or cpu")
    if device == "cpu":
        if gpus:
            raise NormfastError(f"--gpus {gpus} with --device cpu: the workers run on the CPU; leave one out")
        return [Slot(f"w{i + 1} cpu", "") for i in range(workers or 1)]
    count = gpu_count() if count is None else count
    if count == 0 and not gpus:
        if device == "cuda":
            raise NormfastError("--device cuda: this machine has no CUDA GPU")
        return [Slot(f"w{i + 1} cpu", "") for i in range(workers or 1)]
    ids = parse_gpus(gpus or "all", count)
    k = jobs_per_gpu or 1
    n = workers or len(ids) * k
    if n > len(ids) * k:
        raise NormfastError(f"--workers {n}: more than {len(ids)} GPU(s) x --jobs-per-gpu {k} hold; "
                            "raise --jobs-per-gpu or list more --gpus")
    return [Slot(f"w{i + 1} gpu{ids[i % len(ids)]}", str(ids[i % len(ids)])) for i in range(n)]


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_workers(request: SweepRequest, slots: list[Slot], echo) -> list[int]:
    """Start one worker process per slot and wait for all; their exit statuses."""
    import normfast
    env0 = dict(os.environ)
    # the workers import the normfast this process runs, wherever it is installed
    root = str(Path(normfast.__file__).resolve().parent.parent)
    threads = str(max(1, usable_workers() // len(slots)))    # the cores this process may use
    payload = json.dumps(request.to_dict())
    procs = []
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for slot in slots:
            env = env0 | {"CUDA_VISIBLE_DEVICES": slot.cuda,
                          "PYTHONPATH": os.pathsep.join(p for p in (root, env0.get("PYTHONPATH", "")) if p)}
            if slot.cuda == "":
                env.setdefault("OMP_NUM_THREADS", threads)     # the CPU workers share the cores
            procs.append(subprocess.Popen([sys.executable, "-m", "normfast.sweep.worker", payload, slot.label],
                                          env=env))
        echo(f"started {len(procs)} workers: " + ", ".join(f"{s.label} (PID {p.pid})" for s, p in zip(slots, procs)))
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        stop(procs)
        raise
    finally:
        signal.signal(signal.SIGTERM, old)
    for slot, code in zip(slots, codes):
        if code not in (0, 130):
            why = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            echo(f"worker {slot.label} ended by {why}; its run resumes from its last checkpoint in the next sweep")
    return codes


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every live worker (Ctrl-C reached them already when they share our terminal),
    then SIGKILL those still alive after STOP_GRACE_S."""
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except OSError:
                pass
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
