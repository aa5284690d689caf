"""The report's tables: Table 1 (datasets), Tables 2 and 3 (accuracy per setting, seed's
numbers beside ours), paired differences, throughput, and the CSV files behind them.

Accuracy in the tables is the *selected* accuracy of each run: the test accuracy at the
best-validation epoch when the run logged val_acc, else the best-epoch test accuracy (the
seed's number, optimistic: the epoch is chosen on the test set). The final-epoch test
accuracy stands beside it. A setting is bold only where the 95% interval of its paired
difference to the runner-up excludes zero.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import normfast
from normfast.errors import NormfastError
from normfast.report.common import DASH, DATASETS, MODELS, NOISE, NORMS, TIE, order, pct, signed
from normfast.report.runs import Run, weights_kind
from normfast.report.statistics import Paired, mean_std, paired_difference, within_noise

SEED_DATASETS = {"CIFAR10": "cifar10", "CIFAR100": "cifar100", "SVHN": "svhn",
                 "tiny_imagenet_200": "tiny-imagenet-200"}
# The seed's Table 1, "ImageNet-1k stats." column: its train split after `pretrain` (published).
SEED_TABLE1_PRETRAIN = {
    "cifar10": ((0.03, 0.12, 0.18), (1.08, 1.09, 1.16)),
    "cifar100": ((0.10, 0.14, 0.16), (1.17, 1.15, 1.23)),
    "svhn": ((-0.21, -0.06, 0.30), (0.87, 0.90, 0.88)),
    "tiny-imagenet-200": ((-0.38, -0.04, 0.33), (1.23, 1.20, 1.23)),
}
# The seed read Tiny ImageNet with cv2.imread, so its published row is in B, G, R order
# (its first mean, -0.38, is the blue channel's 0.3975 under the red channel's ImageNet stats).
SEED_TABLE1_BGR = {"tiny-imagenet-200"}


def load_seed_results() -> dict:
    """{(dataset, model, norm): (best_acc, best_epoch)} from the seed's published results."""
    path = Path(normfast.__file__).parent / "data" / "seed_results.csv"
    out = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            ds = SEED_DATASETS.get(r["dataset"], r["dataset"].lower())
            out[(ds, r["model"], r["norm"])] = (float(r["best_acc"]), int(r["best_epoch"]))
    return out


def emphasize(text: str, mark: str | None) -> str:
    return {"best": f"**{text}**", "second": f"<u>{text}</u>"}.get(mark, text)


# ---------------------------------------------------------------- groups of runs

@dataclass
class Group:
    """The runs of one configuration in one section, one per seed (repeats already removed)."""
    runs: list[Run] = field(default_factory=list)

    @property
    def accs(self) -> list[float]: return [r.selected_acc for r in self.runs]
    @property
    def n(self) -> int: return len(self.runs)
    @property
    def mean(self) -> float: return mean_std(self.accs)[0]
    @property
    def std(self) -> float | None: return mean_std(self.accs)[1]
    @property
    def best_mean(self) -> float: return mean_std([r.best_acc for r in self.runs])[0]
    @property
    def best_std(self) -> float | None: return mean_std([r.best_acc for r in self.runs])[1]
    @property
    def finals(self) -> list[float]: return [r.final_acc for r in self.runs if r.final_acc is not None]
    @property
    def finished(self) -> bool: return all(r.finished for r in self.runs)

    def by_seed(self, metric: str = "selected") -> dict:
        """{seed: accuracy} over finished runs (a partial run is not a result)."""
        return {r.seed: (r.selected_acc if metric == "selected" else r.final_acc)
                for r in self.runs if r.finished}

    def cell(self, mark: str | None = None) -> str:
        text = emphasize(pct(self.mean), mark if mark in ("best", "second") else None)
        if self.n > 1:
            text += f" ± {pct(self.std)} (n={self.n})"
        unfinished = [r for r in self.runs if not r.finished]
        if unfinished and self.n == 1:
            text += f" ({unfinished[0].progress()})"
        elif unfinished:
            text += f" ({len(unfinished)} of {self.n} unfinished, ≥{min(r.epochs_done for r in unfinished)}/" \
                    f"{unfinished[0].epochs} ep)"
        return text + MARK_SUFFIX.get(mark, "")

    def final_cell(self) -> str:
        if not self.finals:
            return DASH
        m, s = mean_std(self.finals)
        return pct(m) + (f" ± {pct(s)}" if s is not None else "")


