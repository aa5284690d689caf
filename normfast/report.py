"""`normfast report RUNS --out DIR`: the seed's Tables 1-3 and Figure 1 from run directories,
with throughput beside accuracy and the seed's published numbers beside ours.

Reads RUNS/<dataset>/<run>/{config.yaml, metrics.jsonl, best_results.json} (written by
`normfast train`) and writes, each file atomically (temporary name, then os.replace):

  index.md          links to everything below, the runs found and anything skipped
  table1.md         per dataset: train-split mean/std before and after each normalization
  table2.md         finetune vs pretrain best test accuracy, finetune - pretrain, seed beside ours
  table3.md         all four settings, best **bold**, second <u>underlined</u>, seed beside ours
  figure1.png       test accuracy per epoch, rows models x columns datasets, one line per setting
  throughput.md     per run: images/s, epoch seconds, data-wait fraction, device, amp, compile
  results.csv       one row per run: the numbers behind the tables
  summary.csv       one row per configuration: mean, std, n and the seed's value

Decisions:
- A configuration is (dataset, model, norm) within a *section*; a section is one backend and
  one kind of initial weights (imagenet:IMAGENET1K_V1, none, or local files). Backends are not
  pooled: each (backend, weights) pair present gets its own section in tables 2/3 and its own
  figure (figure1.png when there is one section, figure1-<backend>-<weights>.png otherwise).
  From-scratch and pretrained runs never share a table. The weights each run used are stated
  at the top of every table.
- Runs of one configuration (normally different seeds) are summarized as mean ± sample std
  (ddof=1) and n. A difference between two settings (table 2's finetune - pretrain, table 3's
  best - second, and ours - seed) is marked `≈` (within noise) when its size is below the
  larger of the spreads (stds) involved. With one run per configuration there is no noise
  estimate and nothing is marked; the tables say so.
- Accuracies are shown in percent (2 decimals), differences in percentage points.
- An unfinished run (epochs_done < epochs) is shown with its progress, e.g.
  `61.20 (12/100 ep)`, and is not ranked (no bold/underline): a partial run is not a result.
- Missing configurations are shown as `—`. A metrics line cut by a kill (the last one) is
  dropped; any other damage to metrics.jsonl or best_results.json is an error naming the file
  (normfast.rundir reads the run directories). No runs at all is an error.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import normfast
from normfast.errors import NormfastError
from normfast.rundir import RunDir

MODELS = ("resnet18", "resnet50", "densenet121", "densenet161")
DATASETS = ("cifar10", "cifar100", "svhn", "tiny-imagenet-200")
NORMS = ("finetune", "pretrain", "instance", "minmax")
SEED_DATASETS = {"CIFAR10": "cifar10", "CIFAR100": "cifar100", "SVHN": "svhn",
                 "tiny_imagenet_200": "tiny-imagenet-200"}
COLORS = {"finetune": "#1f77b4", "pretrain": "#ff7f0e", "instance": "#2ca02c", "minmax": "#d62728"}
# The seed's Table 1, "ImageNet-1k stats." column: its train split after `pretrain` (published).
SEED_TABLE1_PRETRAIN = {
    "cifar10": ((0.03, 0.12, 0.18), (1.08, 1.09, 1.16)),
    "cifar100": ((0.10, 0.14, 0.16), (1.17, 1.15, 1.23)),
    "svhn": ((-0.21, -0.06, 0.30), (0.87, 0.90, 0.88)),
    "tiny-imagenet-200": ((-0.38, -0.04, 0.33), (1.23, 1.20, 1.23)),
}
DASH = "—"
NOISE = "≈"


# ---------------------------------------------------------------- small pure helpers

def parse_metrics(text: str) -> list[dict]:
    """metrics.jsonl rows; lines that are not a JSON object with test_acc are skipped."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("test_acc"), (int, float)):
            rows.append(row)
    return rows


def weights_kind(weights: str | None) -> str:
    """The kind of initial weights, the same for every model: 'imagenet:IMAGENET1K_V1',
    'none', 'file' (a local state dict) or 'unknown'."""
    w = str(weights or "unknown")
    if w.startswith("imagenet:"):
        return "imagenet:" + w.split(":", 1)[1].rsplit(".", 1)[-1]   # drop ResNet18_Weights.
    if w.startswith("file:"):
        return "file"
    return w


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def within_noise(diff: float, *stds: float | None) -> bool:
    """True when |diff| is below the larger of the known spreads (none known: False)."""
    known = [s for s in stds if s is not None]
    return bool(known) and abs(diff) < max(known)


