"""`normfast report RUNS --out DIR`: every report file, and index.md, which links them,
lists what was left out and why, and ends with one paragraph per dataset answering the
study's question from the runs' own numbers."""
from __future__ import annotations

from pathlib import Path

from normfast.errors import NormfastError
from normfast.atomic import write_atomic
from normfast.report.common import DATASETS, MODELS, NORMS, order
from normfast.report.figure import plot_figure1
from normfast.report.runs import REPEAT_RULE, load_runs, pick_one_per_seed
from normfast.report.tables import (PAIRED_FIELDS, RESULT_FIELDS, SUMMARY_FIELDS, compare, format_paired,
                                    format_table1, format_table2, format_table3, format_throughput, group_runs,
                                    load_seed_results, paired_rows, results_rows, section_title,
                                    summary_rows, table3_seed_notes, write_csv)


# ---------------------------------------------------------------- the answer

def _pp(x: float) -> str:
    return f"{100 * abs(x):.2f}"


def answer_one(dataset: str, model: str, groups: dict, section=None) -> str:
    """One sentence for one model on one dataset: which setting leads, which tie with it and
    which are lower, each with the paired 95% interval (groups: {norm: Group})."""
    finished = {n: g for n, g in groups.items() if g.finished}
    unfinished = [n for n in groups if n not in finished]
    seeds = {r.seed for g in finished.values() for r in g.runs}
    k = len(seeds)
    head = f"{dataset}, {model}" + (f" ({section_title(section)})" if section else "")
    tail = f" ({', '.join(unfinished)} unfinished: not compared)" if unfinished else ""
    if len(finished) < 2:
        what = f"only {next(iter(finished))} has finished runs" if finished else "no run has finished"
        return f"{head}: {what}, nothing to compare{tail}."
    head += f", {k} seed{'s' * (k != 1)}"
    ranked = sorted(finished, key=lambda n: (-finished[n].mean, NORMS.index(n) if n in NORMS else 99, n))
    lead = ranked[0]
    pairs = [(x, compare(lead, x, finished[lead], finished[x])) for x in ranked[1:]]
    n_note = lambda p: f" (n={p.n})" if p.n != k else ""
    if k == 1:
        parts = [f"{x} is {_pp(p.mean)} points {'lower' if p.mean >= 0 else 'higher'}" for x, p in pairs]
        return (f"{head}: no interval; differences below are not tested. {lead} is highest; "
                + ", ".join(parts) + f"{tail}.")
    ties = [(x, p) for x, p in pairs if p.half_width is not None and not p.excludes_zero]
    parts = []
    if len(ties) == 1:
        x, p = ties[0]
        parts.append(f"{lead} and {x} tie (Δ = {100 * p.mean:+.2f} ± {100 * p.half_width:.2f}{n_note(p)})")
    elif ties:
        names = ", ".join(x for x, _ in ties[:-1]) + f" and {ties[-1][0]}"
        deltas = ", ".join(f"{lead} − {x} = {100 * p.mean:+.2f} ± {100 * p.half_width:.2f}{n_note(p)}"
                           for x, p in ties)
        parts.append(f"{lead}, {names} tie (Δ {deltas})")
    else:
        parts.append(f"{lead} is highest")
    for x, p in pairs:
        if p.n == 0:
            parts.append(f"{x} shares no seed with {lead} (not compared)")
        elif p.half_width is None:
            parts.append(f"{x} is {_pp(p.mean)} points {'lower' if p.mean >= 0 else 'higher'} on the one seed "
                         f"it shares with {lead} (not tested)")
        elif p.excludes_zero:
            parts.append(f"{x} is {_pp(p.mean)} ± {100 * p.half_width:.2f} points "
                         f"{'lower' if p.mean > 0 else 'higher'}{n_note(p)}")
    return f"{head}: " + "; ".join(parts) + f"{tail}."


def answer_paragraphs(sections: dict) -> list[str]:
    """One paragraph per dataset, one sentence per model (and section, when several)."""
    datasets = order({k[0] for groups in sections.values() for k in groups}, DATASETS)
    paragraphs = []
    for d in datasets:
        sentences = []
        for section, groups in sections.items():
            for m in order({k[1] for k in groups if k[0] == d}, MODELS):
                gs = {n: groups[(d, m, n)] for n in order({k[2] for k in groups}, NORMS) if (d, m, n) in groups}
                sentences.append(answer_one(d, m, gs, section if len(sections) > 1 else None))
        paragraphs.append(" ".join(sentences))
    return paragraphs


