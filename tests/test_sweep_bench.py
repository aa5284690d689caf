"""sweep (planning, sharding, skip/resume, summary) and the benchmark commands (tiny, CPU)."""
import json

import pytest
import yaml
from click.testing import CliRunner

from converters.convert import ConvertConfig, convert
from loader_checks import needs
from normfast.cli import main
from normfast.errors import NormfastError
from normfast.report import read_run
from normfast.sweep import plan, resolve_run_name, summarize

GRID = {"datasets": ["cifar10", "svhn"], "models": ["resnet18", "resnet50"],
        "norms": ["finetune", "pretrain", "instance", "minmax"], "backends": ["dali"], "seeds": [223]}


def test_plan_filters_seeds_and_shards():
    runs = plan(GRID, {}, None, None)
    assert len(runs) == 16 and runs[0].run_name == "resnet18-finetune-dali"
    sub = plan(GRID, {"models": ["resnet50"], "norms": ["minmax"]}, None, None)
    assert [(r.dataset, r.run_name) for r in sub] == [("cifar10", "resnet50-minmax-dali"),
                                                      ("svhn", "resnet50-minmax-dali")]
    # a run's name depends on (configuration, seed) only: seed 223 is plain with or without --seeds
    seeded = plan(GRID, {"datasets": ["svhn"]}, [223, 224, 225], None)
    assert len(seeded) == 24
    assert [r.run_name for r in seeded[:3]] == ["resnet18-finetune-dali", "resnet18-finetune-dali-s224",
                                                "resnet18-finetune-dali-s225"]
    assert plan(GRID, {}, [224], None)[0].run_name == "resnet18-finetune-dali-s224"   # never seed 223's run
    assert plan(GRID, {}, [223], None)[0].run_name == "resnet18-finetune-dali"
    assert plan(dict(GRID, seeds=[7]), {}, None, None)[0].run_name == "resnet18-finetune-dali-s7"
    with pytest.raises(NormfastError, match="listed twice"):
        plan(GRID, {}, [223, 223], None)
    shards = [plan(GRID, {}, None, f"{i}/3") for i in (1, 2, 3)]
    names = [(r.dataset, r.run_name) for s in shards for r in s]
    assert sorted(names) == sorted((r.dataset, r.run_name) for r in runs) and len(set(names)) == 16
    for bad in ("0/3", "4/3", "x"):
        with pytest.raises(NormfastError, match="--shard"):
            plan(GRID, {}, None, bad)
    with pytest.raises(NormfastError, match="not in the grid's models"):
        plan(GRID, {"models": ["vgg"]}, None, None)


@pytest.fixture(scope="module")
def grid_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    convert(ConvertConfig("synthetic", root / "data" / "synthetic", limit=30, quiet=True))
    grid = {"data_root": str(root / "data"), "runs": str(root / "runs"), "datasets": ["synthetic"],
            "models": ["resnet18"], "norms": ["finetune", "minmax"], "backends": ["resident"],
            "train": {"epochs": 1, "batch_size": 16, "test_batch_size": 16, "device": "cpu", "num_workers": 1,
                      "pretrained": "none"}}
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return root, path