def rank_marks(values: dict) -> dict:
    """{key: value or None} -> {key: 'best' | 'second' | None} by value, ties share a mark.
    Fewer than two values: nothing is marked."""
    present = {k: v for k, v in values.items() if v is not None}
    marks = {k: None for k in values}
    distinct = sorted(set(present.values()), reverse=True)
    if len(present) < 2:
        return marks
    for k, v in present.items():
        if v == distinct[0]:
            marks[k] = "best"
        elif len(distinct) > 1 and v == distinct[1]:
            marks[k] = "second"
    return marks


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def signed(x: float) -> str:
    """Signed percentage points: +0.12 / -0.10."""
    return f"{100 * x:+.2f}"


def emphasize(text: str, mark: str | None) -> str:
    return {"best": f"**{text}**", "second": f"<u>{text}</u>"}.get(mark, text)


def order(values, canonical) -> list:
    values = set(values)
    return [v for v in canonical if v in values] + sorted(values - set(canonical))


def load_seed_results() -> dict:
    """{(dataset, model, norm): (best_acc, best_epoch)} from the seed's published results."""
    path = Path(normfast.__file__).parent / "data" / "seed_results.csv"
    out = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            ds = SEED_DATASETS.get(r["dataset"], r["dataset"].lower())
            out[(ds, r["model"], r["norm"])] = (float(r["best_acc"]), int(r["best_epoch"]))
    return out


def write_atomic(path: Path, data: str | bytes) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- runs

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
    def epochs(self) -> int: return int(self.best.get("epochs") or self.config.get("epochs") or 0)
    @property
    def epochs_done(self) -> int: return int(self.best.get("epochs_done", len(self.metrics)))
    @property
    def finished(self) -> bool: return self.epochs_done >= self.epochs > 0

    @property
    def best_acc(self) -> float | None:
        if "best_acc" in self.best and self.best.get("best_epoch", 0) >= 0:
            return float(self.best["best_acc"])
        return max((r["test_acc"] for r in self.metrics), default=None)

    @property
    def best_epoch(self) -> int | None:
        if "best_epoch" in self.best:
            return int(self.best["best_epoch"])
        if not self.metrics:
            return None
        return max(self.metrics, key=lambda r: r["test_acc"])["epoch"]

    @property
    def device(self) -> str:
        return str((self.config.get("versions") or {}).get("gpu") or self.config.get("device") or "?")

    def mean_of(self, key: str, skip_first: bool = False) -> float | None:
        rows = self.metrics[1:] if skip_first else self.metrics
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        return sum(vals) / len(vals) if vals else None

    def progress(self) -> str:
        return f"{self.epochs_done}/{self.epochs} ep"


