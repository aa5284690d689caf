"""`normfast report` on hand-written run directories: tables, seed comparison, seeds and
paired intervals, repeats of one seed, partial grids, the figure, and errors."""
import csv
import json

import pytest
import yaml

from converters.convert import ConvertConfig, convert
from normfast.errors import NormfastError
from normfast.report import (load_runs, load_seed_results, make_report, mean_std, paired_difference,
                             rank_marks, weights_kind, within_noise)

W18 = "imagenet:ResNet18_Weights.IMAGENET1K_V1"


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "syn"
    convert(ConvertConfig(source="synthetic", out=out, limit=40, formats=("dali",), quiet=True))
    return out


def make_run(runs, dataset, model, norm, accs, *, backend="resident", seed=223, epochs=None, data="/nowhere",
             weights=None, name=None, cut_line=False, gpu=None, val=None, amp="off"):
    """A run directory as `normfast train` writes it; accs are test accuracies per epoch,
    val (optional) validation accuracies per epoch."""
    epochs = epochs or len(accs)
    name = name or f"{model}-{norm}-{backend}"
    d = runs / dataset / name
    d.mkdir(parents=True)
    weights = weights or f"imagenet:{model}_Weights.IMAGENET1K_V1"
    cfg = dict(data=str(data), model=model, norm=norm, backend=backend, seed=seed, epochs=epochs,
               pretrained="imagenet", amp=amp, compile="none", dataset=dataset, weights=weights,
               device="cpu", world_size=1, versions={"python": "3", "torch": "2", "gpu": gpu})
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    lines = [json.dumps({"epoch": e, "lr": 1e-3, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0,
                         "test_acc": a, "epoch_seconds": 10.0 + e, "train_seconds": 9.0,
                         "train_images_per_second": 100.0 if e == 0 else 200.0, "data_wait_fraction": 0.25,
                         "test_images_per_second": 500.0} | ({"val_acc": val[e]} if val else {}))
             for e, a in enumerate(accs)]
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
    assert weights_kind("timm:resnet50.a1_in1k") == weights_kind("timm:densenet121.tv_in1k") == "timm"
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
                                                    "throughput.md", "results.csv", "summary.csv", "index.md",
                                                    "paired.md", "paired.csv"])
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
    # columns: cifar10 ours | ours final epoch | seed | ours − seed | synthetic ours | ours final epoch
    # one seed: no interval, so nothing is bold; the top cell says the ranking is untested
    assert r18["finetune"][:4] == ["90.00 (top; 1 seed: untested)", "89.00", "87.88", "+2.12"]
    assert r18["pretrain"][:4] == ["88.00", "87.00", "87.98", "+0.02"]
    assert r18["instance"][:4] == ["85.00", "84.00", "86.55", "-1.55"]
    # the unfinished minmax run (95%) is shown with its progress and never ranked
    assert r18["minmax"][:4] == ["95.00 (2/10 ep)", "95.00", "87.97", "+7.03"]
    assert r18["finetune"][4:6] == ["30.00", "30.00"] and r18["pretrain"][4] == "40.00 (top; 1 seed: untested)"
    assert "**" not in md.split("| model")[1].split("\n\n")[0]
    r50 = rows_of(md, "resnet50")
    assert r50["finetune"][0] == "—" and r50["pretrain"][:2] == ["70.00", "70.00"]
    assert r50["finetune"][4] == "—"
    assert "(d/e ep)" in md and "no seed repeats" in md
    # what a reader must know before comparing with the seed
    assert "bf16 autocast by default" in md and "`--amp off` reproduces" in md and "amp off: 7 runs" in md
    assert "crashes for `--normalize instance`" in md and "not in its repository" in md


