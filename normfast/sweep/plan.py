"""`normfast sweep GRID.yaml`: the seed's grid of runs, resumable and shardable.

Runs every dataset x model x norm x backend (x seed) configuration in a fixed order,
skips finished runs, resumes interrupted ones, and `--shard i/n` keeps every n-th
configuration starting at the i-th so that n machines share the list without overlap.

A run directory is a function of (configuration, seed) alone: `<model>-<norm>-<backend>`
for the study's seed 223 (the name `normfast train` gives by default) and
`<model>-<norm>-<backend>-s<seed>` for any other seed, whether or not --seeds was given, so
a seed is never trained twice under two names. Directories named by older versions (which
suffixed seed 223 when --seeds was given, and left another lone grid seed plain) are found
by the seed recorded in their config.yaml and reused.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from normfast.config import resolve_train_config
from normfast.configfiles import load_yaml
from normfast.errors import NormfastError
from normfast.manifest import load_manifest
from normfast.rundir import RunDir

GRID_KEYS = {"data_root", "runs", "datasets", "models", "norms", "backends", "seeds", "train"}
STUDY_SEED = 223          # the seed's SEED, and TrainConfig's default


def run_name(model: str, norm: str, backend: str, seed) -> str:
    """The run directory name of one (configuration, seed)."""
    base = f"{model}-{norm}-{backend}"
    return base if seed == STUDY_SEED else f"{base}-s{seed}"


def resolve_run_name(dataset_dir: Path, spec: "RunSpec") -> str:
    """spec.run_name, or the older name already holding this seed's run. When the plain name
    holds another seed's run (trained by an older sweep or a plain `normfast train --seed`),
    this seed goes to the suffixed name instead of colliding with it."""
    from normfast.report.runs import recorded_seed
    base = f"{spec.model}-{spec.norm}-{spec.backend}"
    suffixed = f"{base}-s{spec.seed}"
    candidates = [spec.run_name] + [n for n in (base, suffixed) if n != spec.run_name]
    for name in candidates:
        if recorded_seed(dataset_dir / name) == spec.seed:
            return name
    if recorded_seed(dataset_dir / spec.run_name) is not None:     # taken by another seed
        return suffixed
    return spec.run_name


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


def plan(grid: dict, filters: dict, seeds: list[int] | None, shard: str | None) -> list[RunSpec]:
    unknown = set(grid) - GRID_KEYS
    if unknown:
        raise NormfastError(f"grid: unknown key {sorted(unknown)[0]!r}; valid: {', '.join(sorted(GRID_KEYS))}")
    axes = {}
    for k in ("datasets", "models", "norms", "backends"):
        value = grid.get(k) or []
        if isinstance(value, str):     # `models: resnet18` is one name, not one run per character
            value = [value]
        if not isinstance(value, list):
            raise NormfastError(f"grid: {k} must be a list of names, got {value!r}")
        axes[k] = [str(v) for v in value]
    for key, wanted in filters.items():
        if wanted:
            missing = [w for w in wanted if w not in axes[key]]
            if missing:
                raise NormfastError(f"--{key[:-1]} {missing[0]!r} is not in the grid's {key}: {', '.join(axes[key])}")
            axes[key] = [v for v in axes[key] if v in wanted]
    grid_seeds = grid.get("seeds", [223])
    grid_seeds = grid_seeds if isinstance(grid_seeds, list) else [grid_seeds]
    try:
        default = [int(s) for s in grid_seeds] or [223]
    except (TypeError, ValueError):
        raise NormfastError(f"grid: seeds must be a list of integers, got {grid_seeds!r}") from None
    seeds = seeds or default
    if any(s < 0 for s in seeds):
        raise NormfastError(f"seeds must be non-negative integers, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise NormfastError(f"seeds {seeds}: a seed is listed twice (each seed is one run)")
    runs = [RunSpec(d, m, nm, b, s, run_name(m, nm, b, s)) for d, m, nm, b, s in itertools.product(
        axes["datasets"], axes["models"], axes["norms"], axes["backends"], seeds)]
    i, n = parse_shard(shard)
    return runs[i - 1::n]


def sweep(grid_path: str | Path, filters: dict, seeds: list[int] | None = None, shard: str | None = None,
          overrides: dict | None = None, dry_run: bool = False, echo=print) -> list[dict]:
    from normfast.train import train
    grid = load_yaml(grid_path)
    runs = plan(grid, filters, seeds, shard)
    data_root = Path(grid.get("data_root", "data"))
    runs_root = str((overrides or {}).get("runs") or grid.get("runs", "runs"))
    results = []
    for k, r in enumerate(runs, 1):
        row = {"dataset": r.dataset, "model": r.model, "norm": r.norm, "backend": r.backend, "seed": r.seed}
        label = f"[{k}/{len(runs)}] {r.dataset} {r.run_name}"
        try:
            manifest = load_manifest(data_root / r.dataset)
            r.run_name = resolve_run_name(Path(runs_root) / manifest.name, r)
            label = f"[{k}/{len(runs)}] {r.dataset} {r.run_name}"
            cfg = resolve_train_config(
                None, layers=[(f"{grid_path}: train", grid.get("train") or {})],
                **((overrides or {}) |
                   dict(data=str(data_root / r.dataset), model=r.model, norm=r.norm, backend=r.backend,
                        seed=r.seed, runs=runs_root, run_name=r.run_name)))
            run_dir = cfg.run_dir(manifest.name)
            if RunDir(run_dir).finished(cfg.epochs):
                row["status"] = "done before"
            elif dry_run:
                row["status"] = "to resume" if RunDir(run_dir).has_checkpoint() else "to run"
            else:
                cfg.resume = RunDir(run_dir).has_checkpoint()
                echo(f"{label}: {'resuming' if cfg.resume else 'starting'}")
                train(cfg)
                row["status"] = "ran"
            row |= summarize(run_dir)
        except NormfastError as e:
            row["status"] = f"failed: {e}"
        except Exception as e:  # noqa: BLE001 - one run's crash (e.g. CUDA out of memory) must not end the sweep
            row["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        echo(f"{label}: {row['status']}")
        results.append(row)
    return results


def summarize(run_dir: Path) -> dict:
    from normfast.report.runs import read_run
    out = {"run_dir": str(run_dir)}
    if not RunDir(run_dir).config_path.exists():
        return out
    # the summary line tolerates a damaged metrics line (rows before it count); `normfast report` does not
    run = read_run(run_dir, strict=False)
    if run.best_acc is not None:
        out |= {"best_acc": run.best_acc, "best_epoch": run.best_epoch}
    ips = run.mean_of("train_images_per_second")
    if ips is not None:
        out["train_images_per_second"] = ips
    return out


def format_summary(results: list[dict]) -> str:
    lines = ["| dataset | model | norm | backend | seed | status | best acc | best epoch | train img/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        acc = f"{r['best_acc']:.4f}" if "best_acc" in r else "—"
        ips = f"{r['train_images_per_second']:.0f}" if "train_images_per_second" in r else "—"
        lines.append(f"| {r['dataset']} | {r['model']} | {r['norm']} | {r['backend']} | {r['seed']} | "
                     f"{r['status']} | {acc} | {r.get('best_epoch', '—')} | {ips} |")
    return "\n".join(lines)
