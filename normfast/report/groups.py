"""Groups of runs (one configuration in one section, one run per seed) and how two settings
are compared and ranked: a setting is bold only where the 95% interval of its paired
difference to the runner-up excludes zero."""
from __future__ import annotations

from dataclasses import dataclass, field

from normfast.report.common import DASH, NORMS, TIE, pct
from normfast.report.runs import Run
from normfast.report.statistics import Paired, mean_std, paired_difference


def emphasize(text: str, mark: str | None) -> str:
    return {"best": f"**{text}**", "second": f"<u>{text}</u>"}.get(mark, text)


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


def section_title(section: tuple[str, str]) -> str:
    return f"backend {section[0]} · weights {section[1]}"
