"""DDP on the CPU (gloo, 2 processes under torchrun): every rank sees every class each epoch,
the ranks together cover the (training part of the) split exactly, --batch-size is the
global batch; plus the global-batch arithmetic and the --val-fraction split in one process."""
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import normfast.train as train_mod
from converters.convert import ConvertConfig, convert
from fixtures import write_imagefolder
from normfast.cli import main
from normfast.config import resolve_train_config
from normfast.errors import NormfastError
from normfast.manifest import load_manifest, val_split
from normfast.shards import ShardReader

ROOT = Path(__file__).resolve().parent.parent


def stored_labels(data):
    return np.concatenate([y for _, y in ShardReader(load_manifest(data), "train").batches(4096)])


def test_ddp_ranks_see_every_class_and_cover_the_split(tmp_path):
    # 3 classes x 8 images, listed class by class: the old contiguous blocks gave rank 0
    # classes {0, 1} only and rank 1 classes {1, 2} only
    write_imagefolder(tmp_path / "src", classes=("a", "b", "c"), per_class=8, size=(16, 16))
    data = tmp_path / "data"
    convert(ConvertConfig("imagefolder", data, tmp_path / "src", formats=("dali",), quiet=True))
    debug = tmp_path / "debug"
    debug.mkdir()
    env = os.environ | {"NORMFAST_DEBUG_DDP": str(debug), "OMP_NUM_THREADS": "1",
                        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29611",
           "-m", "normfast", "train", "--data", str(data), "--runs", str(tmp_path / "runs"), "--epochs", "2",
           "--batch-size", "4", "--val-fraction", "0.1667", "--device", "cpu", "--num-workers", "0",
           "--backend", "resident", "--pretrained", "none", "-q"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    logs = {k: [json.loads(x) for x in (debug / f"rank{k}.jsonl").read_text().splitlines()] for k in (0, 1)}
    labels = stored_labels(data)
    train_idx, val_idx = val_split(load_manifest(data), 0.1667, 223)
    assert len(val_idx) == 4      # 20 left: 10 per rank, 5 steps of 2 (no batch of one for BatchNorm)
    for epoch in (0, 1):
        seen = {k: [lab for row in logs[k] if row["epoch"] == epoch for lab in row["labels"]] for k in (0, 1)}
        for k in (0, 1):
            assert set(seen[k]) == {0, 1, 2}, (k, seen[k])                # every class on every rank
            assert all(len(row["labels"]) == 2 for row in logs[k])        # global 4 = 2 per rank
        # together: exactly the training part of the split, once (10 + 10 of 20)
        assert Counter(seen[0] + seen[1]) == Counter(labels[train_idx].tolist())
    run = next((tmp_path / "runs").rglob("config.yaml")).parent
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["global_batch_size"] == 4 and config["per_rank_batch_size"] == 2
    assert config["batch_size"] == 4 and config["world_size"] == 2 and config["val_count"] == 4
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("val_acc" in row and "val_loss" in row for row in rows)
    assert json.loads((run / "best_results.json").read_text())["selected_by"] == "val"


def test_global_batch_must_divide_by_the_world_size(tmp_path, monkeypatch):
    cfg = resolve_train_config(None, data=str(tmp_path), batch_size=256, test_batch_size=100)
    assert train_mod.per_rank_batch_sizes(cfg, 4) == (64, 25)
    assert train_mod.per_rank_batch_sizes(cfg, 1) == (256, 100)
    with pytest.raises(NormfastError, match=r"--batch-size 256: the global batch must divide by the world size 3"):
        train_mod.per_rank_batch_sizes(cfg, 3)
    # through the CLI, before any process group is set up: one line, exit 1
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    r = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--batch-size", "256", "--device", "cpu"])
    assert r.exit_code == 1 and r.stderr.strip().splitlines() == [
        "error: --batch-size 256: the global batch must divide by the world size 3 "
        "(each rank trains batch-size / 3 per step)"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "synthetic"
    convert(ConvertConfig("synthetic", out, limit=40, quiet=True, formats=("dali",)))
    return out


def test_val_fraction_holds_out_a_seeded_subset(tiny, tmp_path):
    m = load_manifest(tiny)
    tr, va = val_split(m, 0.25, 223)
    assert len(va) == 10 and len(tr) == 30 and not set(tr) & set(va) and sorted([*tr, *va]) == list(range(40))
    assert np.array_equal(va, val_split(m, 0.25, 223)[1]) and not np.array_equal(va, val_split(m, 0.25, 1)[1])
    assert val_split(m, 0.0, 223) is None
    cfg = resolve_train_config(None, data=str(tiny), runs=str(tmp_path), epochs=2, batch_size=8,
                               test_batch_size=8, quiet=True, num_workers=0, device="cpu", val_fraction=0.25,
                               pretrained="none")
    trainer = train_mod.Trainer(cfg)
    try:
        trainer.build()
        assert trainer.train_loader.num_samples == 30 and trainer.val_loader.num_samples == 10
        labels = stored_labels(tiny)
        _, y = zip(*trainer.val_loader)
        assert np.concatenate(y).tolist() == labels[va].tolist()        # val: held-out samples, stored order
        seen = sorted(trainer.train_loader.epoch_indices(0).tolist())
        assert seen == tr.tolist()                                       # train never sees them
    finally:
        trainer.close()
    best = train_mod.train(cfg)
    run = tmp_path / "synthetic" / "resnet18-finetune-resident"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all({"val_loss", "val_acc"} <= set(row) for row in rows)
    pick = max(range(len(rows)), key=lambda i: (rows[i]["val_acc"], -i))
    saved = json.loads((run / "best_results.json").read_text())
    assert saved["selected_by"] == "val" and saved["best_epoch"] == pick == best["best_epoch"]
    assert saved["best_acc"] == rows[pick]["test_acc"]                  # test accuracy at the best-val epoch


def test_without_val_best_is_selected_by_test(tiny, tmp_path):
    cfg = resolve_train_config(None, data=str(tiny), runs=str(tmp_path), epochs=1, batch_size=8,
                               test_batch_size=8, quiet=True, num_workers=0, device="cpu", pretrained="none")
    train_mod.train(cfg)
    run = tmp_path / "synthetic" / "resnet18-finetune-resident"
    assert json.loads((run / "best_results.json").read_text())["selected_by"] == "test"
    assert "val_acc" not in json.loads((run / "metrics.jsonl").read_text().splitlines()[0])


@pytest.mark.parametrize("bad", ["1", "-0.1", "nan"])
def test_bad_val_fraction_is_one_line(tiny, tmp_path, bad):
    r = CliRunner().invoke(main, ["train", "--data", str(tiny), "--val-fraction", bad, "--device", "cpu"])
    assert r.exit_code == 1 and r.stderr.strip().splitlines() == [
        f"error: --val-fraction {float(bad)}: must be in [0, 1) (0 = no validation split)"]
