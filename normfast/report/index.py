"""index.md: links every report file, lists what was left out and why, and ends with one
paragraph per dataset answering the study's question from the runs' own numbers."""
from __future__ import annotations

from pathlib import Path

from normfast.report.common import DATASETS, MODELS, NORMS, order
from normfast.report.groups import compare, section_title
from normfast.report.runs import REPEAT_RULE


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


# ---------------------------------------------------------------- index.md

def format_index(runs: list, runs_dir: Path, sections: dict, figures: list[Path], repeats: list,
                 notes: list[str]) -> str:
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
    return "\n".join(index)