MARK_SUFFIX = {"tie": f" ({TIE})", "untested": " (top; 1 seed: untested)",
               "unshared": " (top; no seed shared with the runner-up: untested)"}


def group_runs(runs: list[Run]) -> dict:
    """{section: {(dataset, model, norm): Group}} over runs with at least one epoch done.
    Pass the runs left after pick_one_per_seed: a group never holds a seed twice."""
    out: dict = {}
    for r in runs:
        if r.best_acc is None:
            continue
        out.setdefault(r.section, {}).setdefault((r.dataset, r.model, r.norm), Group()).runs.append(r)
    return out


def compare(a: str, b: str, ga: Group, gb: Group, metric: str = "selected") -> Paired:
    return paired_difference(a, b, ga.by_seed(metric), gb.by_seed(metric))


def decide(groups: dict) -> tuple[dict, Paired | None]:
    """{norm: Group or None} for one model x dataset -> ({norm: mark}, leader − runner-up).

    Only finished groups are ranked. The leader (highest mean) is 'best' and the runner-up
    'second' only when their paired 95% interval excludes zero; with two or more shared
    seeds and an interval across zero both are a 'tie'; with one shared seed (or none) the
    leader is 'untested' ('unshared')."""
    ranked = sorted(((g.mean, -NORMS.index(n) if n in NORMS else -99, n) for n, g in groups.items()
                     if g and g.finished), reverse=True)
    marks = {n: None for n in groups}
    if len(ranked) < 2:
        return marks, None
    leader, runner = ranked[0][2], ranked[1][2]
    p = compare(leader, runner, groups[leader], groups[runner])
    if p.excludes_zero and p.mean > 0:
        marks[leader], marks[runner] = "best", "second"
    elif p.half_width is not None:
        marks[leader] = marks[runner] = "tie"
    else:
        marks[leader] = "untested" if p.n == 1 else "unshared"
    return marks, p


# ---------------------------------------------------------------- headers

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
    parts = [f"{w} ({', '.join(sorted({r.label() for r in rs}))})" for w, rs in sorted(by.items())]
    return "weights (mixed): " + "; ".join(parts)


def seeds_line(groups: dict) -> str:
    ns = sorted({g.n for g in groups.values()})
    if ns == [1]:
        return ("runs per configuration: 1 (no seed repeats, so no interval: rankings are untested and "
                "small differences may not be real)")
    return (f"runs per configuration: {', '.join(map(str, ns))} (one per seed); cells with several runs show "
            "mean ± sample std (n)")


def selection_line(runs: list[Run]) -> str:
    kinds = {r.selection for r in runs}
    if kinds == {"best-val"}:
        return ("accuracy: test accuracy at the epoch with the best validation accuracy (held-out split); "
                "final-epoch test accuracy beside it")
    text = ("accuracy: best-epoch test accuracy, as the seed reports it (optimistic: the epoch is chosen on "
            "the test set); final-epoch test accuracy beside it")
    if "best-val" in kinds:
        n = sum(r.selection == "best-val" for r in runs)
        text += f" ({n} of {len(runs)} runs logged val_acc and use the best-validation epoch instead)"
    return text


def _header(section, groups: dict, n_sections: int) -> list[str]:
    runs = [r for g in groups.values() for r in g.runs]
    lines = [f"## {section_title(section)}", ""] if n_sections > 1 else []
    lines += [f"backend: {section[0]}  ", f"{weights_line(runs)}  ", f"{selection_line(runs)}  ",
              seeds_line(groups), ""]
    return lines


# ---------------------------------------------------------------- tables 2 and 3

