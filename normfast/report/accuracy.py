"""Tables 2 and 3: accuracy per setting, the seed's published numbers beside ours.

Accuracy in the tables is the *selected* accuracy of each run: the test accuracy at the
best-validation epoch when the run logged val_acc, else the best-epoch test accuracy (the
seed's number, optimistic: the epoch is chosen on the test set). The final-epoch test
accuracy stands beside it.
"""
from __future__ import annotations

from normfast.report.common import DASH, DATASETS, MODELS, NOISE, NORMS, TIE, order, pct, signed
from normfast.report.groups import MARK_SUFFIX, Group, compare, decide, section_title
from normfast.report.runs import Run, weights_kind
from normfast.report.statistics import within_noise


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
