"""`normfast report RUNS --out DIR`: the seed's Tables 1-3 and Figure 1 from run directories,
with throughput beside accuracy, the seed's published numbers beside ours, and how sure each
answer is.

Reads RUNS/<dataset>/<run>/{config.yaml, metrics.jsonl, best_results.json} (written by
`normfast train`; read through normfast.rundir.RunDir, as the sweep does) and writes, each file atomically:
(modules: runs, groups, statistics, seed, table1, accuracy (Tables 2-3), paired, rows (throughput
and CSV), figure, index (index.md and the answer), make (make_report))

  index.md          links, repeated runs left out, notes, and a closing answer per dataset
  table1.md         per dataset: train-split mean/std before and after each normalization
  table2.md         finetune vs pretrain, paired difference with its 95% interval, seed beside ours
  table3.md         all four settings, tested best **bold**, its runner-up <u>underlined</u>
  paired.md/.csv    every pair of settings: mean paired difference, 95% t-interval, n
  figure1.png       test accuracy per epoch, rows models x columns datasets, one line per setting
  throughput.md     per run: images/s, epoch seconds, data-wait fraction, device, amp, weights
  results.csv       one row per run found (used = False for a left-out repeat)
  summary.csv       one row per configuration: mean, std, n, seeds and the seed's value

Decisions:
- A section is one backend and one kind of initial weights; sections are never pooled.
- A run is keyed by (configuration, seed). Repeats of one key are reported in index.md and
  only one is used (runs.REPEAT_RULE); a seed is never counted twice.
- Settings are compared per seed (same seed: same data order and initialization): the mean
  paired difference and its 95% Student-t interval over the seeds both have; one shared
  seed gives no interval, and the tables and the answer say so. A setting is bold only when
  its interval against the runner-up excludes zero, else both cells say "tie within noise".
- Accuracy is the test accuracy at the best-validation epoch when the run logged val_acc,
  else the best-epoch test accuracy (optimistic, labelled so); the final-epoch test accuracy
  stands beside it. Ours − seed always compares best-epoch test accuracy, as the seed did.
- Unfinished runs are shown with their progress and never ranked or compared.
"""
from normfast.report.groups import group_runs
from normfast.report.index import answer_paragraphs
from normfast.report.make import make_report
from normfast.report.runs import Run, load_runs, pick_one_per_seed, read_run, recorded_seed, weights_kind
from normfast.report.seed import load_seed_results
from normfast.report.statistics import Paired, mean_std, paired_difference, rank_marks, within_noise

__all__ = ["make_report", "load_runs", "read_run", "recorded_seed", "pick_one_per_seed", "group_runs",
           "rank_marks", "within_noise", "mean_std", "paired_difference", "Paired", "weights_kind",
           "load_seed_results", "answer_paragraphs", "Run"]