def test_sweep_runs_skips_and_summarizes(grid_setup):
    root, path = grid_setup
    r = CliRunner().invoke(main, ["sweep", str(path), "-q"])
    assert r.exit_code == 0, r.output
    assert r.output.count(": ran\n") == 2 and "| synthetic | resnet18 | minmax | resident | 223 | ran |" in r.output
    r = CliRunner().invoke(main, ["sweep", str(path), "-q"])
    assert r.exit_code == 0 and r.output.count(": done before\n") == 2
    # a longer --epochs is another run (its cosine schedule differs): refused, the run left as it was
    r = CliRunner().invoke(main, ["sweep", str(path), "-q", "--epochs", "2", "--norm", "minmax"])
    assert r.exit_code == 1, r.output
    assert "failed: " in r.output and "--resume with --epochs 2, but this run was scheduled for 1 epochs" in r.output
    rows = (root / "runs/synthetic/resnet18-minmax-resident/metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in rows] == [0]
    # the same seed with --seeds is the same run (it was trained twice under two names before)
    r = CliRunner().invoke(main, ["sweep", str(path), "-q", "--seeds", "223,224", "--norm", "finetune", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "synthetic resnet18-finetune-resident: done before" in r.output
    assert "synthetic resnet18-finetune-resident-s224: to run" in r.output
    # a line cut by a kill does not make a finished run look failed in the summary
    metrics = root / "runs/synthetic/resnet18-finetune-resident/metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"epoch": 1, "tr')
    r = CliRunner().invoke(main, ["sweep", str(path), "-q", "--norm", "finetune"])
    assert r.exit_code == 0, r.output
    assert "| synthetic | resnet18 | finetune | resident | 223 | done before |" in r.output


def test_seed_is_found_under_older_names(tmp_path):
    """Directories named by older sweeps are reused by the seed their config.yaml records; a
    plain name holding another seed's run never receives seed 223."""
    ds = tmp_path / "runs" / "cifar10"
    spec = lambda seed: [r for r in plan(GRID, {}, [seed], None) if r.dataset == "cifar10"][0]

    def old_run(name, seed):
        (ds / name).mkdir(parents=True)
        (ds / name / "config.yaml").write_text(yaml.safe_dump(dict(model="resnet18", norm="finetune",
                                                                   backend="dali", seed=seed)))
    assert resolve_run_name(ds, spec(223)) == "resnet18-finetune-dali"          # nothing there yet
    old_run("resnet18-finetune-dali-s223", 223)          # an old `--seeds 223,...` sweep
    assert resolve_run_name(ds, spec(223)) == "resnet18-finetune-dali-s223"
    old_run("resnet18-finetune-dali", 224)               # an old grid with seeds: [224]
    assert resolve_run_name(ds, spec(224)) == "resnet18-finetune-dali"
    assert resolve_run_name(ds, spec(225)) == "resnet18-finetune-dali-s225"
    (ds / "resnet18-finetune-dali-s223" / "config.yaml").unlink()
    assert resolve_run_name(ds, spec(223)) == "resnet18-finetune-dali-s223"     # plain one holds seed 224
    (ds / "resnet18-finetune-dali" / "config.yaml").write_text("seed: [")
    with pytest.raises(NormfastError, match="resnet18-finetune-dali/config.yaml: not valid YAML"):
        resolve_run_name(ds, spec(223))


def test_summary_keeps_the_rows_before_a_damaged_line(tmp_path):
    """The sweep's summary line reads through RunDir leniently (rows before the damage count);
    the report refuses the same file, naming it."""
    run = tmp_path / "cifar10" / "resnet18-finetune-dali"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(dict(model="resnet18", norm="finetune", backend="dali",
                                                         seed=223, epochs=3)))
    row = lambda e, ips: json.dumps({"epoch": e, "test_acc": 0.5 + e / 10, "train_images_per_second": ips})
    (run / "metrics.jsonl").write_text(row(0, 100.0) + "\n" + row(1, 300.0) + "\n{garbage\n" + row(3, 900.0) + "\n")
    out = summarize(run)
    assert out["train_images_per_second"] == 200.0 and out["best_acc"] == 0.6 and out["best_epoch"] == 1
    with pytest.raises(NormfastError, match="resnet18-finetune-dali/metrics.jsonl: line 3 is not a JSON line"):
        read_run(run)
    assert summarize(tmp_path / "cifar10" / "none") == {"run_dir": str(tmp_path / "cifar10" / "none")}


def test_sweep_reports_missing_data_and_fails(tmp_path):
    grid = dict(GRID, data_root=str(tmp_path / "nodata"), runs=str(tmp_path / "runs"))
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    r = CliRunner().invoke(main, ["sweep", str(path), "--model", "resnet18", "--norm", "finetune", "-q"])
    assert r.exit_code == 1 and "failed: " in r.output and "data directory not found" in r.output


def run_bench(tmp_path, verb: str, data, *args: str):
    """`normfast bench VERB --data DATA --device cpu ARGS --json F`: (its output, F's records)."""
    out = tmp_path / f"{verb}.json"
    r = CliRunner().invoke(main, ["bench", verb, "--data", str(data), "--device", "cpu", *args, "--json", str(out)])
    assert r.exit_code == 0, r.output
    return r.output, json.loads(out.read_text())["records"]


def test_bench_loaders_json(synthetic_dir, tmp_path):
    output, recs = run_bench(tmp_path, "loaders", synthetic_dir, "--backend", "resident,torch",
                             "--norm", "finetune,instance", "--max-batches", "2", "--batch-size", "64")
    assert [(x["backend"], x["norm"]) for x in recs] == [("resident", "finetune"), ("resident", "instance"),
                                                          ("torch", "finetune"), ("torch", "instance")]
    for x in recs:
        assert {"backend", "norm", "device", "images_per_second", "cpu_seconds_per_1000"} <= set(x)
        assert x["images"] == 128 and x["images_per_second"] > 0 and x["cpu_seconds_per_1000"] > 0
    assert "| torch | finetune | shuffled | — | cpu |" in output and "1.0×" in output
    assert all(x["producer_cpu_ms_per_batch"] > 0 and x["handovers_per_batch"] == 0 for x in recs)  # no thread: CPU


@needs("dali")
def test_bench_loaders_compares_chunks(synthetic_dir, tmp_path):
    _, recs = run_bench(tmp_path, "loaders", synthetic_dir, "--backend", "dali,torch", "--norm", "finetune",
                        "--batch-size", "64", "--chunk-batches", "auto,3")
    assert [(x["backend"], x["chunk_requested"], x["chunk_batches"]) for x in recs] == [
        ("dali", "auto", 1), ("dali", 3, 3), ("torch", "auto", None)]
    assert all(x["images"] == 600 for x in recs)


def test_bench_rejects_a_bad_chunk_count(synthetic_dir):
    r = CliRunner().invoke(main, ["bench", "loaders", "--data", str(synthetic_dir), "--backend", "resident",
                                  "--device", "cpu", "--chunk-batches", "auto,0"])
    assert r.exit_code != 0 and "--chunk-batches 'auto,0'" in r.output and "Traceback" not in r.output


def test_bench_train_table(synthetic_dir, tmp_path):
    output, recs = run_bench(tmp_path, "train", synthetic_dir, "--backend", "resident", "--batch-size", "16",
                             "--steps", "2", "--warmup", "1", "--repeats", "2")
    rec = recs[0]
    assert rec["ceiling_images_per_second"] > 0 and rec["images_per_second"] > 0
    assert rec["efficiency"] == pytest.approx(rec["images_per_second"] / rec["ceiling_images_per_second"])
    assert "| resnet18 | none | resident | 1 (auto) | cpu | off |" in output
    assert rec["producer_cpu_ms_per_batch"] > 0
