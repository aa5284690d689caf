"""Run naming, in one place: the directory name of a (configuration, seed) under RUNS/<dataset>/.

`normfast train` names a run `<model>-<norm>-<backend>` (whatever its seed, unless --run-name).
`normfast sweep` names it by (configuration, seed) alone: `<model>-<norm>-<backend>` for the
study's seed 223 and `<model>-<norm>-<backend>-s<seed>` for any other, so a seed is never trained
twice under two names. Directories named by older sweeps (which suffixed seed 223 when --seeds was
given, and left another lone grid seed plain) are found by the seed their config.yaml records.
The report prefers the sweep's name among repeats of one (configuration, seed).

This module depends on normfast.rundir only, so the sweep and the report both import it (it
replaced the sweep <-> report.runs import cycle).
"""
from __future__ import annotations

from pathlib import Path

from normfast.rundir import RunDir

STUDY_SEED = 223          # the seed's SEED, and TrainConfig's default


def base_name(model: str, norm: str, backend: str) -> str:
    """The name `normfast train` gives a run without --run-name."""
    return f"{model}-{norm}-{backend}"


def run_name(model: str, norm: str, backend: str, seed) -> str:
    """The sweep's run directory name of one (configuration, seed)."""
    base = base_name(model, norm, backend)
    return base if seed == STUDY_SEED else f"{base}-s{seed}"


def recorded_seed(run_dir: Path):
    """The seed a run directory was trained with, or None when it holds no run yet."""
    rundir = RunDir(run_dir)
    return rundir.read_config().get("seed") if rundir.config_path.exists() else None


def resolve_run_name(dataset_dir: Path, spec) -> str:
    """spec.run_name, or the older name already holding this seed's run. When the plain name
    holds another seed's run (trained by an older sweep or a plain `normfast train --seed`),
    this seed goes to the suffixed name instead of colliding with it. `spec` has model, norm,
    backend, seed and run_name."""
    base = base_name(spec.model, spec.norm, spec.backend)
    suffixed = f"{base}-s{spec.seed}"
    candidates = [spec.run_name] + [n for n in (base, suffixed) if n != spec.run_name]
    for name in candidates:
        if recorded_seed(dataset_dir / name) == spec.seed:
            return name
    if recorded_seed(dataset_dir / spec.run_name) is not None:     # taken by another seed
        return suffixed
    return spec.run_name


def run_key(run_dir: Path, runs_root: Path) -> str:
    """A file name for one run directory, unique under RUNS (claims, failure records):
    `<dataset>--<run>`."""
    rel = Path(run_dir).relative_to(runs_root) if Path(run_dir).is_relative_to(runs_root) else Path(run_dir)
    return "--".join(rel.parts[-2:])