def _accuracy_table_head(groups: dict, seed: dict, section, n_sections: int):
    """Datasets, models, the datasets the seed has numbers for, and the table's first lines."""
    datasets = order({k[0] for k in groups}, DATASETS)
    models = order({k[1] for k in groups}, MODELS)
    seeded = [d for d in datasets if any(k[0] == d for k in seed)]
    cols, align = ["model", "setting"], [":--", ":--"]
    for d in datasets:
        cols += [f"{d} ours", f"{d} ours final epoch"] + ([f"{d} seed", f"{d} ours − seed"] if d in seeded else [])
        align += ["--:"] * (4 if d in seeded else 2)
    lines = _header(section, groups, n_sections)
    lines += ["| " + " | ".join(cols) + " |", "|" + "|".join(align) + "|"]
    return datasets, models, seeded, lines


def _flags_of(marks: dict, groups: dict) -> set:
    flags = {m for m in marks.values() if m in MARK_SUFFIX}
    return flags | ({"ep"} if any(g and not g.finished for g in groups.values()) else set())


def format_table2(groups: dict, seed: dict, section, n_sections: int = 1) -> list[str]:
    datasets, models, seeded, lines = _accuracy_table_head(groups, seed, section, n_sections)
    flags = set()
    for m in models:
        ft_row, pt_row, diff_row = [m, "finetune"], ["", "pretrain"], ["", "finetune − pretrain"]
        for d in datasets:
            ft, pt = groups.get((d, m, "finetune")), groups.get((d, m, "pretrain"))
            gs = {"finetune": ft, "pretrain": pt}
            marks, _ = decide(gs)
            flags |= _flags_of(marks, gs)
            for row, g, norm in ((ft_row, ft, "finetune"), (pt_row, pt, "pretrain")):
                mark = None if marks.get(norm) == "second" else marks.get(norm)   # two settings: bold only
                row += [g.cell(mark), g.final_cell()] if g else [DASH, DASH]
                if d in seeded:
                    s = seed.get((d, m, norm))
                    row += [pct(s[0]) if s else DASH, _vs_seed(g, s, flags)]
            both = ft and pt and ft.by_seed() and pt.by_seed()
            diff_row += ([compare("finetune", "pretrain", ft, pt).text(),
                          compare("finetune", "pretrain", ft, pt, "final").text()] if both else [DASH, DASH])
            flags |= {"paired"} if both else set()
            if d in seeded:
                sf, sp = seed.get((d, m, "finetune")), seed.get((d, m, "pretrain"))
                sdiff = sf[0] - sp[0] if sf and sp else None
                diff_row.append(signed(sdiff) if sdiff is not None else DASH)
                diff_row.append(signed(ft.best_mean - pt.best_mean - sdiff) if ft and pt and sdiff is not None
                                else DASH)
        lines += ["| " + " | ".join(row) + " |" for row in (ft_row, pt_row, diff_row)]
    return lines + [""] + _footnotes(flags, "table2") + [""]


def _vs_seed(g: Group | None, s, flags: set) -> str:
    """Ours − the seed's published value, both best-epoch test accuracy (like for like)."""
    if not g or not s:
        return DASH
    diff = g.best_mean - s[0]
    noise = within_noise(diff, g.best_std)
    flags |= {NOISE} if noise else set()
    return (f"{NOISE} " if noise else "") + signed(diff)


def _footnotes(flags: set, table: str) -> list[str]:
    runner = {"table2": "the other setting", "table3": "the runner-up (the second-highest mean)"}[table]
    notes = [f"{DASH}: no run for this configuration.",
             f"Bold: the highest mean, where the 95% interval (Student's t, over the seeds both have) of "
             f"its paired difference to {runner} excludes zero" + ("; <u>underlined</u>: that runner-up."
                                                              if table == "table3" else ".")]
    if "tie" in flags:
        notes.append(f"({TIE}): the two top settings' paired 95% interval includes zero; neither is marked "
                     "better. See paired.md for every pair.")
    if "untested" in flags or "unshared" in flags:
        notes.append("(top; … untested): the highest mean, but the top two share fewer than two seeds, so "
                     "there is no interval and the ranking is not tested.")
    if "paired" in flags:
        notes.append("finetune − pretrain: mean paired difference over the shared finished seeds ± the "
                     "half-width of its 95% t-interval, in percentage points; n=1 has no interval.")
    if "ep" in flags:
        notes.append("(d/e ep): unfinished, d of e epochs done; unfinished runs are never ranked or compared.")
    notes.append("ours − seed: our best-epoch test accuracy (mean over seeds) minus the seed's published "
                 "best-epoch value" + (f"; {NOISE}: smaller than our standard deviation across seeds."
                                       if NOISE in flags else "."))
    return ["- " + n for n in notes]


