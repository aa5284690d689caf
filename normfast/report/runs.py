"""Runs as the report sees them, and the rule that keeps one run per (configuration, seed).

The files themselves are read by normfast.rundir.RunDir, the owner of the run-directory
format (also for the sweep): a last metrics line cut by a kill is dropped; any other
unreadable file or line is a NormfastError naming the file. The report adds one rule of its
own: config.yaml must name model, norm and backend.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from normfast.errors import NormfastError
from normfast.naming import recorded_seed, run_name  # noqa: F401 - recorded_seed is re-exported
from normfast.report.common import DATASETS, MODELS, NORMS
from normfast.rundir import CONFIG, RunDir


# ---------------------------------------------------------------- reading one run

def read_config(run_dir: Path) -> dict:
    """config.yaml as `normfast train` writes it; it must name model, norm and backend."""
    rundir = RunDir(run_dir)
    config = rundir.read_config()
    missing = [k for k in ("model", "norm", "backend") if not config.get(k)]
    if missing:
        raise NormfastError(f"{rundir.config_path}: incomplete, no {', '.join(missing)}")
    return config


def read_run(run_dir: Path, strict: bool = True) -> "Run":
    """One run directory. strict=False (the sweep's summary line) keeps the metrics rows before
    a damaged line instead of refusing the file; config.yaml and best_results.json are always
    checked."""
    rundir = RunDir(run_dir)
    return Run(rundir.path, read_config(rundir.path), rundir.read_metrics(strict=strict), rundir.read_best())


# ---------------------------------------------------------------- one run

def weights_kind(weights: str | None) -> str:
    """The kind of initial weights, the same for every model: 'imagenet:IMAGENET1K_V1',
    'timm' (timm's default weights of each model, e.g. 'timm:resnet50.a1_in1k'), 'none',
    'file' (a local state dict) or 'unknown'."""
    w = str(weights or "unknown")
    if w.startswith("imagenet:"):
        return "imagenet:" + w.split(":", 1)[1].rsplit(".", 1)[-1]   # drop ResNet18_Weights.
    if w.startswith("file:"):
        return "file"
    if w.startswith("timm:"):
        return "timm"
    return w


def _argmax_row(rows: list[dict], key: str) -> dict | None:
    """The first row with the highest numeric `key` (earliest epoch on ties)."""
    rows = [r for r in rows if isinstance(r.get(key), (int, float))]
    return max(rows, key=lambda r: r[key]) if rows else None


@dataclass
class Run:
    path: Path
    config: dict
    metrics: list[dict]
    best: dict

    @property
    def dataset(self) -> str: return str(self.config.get("dataset") or self.path.parent.name)
    @property
    def model(self) -> str: return str(self.config.get("model"))
    @property
    def norm(self) -> str: return str(self.config.get("norm"))
    @property
    def backend(self) -> str: return str(self.config.get("backend"))
    @property
    def seed(self): return self.config.get("seed")
    @property
    def weights(self) -> str: return str(self.config.get("weights") or self.best.get("weights") or "unknown")
    @property
    def section(self) -> tuple[str, str]: return (self.backend, weights_kind(self.weights))
    @property
    def key(self) -> tuple:
        """(configuration, seed): runs with the same key are repeats of one experiment."""
        return (self.section, self.dataset, self.model, self.norm, self.seed)
    @property
    def epochs(self) -> int: return int(self.best.get("epochs") or self.config.get("epochs") or 0)
    @property
    def epochs_done(self) -> int: return int(self.best.get("epochs_done", len(self.metrics)))
    @property
    def finished(self) -> bool: return self.epochs_done >= self.epochs > 0

    @property
    def best_acc(self) -> float | None:
        """Best-epoch test accuracy (the seed's number: optimistic, the epoch is chosen on test)."""
        if "best_acc" in self.best and self.best.get("best_epoch", 0) >= 0:
            return float(self.best["best_acc"])
        row = _argmax_row(self.metrics, "test_acc")
        return row["test_acc"] if row else None

    @property
    def best_epoch(self) -> int | None:
        if "best_epoch" in self.best:
            return int(self.best["best_epoch"])
        row = _argmax_row(self.metrics, "test_acc")
        return row["epoch"] if row else None

    @property
    def final_acc(self) -> float | None:
        """Test accuracy after the last epoch done."""
        return self.metrics[-1]["test_acc"] if self.metrics else None

    @property
    def selection(self) -> str:
        """How the reported epoch is chosen: 'best-val' when the rows carry val_acc (a held-out
        split), else 'best-test'."""
        return "best-val" if _argmax_row(self.metrics, "val_acc") else "best-test"

    @property
    def selected_epoch(self) -> int | None:
        row = _argmax_row(self.metrics, "val_acc")
        return row["epoch"] if row else self.best_epoch

    @property
    def selected_acc(self) -> float | None:
        """Test accuracy at the best-validation epoch, or the best-epoch test accuracy."""
        row = _argmax_row(self.metrics, "val_acc")
        return row["test_acc"] if row else self.best_acc

    @property
    def device(self) -> str:
        return str((self.config.get("versions") or {}).get("gpu") or self.config.get("device") or "?")

    def mean_of(self, key: str, skip_first: bool = False) -> float | None:
        rows = self.metrics[1:] if skip_first else self.metrics
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        return sum(vals) / len(vals) if vals else None

    def progress(self) -> str:
        return f"{self.epochs_done}/{self.epochs} ep"

    def label(self) -> str:
        return f"{self.dataset}/{self.path.name}"


# ---------------------------------------------------------------- all runs

def load_runs(runs_dir: str | Path) -> tuple[list[Run], list[str]]:
    """Every RUNS/<dataset>/<run>/ with a config.yaml (sorted), and notes on runs that have
    no finished epoch yet. A malformed file is an error naming it."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise NormfastError(f"{runs_dir}: runs directory not found (it is what `normfast train --runs` "
                            "or `normfast sweep` writes)")
    runs, notes = [], []
    for d in sorted(p for p in runs_dir.glob("*/*") if p.is_dir()):
        if not (d / CONFIG).is_file():      # said, never dropped silently
            notes.append(f"`{d}`: no {CONFIG}; left out of the report (not a run `normfast train` wrote, "
                         "or one whose config.yaml was removed)")
            continue
        run = read_run(d)
        if run.best_acc is None:
            notes.append(f"`{run.path}`: no epoch finished yet; not in the accuracy tables")
        runs.append(run)
    if not runs:
        without = f"; {len(notes)} folder(s) there have no {CONFIG}" if notes else ""
        raise NormfastError(f"{runs_dir}: no runs found (expected {runs_dir}/<dataset>/<run>/config.yaml "
                            f"written by `normfast train`{without})")
    idx = lambda v, canonical: canonical.index(v) if v in canonical else len(canonical)
    key = lambda r: (idx(r.dataset, DATASETS), r.dataset, idx(r.model, MODELS), r.model,
                     idx(r.norm, NORMS), r.norm, r.backend, str(r.seed), r.path.name)
    return sorted(runs, key=key), notes


# ---------------------------------------------------------------- one run per (configuration, seed)

REPEAT_RULE = ("a finished run before an unfinished one, then the most epochs done, then the directory "
               "`normfast sweep` names for that seed (`<model>-<norm>-<backend>` for seed 223, "
               "`…-s<seed>` otherwise), then the first by name")
RECIPE_KEYS = ("epochs", "batch_size", "lr", "optimizer", "scheduler", "stats", "amp", "compile", "data")


@dataclass
class Repeat:
    """Several runs of one (configuration, seed): `used` is kept, `left_out` are not pooled."""
    used: Run
    left_out: list[Run] = field(default_factory=list)

    def differences(self) -> list[str]:
        """Recipe keys whose values differ between the repeats (why they may disagree)."""
        runs = [self.used] + self.left_out
        return [k for k in RECIPE_KEYS if len({str(r.config.get(k)) for r in runs}) > 1]

    def note(self) -> str:
        backend, weights = self.used.section
        what = (f"{self.used.dataset} {self.used.model} {self.used.norm} (backend {backend}, weights {weights}) "
                f"seed {self.used.seed}")
        others = ", ".join(f"`{r.label()}` ({r.progress()})" for r in self.left_out)
        diff = self.differences()
        return (f"repeated run of {what}: used `{self.used.label()}` ({self.used.progress()}); left out {others}"
                + (f"; they differ in {', '.join(diff)}" if diff else "")
                + ". One seed counts once: repeats are never pooled.")


def pick_one_per_seed(runs: list[Run]) -> tuple[list[Run], list[Repeat]]:
    """Keep one run per (configuration, seed) by REPEAT_RULE; returns the runs kept (in the
    given order) and the repeats found."""
    by_key: dict = {}
    for r in runs:
        by_key.setdefault(r.key, []).append(r)
    keep, repeats = set(), []
    for rs in by_key.values():
        ranked = sorted(rs, key=lambda r: (not r.finished, -r.epochs_done,
                                           r.path.name != run_name(r.model, r.norm, r.backend, r.seed),
                                           r.path.name, str(r.path)))
        keep.add(id(ranked[0]))
        if len(ranked) > 1:
            repeats.append(Repeat(ranked[0], ranked[1:]))
    return [r for r in runs if id(r) in keep], repeats