def test_table2_signed_differences(single):
    _, out, _ = single
    md = (out / "table2.md").read_text()
    r18 = rows_of(md, "resnet18")
    assert r18["finetune"][:4] == ["90.00 (top; 1 seed: untested)", "89.00", "87.88", "+2.12"]
    assert r18["pretrain"][:4] == ["88.00", "87.00", "87.98", "+0.02"]
    diff = r18["finetune − pretrain"]
    # ours (selected, final epoch), seed's, ours − seed's
    assert diff[:4] == ["+2.00 (n=1, no interval)", "+2.00 (n=1, no interval)", "-0.10", "+2.10"]
    assert diff[4] == "-10.00 (n=1, no interval)"           # synthetic: 30 − 40
    assert r18["pretrain"][4] == "40.00 (top; 1 seed: untested)"
    r50 = rows_of(md, "resnet50")
    assert r50["finetune"][0] == "—" and r50["finetune − pretrain"][0] == "—"
    assert r50["pretrain"][2:4] == ["90.20", "-20.20"]


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
    assert cells[15] == "imagenet:resnet18_Weights.IMAGENET1K_V1"     # every run names its weights
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7
    pre = [r for r in rows if r["dataset"] == "cifar10" and r["model"] == "resnet18" and r["norm"] == "pretrain"][0]
    assert float(pre["best_acc"]) == 0.88 and float(pre["seed_best_acc"]) == 0.8798
    assert float(pre["diff_vs_seed"]) == pytest.approx(0.0002)
    assert pre["epochs_done"] == "3" and float(pre["last_test_acc"]) == 0.87   # the cut line was skipped
    assert pre["selection"] == "best-test" and float(pre["selected_acc"]) == 0.88 and pre["used"] == "True"
    assert pre["weights"] == "imagenet:resnet18_Weights.IMAGENET1K_V1" and pre["pretrained"] == "imagenet"


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
    # columns: cifar10 ours | final | seed | ours − seed | cifar100 ours | final | seed | ours − seed
    # cifar10 finetune − pretrain per seed: -0.5, +1.0, +2.5 pp: mean 1.0, sd 1.5,
    # 95% half-width t(0.975, 2) * 1.5 / sqrt(3) = 4.3027 * 0.8660 = 3.73 -> a tie
    assert r18["finetune"][0] == "82.00 ± 2.00 (n=3) (tie within noise)"
    assert r18["pretrain"][0] == "81.00 ± 0.50 (n=3) (tie within noise)"
    assert r18["finetune − pretrain"][0] == "+1.00 ± 3.73 (n=3)"
    # cifar100: +10 pp on every seed: sd 0, the interval is the point and excludes zero
    assert r18["finetune − pretrain"][4] == "+10.00 ± 0.00 (n=3)"
    assert r18["finetune"][4] == "**61.00** ± 1.00 (n=3)" and r18["pretrain"][4] == "51.00 ± 1.00 (n=3)"
    assert r18["finetune"][2:4] == ["87.88", "-5.88"]       # 5.88 pp is more than the 2 pp spread
    assert r18["pretrain"][2:4] == ["87.98", "-6.98"]
    assert "runs per configuration: 3" in md2 and "tie within noise" in md2
    md3 = (tmp_path / "out" / "table3.md").read_text()
    r18 = rows_of(md3, "resnet18")
    assert r18["finetune"][0] == "82.00 ± 2.00 (n=3) (tie within noise)"
    assert r18["pretrain"][0] == "81.00 ± 0.50 (n=3) (tie within noise)"
    assert r18["minmax"][0] == "70.20 ± 0.10 (n=3)"
    assert r18["instance"][0] == "—"
    assert r18["finetune"][4] == "**61.00** ± 1.00 (n=3)"     # its interval against pretrain excludes zero
    assert r18["pretrain"][4] == "<u>51.00</u> ± 1.00 (n=3)"  # the runner-up it was tested against
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


def test_malformed_files_are_errors_naming_the_file(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "cifar10", "resnet18", "finetune", [0.5, 0.6])
    bad = runs / "cifar10" / "broken"
    bad.mkdir()
    (bad / "config.yaml").write_text("model: [unclosed")
    with pytest.raises(NormfastError, match=r"broken/config.yaml: not valid YAML"):
        make_report(runs, tmp_path / "out")
    (bad / "config.yaml").write_text("model: resnet18\n")
    with pytest.raises(NormfastError, match=r"broken/config.yaml: incomplete, no norm, backend"):
        load_runs(runs)
    (bad / "config.yaml").unlink()
    pre = make_run(runs, "cifar10", "resnet18", "pretrain", [0.5, 0.6])
    (pre / "best_results.json").write_text("{not json")
    with pytest.raises(NormfastError, match=r"resnet18-pretrain-resident/best_results.json: not valid JSON"):
        load_runs(runs)
    (pre / "best_results.json").unlink()
    (pre / "metrics.jsonl").write_text('{"epoch": 0, "test_acc": 0.5}\ngarbage\n{"epoch": 1, "test_acc": 0.6}\n')
    with pytest.raises(NormfastError, match=r"resnet18-pretrain-resident/metrics.jsonl: line 2 is not a JSON line"):
        load_runs(runs)
    (pre / "metrics.jsonl").write_text('{"epoch": 0, "test_acc": 0.5}\n{"epoch": 1}\n{"epoch": 2, "test_acc": 0.6}\n')
    with pytest.raises(NormfastError, match=r"metrics.jsonl: line 2 is a row without a numeric test_acc"):
        load_runs(runs)
    # only a last line without its newline is a cut append; a whole bad last line is damage
    (pre / "metrics.jsonl").write_text('{"epoch": 0, "test_acc": 0.5}\n{"epoch": 1, "te\n')
    with pytest.raises(NormfastError, match=r"metrics.jsonl: line 2 is not a JSON line"):
        load_runs(runs)
    assert not (tmp_path / "out").exists()