def load_runs(runs_dir: str | Path) -> tuple[list[Run], list[str]]:
    """Every RUNS/<dataset>/<run>/ with a readable config.yaml, and notes on what was skipped."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise NormfastError(f"{runs_dir}: runs directory not found (it is what `normfast train --runs` "
                            "or `normfast sweep` writes)")
    runs, notes = [], []
    for cfg_path in sorted(runs_dir.glob("*/*/config.yaml")):
        run_dir = cfg_path.parent
        rundir = RunDir(run_dir)
        try:
            config = rundir.read_config()
        except NormfastError:
            config = None
        if not isinstance(config, dict) or not all(config.get(k) for k in ("model", "norm", "backend")):
            notes.append(f"`{run_dir}`: config.yaml unreadable or incomplete; skipped")
            continue
        # a damaged metrics.jsonl or best_results.json is an error naming the file (a cut last line is not)
        run = Run(run_dir, config, rundir.read_metrics(), rundir.read_best())
        if run.best_acc is None:
            notes.append(f"`{run_dir}`: no epoch finished yet; not in the accuracy tables")
        runs.append(run)
    if not runs:
        raise NormfastError(f"{runs_dir}: no runs found (expected {runs_dir}/<dataset>/<run>/config.yaml "
                            "written by `normfast train`)")
    idx = lambda v, canonical: canonical.index(v) if v in canonical else len(canonical)
    key = lambda r: (idx(r.dataset, DATASETS), r.dataset, idx(r.model, MODELS), r.model,
                     idx(r.norm, NORMS), r.norm, r.backend, str(r.seed))
    return sorted(runs, key=key), notes


@dataclass
class Group:
    """The runs of one configuration in one section (normally one per seed)."""
    runs: list[Run] = field(default_factory=list)

    @property
    def accs(self) -> list[float]: return [r.best_acc for r in self.runs]
    @property
    def n(self) -> int: return len(self.runs)
    @property
    def mean(self) -> float: return mean_std(self.accs)[0]
    @property
    def std(self) -> float | None: return mean_std(self.accs)[1]
    @property
    def finished(self) -> bool: return all(r.finished for r in self.runs)

    def cell(self, mark: str | None = None, noise: bool = False) -> str:
        text = (f"{NOISE} " if noise else "") + emphasize(pct(self.mean), mark)
        if self.n > 1:
            text += f" ± {pct(self.std)} (n={self.n})"
        unfinished = [r for r in self.runs if not r.finished]
        if unfinished and self.n == 1:
            text += f" ({unfinished[0].progress()})"
        elif unfinished:
            text += f" ({len(unfinished)} of {self.n} unfinished, ≥{min(r.epochs_done for r in unfinished)}/" \
                    f"{unfinished[0].epochs} ep)"
        return text


def group_runs(runs: list[Run]) -> dict:
    """{section: {(dataset, model, norm): Group}} over runs with at least one epoch done."""
    out: dict = {}
    for r in runs:
        if r.best_acc is None:
            continue
        out.setdefault(r.section, {}).setdefault((r.dataset, r.model, r.norm), Group()).runs.append(r)
    return out


def section_title(section: tuple[str, str]) -> str:
    return f"backend {section[0]} · weights {section[1]}"


def weights_line(runs: list[Run]) -> str:
    """Which weights the runs started from: one line for the top of a table."""
    by = {}
    for r in runs:
        by.setdefault(r.weights if weights_kind(r.weights) == "file" else weights_kind(r.weights), []).append(r)
    if len(by) == 1:
        (w, rs), = by.items()
        if weights_kind(w) == "file":
            return f"weights: {w} for all {len(rs)} runs"
        return f"weights: {w} for all runs" + (" (random initialization: trained from scratch)" if w == "none" else "")
    parts = [f"{w} ({', '.join(sorted({f'{r.dataset}/{r.path.name}' for r in rs}))})" for w, rs in sorted(by.items())]
    return "weights (mixed): " + "; ".join(parts)


def seeds_line(groups: dict) -> str:
    ns = sorted({g.n for g in groups.values()})
    if ns == [1]:
        return ("runs per configuration: 1 (no seed repeats, so no noise estimate: "
                "small differences may not be real)")
    return (f"runs per configuration: {', '.join(map(str, ns))}; cells with several runs show "
            "mean ± sample std (n)")


def _header(section, groups: dict, n_sections: int) -> list[str]:
    runs = [r for g in groups.values() for r in g.runs]
    lines = [f"## {section_title(section)}", ""] if n_sections > 1 else []
    lines += [f"backend: {section[0]}  ", f"{weights_line(runs)}  ", seeds_line(groups), ""]
    return lines


# ---------------------------------------------------------------- table 2

def _accuracy_table_head(groups: dict, seed: dict, section, n_sections: int):
    """Datasets, models, the datasets the seed has numbers for, and the table's first lines."""
    datasets = order({k[0] for k in groups}, DATASETS)
    models = order({k[1] for k in groups}, MODELS)
    seeded = [d for d in datasets if any(k[0] == d for k in seed)]
    cols, align = ["model", "setting"], [":--", ":--"]
    for d in datasets:
        cols += [f"{d} ours"] + ([f"{d} seed", f"{d} ours − seed"] if d in seeded else [])
        align += ["--:"] * (3 if d in seeded else 1)
    lines = _header(section, groups, n_sections)
    lines += ["| " + " | ".join(cols) + " |", "|" + "|".join(align) + "|"]
    return datasets, models, seeded, lines


