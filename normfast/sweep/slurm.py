"""`--executor slurm|local`: a job array of sweep workers through submitit
(`pip install 'normfast[slurm]'`).

Each array task is one worker (normfast.sweep.worker.work) on the GPU(s) Slurm gives it. At its
time limit or on preemption Slurm signals it (USR2, `signal_delay_s` before the end); submitit
calls SweepWorker.checkpoint(), which resubmits the same worker, and requeues the task. The
signal ends the run being trained between two Python steps (its claim is released, its
RunDir lock too); the requeued worker claims the next job, and whichever worker claims the
interrupted run resumes it from its last checkpoint (last.pt, written every epoch), so at most
one epoch is trained again, and exactly as before. `--executor local` is submitit's local
executor: the same path on this machine, for tests without a cluster.

Settings come from a `slurm:` key in the grid (SLURM_FIELDS), overridden by the flags.
Logs: RUNS/.sweep/submitit/ (submitit's stdout/stderr per task).
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from normfast.errors import NormfastError
from normfast.sweep.claims import SWEEP_DIR
from normfast.sweep.planning import SweepRequest

EXECUTORS = ("slurm", "local")
# field -> (type, default, meaning)
SLURM_FIELDS = {
    "array": (int, 1, "workers in the job array"),
    "partition": (str, None, "Slurm partition"),
    "time": (str, "4:00:00", "time limit per task: minutes, H:MM:SS or D-H:MM:SS"),
    "gpus_per_task": (int, 1, "GPUs per worker"),
    "cpus_per_task": (int, 8, "CPU cores per worker (loader threads)"),
    "mem_gb": (float, None, "memory per task, GB"),
    "max_requeues": (int, 20, "time-outs a task may requeue after (submitit's max_num_timeout)"),
    "extra": (dict, None, "any other sbatch option, e.g. {account: x, qos: y}"),
}
INSTALL = "pip install 'normfast[slurm]'"


def parse_time(value) -> int:
    """Minutes from 90, '90', '1:30:00' or '1-00:00:00'."""
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d\d):(\d\d)", text)
    if m:
        d, h, mi, s = (int(x or 0) for x in m.groups())
        minutes = d * 1440 + h * 60 + mi + (1 if s else 0)
    elif text.isdigit():
        minutes = int(text)
    else:
        raise NormfastError(f"slurm time {value!r}: expected minutes, H:MM:SS or D-H:MM:SS")
    if minutes < 1:
        raise NormfastError(f"slurm time {value!r}: must be at least one minute")
    return minutes


def settings(grid_slurm, flags: dict, where: str) -> dict:
    """The grid's `slurm:` mapping overridden by the flags (None = not given); unknown field,
    wrong type or bad value: one error line."""
    if grid_slurm is None:
        grid_slurm = {}
    if not isinstance(grid_slurm, dict):
        raise NormfastError(f"{where}: slurm must be a mapping of {', '.join(SLURM_FIELDS)}")
    out = {k: v[1] for k, v in SLURM_FIELDS.items()}
    for source, values in ((f"{where}: slurm", grid_slurm), ("command line", flags)):
        for key, value in values.items():
            if value is None:
                continue
            key = str(key).replace("-", "_")
            if key not in SLURM_FIELDS:
                raise NormfastError(f"{source}: unknown field {key!r}; valid: {', '.join(SLURM_FIELDS)}")
            typ = SLURM_FIELDS[key][0]
            if typ is dict:
                if not isinstance(value, dict):
                    raise NormfastError(f"{source}: extra must be a mapping of sbatch options")
                out[key] = (out[key] or {}) | {str(k): v for k, v in value.items()}
                continue
            try:
                out[key] = typ(value) if not isinstance(value, bool) else None
            except (TypeError, ValueError):
                out[key] = None
            if out[key] is None:
                raise NormfastError(f"{source}: {key}={value!r} is not a valid {typ.__name__}")
    for key in ("array", "gpus_per_task", "cpus_per_task", "max_requeues"):
        low = 0 if key in ("gpus_per_task", "max_requeues") else 1
        if out[key] < low:
            raise NormfastError(f"--{'array' if key == 'array' else key.replace('_', '-')} {out[key]}: "
                                f"must be at least {low}")
    out["timeout_min"] = parse_time(out["time"])
    return out


def parse_extra(items: tuple[str, ...]) -> dict | None:
    """--slurm-extra KEY=VALUE (repeatable) as a mapping."""
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise NormfastError(f"--slurm-extra {item!r}: expected KEY=VALUE, e.g. account=myproject")
        out[key.strip().replace("-", "_")] = value
    return out


def _first_line(e: BaseException) -> str:
    text = (getattr(e, "output", None) or b"").decode(errors="replace") if isinstance(
        getattr(e, "output", None), bytes) else str(e)
    return (text.strip().splitlines() or [type(e).__name__])[-1][:200]


def need_submitit():
    try:
        import submitit
    except ImportError:
        raise NormfastError(f"--executor needs submitit, which is not installed: {INSTALL}") from None
    return submitit


class SweepWorker:
    """One array task: a sweep worker. Checkpointable in submitit's sense: checkpoint()
    returns the same call, which submitit requeues."""

    def __init__(self, request: dict):
        self.request = request

    def __call__(self, index: int) -> int:
        import os
        import socket
        from normfast.sweep.worker import work
        tag = f" task {index} {socket.gethostname()}"
        req = SweepRequest.from_dict(self.request)
        if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "" and "device" not in req.overrides:
            req.overrides["device"] = "cpu"
        work(req, echo=lambda s: print(s, flush=True), tag=tag)
        return index

    def checkpoint(self, index: int):
        from submitit.helpers import DelayedSubmission
        print(f"task {index}: time limit or preemption; requeued, its run resumes from the last checkpoint",
              flush=True)
        return DelayedSubmission(SweepWorker(self.request), index)


def submit(request: SweepRequest, runs_root: Path, executor: str, opts: dict, cpu: bool, echo) -> list:
    """Submit the job array; returns submitit's jobs."""
    submitit = need_submitit()
    folder = Path(runs_root) / SWEEP_DIR / "submitit"
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=executor, slurm_max_num_timeout=opts["max_requeues"],
                                   local_max_num_timeout=opts["max_requeues"])
    except RuntimeError as e:       # e.g. no srun here: not a Slurm machine
        raise NormfastError(f"--executor {executor}: {str(e).splitlines()[0]} (submit from a Slurm login node; "
                            "--executor local runs the workers here)") from None
    params = dict(name="normfast-sweep", timeout_min=opts["timeout_min"], nodes=1, tasks_per_node=1,
                  cpus_per_task=opts["cpus_per_task"], gpus_per_node=0 if cpu else opts["gpus_per_task"],
                  slurm_partition=opts["partition"], slurm_array_parallelism=opts["array"],
                  slurm_additional_parameters=opts["extra"] or None)
    if opts["mem_gb"]:
        params["mem_gb"] = opts["mem_gb"]
    if executor == "slurm":
        params["slurm_gpus_per_task"] = None if cpu else opts["gpus_per_task"]
        params.pop("gpus_per_node")
    try:
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    except (NameError, ValueError, AssertionError) as e:
        raise NormfastError(f"--executor {executor}: submitit refused the settings "
                            f"({str(e).splitlines()[0]})") from None
    worker = SweepWorker(request.to_dict())
    try:
        jobs = ex.map_array(worker, list(range(opts["array"])))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:       # sbatch refused it
        raise NormfastError(f"--executor {executor}: the submission failed ({_first_line(e)}); "
                            f"see {folder}") from None
    ids = ", ".join(j.job_id for j in jobs)
    echo(f"submitted {len(jobs)} sweep workers through submitit ({executor}): {ids}; logs in {folder}")
    return jobs
