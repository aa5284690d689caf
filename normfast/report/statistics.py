"""How sure is each answer: spreads across seeds, and paired differences between two
normalization settings over the seeds both have.

Two runs with the same seed share the data order, the augmentation draws and the new
head's initialization, so the difference between two settings is measured per seed and
the seed-to-seed variation common to both cancels. A 95% interval for the mean difference
uses Student's t with n - 1 degrees of freedom; with one shared seed there is no interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import t as student_t

LEVEL = 0.95


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


@dataclass(frozen=True)
class Paired:
    """a - b over the seeds both settings have (accuracies as fractions)."""
    a: str
    b: str
    seeds: tuple
    mean: float | None            # None when no seed is shared
    std: float | None             # sample std of the per-seed differences (n >= 2)
    half_width: float | None      # of the 95% t-interval (n >= 2)

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    @property
    def excludes_zero(self) -> bool:
        """The interval lies wholly on one side of zero (False when there is no interval)."""
        return self.half_width is not None and (self.low > 0 or self.high < 0)

    @property
    def verdict(self) -> str:
        if self.n == 0:
            return "no shared seeds"
        if self.half_width is None:
            return "1 seed: no interval"
        if not self.excludes_zero:
            return "tie within noise"
        return f"{self.a} higher" if self.mean > 0 else f"{self.b} higher"

    def text(self, scale: float = 100) -> str:
        """'+0.12 ± 0.30 (n=3)' in percentage points; '+0.12 (n=1, no interval)'."""
        if self.n == 0:
            return "no shared seeds"
        if self.half_width is None:
            return f"{scale * self.mean:+.2f} (n=1, no interval)"
        return f"{scale * self.mean:+.2f} ± {scale * self.half_width:.2f} (n={self.n})"


def paired_difference(a: str, b: str, acc_a: dict, acc_b: dict, level: float = LEVEL) -> Paired:
    """acc_a, acc_b: {seed: accuracy}. Mean of acc_a[s] - acc_b[s] over shared seeds s, with
    its two-sided t-interval at `level` when at least two seeds are shared."""
    seeds = tuple(sorted(set(acc_a) & set(acc_b), key=str))
    if not seeds:
        return Paired(a, b, seeds, None, None, None)
    diffs = [acc_a[s] - acc_b[s] for s in seeds]
    mean, std = mean_std(diffs)
    if std is None:
        return Paired(a, b, seeds, mean, None, None)
    half = float(student_t.ppf(0.5 + level / 2, len(diffs) - 1)) * std / math.sqrt(len(diffs))
    return Paired(a, b, seeds, mean, std, half)


__all__ = ["LEVEL", "Paired", "mean_std", "paired_difference", "rank_marks", "within_noise"]