def test_unstarted_runs_are_noted(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "cifar10", "resnet18", "finetune", [0.5, 0.6])
    started = make_run(runs, "cifar10", "resnet18", "pretrain", [0.5])
    (started / "metrics.jsonl").write_text("")
    (started / "best_results.json").unlink()
    make_report(runs, tmp_path / "out")
    index = (tmp_path / "out" / "index.md").read_text()
    assert "resnet18-pretrain-resident`: no epoch finished" in index
    r18 = rows_of((tmp_path / "out" / "table2.md").read_text(), "resnet18")
    assert r18["finetune"][0] == "60.00" and r18["pretrain"][0] == "—"   # one value: nothing to rank
    assert "| 0/1 ep |" in (tmp_path / "out" / "throughput.md").read_text()


# ---------------------------------------------------------------- paired statistics, by hand

def test_paired_difference_hand_computed():
    # shared seeds 1, 2, 3 (seed 4 only in b): differences 1, 2, 0 pp -> mean 1 pp, sd 1 pp,
    # 95% half-width t(0.975, df=2) * sd / sqrt(3) = 4.302653 * 0.01 / 1.732051 = 0.0248414
    p = paired_difference("a", "b", {1: 0.80, 2: 0.82, 3: 0.84}, {1: 0.79, 2: 0.80, 3: 0.84, 4: 0.90})
    assert p.seeds == (1, 2, 3) and p.n == 3
    assert p.mean == pytest.approx(0.01) and p.std == pytest.approx(0.01)
    assert p.half_width == pytest.approx(0.0248414, abs=1e-7)
    assert p.low == pytest.approx(-0.0148414, abs=1e-7) and not p.excludes_zero
    assert p.verdict == "tie within noise" and p.text() == "+1.00 ± 2.48 (n=3)"
    # differences 2, 3, 2.5 pp: mean 2.5, sd 0.5, half-width 4.302653 * 0.005 / 1.732051 = 0.0124207
    p = paired_difference("a", "b", {1: 0.52, 2: 0.53, 3: 0.525}, {1: 0.50, 2: 0.50, 3: 0.50})
    assert p.half_width == pytest.approx(0.0124207, abs=1e-7) and p.excludes_zero and p.verdict == "a higher"
    # n = 2: differences 1, 3 pp: mean 2, sd sqrt(2) pp, t(0.975, df=1) = 12.706205:
    # half-width 12.706205 * 0.0141421 / 1.414214 = 0.1270620 -> a tie despite +2 pp
    p = paired_difference("a", "b", {1: 0.51, 2: 0.53}, {1: 0.50, 2: 0.50})
    assert p.half_width == pytest.approx(0.1270620, abs=1e-6) and p.verdict == "tie within noise"
    # b higher on every seed
    assert paired_difference("a", "b", {1: 0.5, 2: 0.5, 3: 0.5}, {1: 0.6, 2: 0.61, 3: 0.62}).verdict == "b higher"
    # n = 1: a difference, no interval, said so
    p = paired_difference("a", "b", {7: 0.80}, {7: 0.75, 8: 0.70})
    assert p.n == 1 and p.mean == pytest.approx(0.05) and p.half_width is None and p.low is None
    assert not p.excludes_zero and p.verdict == "1 seed: no interval" and p.text() == "+5.00 (n=1, no interval)"
    # no shared seed
    p = paired_difference("a", "b", {1: 0.8}, {2: 0.7})
    assert p.n == 0 and p.mean is None and p.verdict == "no shared seeds"


# ---------------------------------------------------------------- one seed counts once

