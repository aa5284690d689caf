"""A sweep worker: take the next unclaimed job (longest first), train it, until none is left.

Any number of workers, in one process, in local worker processes (`--workers N`), or in submitit
jobs (`--executor slurm|local`), share the queue through claim files (normfast.sweep.claims). A
finished run is never claimed; a run that failed since this sweep started is not tried again
by it (the next sweep tries it again); a run held by a process outside the sweep (RunDir's
lock) is left to it. Ctrl-C, SIGTERM or submitit's requeue signal end the worker between two
Python steps: the claims are released and the run resumes from its last checkpoint next time.

`python -m normfast.sweep.worker REQUEST_JSON LABEL` is one local worker process.
"""
from __future__ import annotations

import json
import os
import signal
import sys

from normfast.errors import NormfastError
from normfast.rundir import RunDir
from normfast.sweep.claims import ClaimStore
from normfast.sweep.estimate import Estimator
from normfast.sweep.planning import Job, Plan, Prepared, SweepRequest, make_jobs, prepare

IN_USE = "in use by another normfast process"


def error_line(e: BaseException) -> str:
    if isinstance(e, NormfastError):
        return str(e)
    text = str(e).splitlines()[0][:200] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def finished(p: Prepared) -> bool:
    try:
        return RunDir(p.run_dir).finished(p.cfg.epochs)
    except NormfastError:
        return False             # a damaged best_results.json: training says what is wrong


def ordered_jobs(plan: Plan, request: SweepRequest) -> list[Job]:
    """The plan's jobs, the longest (estimated seconds left) first; ties keep plan order."""
    est = Estimator(plan.runs_root, request.bench)
    jobs = make_jobs(plan.runs, request.fuse)
    for job in jobs:
        job.estimate_s = sum(est.seconds_left(p)[0] for p in job.runs)
    return sorted(jobs, key=lambda j: -j.estimate_s)


def failed_since(store: ClaimStore, p: Prepared, since: float) -> bool:
    f = store.failure(p.key)
    return bool(f) and float(f.get("time", 0)) >= since


def next_job(jobs: list[Job], store: ClaimStore, skip: set, since: float) -> Job | None:
    """Claim what can be claimed of the first job with unfinished, unclaimed runs. A job whose
    runs are partly finished, or partly claimed by another worker, trains the rest."""
    for job in jobs:
        got = []
        for p in job.runs:
            if p.key in skip or finished(p) or failed_since(store, p, since):
                continue
            if store.try_claim(p.key, job.label) is None:
                continue
            if finished(p) or failed_since(store, p, since):     # done while we claimed it
                store.release(p.key)
                continue
            got.append(p)
        if got:
            return Job(got, job.estimate_s)
    return None


def _train_fused():
    try:
        from normfast.fused_train import train_fused        # issue 16; absent: one run after another
    except ImportError:
        return None
    return train_fused


def run_job(job: Job, store: ClaimStore, echo, skip: set, total: int, tag: str = "") -> None:
    from normfast.train import train
    label = lambda p: f"[{p.index}/{total}{tag}] {p.label}"
    fused = _train_fused() if len(job.runs) > 1 else None
    started = [RunDir(p.run_dir).has_checkpoint() for p in job.runs]
    if not fused:
        groups = [[p] for p in job.runs]
    elif all(started) or not any(started):
        groups = [job.runs]             # one fused run: started afresh, or resumed all at one epoch
    else:                               # some settings were started apart: each resumes alone, the rest fused
        groups = [[p] for p, s in zip(job.runs, started) if s] + [[p for p, s in zip(job.runs, started) if not s]]
    for group in groups:
        for p in group:
            p.cfg.resume = RunDir(p.run_dir).has_checkpoint()
            echo(f"{label(p)}: {'resuming' if p.cfg.resume else 'starting'}")
        try:
            if len(group) > 1:
                fused([p.cfg for p in group])
            else:
                train(group[0].cfg)
        except Exception as e:  # noqa: BLE001 - one run's crash (e.g. CUDA out of memory) must not end the sweep
            line = error_line(e)
            for p in group:
                if IN_USE in line:
                    skip.add(p.key)
                    echo(f"{label(p)}: left to the process holding it ({line})")
                else:
                    store.record_failure(p.key, line)
                    echo(f"{label(p)}: failed: {line}")
            continue
        for p in group:
            store.clear_failure(p.key)
            echo(f"{label(p)}: ran")


def work(request: SweepRequest, echo=print, worker: str = "", plan: Plan | None = None, tag: str = "") -> None:
    """Train jobs until none is left to claim."""
    if os.getcwd() != request.cwd:
        os.chdir(request.cwd)
    plan = plan or prepare(request)
    jobs = ordered_jobs(plan, request)
    store = ClaimStore(plan.runs_root, request.claim_timeout, request.heartbeat, worker or tag.strip())
    store.start_heartbeat()
    skip: set = set()
    try:
        while True:
            job = next_job(jobs, store, skip, request.started)
            if job is None:
                return
            try:
                run_job(job, store, echo, skip, len(plan.runs), tag)
            finally:
                for p in job.runs:
                    store.release(p.key)
    finally:
        store.stop()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    request = SweepRequest.from_dict(json.loads(argv[1]))
    tag = argv[2] if len(argv) > 2 else ""
    signal.signal(signal.SIGTERM, _interrupt)       # like Ctrl-C: release the claims, leave the run resumable
    try:
        work(request, echo=lambda s: print(s, flush=True), tag=f" {tag}" if tag else "")
    except KeyboardInterrupt:
        return 130
    except NormfastError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
