"""`normfast sweep GRID`: plan, then train the grid's runs with one worker in this process,
`--workers N` local worker processes, or a submitit job array (`--executor slurm|local`);
`--status` and `--dry-run` train nothing. Ends with the summary table (exit 1 if a run failed).
"""
from __future__ import annotations

import math
from pathlib import Path

from normfast.errors import NormfastError
from normfast.sweep import pool, slurm
from normfast.sweep.estimate import Estimator
from normfast.sweep.planning import SweepRequest, prepare
from normfast.sweep.status import print_plan, print_status, row_of, state_of, store_for, summary_rows
from normfast.sweep.worker import finished, work


def sweep(grid_path: str | Path, filters: dict, seeds: list[int] | None = None, shard: str | None = None,
          overrides: dict | None = None, dry_run: bool = False, echo=print, *, workers: int | None = None,
          gpus: str | None = None, jobs_per_gpu: int | None = None, executor: str | None = None,
          slurm_flags: dict | None = None, status: bool = False, fuse: bool = True, bench: str | None = None,
          claim_timeout: float = 300.0, heartbeat: float = 30.0) -> list[dict] | None:
    """Returns the summary rows, or None when nothing is to be summarized here (--status, a
    Slurm submission, a shard with no runs)."""
    overrides = dict(overrides or {})
    if executor is not None and executor not in slurm.EXECUTORS:
        raise NormfastError(f"--executor {executor!r}: valid: {', '.join(slurm.EXECUTORS)}")
    if not (math.isfinite(claim_timeout) and claim_timeout > 0 and heartbeat > 0):
        raise NormfastError(f"--claim-timeout {claim_timeout}: must be a positive number of seconds")
    heartbeat = min(heartbeat, claim_timeout / 4)    # a live worker's claim never looks stale elsewhere
    pool.check_counts(workers, jobs_per_gpu)
    in_process = executor is None and workers is None and gpus is None and jobs_per_gpu is None
    slots = None
    if executor is None and not in_process:
        slots = pool.assign(workers, gpus, jobs_per_gpu, overrides.get("device"))
        if all(s.cuda == "" for s in slots):
            overrides["device"] = "cpu"
    if not in_process:
        overrides["quiet"] = True        # one line per run start and end; no progress bars or epoch lines
    request = SweepRequest(grid=str(Path(grid_path).resolve()), filters=filters, seeds=list(seeds or []),
                           shard=shard, overrides=overrides, fuse=fuse, claim_timeout=claim_timeout,
                           heartbeat=heartbeat, bench=str(Path(bench).resolve()) if bench else None)
    plan = prepare(request)
    Estimator(plan.runs_root, request.bench)          # a bad --bench file is named before anything runs
    opts = None
    if executor is not None:
        opts = slurm.settings(plan.grid.get("slurm"), slurm_flags or {}, str(grid_path))
        slurm.need_submitit()
    elif plan.grid.get("slurm") is not None:
        slurm.settings(plan.grid.get("slurm"), {}, str(grid_path))      # a typo is named before anything runs
    if not plan.runs:
        echo(f"--shard {shard}: no runs in this shard (the grid has {plan.grid_runs})")
        return None
    if status:
        print_status(plan, request, echo)
        return None
    if dry_run:
        print_plan(plan, request, echo)
        store = store_for(plan, request)
        return [row_of(p, _dry_status(state_of(p, store))) for p in plan.runs]
    done_before = set()
    n = len(plan.runs)
    for p in plan.runs:
        if p.error is not None:
            echo(f"[{p.index}/{n}] {p.label}: failed: {p.error}")
        elif finished(p):
            done_before.add(p.key)
            echo(f"[{p.index}/{n}] {p.label}: done before")
    if executor is not None:
        cpu = overrides.get("device") == "cpu"
        jobs = slurm.submit(request, plan.runs_root, executor, opts, cpu, echo)
        if executor == "slurm":
            echo(f"follow it with: normfast sweep {grid_path} --status")
            return None
        _wait_local(jobs, echo)
    elif in_process:
        work(request, echo=echo, plan=plan)
    else:
        pool.run_workers(request, slots, echo)
    return summary_rows(plan, request, done_before)


def _dry_status(s) -> str:
    return {"error": f"failed: {s.detail}", "done": "done before", "running": f"running ({s.detail})",
            "failed": "to run again", "pending": s.detail}[s.kind]


def _wait_local(jobs, echo) -> None:
    """Wait for submitit's local jobs; a worker that crashed is named with its log."""
    try:
        for job in jobs:
            try:
                job.result()
            except Exception as e:  # noqa: BLE001 - submitit re-raises the task's failure in several types
                echo(f"worker {job.job_id} failed: {str(e).strip().splitlines()[-1][:200] if str(e).strip() else e!r}"
                     f"; log {job.paths.stderr}")
    except KeyboardInterrupt:
        for job in jobs:
            job.cancel(check=False)
        raise