def test_repeated_seed_is_reported_and_not_pooled(tmp_path):
    """The defect: a sweep without --seeds, then with --seeds 223,224,225, left seed 223 in two
    directories, and the report pooled both (n=4). Now one is used and the repeat is listed."""
    runs = tmp_path / "runs"
    for norm, accs in (("finetune", (0.80, 0.82, 0.84)), ("pretrain", (0.70, 0.71, 0.72))):
        for s, a in zip((223, 224, 225), accs):
            make_run(runs, "cifar10", "resnet18", norm, [0.3, a], seed=s, name=f"resnet18-{norm}-resident-s{s}")
    make_run(runs, "cifar10", "resnet18", "finetune", [0.3, 0.99], seed=223, epochs=3)   # old plain name, 2/3 ep
    make_run(runs, "cifar10", "resnet18", "pretrain", [0.3, 0.70], seed=223, amp="bf16")  # old plain name, finished
    make_report(runs, tmp_path / "out")
    out = tmp_path / "out"
    r18 = rows_of((out / "table3.md").read_text(), "resnet18")
    assert r18["finetune"][0].startswith("**82.00** ± 2.00 (n=3)")          # not n=4, and not the 99%
    assert r18["pretrain"][0].startswith("<u>71.00</u> ± 1.00 (n=3)")
    index = (out / "index.md").read_text()
    assert "## Repeated runs (same configuration and seed)" in index and "a finished run before an unfinished" in index
    # finetune: the finished -s223 run wins over the unfinished plain one
    assert ("seed 223: used `cifar10/resnet18-finetune-resident-s223` (2/2 ep); left out "
            "`cifar10/resnet18-finetune-resident` (2/3 ep); they differ in epochs") in index
    # pretrain: both finished with 2 epochs; the sweep's name for seed 223 (plain) wins
    assert ("seed 223: used `cifar10/resnet18-pretrain-resident` (2/2 ep); left out "
            "`cifar10/resnet18-pretrain-resident-s223` (2/2 ep); they differ in amp") in index
    assert "repeated run(s)" in (out / "table2.md").read_text()
    with open(out / "summary.csv") as f:
        summary = {r["norm"]: r for r in csv.DictReader(f)}
    assert summary["finetune"]["n"] == "3" and summary["finetune"]["seeds"] == "223 224 225"
    with open(out / "results.csv") as f:
        results = list(csv.DictReader(f))
    assert len(results) == 8
    left = [r for r in results if r["used"] == "False"]
    assert sorted(r["run_dir"].rsplit("/", 1)[1] for r in left) == ["resnet18-finetune-resident",
                                                                    "resnet18-pretrain-resident-s223"]
    assert all(r["repeat_of"] for r in left) and not any(r["repeat_of"] for r in results if r["used"] == "True")


# ---------------------------------------------------------------- selected and final accuracy

def test_final_epoch_and_best_validation_epoch(tmp_path):
    runs = tmp_path / "runs"
    # test accuracy peaks at epoch 1 (0.90); validation peaks at epoch 2 where test is 0.86
    make_run(runs, "cifar10", "resnet18", "finetune", [0.80, 0.90, 0.86, 0.85], val=[0.7, 0.75, 0.8, 0.79])
    make_run(runs, "cifar10", "resnet18", "pretrain", [0.80, 0.88, 0.84, 0.83])         # no val_acc logged
    make_report(runs, tmp_path / "out")
    md = (tmp_path / "out" / "table3.md").read_text()
    r18 = rows_of(md, "resnet18")
    assert r18["finetune"][:2] == ["86.00", "85.00"]          # selected at the best-val epoch, final beside
    assert r18["finetune"][3] == "+2.12"                       # ours − seed stays best-epoch (90 − 87.88)
    assert r18["pretrain"][:2] == ["88.00 (top; 1 seed: untested)", "83.00"]
    assert "1 of 2 runs logged val_acc and use the best-validation epoch" in md
    assert "optimistic: the epoch is chosen on the test set" in md
    with open(tmp_path / "out" / "results.csv") as f:
        rows = {r["norm"]: r for r in csv.DictReader(f)}
    assert rows["finetune"]["selection"] == "best-val" and rows["finetune"]["selected_epoch"] == "2"
    assert float(rows["finetune"]["selected_acc"]) == 0.86 and float(rows["finetune"]["best_acc"]) == 0.90
    assert float(rows["finetune"]["last_test_acc"]) == 0.85
    assert rows["pretrain"]["selection"] == "best-test" and float(rows["pretrain"]["selected_acc"]) == 0.88