def format_table2(groups: dict, seed: dict, section, n_sections: int = 1) -> list[str]:
    datasets, models, seeded, lines = _accuracy_table_head(groups, seed, section, n_sections)
    flags = set()
    for m in models:
        ft_row, pt_row, diff_row = [m, "finetune"], ["", "pretrain"], ["", "finetune − pretrain"]
        for d in datasets:
            ft, pt = groups.get((d, m, "finetune")), groups.get((d, m, "pretrain"))
            ranked = {k: g.mean for k, g in (("finetune", ft), ("pretrain", pt)) if g and g.finished}
            marks = rank_marks(ranked) if len(ranked) == 2 else {}
            for row, g, norm in ((ft_row, ft, "finetune"), (pt_row, pt, "pretrain")):
                mark = "best" if marks.get(norm) == "best" else None
                row.append(g.cell(mark) if g else DASH)
                flags |= {"ep"} if g and not g.finished else set()
                if d in seeded:
                    s = seed.get((d, m, norm))
                    row.append(pct(s[0]) if s else DASH)
                    row.append(_vs_seed(g, s, flags))
            if ft and pt:
                diff = ft.mean - pt.mean
                noise = within_noise(diff, ft.std, pt.std)
                flags |= {NOISE} if noise else set()
                diff_row.append((f"{NOISE} " if noise else "") + signed(diff))
            else:
                diff_row.append(DASH)
            if d in seeded:
                sf, sp = seed.get((d, m, "finetune")), seed.get((d, m, "pretrain"))
                sdiff = sf[0] - sp[0] if sf and sp else None
                diff_row.append(signed(sdiff) if sdiff is not None else DASH)
                diff_row.append(signed(diff - sdiff) if ft and pt and sdiff is not None else DASH)
        lines += ["| " + " | ".join(row) + " |" for row in (ft_row, pt_row, diff_row)]
    return lines + [""] + _footnotes(flags, "table2") + [""]


def _vs_seed(g: Group | None, s, flags: set) -> str:
    if not g or not s:
        return DASH
    diff = g.mean - s[0]
    noise = within_noise(diff, g.std)
    flags |= {NOISE} if noise else set()
    return (f"{NOISE} " if noise else "") + signed(diff)


def _footnotes(flags: set, table: str) -> list[str]:
    notes = [f"{DASH}: no run for this configuration."]
    if "ep" in flags:
        notes.append("(d/e ep): unfinished, d of e epochs done; unfinished runs are never bold or underlined.")
    if NOISE in flags:
        what = {"table2": "the two values", "table3": "best and second"}[table]
        notes.append(f"{NOISE}: within noise: the difference between {what} (or ours vs the seed's) is "
                     "smaller than the larger standard deviation across runs.")
    return ["- " + n for n in notes]


# ---------------------------------------------------------------- table 3

def format_table3(groups: dict, seed: dict, section, n_sections: int = 1) -> tuple[list[str], tuple[int, int]]:
    datasets, models, seeded, lines = _accuracy_table_head(groups, seed, section, n_sections)
    norms = order({k[2] for k in groups} | set(NORMS), NORMS)
    flags, agree, compared = set(), 0, 0
    for m in models:
        cells = {}
        for d in datasets:
            gs = {n: groups.get((d, m, n)) for n in norms}
            marks = rank_marks({n: g.mean for n, g in gs.items() if g and g.finished})
            best = [n for n, k in marks.items() if k == "best"]
            second = [n for n, k in marks.items() if k == "second"]
            noisy = bool(best and second) and within_noise(
                gs[best[0]].mean - gs[second[0]].mean, *(gs[n].std for n in best + second))
            flags |= {NOISE} if noisy else set()
            seed_vals = {n: seed[(d, m, n)][0] for n in norms if (d, m, n) in seed}
            if best and len(seed_vals) == len(norms):
                seed_best = [n for n, k in rank_marks(seed_vals).items() if k == "best"]
                compared += 1
                agree += bool(set(best) & set(seed_best))
            for n, g in gs.items():
                cell = [g.cell(marks.get(n), noise=noisy and marks.get(n) == "best") if g else DASH]
                flags |= {"ep"} if g and not g.finished else set()
                if d in seeded:
                    s = seed.get((d, m, n))
                    cell += [pct(s[0]) if s else DASH, _vs_seed(g, s, flags)]
                cells.setdefault(n, []).extend(cell)
        for i, n in enumerate(norms):
            lines.append("| " + " | ".join([m if i == 0 else "", n] + cells[n]) + " |")
    lines += [""]
    if compared:
        lines += [f"Best setting (bold) is the seed's best in {agree} of {compared} model × dataset cells.", ""]
    return lines + _footnotes(flags, "table3") + [""], (agree, compared)


# ---------------------------------------------------------------- table 1