# ---------------------------------------------------------------- report

def _slug(section) -> str:
    return "-".join("".join(c if c.isalnum() else "_" for c in part) for part in section)


def make_report(runs_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the report files into out_dir; returns their paths (index.md last)."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    runs, notes = load_runs(runs_dir)
    used, repeats = pick_one_per_seed(runs)
    sections = dict(sorted(group_runs(used).items()))
    if not sections:
        raise NormfastError(f"{runs_dir}: {len(runs)} run(s) found but none has finished an epoch yet")
    seed = load_seed_results()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    repeat_line = ([f"{sum(len(r.left_out) for r in repeats)} repeated run(s) of an already counted "
                    "(configuration, seed) are left out of this table; index.md lists them.", ""]
                   if repeats else [])

    written.append(write_atomic(out_dir / "table1.md", format_table1(runs, runs_dir)))

    t2 = ["# Table 2 — test accuracy (%): finetune vs pretrain normalization", "",
          "Ours beside the seed's published values (Normalization-Test, 100 epochs); differences in "
          "percentage points. Bold: the better of finetune and pretrain where their paired 95% interval "
          "excludes zero.", ""] + repeat_line
    t3 = ["# Table 3 — test accuracy (%) for the four normalization settings", "",
          "Per model and dataset, our best setting is **bold** (where its paired 95% interval against the "
          "runner-up excludes zero) and that runner-up <u>underlined</u>; the seed's published values and "
          "ours − seed beside them.", ""] + repeat_line
    for section, groups in sections.items():
        t2 += format_table2(groups, seed, section, len(sections))
        t3 += format_table3(groups, seed, section, len(sections))[0]
    t3 += table3_seed_notes(used)
    written.append(write_atomic(out_dir / "table2.md", "\n".join(t2)))
    written.append(write_atomic(out_dir / "table3.md", "\n".join(t3)))
    written.append(write_atomic(out_dir / "paired.md", format_paired(sections)))

    figures = []
    for section, groups in sections.items():
        name = "figure1.png" if len(sections) == 1 else f"figure1-{_slug(section)}.png"
        figures.append(plot_figure1(groups, out_dir / name, section_title(section)))
    written += figures

    written.append(write_atomic(out_dir / "throughput.md", format_throughput(runs)))
    written.append(write_atomic(out_dir / "results.csv", write_csv(results_rows(runs, seed, repeats),
                                                                   RESULT_FIELDS)))
    written.append(write_atomic(out_dir / "summary.csv", write_csv(summary_rows(sections, seed), SUMMARY_FIELDS)))
    written.append(write_atomic(out_dir / "paired.csv", write_csv(paired_rows(sections), PAIRED_FIELDS)))

    datasets = order({r.dataset for r in runs}, DATASETS)
    index = ["# normfast report", "",
             f"{len(runs)} runs from `{runs_dir}`: datasets {', '.join(datasets)}; "
             f"{len(sections)} section(s): " + "; ".join(section_title(s) for s in sections) + ".", "",
             "- [Table 1 — datasets before/after normalization](table1.md)",
             "- [Table 2 — finetune vs pretrain](table2.md)",
             "- [Table 3 — all four settings](table3.md)",
             "- [Paired differences between settings, with 95% intervals](paired.md)"]
    index += [f"- [Figure 1 — test accuracy per epoch{' (' + section_title(s) + ')' if len(sections) > 1 else ''}]"
              f"({p.name})" for s, p in zip(sections, figures)]
    index += ["- [Throughput per run](throughput.md)",
              "- [results.csv](results.csv) — one row per run",
              "- [summary.csv](summary.csv) — one row per configuration (mean, std, n, seed)",
              "- [paired.csv](paired.csv) — one row per pair of settings", ""]
    index += [f"![Figure 1]({p.name})" for p in figures] + [""]
    if repeats:
        index += ["## Repeated runs (same configuration and seed)", "",
                  f"Each seed counts once. Of several runs with the same configuration and seed, the report "
                  f"uses one: {REPEAT_RULE}. The others are listed here and in results.csv (used = False).", ""]
        index += [f"- {r.note()}" for r in repeats] + [""]
    if notes:
        index += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    index += ["## The answer", "",
              "Which normalization to use, from these runs' selected accuracy (see Table 2's accuracy line) "
              "and paired differences over shared seeds, in percentage points with 95% intervals:", ""]
    for paragraph in answer_paragraphs(sections):
        index += [paragraph, ""]
    written.append(write_atomic(out_dir / "index.md", "\n".join(index)))
    return written