def format_table3(groups: dict, seed: dict, section, n_sections: int = 1) -> tuple[list[str], tuple[int, int]]:
    datasets, models, seeded, lines = _accuracy_table_head(groups, seed, section, n_sections)
    norms = order({k[2] for k in groups} | set(NORMS), NORMS)
    flags, agree, compared = set(), 0, 0
    for m in models:
        cells = {}
        for d in datasets:
            gs = {n: groups.get((d, m, n)) for n in norms}
            marks, _ = decide(gs)
            flags |= _flags_of(marks, gs)
            best = [n for n, k in marks.items() if k == "best"]
            seed_vals = {n: seed[(d, m, n)][0] for n in norms if (d, m, n) in seed}
            if best and len(seed_vals) == len(norms):
                compared += 1
                agree += best[0] == max(seed_vals, key=seed_vals.get)
            for n, g in gs.items():
                cell = [g.cell(marks.get(n)), g.final_cell()] if g else [DASH, DASH]
                if d in seeded:
                    s = seed.get((d, m, n))
                    cell += [pct(s[0]) if s else DASH, _vs_seed(g, s, flags)]
                cells.setdefault(n, []).extend(cell)
        for i, n in enumerate(norms):
            lines.append("| " + " | ".join([m if i == 0 else "", n] + cells[n]) + " |")
    lines += [""]
    if compared:
        lines += [f"Where ours has a bold (tested) best setting, it is the seed's best in {agree} of {compared} "
                  "model × dataset cells.", ""]
    return lines + _footnotes(flags, "table3") + [""], (agree, compared)


def table3_seed_notes(runs: list[Run]) -> list[str]:
    """What a reader must know before comparing Table 3 with the seed's."""
    amps = {}
    for r in runs:
        amps.setdefault(str(r.config.get("amp", "?")), []).append(r)
    used = "; ".join(f"{a}: {len(rs)} run{'s' * (len(rs) != 1)}" for a, rs in sorted(amps.items()))
    return ["## Notes on comparing with the seed", "",
            f"- Precision: normfast trains under bf16 autocast by default on CUDA (`--amp auto`); the seed "
            f"trained in fp32, which `--amp off` reproduces. These runs used amp {used}.",
            "- `instance`: the seed's committed code crashes for `--normalize instance` (its branch tests the "
            "misspelled `'instnace'`), so its published instance numbers came from code that is not in its "
            "repository. normfast's `instance` is per-image, per-channel standardization as specified.",
            "- Weights: every run's initial weights are listed in throughput.md and results.csv.", ""]


# ---------------------------------------------------------------- paired differences

def paired_rows(sections: dict) -> list[dict]:
    """One row per section x dataset x model x pair of settings x metric (selected, final)."""
    rows = []
    for section, groups in sections.items():
        for d in order({k[0] for k in groups}, DATASETS):
            for m in order({k[1] for k in groups}, MODELS):
                present = [n for n in order({k[2] for k in groups}, NORMS) if groups.get((d, m, n))]
                for a, b in combinations(present, 2):
                    for metric in ("selected", "final"):
                        p = compare(a, b, groups[(d, m, a)], groups[(d, m, b)], metric)
                        rows.append({"backend": section[0], "weights": section[1], "dataset": d, "model": m,
                                     "a": a, "b": b, "metric": metric, "n": p.n,
                                     "seeds": " ".join(map(str, p.seeds)), "mean_diff": p.mean,
                                     "std_diff": p.std, "ci_low": p.low, "ci_high": p.high,
                                     "verdict": p.verdict, "paired": p})
    return rows