def _fmt_ms(mean, std, digits: int = 3) -> str:
    f = lambda v: "(" + ", ".join(f"{round(x, digits) + 0.0:.{digits}f}" for x in v) + ")"   # no -0.000
    return f"mean: {f(mean)}<br>std: {f(std)}"


def _data_dir(run: Run, runs_dir: Path) -> Path:
    p = Path(str(run.config.get("data", "")))
    if p.is_absolute() or (p / "manifest.json").exists():
        return p
    alt = runs_dir.parent / p          # relative to where the runs were trained
    return alt if (alt / "manifest.json").exists() else p


def format_table1(runs: list[Run], runs_dir: Path) -> str:
    from normfast.stats import format_table1 as detail, table1
    dirs: dict[str, list[Path]] = {}
    for r in runs:
        d = _data_dir(r, runs_dir)
        if d not in dirs.setdefault(r.dataset, []):
            dirs[r.dataset].append(d)
    head = ["dataset", "train images", "test images", "classes", "image size", "train split (raw, [0,1])",
            "seed's stats.py"] + [f"after {n}" for n in NORMS] + ["seed's Table 1 after pretrain (published)"]
    lines = ["# Table 1 — datasets: per-channel mean/std of the train split before and after each "
             "normalization", "", "| " + " | ".join(head) + " |", "|" + "|".join([":--"] + ["--:"] * 3 +
                                                                                 [":--"] * (len(head) - 4)) + "|"]
    details, missing = [], []
    for ds in order(dirs, DATASETS):
        t, tried = None, []
        for d in dirs[ds]:
            try:
                t = table1(d)
                break
            except NormfastError as e:
                tried.append(f"`{d}` ({e})")
        pub = SEED_TABLE1_PRETRAIN.get(ds)
        pub_cell = _fmt_ms(*pub, digits=2) if pub else DASH
        if t is None:
            missing.append(f"- {ds}: statistics unavailable, the converted data is gone or unreadable: "
                           + "; ".join(tried))
            lines.append("| " + " | ".join([ds] + [DASH] * (len(head) - 2) + [pub_cell]) + " |")
            continue
        h, w, c = t["image_shape"]
        ref = _fmt_ms(t["reference"]["mean"], t["reference"]["std"]) if t["reference"] else DASH
        row = [ds, f"{t['train_count']:,}", f"{t['test_count']:,}", str(t["classes"]), f"{h} × {w} × {c}",
               _fmt_ms(t["computed"]["mean"], t["computed"]["std"]), ref]
        row += [_fmt_ms(t["after"][n]["mean"], t["after"][n]["std"]) for n in NORMS]
        lines.append("| " + " | ".join(row + [pub_cell]) + " |")
        details += ["", "### " + detail(t)]
    lines += [""] + missing + ([""] if missing else [])
    lines += ["`instance` is measured by streaming the train split; the affine settings follow exactly "
              "from the train statistics. `finetune` uses the statistics computed at conversion.", ""]
    return "\n".join(lines + ["## Details"] + details) + "\n"


# ---------------------------------------------------------------- throughput

