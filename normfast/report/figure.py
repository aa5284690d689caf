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


MARKERS_UP_TO = 12      # epochs: a curve this short is drawn with a marker at each epoch (one epoch is a dot)


def _curves(g) -> list[list[float]]:
    """Test accuracy (%) per epoch of each run in the group, in epoch order."""
    curves = []
    for r in g.runs:
        by_epoch = {row["epoch"]: row["test_acc"] for row in r.metrics}
        curves.append([100 * by_epoch[e] for e in sorted(by_epoch)])
    return [c for c in curves if c]


def _epoch_axis(ax, epochs: int) -> None:
    """Whole epochs only: every epoch a tick for short runs, with half an epoch of margin so that
    a one-epoch run is a dot in the middle, not at 0.945…1.050."""
    from matplotlib.ticker import MaxNLocator
    if epochs <= MARKERS_UP_TO:
        ax.set_xticks(range(1, epochs + 1))
        ax.set_xlim(0.5, epochs + 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_figure1(groups: dict, path: Path, title: str = "") -> Path:
    """Figure 1 of one section as a PNG at `path`, written atomically."""
    buf = io.BytesIO()
    figure1(groups, title).savefig(buf, format="png")
    return write_atomic(path, buf.getvalue())


def figure1(groups: dict, title: str = ""):
    """The matplotlib Figure (Agg canvas attached) of one section: {(dataset, model, norm): Group}."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    datasets = order({k[0] for k in groups}, DATASETS)
    models = order({k[1] for k in groups}, MODELS)
    norms = order({k[2] for k in groups}, NORMS)
    curves = {k: _curves(g) for k, g in groups.items()}
    # inches: 2.4 per row of plots and 0.75 for the title above and the legend below, which the constrained layout
    # packs around the plots without an empty band
    width = max(6.4, 3.4 * len(datasets) + 0.6)
    fig = Figure(figsize=(width, 2.4 * len(models) + 0.75), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(models), len(datasets), squeeze=False, sharex="col")
    marked = set()                             # settings drawn with a dot per epoch somewhere
    for j, d in enumerate(datasets):
        _epoch_axis(axes[0][j], max((len(c) for k, cs in curves.items() if k[0] == d for c in cs), default=1))
    for i, m in enumerate(models):
        for j, d in enumerate(datasets):
            ax = axes[i][j]
            if not any((d, m, n) in groups for n in norms):
                ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes, color="0.5")
                ax.set_yticks([])
            for n in norms:
                cs = curves.get((d, m, n))
                if not cs:
                    continue
                mean, std = curve_stats(cs)
                x = list(range(1, len(mean) + 1))
                label = n + (f" (n={len(cs)})" if len(cs) > 1 else "")
                dots = len(x) <= MARKERS_UP_TO
                marked.update({n} if dots else set())
                ax.plot(x, mean, color=COLORS.get(n), lw=1.4, label=label, marker="o" if dots else None, ms=4)
                if len(cs) > 1:
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
    # the legend shows what the plot shows: a line with a dot per epoch for short runs
    handles = [Line2D([], [], color=COLORS.get(n), lw=2, marker="o" if n in marked else None, ms=4) for n in norms]
    multi = any(g.n > 1 for g in groups.values())
    what = "test accuracy per epoch" + (" (mean ± std across seeds)" if multi else "")
    # about 0.09 inch a character at 10 pt: a title wider than the figure goes on two lines
    joint = " — " if len(title) + len(what) + 3 <= width / 0.09 else "\n"
    fig.suptitle((title + joint if title else "") + what, fontsize=10)
    fig.legend(handles, norms, loc="outside lower center", ncol=len(norms), fontsize=9, frameon=False)
    return fig
