"""Table 1 of the report: per dataset, the train split's mean/std before and after each
normalization, from the converted data the runs were trained on (normfast.stats computes
it), beside the seed's published row."""
from __future__ import annotations

from pathlib import Path

from normfast.errors import NormfastError
from normfast.report.common import DASH, DATASETS, NORMS, order
from normfast.report.runs import Run
from normfast.report.seed import SEED_TABLE1_BGR, SEED_TABLE1_PRETRAIN


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
    from normfast.stats import format_stats, table1
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
        details += ["", "### " + format_stats(t)]
    lines += [""] + missing + ([""] if missing else [])
    if any(ds in SEED_TABLE1_BGR for ds in dirs):
        lines += ["The seed's published Tiny ImageNet row is in B, G, R order: it read the images with "
                  "`cv2.imread` and normalized them with the R, G, B ImageNet statistics. Compare its first "
                  "value with our third and vice versa.", ""]
    lines += ["`instance` is measured by streaming the train split; the affine settings follow exactly "
              "from the train statistics. `finetune` uses the statistics computed at conversion.", ""]
    return "\n".join(lines + ["## Details"] + details) + "\n"