def format_throughput(runs: list[Run]) -> str:
    head = ["dataset", "model", "norm", "backend", "seed", "epochs", "train img/s (all epochs)",
            "train img/s (excl. 1st)", "test img/s", "epoch s (mean)", "data wait", "device", "amp", "compile",
            "world size"]
    lines = ["# Throughput per run", "",
             "Training images per second averaged over epochs, and again without the first epoch "
             "(warm-up, compilation) when there is more than one; data wait is the fraction of "
             "training time spent waiting for the next batch.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join([":--"] * 6 + ["--:"] * 5 + [":--"] * 4) + "|"]
    num = lambda v, f="{:.0f}": f.format(v) if v is not None else DASH
    for r in runs:
        excl = r.mean_of("train_images_per_second", skip_first=True) if len(r.metrics) > 1 else None
        wait = r.mean_of("data_wait_fraction")
        lines.append("| " + " | ".join([
            r.dataset, r.model, r.norm, r.backend, str(r.seed), r.progress(),
            num(r.mean_of("train_images_per_second")), num(excl), num(r.mean_of("test_images_per_second")),
            num(r.mean_of("epoch_seconds"), "{:.1f}"), f"{wait:.0%}" if wait is not None else DASH,
            r.device, str(r.config.get("amp", "?")), str(r.config.get("compile", "?")),
            str(r.config.get("world_size", 1))]) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- csv

RESULT_FIELDS = ["dataset", "model", "norm", "backend", "seed", "weights", "run_dir", "epochs_done", "epochs",
                 "finished", "best_acc", "best_epoch", "last_test_acc", "seed_best_acc", "diff_vs_seed",
                 "train_images_per_second", "train_images_per_second_excl_first", "mean_epoch_seconds",
                 "data_wait_fraction", "device", "amp", "compile", "world_size"]


def _csv(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows([{k: ("" if row.get(k) is None else row.get(k)) for k in fields} for row in rows])
    return buf.getvalue()


def results_rows(runs: list[Run], seed: dict) -> list[dict]:
    rows = []
    for r in runs:
        s = seed.get((r.dataset, r.model, r.norm))
        rows.append({
            "dataset": r.dataset, "model": r.model, "norm": r.norm, "backend": r.backend, "seed": r.seed,
            "weights": r.weights, "run_dir": str(r.path), "epochs_done": r.epochs_done, "epochs": r.epochs,
            "finished": r.finished, "best_acc": r.best_acc, "best_epoch": r.best_epoch,
            "last_test_acc": r.metrics[-1]["test_acc"] if r.metrics else None,
            "seed_best_acc": s[0] if s else None,
            "diff_vs_seed": r.best_acc - s[0] if s and r.best_acc is not None else None,
            "train_images_per_second": r.mean_of("train_images_per_second"),
            "train_images_per_second_excl_first": (r.mean_of("train_images_per_second", True)
                                                   if len(r.metrics) > 1 else None),
            "mean_epoch_seconds": r.mean_of("epoch_seconds"), "data_wait_fraction": r.mean_of("data_wait_fraction"),
            "device": r.device, "amp": r.config.get("amp"), "compile": r.config.get("compile"),
            "world_size": r.config.get("world_size", 1)})
    return rows


SUMMARY_FIELDS = ["backend", "weights", "dataset", "model", "norm", "n", "mean_best_acc", "std_best_acc",
                  "finished_runs", "seed_best_acc", "diff_vs_seed"]


def summary_rows(sections: dict, seed: dict) -> list[dict]:
    rows = []
    for section, groups in sections.items():
        for (d, m, n), g in groups.items():
            s = seed.get((d, m, n))
            rows.append({"backend": section[0], "weights": section[1], "dataset": d, "model": m, "norm": n,
                         "n": g.n, "mean_best_acc": g.mean, "std_best_acc": g.std,
                         "finished_runs": sum(r.finished for r in g.runs),
                         "seed_best_acc": s[0] if s else None, "diff_vs_seed": g.mean - s[0] if s else None})
    return rows


# ---------------------------------------------------------------- figure 1

def curve_stats(curves: list[list[float]]) -> tuple[list[float], list[float | None]]:
    """Per-epoch mean and sample std across runs (over the runs that reached that epoch)."""
    means, stds = [], []
    for i in range(max(len(c) for c in curves)):
        m, s = mean_std([c[i] for c in curves if len(c) > i])
        means.append(m)
        stds.append(s)
    return means, stds


def plot_figure1(groups: dict, path: Path, title: str = "") -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator
    datasets = order({k[0] for k in groups}, DATASETS)
    models = order({k[1] for k in groups}, MODELS)
    norms = order({k[2] for k in groups}, NORMS)
    height = 2.7 * len(models) + 0.9           # inches; the top 0.8 hold the legend and title
    fig = Figure(figsize=(max(6.4, 3.4 * len(datasets) + 0.6), height), dpi=110)   # legend fits
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(models), len(datasets), squeeze=False, sharex="col")
    for i, m in enumerate(models):
        for j, d in enumerate(datasets):
            ax = axes[i][j]
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if not any((d, m, n) in groups for n in norms):
                ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes, color="0.5")
                ax.set_yticks([])
            for n in norms:
                g = groups.get((d, m, n))
                if not g:
                    continue
                curves = []
                for r in g.runs:
                    by_epoch = {row["epoch"]: row["test_acc"] for row in r.metrics}
                    curves.append([100 * by_epoch[e] for e in sorted(by_epoch)])
                curves = [c for c in curves if c]
                if not curves:
                    continue
                mean, std = curve_stats(curves)
                x = list(range(1, len(mean) + 1))
                label = n + (f" (n={len(curves)})" if len(curves) > 1 else "")
                ax.plot(x, mean, color=COLORS.get(n), lw=1.4, label=label, marker="o" if len(x) == 1 else None)
                if len(curves) > 1:
                    lo = [a - (s or 0) for a, s in zip(mean, std)]
                    hi = [a + (s or 0) for a, s in zip(mean, std)]
                    ax.fill_between(x, lo, hi, color=COLORS.get(n), alpha=0.2, lw=0)
            ax.set_title(f"{m} · {d}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
            if i == len(models) - 1:
                ax.set_xlabel("epoch", fontsize=8)
            if j == 0:
                ax.set_ylabel("test accuracy (%)", fontsize=8)
    handles = [Line2D([], [], color=COLORS.get(n), lw=2) for n in norms]
    fig.legend(handles, norms, loc="upper center", ncol=len(norms), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    multi = any(g.n > 1 for g in groups.values())
    fig.suptitle((title + " — " if title else "") + "test accuracy per epoch"
                 + (" (mean ± std across seeds)" if multi else ""), fontsize=10, y=1 - 0.38 / height)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / height))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_atomic(path, buf.getvalue())


# ---------------------------------------------------------------- report

def _slug(section) -> str:
    return "-".join("".join(c if c.isalnum() else "_" for c in part) for part in section)


def make_report(runs_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the report files into out_dir; returns their paths (index.md last)."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    runs, notes = load_runs(runs_dir)
    sections = group_runs(runs)
    if not sections:
        raise NormfastError(f"{runs_dir}: {len(runs)} run(s) found but none has finished an epoch yet")
    sections = dict(sorted(sections.items()))
    seed = load_seed_results()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    written.append(write_atomic(out_dir / "table1.md", format_table1(runs, runs_dir)))

    t2 = ["# Table 2 — best test accuracy (%): finetune vs pretrain normalization", "",
          "Ours beside the seed's published values (Normalization-Test, 100 epochs); differences in "
          "percentage points. Bold: the better of finetune and pretrain (ours).", ""]
    t3 = ["# Table 3 — best test accuracy (%) for the four normalization settings", "",
          "Per model and dataset, our best setting is **bold** and the second <u>underlined</u>; the seed's "
          "published values and ours − seed beside them.", ""]
    for section, groups in sections.items():
        t2 += format_table2(groups, seed, section, len(sections))
        t3 += format_table3(groups, seed, section, len(sections))[0]
    written.append(write_atomic(out_dir / "table2.md", "\n".join(t2)))
    written.append(write_atomic(out_dir / "table3.md", "\n".join(t3)))

    figures = []
    for section, groups in sections.items():
        name = "figure1.png" if len(sections) == 1 else f"figure1-{_slug(section)}.png"
        figures.append(plot_figure1(groups, out_dir / name, section_title(section)))
    written += figures

    written.append(write_atomic(out_dir / "throughput.md", format_throughput(runs)))
    written.append(write_atomic(out_dir / "results.csv", _csv(results_rows(runs, seed), RESULT_FIELDS)))
    written.append(write_atomic(out_dir / "summary.csv", _csv(summary_rows(sections, seed), SUMMARY_FIELDS)))

    datasets = order({r.dataset for r in runs}, DATASETS)
    index = ["# normfast report", "",
             f"{len(runs)} runs from `{runs_dir}`: datasets {', '.join(datasets)}; "
             f"{len(sections)} section(s): " + "; ".join(section_title(s) for s in sections) + ".", "",
             "- [Table 1 — datasets before/after normalization](table1.md)",
             "- [Table 2 — finetune vs pretrain](table2.md)",
             "- [Table 3 — all four settings](table3.md)"]
    index += [f"- [Figure 1 — test accuracy per epoch{' (' + section_title(s) + ')' if len(sections) > 1 else ''}]"
              f"({p.name})" for s, p in zip(sections, figures)]
    index += ["- [Throughput per run](throughput.md)",
              "- [results.csv](results.csv) — one row per run",
              "- [summary.csv](summary.csv) — one row per configuration (mean, std, n, seed)", ""]
    index += [f"![Figure 1]({p.name})" for p in figures] + [""]
    if notes:
        index += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    written.append(write_atomic(out_dir / "index.md", "\n".join(index)))
    return written


__all__ = ["make_report", "load_runs", "group_runs", "rank_marks", "within_noise", "mean_std",
           "parse_metrics", "weights_kind", "load_seed_results"]
