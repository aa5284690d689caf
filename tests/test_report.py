"""`normfast report` on hand-written run directories: tables, seed comparison, seeds and
noise, partial grids, the figure, and errors."""
import csv
import json

import pytest
import yaml

from converters.convert import ConvertConfig, convert
from normfast.errors import NormfastError
from normfast.report import (load_seed_results, make_report, mean_std, parse_metrics, rank_marks,
                             weights_kind, within_noise)

W18 = "imagenet:ResNet18_Weights.IMAGENET1K_V1"


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "syn"
    convert(ConvertConfig(source="synthetic", out=out, limit=40, formats=("dali",), quiet=True))
    return out


def make_run(runs, dataset, model, norm, accs, *, backend="resident", seed=223, epochs=None, data="/nowhere",
             weights=None, name=None, cut_line=False, gpu=None):
    """A run directory as `normfast train` writes it; accs are test accuracies per epoch."""
    epochs = epochs or len(accs)
    name = name or f"{model}-{norm}-{backend}"
    d = runs / dataset / name
    d.mkdir(parents=True)
    weights = weights or f"imagenet:{model}_Weights.IMAGENET1K_V1"
    cfg = dict(data=str(data), model=model, norm=norm, backend=backend, seed=seed, epochs=epochs,
               pretrained="imagenet", amp="off", compile="none", dataset=dataset, weights=weights,
               device="cpu", world_size=1, versions={"python": "3", "torch": "2", "gpu": gpu})
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    lines = [json.dumps({"epoch": e, "lr": 1e-3, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0,
                         "test_acc": a, "epoch_seconds": 10.0 + e, "train_seconds": 9.0,
                         "train_images_per_second": 100.0 if e == 0 else 200.0, "data_wait_fraction": 0.25,
                         "test_images_per_second": 500.0}) for e, a in enumerate(accs)]
    text = "\n".join(lines) + "\n" + ('{"epoch": 99, "test_a' if cut_line else "")
    (d / "metrics.jsonl").write_text(text)
    best = max(range(len(accs)), key=lambda e: accs[e])
    (d / "best_results.json").write_text(json.dumps(
        {"best_epoch": best, "best_acc": accs[best], "epochs_done": len(accs), "epochs": epochs,
         "finished": len(accs) == epochs, "weights": weights}))
    return d


