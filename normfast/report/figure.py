"""Figure 1: test accuracy per epoch, rows models x columns datasets, one line per setting
(mean ± std band across seeds when there are several)."""
from __future__ import annotations

import io
from pathlib import Path

from normfast.atomic import write_atomic
from normfast.report.common import DATASETS, MODELS, NORMS, order
from normfast.report.statistics import mean_std

COLORS = {"finetune": "#1f77b4", "pretrain": "#ff7f0e", "instance": "#2ca02c", "minmax": "#d62728"}


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
