"""`normfast report RUNS --out DIR`: reads the runs once and writes every report file, each
atomically (normfast.atomic), index.md last."""
from __future__ import annotations

from pathlib import Path

from normfast.atomic import why, write_atomic
from normfast.errors import NormfastError
from normfast.report.accuracy import format_table2, format_table3, table3_seed_notes
from normfast.report.figure import plot_figure1
from normfast.report.groups import group_runs, section_title
from normfast.report.index import format_index
from normfast.report.paired import PAIRED_FIELDS, format_paired, paired_rows
from normfast.report.rows import RESULT_FIELDS, SUMMARY_FIELDS, format_throughput, results_rows, summary_rows, write_csv
from normfast.report.runs import load_runs, pick_one_per_seed
from normfast.report.seed import load_seed_results
from normfast.report.table1 import format_table1


def _slug(section) -> str:
    return "-".join("".join(c if c.isalnum() else "_" for c in part) for part in section)


def make_report(runs_dir: str | Path, out_dir: str | Path, echo=None) -> list[Path]:
    """Write the report files into out_dir; returns their paths (index.md last). `echo`, when
    given, is told each note on what was left out (index.md lists them too)."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    runs, notes = load_runs(runs_dir)
    for note in notes if echo else ():
        echo(f"note: {note}")
    used, repeats = pick_one_per_seed(runs)
    sections = dict(sorted(group_runs(used).items()))
    if not sections:
        raise NormfastError(f"{runs_dir}: {len(runs)} run(s) found but none has finished an epoch yet")
    seed = load_seed_results()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:            # a read-only mount, a file in the way, no permission
        raise NormfastError(f"{out_dir}: cannot create the report folder ({why(e)})") from None
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

    index = format_index(runs, runs_dir, sections, figures, repeats, notes)
    written.append(write_atomic(out_dir / "index.md", index))
    return written