def format_paired(sections: dict) -> str:
    lines = ["# Paired differences between normalization settings", "",
             "For each model × dataset and every two settings a, b: the mean of a − b over the seeds both "
             "have (finished runs only; the same seed means the same data order and head initialization), "
             "in percentage points, with the half-width of its 95% interval (Student's t, n − 1 degrees of "
             "freedom). With n = 1 there is no interval: the difference is not tested. The selected accuracy "
             "is the one Tables 2 and 3 show; the final-epoch difference is beside it.", ""]
    rows = paired_rows(sections)
    for section in sections:
        rs = [r for r in rows if (r["backend"], r["weights"]) == section]
        if len(sections) > 1:
            lines += [f"## {section_title(section)}", ""]
        lines += ["| dataset | model | a − b | Δ selected (pp) | 95% interval | verdict | Δ final epoch (pp) |",
                  "|:--|:--|:--|--:|:--|:--|--:|"]
        for sel, fin in zip(rs[0::2], rs[1::2]):
            p, q = sel["paired"], fin["paired"]
            ci = f"[{100 * p.low:+.2f}, {100 * p.high:+.2f}]" if p.half_width is not None else DASH
            lines.append(f"| {sel['dataset']} | {sel['model']} | {sel['a']} − {sel['b']} | {p.text()} | {ci} | "
                         f"{p.verdict} | {q.text()} |")
        lines.append("")
    return "\n".join(lines)


PAIRED_FIELDS = ["backend", "weights", "dataset", "model", "a", "b", "metric", "n", "seeds", "mean_diff",
                 "std_diff", "ci_low", "ci_high", "verdict"]


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


def _published_cell(ds: str) -> str:
    pub = SEED_TABLE1_PRETRAIN.get(ds)
    if not pub:
        return DASH
    cell = _fmt_ms(*pub, digits=2)
    if ds in SEED_TABLE1_BGR:
        cell += "<br>**B, G, R order** (the seed read images with cv2.imread; our columns are R, G, B)"
    return cell


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
             "normalization", "", "Channels are R, G, B unless marked.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join([":--"] + ["--:"] * 3 + [":--"] * (len(head) - 4)) + "|"]
    details, missing = [], []
    for ds in order(dirs, DATASETS):
        t, tried = None, []
        for d in dirs[ds]:
            try:
                t = table1(d)
                break
            except NormfastError as e:
                tried.append(f"`{d}` ({e})")
        pub_cell = _published_cell(ds)
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
    if any(ds in SEED_TABLE1_BGR for ds in dirs):
        lines += ["The seed's published Tiny ImageNet row is in B, G, R order: it read the images with "
                  "`cv2.imread` and normalized them with the R, G, B ImageNet statistics. Compare its first "
                  "value with our third and vice versa.", ""]
    lines += ["`instance` is measured by streaming the train split; the affine settings follow exactly "
              "from the train statistics. `finetune` uses the statistics computed at conversion.", ""]
    return "\n".join(lines + ["## Details"] + details) + "\n"


# ---------------------------------------------------------------- throughput

