"""`normfast sweep GRID.yaml`: the study's grid of runs, resumable, as a work queue.

- planning.py: the grid's runs (RunSpec), each resolved (Prepared), grouped into jobs (fused or not);
- claims.py: claim files on the shared runs directory (O_EXCL, heartbeat, race-free takeover);
- worker.py: the worker loop (claim the longest job left, train it, until none is left);
- pool.py: `--workers N` local worker processes pinned to GPUs or the CPU;
- slurm.py: `--executor slurm|local` job arrays through submitit, requeued on preemption;
- estimate.py: seconds left per run (measured img/s, a bench JSON, or a fallback table);
- status.py: states, `--status`, `--dry-run`, the summary table;
- command.py: the verb itself. Run names: normfast.naming.
"""
import importlib

# loaded on first use, so that `normfast --help` (which imports the sweep's options) stays light
_EXPORTS = {"sweep": "normfast.sweep.command", "plan": "normfast.sweep.planning",
            "parse_shard": "normfast.sweep.planning", "RunSpec": "normfast.sweep.planning",
            "SweepRequest": "normfast.sweep.planning", "GRID_KEYS": "normfast.sweep.planning",
            "STUDY_SEED": "normfast.naming", "run_name": "normfast.naming", "resolve_run_name": "normfast.naming",
            "format_summary": "normfast.sweep.status", "summarize": "normfast.sweep.status"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'normfast.sweep' has no attribute {name!r}")
