"""The `normfast sweep` command's options (kept out of normfast/cli.py) and its body."""
from __future__ import annotations

import sys

import click

from normfast.errors import NormfastError

OPTIONS = [
    click.option("--model", default="", help="Only these models (comma-separated)."),
    click.option("--dataset", default="", help="Only these datasets (comma-separated)."),
    click.option("--norm", default="", help="Only these normalization settings (comma-separated)."),
    click.option("--backend", default="", help="Only these backends (comma-separated)."),
    click.option("--seeds", default="", help="Run every configuration under each seed, e.g. 223,224,225."),
    click.option("--shard", help="i/n: the static split, only every n-th configuration from the i-th (1-based), "
                                 "for machines that share no runs directory."),
    click.option("--epochs", type=int, help="Override the grid's epochs."),
    click.option("--device", help="auto | cuda | cpu (cpu: every worker on the CPU)."),
    click.option("--runs", help="Override the grid's runs directory."),
    click.option("--dry-run", is_flag=True, help="The plan: each run's state and estimate, longest first; "
                                                 "train nothing."),
    click.option("--status", is_flag=True, help="Each configuration: done, running, failed or pending, and "
                                                "the GPU-hours left; train nothing."),
    click.option("--workers", type=int, help="Local worker processes sharing the queue (default 1, in this "
                                             "process; with --gpus: GPUs x --jobs-per-gpu)."),
    click.option("--gpus", help="all | 0,2,5: the GPUs the workers are pinned to (default all)."),
    click.option("--jobs-per-gpu", type=int, help="Workers sharing each GPU (default 1)."),
    click.option("--fuse/--no-fuse", default=True, show_default=True,
                 help="Train the settings of a configuration that differ only in norm as one fused job."),
    click.option("--claim-timeout", type=float, default=300.0, show_default=True,
                 help="Seconds without a heartbeat after which another host's claim is stale."),
    click.option("--bench", type=click.Path(), help="A `bench train --json` file: img/s for the estimates."),
    click.option("--executor", help="slurm | local: a submitit job array of workers (pip install "
                                    "'normfast[slurm]'); local runs it on this machine."),
    click.option("--array", type=int, help="Workers in the job array (grid slurm.array, default 1)."),
    click.option("--slurm-partition", help="Slurm partition (grid slurm.partition)."),
    click.option("--slurm-time", help="Time limit per task: minutes or H:MM:SS (grid slurm.time, default 4:00:00); "
                                      "a task at its limit requeues and resumes."),
    click.option("--gpus-per-task", type=int, help="GPUs per array task (grid slurm.gpus_per_task, default 1)."),
    click.option("--cpus-per-task", type=int, help="CPU cores per array task (grid slurm.cpus_per_task, default 8)."),
    click.option("--slurm-extra", multiple=True, help="KEY=VALUE, any other sbatch option (repeatable; "
                                                      "grid slurm.extra)."),
    click.option("-q", "--quiet", is_flag=True, default=None, help="No progress bars or epoch lines."),
]


def sweep_options(fn):
    for option in reversed(OPTIONS):
        fn = option(fn)
    return fn


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def run(grid, o: dict, echo=click.echo) -> None:
    """The body of `normfast sweep`; exits 1 when a run failed."""
    from normfast.sweep import format_summary, sweep
    from normfast.sweep.slurm import parse_extra
    try:
        seed_list = [int(s) for s in _list(o["seeds"])]
    except ValueError:
        raise NormfastError(f"--seeds {o['seeds']!r}: expected comma-separated integers") from None
    if o["status"] and o["dry_run"]:
        raise NormfastError("--status and --dry-run: give one (--status: where the sweep stands; --dry-run: its plan)")
    overrides = {k: o[k] for k in ("epochs", "device", "runs", "quiet") if o[k] is not None}
    slurm_flags = {"array": o["array"], "partition": o["slurm_partition"], "time": o["slurm_time"],
                   "gpus_per_task": o["gpus_per_task"], "cpus_per_task": o["cpus_per_task"],
                   "extra": parse_extra(o["slurm_extra"])}
    if o["executor"] is None and any(v is not None for v in slurm_flags.values()):
        given = next(k for k, v in slurm_flags.items() if v is not None)
        flag = {"partition": "slurm-partition", "time": "slurm-time", "extra": "slurm-extra"}.get(given, given)
        raise NormfastError(f"--{flag.replace('_', '-')} applies to --executor slurm|local only")
    results = sweep(grid, {"models": _list(o["model"]), "datasets": _list(o["dataset"]), "norms": _list(o["norm"]),
                           "backends": _list(o["backend"])}, seed_list, o["shard"], overrides, o["dry_run"],
                    echo=echo, workers=o["workers"], gpus=o["gpus"], jobs_per_gpu=o["jobs_per_gpu"],
                    executor=o["executor"], slurm_flags=slurm_flags, status=o["status"], fuse=o["fuse"],
                    bench=o["bench"], claim_timeout=o["claim_timeout"])
    if results is None:
        return
    echo(format_summary(results))
    if any(r["status"].startswith(("failed", "not run")) for r in results):      # the grid is not done
        sys.exit(1)
