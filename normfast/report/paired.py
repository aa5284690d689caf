"""Paired differences between every two settings: paired.md and the rows of paired.csv."""
from __future__ import annotations

from itertools import combinations

from normfast.report.common import DASH, DATASETS, MODELS, NORMS, order
from normfast.report.groups import compare, section_title


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