# ---------------------------------------------------------------- the answer and Table 1's BGR row

def test_answer_paragraph_per_dataset(tmp_path):
    runs = tmp_path / "runs"
    accs = {"finetune": (0.80, 0.82, 0.84), "pretrain": (0.805, 0.81, 0.815),   # tie: +1.00 ± 3.73
            "minmax": (0.70, 0.71, 0.72)}                                    # 11.00 ± 2.48 lower
    for norm, values in accs.items():
        for s, a in zip((223, 224, 225), values):
            make_run(runs, "cifar10", "resnet18", norm, [0.3, a], seed=s, name=f"resnet18-{norm}-resident-s{s}")
    make_run(runs, "cifar10", "resnet18", "instance", [0.3, 0.5], epochs=5)             # unfinished
    make_run(runs, "svhn", "resnet18", "finetune", [0.3, 0.60])
    make_run(runs, "svhn", "resnet18", "pretrain", [0.3, 0.62])
    make_run(runs, "tiny-imagenet-200", "resnet18", "pretrain", [0.3, 0.5])
    make_report(runs, tmp_path / "out")
    index = (tmp_path / "out" / "index.md").read_text()
    answer = index.split("## The answer")[1]
    assert ("cifar10, resnet18, 3 seeds: finetune and pretrain tie (Δ = +1.00 ± 3.73); minmax is 11.00 ± 2.48 "
            "points lower (instance unfinished: not compared).") in answer
    assert ("svhn, resnet18, 1 seed: no interval; differences below are not tested. pretrain is highest; "
            "finetune is 2.00 points lower.") in answer
    assert "tiny-imagenet-200, resnet18: only pretrain has finished runs, nothing to compare." in answer
    assert index.rstrip().endswith("nothing to compare.")                   # the report ends with the answer
    t1 = (tmp_path / "out" / "table1.md").read_text()
    tiny = [line for line in t1.splitlines() if line.startswith("| tiny-imagenet-200")][0]
    assert "mean: (-0.38, -0.04, 0.33)" in tiny and "**B, G, R order**" in tiny
    cifar = [line for line in t1.splitlines() if line.startswith("| cifar10")][0]
    assert "mean: (0.03, 0.12, 0.18)" in cifar and "B, G, R" not in cifar
    pairs = (tmp_path / "out" / "paired.md").read_text()
    assert ("| cifar10 | resnet18 | finetune − minmax | +11.00 ± 2.48 (n=3) | [+8.52, +13.48] "
            "| finetune higher |") in pairs
    assert "| svhn | resnet18 | finetune − pretrain | -2.00 (n=1, no interval) | — | 1 seed: no interval |" in pairs


# ---------------------------------------------------------------- one owner per concern (issue 15 §2)

def test_report_modules_one_concern_each_and_one_table1_formatter():
    import ast
    from pathlib import Path

    import normfast
    import normfast.report as report
    root = Path(normfast.__file__).parent
    defined: dict = {}
    for path in root.rglob("*.py"):
        text = path.read_text()
        if path.parent.name == "report":
            assert len(text.splitlines()) <= 400, path
        for node in ast.parse(text).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.setdefault(node.name, []).append(path.relative_to(root).as_posix())
    assert defined["format_table1"] == ["report/table1.py"]         # one name, one meaning
    assert defined["format_stats"] == ["stats.py"]                  # `normfast stats`' own text
    assert not (root / "report" / "tables.py").exists()
    assert report.make_report.__module__ == "normfast.report.make"
    for name in report.__all__:                                     # the public imports still work
        assert getattr(report, name) is not None


# ---------------------------------------------------------------- Figure 1 for short runs (issue 18 §4)

def _figure(runs, title="backend resident · weights imagenet:IMAGENET1K_V1"):
    from normfast.report import group_runs
    from normfast.report.figure import figure1
    (groups,) = group_runs(load_runs(runs)[0]).values()
    fig = figure1(groups, title)
    fig.canvas.draw()
    return fig