def format_throughput(runs: list[Run]) -> str:
    head = ["dataset", "model", "norm", "backend", "seed", "epochs", "train img/s (all epochs)",
            "train img/s (excl. 1st)", "test img/s", "epoch s (mean)", "data wait", "device", "amp", "compile",
            "world size", "weights"]
    lines = ["# Throughput per run", "",
             "Training images per second averaged over epochs, and again without the first epoch "
             "(warm-up, compilation) when there is more than one; data wait is the fraction of "
             "training time spent waiting for the next batch. The last column names the initial weights.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join([":--"] * 6 + ["--:"] * 5 + [":--"] * 5) + "|"]
    num = lambda v, f="{:.0f}": f.format(v) if v is not None else DASH
    for r in runs:
        excl = r.mean_of("train_images_per_second", skip_first=True) if len(r.metrics) > 1 else None
        wait = r.mean_of("data_wait_fraction")
        lines.append("| " + " | ".join([
            r.dataset, r.model, r.norm, r.backend, str(r.seed), r.progress(),
            num(r.mean_of("train_images_per_second")), num(excl), num(r.mean_of("test_images_per_second")),
            num(r.mean_of("epoch_seconds"), "{:.1f}"), f"{wait:.0%}" if wait is not None else DASH,
            r.device, str(r.config.get("amp", "?")), str(r.config.get("compile", "?")),
            str(r.config.get("world_size", 1)), r.weights]) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- csv

RESULT_FIELDS = ["dataset", "model", "norm", "backend", "seed", "weights", "run_dir", "epochs_done", "epochs",
                 "finished", "best_acc", "best_epoch", "last_test_acc", "seed_best_acc", "diff_vs_seed",
                 "train_images_per_second", "train_images_per_second_excl_first", "mean_epoch_seconds",
                 "data_wait_fraction", "device", "amp", "compile", "world_size",
                 "pretrained", "selection", "selected_acc", "selected_epoch", "used", "repeat_of"]


def write_csv(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows([{k: ("" if row.get(k) is None else row.get(k)) for k in fields} for row in rows])
    return buf.getvalue()


def results_rows(runs: list[Run], seed: dict, repeats: list | None = None) -> list[dict]:
    """One row per run found; a left-out repeat has used=False and repeat_of = the run used."""
    repeat_of = {id(o): rep.used for rep in repeats or [] for o in rep.left_out}
    rows = []
    for r in runs:
        s = seed.get((r.dataset, r.model, r.norm))
        rows.append({
            "dataset": r.dataset, "model": r.model, "norm": r.norm, "backend": r.backend, "seed": r.seed,
            "weights": r.weights, "run_dir": str(r.path), "epochs_done": r.epochs_done, "epochs": r.epochs,
            "finished": r.finished, "best_acc": r.best_acc, "best_epoch": r.best_epoch,
            "last_test_acc": r.final_acc,
            "seed_best_acc": s[0] if s else None,
            "diff_vs_seed": r.best_acc - s[0] if s and r.best_acc is not None else None,
            "train_images_per_second": r.mean_of("train_images_per_second"),
            "train_images_per_second_excl_first": (r.mean_of("train_images_per_second", True)
                                                   if len(r.metrics) > 1 else None),
            "mean_epoch_seconds": r.mean_of("epoch_seconds"), "data_wait_fraction": r.mean_of("data_wait_fraction"),
            "device": r.device, "amp": r.config.get("amp"), "compile": r.config.get("compile"),
            "world_size": r.config.get("world_size", 1), "pretrained": r.config.get("pretrained"),
            "selection": r.selection, "selected_acc": r.selected_acc, "selected_epoch": r.selected_epoch,
            "used": id(r) not in repeat_of,
            "repeat_of": str(repeat_of[id(r)].path) if id(r) in repeat_of else None})
    return rows


SUMMARY_FIELDS = ["backend", "weights", "dataset", "model", "norm", "n", "mean_best_acc", "std_best_acc",
                  "finished_runs", "seed_best_acc", "diff_vs_seed",
                  "seeds", "selection", "mean_selected_acc", "std_selected_acc", "mean_final_acc", "std_final_acc"]


def summary_rows(sections: dict, seed: dict) -> list[dict]:
    rows = []
    for section, groups in sections.items():
        for (d, m, n), g in groups.items():
            s = seed.get((d, m, n))
            fm, fs = mean_std(g.finals) if g.finals else (None, None)
            rows.append({"backend": section[0], "weights": section[1], "dataset": d, "model": m, "norm": n,
                         "n": g.n, "mean_best_acc": g.best_mean, "std_best_acc": g.best_std,
                         "finished_runs": sum(r.finished for r in g.runs),
                         "seed_best_acc": s[0] if s else None, "diff_vs_seed": g.best_mean - s[0] if s else None,
                         "seeds": " ".join(str(r.seed) for r in g.runs),
                         "selection": "/".join(sorted({r.selection for r in g.runs})),
                         "mean_selected_acc": g.mean, "std_selected_acc": g.std,
                         "mean_final_acc": fm, "std_final_acc": fs})
    return rows
