"""The sweep's plan: the grid's runs (in a fixed order), each resolved to its TrainConfig and run
directory, and grouped into jobs (the unit a worker claims and trains).

The grid is every dataset x model x norm x backend (x seed) configuration; `--shard i/n` keeps
every n-th configuration starting at the i-th (the static split, for machines that share no
filesystem). Run directories are named by normfast.naming.
"""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from normfast.config import TrainConfig, resolve_train_config
from normfast.configfiles import load_yaml
from normfast.errors import NormfastError
from normfast.manifest import load_manifest
from normfast.validate import as_int
from normfast.naming import STUDY_SEED, resolve_run_name, run_key, run_name

GRID_KEYS = {"data_root", "runs", "datasets", "models", "norms", "backends", "seeds", "train", "slurm"}
AXES = ("datasets", "models", "norms", "backends")


@dataclass
class RunSpec:
    dataset: str
    model: str
    norm: str
    backend: str
    seed: int
    run_name: str


def parse_shard(shard: str | None) -> tuple[int, int]:
    if not shard:
        return 1, 1
    try:
        i, n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise NormfastError(f"--shard {shard!r}: expected i/n, e.g. 1/4") from None
    if not (n >= 1 and 1 <= i <= n):
        raise NormfastError(f"--shard {shard!r}: i must be in 1..n")
    return i, n


def plan(grid: dict, filters: dict, seeds: list[int] | None, shard: str | None,
         where: str = "grid") -> list[RunSpec]:
    """The grid's runs in order, filtered and sharded. A grid that names no run is an error."""
    if not isinstance(grid, dict):
        raise NormfastError(f"{where}: expected a mapping of grid keys, got {type(grid).__name__}")
    unknown = set(grid) - GRID_KEYS
    if unknown:
        raise NormfastError(f"{where}: unknown key {sorted(unknown)[0]!r}; valid: {', '.join(sorted(GRID_KEYS))}")
    axes = {}
    for k in AXES:
        value = grid.get(k) or []
        if isinstance(value, str):     # `models: resnet18` is one name, not one run per character
            value = [value]
        if not isinstance(value, list):
            raise NormfastError(f"{where}: {k} must be a list of names, got {value!r}")
        axes[k] = [str(v) for v in value]
    empty = [k for k in AXES if not axes[k]]
    if empty:
        raise NormfastError(f"{where} names no runs: {empty[0]} is empty or missing (each of "
                            f"{', '.join(AXES)} needs at least one name)")
    for key, wanted in filters.items():
        if wanted:
            missing = [w for w in wanted if w not in axes[key]]
            if missing:
                raise NormfastError(f"--{key[:-1]} {missing[0]!r} is not in the grid's {key}: {', '.join(axes[key])}")
            axes[key] = [v for v in axes[key] if v in wanted]
    grid_seeds = grid.get("seeds", [STUDY_SEED])
    grid_seeds = grid_seeds if isinstance(grid_seeds, list) else [grid_seeds]
    default = [as_int(s, f"{where}: seeds") for s in grid_seeds] or [STUDY_SEED]   # 1.7 is refused, not 1
    seeds = seeds or default
    if any(s < 0 for s in seeds):
        raise NormfastError(f"seeds must be non-negative integers, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise NormfastError(f"seeds {seeds}: a seed is listed twice (each seed is one run)")
    runs = [RunSpec(d, m, nm, b, s, run_name(m, nm, b, s)) for d, m, nm, b, s in itertools.product(
        axes["datasets"], axes["models"], axes["norms"], axes["backends"], seeds)]
    i, n = parse_shard(shard)
    return runs[i - 1::n]


@dataclass
class SweepRequest:
    """Everything a worker needs to rebuild the plan by itself (a local worker process, a
    submitit job on another node): JSON-able, paths absolute."""
    grid: str
    filters: dict = field(default_factory=dict)
    seeds: list = field(default_factory=list)
    shard: str | None = None
    overrides: dict = field(default_factory=dict)
    fuse: bool = True
    started: float = field(default_factory=time.time)   # failures recorded since then are not retried
    claim_timeout: float = 300.0     # s: another host's claim without a heartbeat this long is stale
    heartbeat: float = 30.0          # s between a worker's claim refreshes
    cwd: str = field(default_factory=os.getcwd)        # the grid's relative data_root/runs are from here
    bench: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SweepRequest":
        return cls(**d)


@dataclass
class Prepared:
    """One run of the plan, resolved: its TrainConfig and directory, or why it cannot run."""
    index: int
    spec: RunSpec
    cfg: TrainConfig | None = None
    run_dir: Path | None = None
    key: str = ""                     # normfast.naming.run_key: the claim's file name
    error: str | None = None
    train_count: int = 0              # images per epoch (for the estimate)
    image_side: int = 32

    @property
    def label(self) -> str:
        return f"{self.spec.dataset} {self.spec.run_name}"


@dataclass
class Plan:
    grid: dict
    runs_root: Path
    runs: list[Prepared]
    grid_runs: int                    # before --shard


def prepare(request: SweepRequest) -> Plan:
    """Load the grid, plan its runs and resolve each one (a missing dataset or a bad `train:`
    option fails that run only, as one line)."""
    grid_path = Path(request.grid)
    grid = load_yaml(grid_path)
    runs = plan(grid, request.filters, request.seeds or None, request.shard, where=str(grid_path))
    grid_runs = len(plan(grid, request.filters, request.seeds or None, None, where=str(grid_path)))
    data_root = Path(grid.get("data_root", "data"))
    overrides = dict(request.overrides)
    runs_root = Path(str(overrides.get("runs") or grid.get("runs", "runs")))
    out = []
    for k, r in enumerate(runs, 1):
        p = Prepared(k, r)
        try:
            manifest = load_manifest(data_root / r.dataset)
            r.run_name = resolve_run_name(runs_root / manifest.name, r)
            p.cfg = resolve_train_config(
                None, layers=[(f"{grid_path}: train", grid.get("train") or {})],
                **(overrides | dict(data=str(data_root / r.dataset), model=r.model, norm=r.norm, backend=r.backend,
                                    seed=r.seed, runs=str(runs_root), run_name=r.run_name)))
            p.run_dir = p.cfg.run_dir(manifest.name)
            p.key = run_key(p.run_dir, runs_root)
            p.train_count = round(manifest.count("train") * (1 - p.cfg.val_fraction))
            p.image_side = int(manifest.image_shape[0])
        except NormfastError as e:
            p.error = str(e)
        out.append(p)
    return Plan(grid, runs_root, out, grid_runs)


@dataclass
class Job:
    """The unit of work: the runs one worker trains together. With fusion, the settings of a
    configuration that differ only in norm (same dataset, model, backend, seed and recipe)."""
    runs: list[Prepared]
    estimate_s: float = 0.0

    @property
    def label(self) -> str:
        return " + ".join(p.label for p in self.runs)


def fuse_key(p: Prepared) -> tuple:
    """Runs with the same key may train as one fused job: everything but norm and name agrees."""
    d = asdict(p.cfg)
    return (p.spec.dataset,) + tuple(sorted((k, str(v)) for k, v in d.items() if k not in ("norm", "run_name")))


def make_jobs(runs: list[Prepared], fuse: bool) -> list[Job]:
    """One job per run, or (fuse) one per group of runs differing only in norm, in plan order.
    Runs that cannot be resolved are no job."""
    jobs: dict = {}
    for p in runs:
        if p.error is not None:
            continue
        key = fuse_key(p) if fuse else (p.index,)
        jobs.setdefault(key, Job([])).runs.append(p)
    return list(jobs.values())
