"""`normfast demo`: the whole main job on the built-in synthetic dataset, end to end.

convert -> stats -> a short training run per normalization setting -> throughput
benchmarks -> report. Steps already done (a converted dataset, finished runs) are reused,
so a second run is fast and changes nothing.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from normfast.configfiles import CONFIG_DIR, load_yaml
from normfast.normalization import SETTINGS


def run_demo(out: Path, device: str | None = None, echo=print) -> Path:
    from converters.convert import ConvertConfig, convert
    from normfast.bench import bench_loaders, bench_train, format_loader_table, format_train_table, machine
    from normfast.config import resolve_train_config
    from normfast.atomic import write_json
    from normfast.report import make_report
    from normfast.stats import format_stats, table1
    from normfast.rundir import RunDir
    from normfast.train import train

    plan = load_yaml(CONFIG_DIR / "demo.yaml")
    out = Path(out)
    data = out / "data" / plan["dataset"]["source"]
    runs = out / "runs"
    t_start = time.perf_counter()

    echo(f"[1/5] convert {plan['dataset']['source']} -> {data}")
    if (data / "manifest.json").exists():
        echo("      already converted; reusing it")
    else:
        m = convert(ConvertConfig(source=plan["dataset"]["source"], out=data, limit=plan["dataset"]["limit"]))
        echo(f"      {m['splits']['train']['count']} train + {m['splits']['test']['count']} test images "
             f"in {m['seconds']:.1f} s")

    echo("[2/5] stats")
    echo(format_stats(table1(data)))

    echo(f"[3/5] train {plan['train']['model']} from scratch, {plan['train']['epochs']} epochs, "
         f"one run per normalization setting")
    for norm in SETTINGS:
        # from scratch unless demo.yaml says otherwise: the default (ImageNet weights) needs a network
        train_opts = {"pretrained": "none"} | plan["train"]
        cfg = resolve_train_config(None, **(train_opts | {"data": str(data), "norm": norm, "runs": str(runs),
                                                           "device": device or "auto"}))
        run = RunDir(cfg.run_dir("synthetic"))
        if run.finished(cfg.epochs):
            echo(f"      {norm}: finished before; reusing {run.path}")
            continue
        cfg.resume = run.has_checkpoint()
        best = train(cfg)
        echo(f"      {norm}: best test accuracy {best['best_acc']:.4f} (epoch {best['best_epoch'] + 1})")

    echo("[4/5] throughput benchmarks")
    bench_dir = out / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    b = plan["bench"]

    def measured(name: str, run) -> list[dict]:
        """Records from bench_dir/name, measured now unless an earlier run left them."""
        path = bench_dir / name
        if path.exists():
            echo(f"      measured before; reusing {path}")
            return json.loads(path.read_text())["records"]
        records = run()
        write_json(path, {"machine": machine(), "records": records})
        return records

    def indent(line: str) -> None:
        echo("      " + line)

    echo(format_loader_table(measured("loaders.json", lambda: bench_loaders(
        data, b["loaders"], "finetune", device, max_batches=b["loader_batches"], echo=indent))))
    echo(format_train_table(measured("train.json", lambda: bench_train(
        data, b["train_backends"], plan["train"]["model"], device=device,
        batch_size=plan["train"]["batch_size"], steps=b["train_steps"], warmup=b["train_warmup"],
        repeats=b["train_repeats"], echo=indent))))

    echo("[5/5] report")
    report_dir = out / "report"
    make_report(runs, report_dir)
    echo(f"done in {time.perf_counter() - t_start:.0f} s. Report: {report_dir}/ "
         f"(table1.md, table2.md, table3.md, figure1.png, throughput.md)")
    return report_dir