def rows_of(md: str, model: str) -> dict:
    """{setting: [cells]} for one model's block of a table 2/3 markdown table."""
    out, current = {}, None
    for line in md.splitlines():
        if not line.startswith("| ") or line.startswith("| model"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        current = cells[0] or current
        if current == model:
            out[cells[1]] = cells[2:]
    return out


# ---------------------------------------------------------------- pure helpers

def test_helpers():
    assert rank_marks({"a": 0.5, "b": 0.7, "c": 0.6, "d": None}) == {"a": None, "b": "best", "c": "second", "d": None}
    assert rank_marks({"a": 0.5}) == {"a": None}
    assert rank_marks({"a": 0.7, "b": 0.7, "c": 0.1}) == {"a": "best", "b": "best", "c": "second"}
    m, s = mean_std([0.80, 0.82, 0.84])
    assert m == pytest.approx(0.82) and s == pytest.approx(0.02)
    assert mean_std([0.5]) == (0.5, None)
    assert within_noise(0.01, 0.02, None) and not within_noise(0.03, 0.02, 0.01) and not within_noise(0.0, None)
    assert weights_kind(W18) == "imagenet:IMAGENET1K_V1"
    assert weights_kind("file:/x.pt:sha256=ab") == "file" and weights_kind("none") == "none"
    assert parse_metrics('{"epoch": 0, "test_acc": 0.5}\n{"epoch": 1, "test_a\n') == [{"epoch": 0, "test_acc": 0.5}]
    seed = load_seed_results()
    assert seed[("cifar10", "resnet18", "finetune")] == (0.8788, 98)
    assert seed[("tiny-imagenet-200", "densenet161", "minmax")][0] == 0.6245
    assert len(seed) == 64


# ---------------------------------------------------------------- single seed, partial grid

@pytest.fixture(scope="module")
def single(tmp_path_factory, syn):
    runs = tmp_path_factory.mktemp("runs")
    # cifar10 resnet18: finetune 0.90, pretrain 0.88, instance 0.85, minmax 0.89 (unfinished)
    make_run(runs, "cifar10", "resnet18", "finetune", [0.80, 0.90, 0.89], gpu="NVIDIA H100")
    make_run(runs, "cifar10", "resnet18", "pretrain", [0.70, 0.88, 0.87], cut_line=True)
    make_run(runs, "cifar10", "resnet18", "instance", [0.60, 0.85, 0.84])
    make_run(runs, "cifar10", "resnet18", "minmax", [0.70, 0.95], epochs=10)      # best, but unfinished
    make_run(runs, "cifar10", "resnet50", "pretrain", [0.5, 0.6, 0.7])             # partial grid
    make_run(runs, "synthetic", "resnet18", "finetune", [0.2, 0.3], data=syn)
    make_run(runs, "synthetic", "resnet18", "pretrain", [0.1, 0.4], data=syn)
    out = runs.parent / (runs.name + "-report")
    return runs, out, make_report(runs, out)


def test_written_files(single):
    _, out, paths = single
    assert sorted(p.name for p in paths) == sorted(["table1.md", "table2.md", "table3.md", "figure1.png",
                                                    "throughput.md", "results.csv", "summary.csv", "index.md"])
    assert all(p.parent == out and p.stat().st_size > 0 for p in paths)
    assert not list(out.glob(".*tmp*"))
    index = (out / "index.md").read_text()
    for p in paths[:-1]:
        assert f"({p.name})" in index
    png = (out / "figure1.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_table3_marks_and_seed_diff(single):
    _, out, _ = single
    md = (out / "table3.md").read_text()
    assert "weights: imagenet:IMAGENET1K_V1 for all runs" in md
    r18 = rows_of(md, "resnet18")
    # columns: cifar10 ours | cifar10 seed | cifar10 ours − seed | synthetic ours
    assert r18["finetune"][:3] == ["**90.00**", "87.88", "+2.12"]
    assert r18["pretrain"][:3] == ["<u>88.00</u>", "87.98", "+0.02"]       # second place
    assert r18["instance"][:3] == ["85.00", "86.55", "-1.55"]
    # the unfinished minmax run (95%) is shown with its progress and never ranked
    assert r18["minmax"][:3] == ["95.00 (2/10 ep)", "87.97", "+7.03"]
    assert r18["finetune"][3] == "<u>30.00</u>" and r18["pretrain"][3] == "**40.00**"
    r50 = rows_of(md, "resnet50")
    assert r50["finetune"][0] == "—" and r50["pretrain"][0] == "70.00"
    assert r50["finetune"][3] == "—"
    assert "(d/e ep)" in md and "no seed repeats" in md


def test_table2_signed_differences(single):
    _, out, _ = single
    md = (out / "table2.md").read_text()
    r18 = rows_of(md, "resnet18")
    assert r18["finetune"][:3] == ["**90.00**", "87.88", "+2.12"]
    assert r18["pretrain"][:3] == ["88.00", "87.98", "+0.02"]
    diff = r18["finetune − pretrain"]
    assert diff[:3] == ["+2.00", "-0.10", "+2.10"]          # ours, seed's, ours − seed's
    assert diff[3] == "-10.00"                               # synthetic: 30 − 40
    assert r18["pretrain"][3] == "**40.00**"
    r50 = rows_of(md, "resnet50")
    assert r50["finetune"][0] == "—" and r50["finetune − pretrain"][0] == "—"
    assert r50["pretrain"][1:3] == ["90.20", "-20.20"]


def test_table1_throughput_and_csv(single):
    runs, out, _ = single
    t1 = (out / "table1.md").read_text()
    syn_row = [line for line in t1.splitlines() if line.startswith("| synthetic")][0]
    assert "| 40 |" in syn_row and "after instance" in t1
    assert "mean: (0.000, 0.000, 0.000)<br>std: (1.000, 1.000, 1.000)" in syn_row     # after finetune
    assert "cifar10: statistics unavailable" in t1 and "/nowhere" in t1
    tp = (out / "throughput.md").read_text()
    row = [line for line in tp.splitlines() if "| resnet18 | finetune |" in line and "cifar10" in line][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[6:11] == ["167", "200", "500", "11.0", "25%"] and cells[11] == "NVIDIA H100"
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7
    pre = [r for r in rows if r["dataset"] == "cifar10" and r["model"] == "resnet18" and r["norm"] == "pretrain"][0]
    assert float(pre["best_acc"]) == 0.88 and float(pre["seed_best_acc"]) == 0.8798
    assert float(pre["diff_vs_seed"]) == pytest.approx(0.0002)
    assert pre["epochs_done"] == "3" and float(pre["last_test_acc"]) == 0.87   # the cut line was skipped


# ---------------------------------------------------------------- several seeds, backends, errors

def test_multi_seed_mean_std_and_noise(tmp_path):
    runs = tmp_path / "runs"
    accs = {("cifar10", "finetune"): (0.80, 0.82, 0.84),      # mean 82, std 2
            ("cifar10", "pretrain"): (0.805, 0.81, 0.815),    # mean 81, std 0.5: 1 pp < 2 pp -> noise
            ("cifar10", "minmax"): (0.701, 0.702, 0.703),
            ("cifar100", "finetune"): (0.60, 0.61, 0.62),     # mean 61, std 1
            ("cifar100", "pretrain"): (0.50, 0.51, 0.52)}     # 10 pp apart: a real difference
    for (ds, norm), values in accs.items():
        for s, a in zip((1, 2, 3), values):
            make_run(runs, ds, "resnet18", norm, [0.3, a], seed=s, name=f"resnet18-{norm}-resident-s{s}")
    make_report(runs, tmp_path / "out")
    md2 = (tmp_path / "out" / "table2.md").read_text()
    r18 = rows_of(md2, "resnet18")
    # columns: cifar10 ours | seed | ours − seed | cifar100 ours | seed | ours − seed
    assert r18["finetune"][0] == "**82.00** ± 2.00 (n=3)"
    assert r18["pretrain"][0] == "81.00 ± 0.50 (n=3)"
    assert r18["finetune − pretrain"][0] == "≈ +1.00"
    assert r18["finetune − pretrain"][3] == "+10.00"
    assert r18["finetune"][1:3] == ["87.88", "-5.88"]       # 5.88 pp is more than the 2 pp spread
    assert r18["pretrain"][1:3] == ["87.98", "-6.98"]
    assert "runs per configuration: 3" in md2 and "within noise" in md2
    md3 = (tmp_path / "out" / "table3.md").read_text()
    r18 = rows_of(md3, "resnet18")
    assert r18["finetune"][0] == "≈ **82.00** ± 2.00 (n=3)"
    assert r18["pretrain"][0] == "<u>81.00</u> ± 0.50 (n=3)"
    assert r18["minmax"][0] == "70.20 ± 0.10 (n=3)"
    assert r18["instance"][0] == "—"
    assert r18["finetune"][3] == "**61.00** ± 1.00 (n=3)"     # no mark: 10 pp ahead
    with open(tmp_path / "out" / "summary.csv") as f:
        rows = {(r["dataset"], r["norm"]): r for r in csv.DictReader(f)}
    assert rows[("cifar10", "finetune")]["n"] == "3"
    assert float(rows[("cifar10", "finetune")]["std_best_acc"]) == pytest.approx(0.02)
    assert (tmp_path / "out" / "figure1.png").read_bytes()[:4] == b"\x89PNG"


def test_backends_and_weights_get_their_own_sections(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "cifar10", "resnet18", "finetune", [0.5, 0.6], backend="dali")
    make_run(runs, "cifar10", "resnet18", "finetune", [0.5, 0.7], backend="torch")
    make_run(runs, "cifar10", "resnet18", "pretrain", [0.2, 0.3], backend="torch", weights="none",
             name="scratch")
    paths = make_report(runs, tmp_path / "out")
    names = {p.name for p in paths}
    assert {"figure1-dali-imagenet_IMAGENET1K_V1.png", "figure1-torch-imagenet_IMAGENET1K_V1.png",
            "figure1-torch-none.png"} <= names and "figure1.png" not in names
    md = (tmp_path / "out" / "table3.md").read_text()
    assert md.count("## backend ") == 3
    assert "weights: none for all runs (random initialization: trained from scratch)" in md
    # from-scratch pretrain is not compared with pretrained finetune
    assert "**30.00**" not in md and "**" not in md.split("## backend torch · weights none")[1].split("##")[0]


def test_errors(tmp_path):
    with pytest.raises(NormfastError, match="runs directory not found"):
        make_report(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NormfastError, match="no runs found"):
        make_report(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    started = make_run(tmp_path / "runs", "cifar10", "resnet18", "finetune", [0.5])
    (started / "metrics.jsonl").write_text('{"epoch": 0, "te')     # killed during its first epoch
    (started / "best_results.json").unlink()
    with pytest.raises(NormfastError, match="none has finished an epoch"):
        make_report(tmp_path / "runs", tmp_path / "out")


def test_unreadable_and_unstarted_runs_are_noted(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "cifar10", "resnet18", "finetune", [0.5, 0.6])
    bad = runs / "cifar10" / "broken"
    bad.mkdir()
    (bad / "config.yaml").write_text("model: [unclosed")
    started = make_run(runs, "cifar10", "resnet18", "pretrain", [0.5])
    (started / "metrics.jsonl").write_text("")
    (started / "best_results.json").unlink()
    make_report(runs, tmp_path / "out")
    index = (tmp_path / "out" / "index.md").read_text()
    assert "broken`: config.yaml unreadable" in index and "resnet18-pretrain-resident`: no epoch finished" in index
    r18 = rows_of((tmp_path / "out" / "table2.md").read_text(), "resnet18")
    assert r18["finetune"][0] == "60.00" and r18["pretrain"][0] == "—"   # one value: nothing to rank
    assert "| 0/1 ep |" in (tmp_path / "out" / "throughput.md").read_text()
