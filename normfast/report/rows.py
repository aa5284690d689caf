"""Per-run and per-configuration rows: throughput.md, results.csv and summary.csv."""
from __future__ import annotations

import csv
import io

from normfast.report.common import DASH
from normfast.report.runs import Run
from normfast.report.statistics import mean_std


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