def test_figure1_of_a_one_epoch_run_has_integer_ticks_dots_and_no_empty_band(tmp_path):
    for norm, acc in (("finetune", 0.5), ("pretrain", 0.45), ("minmax", 0.42)):
        make_run(tmp_path, "cifar10", "resnet18", norm, [acc])
    make_run(tmp_path, "svhn", "resnet18", "finetune", [0.3 + 0.01 * e for e in range(30)])
    fig = _figure(tmp_path)
    cifar, svhn = fig.axes[:2]
    for ax in (cifar, svhn):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert list(cifar.get_xticks()) == [1] and cifar.get_xlim() == (0.5, 1.5)
    assert {line.get_marker() for line in cifar.get_lines()} == {"o"}      # one epoch: a dot, drawn
    assert {line.get_marker() for line in svhn.get_lines()} == {"None"}    # 30 epochs: a line
    legend = {t.get_text(): h.get_marker() for t, h in zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles)}
    assert legend == {"finetune": "o", "pretrain": "o", "minmax": "o"}     # the legend shows what the plot shows
    # no empty band: the title sits right above the plots' titles (under 0.25 inch between them)
    renderer = fig.canvas.get_renderer()
    title_bottom = fig._suptitle.get_window_extent(renderer).y0
    plots_top = max(ax.title.get_window_extent(renderer).y1 for ax in fig.axes)
    assert 0 <= title_bottom - plots_top < 0.25 * fig.dpi, (title_bottom, plots_top)
    assert fig._suptitle.get_window_extent(renderer).x0 >= 0                # not cut off at the left


# ---------------------------------------------------------------- what report reads (issue 18 §5-6)

def test_a_nan_test_acc_is_refused_not_copied_into_results_csv(tmp_path):
    d = make_run(tmp_path / "runs", "cifar10", "resnet18", "finetune", [0.5, 0.6])
    rows = (d / "metrics.jsonl").read_text().splitlines()
    (d / "metrics.jsonl").write_text(rows[0] + "\n" + rows[1].replace('"test_acc": 0.6', '"test_acc": NaN') + "\n")
    with pytest.raises(NormfastError, match=r"metrics.jsonl: line 2 is a row with test_acc nan \(expected a "
                                            r"fraction from 0 to 1\); the file is damaged"):
        make_report(tmp_path / "runs", tmp_path / "out")
    assert not (tmp_path / "out" / "results.csv").exists()


@pytest.mark.parametrize("best_epoch", [2, 7, -2])
def test_a_best_epoch_beyond_the_runs_epochs_is_refused(tmp_path, best_epoch):
    d = make_run(tmp_path / "runs", "cifar10", "resnet18", "finetune", [0.5, 0.6])
    best = json.loads((d / "best_results.json").read_text())
    (d / "best_results.json").write_text(json.dumps(best | {"best_epoch": best_epoch}))
    with pytest.raises(NormfastError, match=rf"best_results.json: best_epoch is {best_epoch}, beyond the run's "
                                            r"2 epoch\(s\) done \(expected -1 .. 1\)"):
        make_report(tmp_path / "runs", tmp_path / "out")


def test_a_folder_without_config_yaml_is_named_not_dropped_silently(tmp_path):
    from click.testing import CliRunner
    from normfast.cli import main
    make_run(tmp_path / "runs", "cifar10", "resnet18", "finetune", [0.5, 0.6])
    orphan = make_run(tmp_path / "runs", "cifar10", "resnet18", "pretrain", [0.5, 0.7])
    (orphan / "config.yaml").unlink()
    r = CliRunner().invoke(main, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    said = f"`{orphan}`: no config.yaml; left out of the report"
    assert f"note: {said}" in r.output
    assert said in (tmp_path / "out" / "index.md").read_text()
    with open(tmp_path / "out" / "results.csv") as f:
        assert [row["norm"] for row in csv.DictReader(f)] == ["finetune"]


@pytest.mark.parametrize("sub, says", [("", "table1.md: cannot write it (Read-only file system)"),
                                       ("report", "report: cannot create the report folder (Read-only file system)")])
def test_report_out_on_a_read_only_mount_is_one_line(tmp_path, sub, says):
    from click.testing import CliRunner
    from fixtures import tmpfs
    from normfast.cli import main
    make_run(tmp_path / "runs", "cifar10", "resnet18", "finetune", [0.5, 0.6])
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        r = CliRunner().invoke(main, ["report", str(tmp_path / "runs"), "--out", str(ro / sub)])
    assert r.exit_code == 1, r.output
    assert r.output.startswith("error: ") and r.output.strip().count("\n") == 0, r.output
    assert says in r.output
