"""A fused run under DDP (gloo, 2 processes under torchrun, CPU) against the same settings'
separate DDP runs: per-epoch losses and accuracies (train, test and val) within float32 rounding."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from converters.convert import ConvertConfig, convert
from fixtures import write_imagefolder
from normfast.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent


def _torchrun(runs, data, port, norm):
    env = os.environ | {"OMP_NUM_THREADS": "1",
                        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "normfast", "train", "--data", str(data), "--runs", str(runs), "--epochs", "2", "--lr", "1e-4",
           "--batch-size", "4", "--val-fraction", "0.1667", "--device", "cpu", "--num-workers", "0",
           "--backend", "resident", "--pretrained", "none", "--norm", norm, "-q"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]


def test_fused_ddp_equals_separate_ddp_runs(tmp_path):
    write_imagefolder(tmp_path / "src", classes=("a", "b", "c"), per_class=8, size=(16, 16))
    data = tmp_path / "data"
    convert(ConvertConfig("imagefolder", data, tmp_path / "src", formats=("dali",), quiet=True))
    _torchrun(tmp_path / "fused", data, 29631, "finetune,instance")
    for norm in ("finetune", "instance"):
        _torchrun(tmp_path / "sep", data, 29632, norm)
    for norm in ("finetune", "instance"):
        fused = next((tmp_path / "fused").rglob(f"resnet18-{norm}-resident"))
        sep = next((tmp_path / "sep").rglob(f"resnet18-{norm}-resident"))
        conf = yaml.safe_load((fused / "config.yaml").read_text())
        assert conf["world_size"] == 2 and conf["fused_with"] == ["finetune", "instance"]
        got, want = RunDir(fused).read_metrics(), RunDir(sep).read_metrics()
        assert len(got) == len(want) == 2
        for a, b in zip(got, want):
            for key in ("train_loss", "test_loss", "val_loss"):
                assert a[key] == pytest.approx(b[key], rel=1e-5), (norm, key, a, b)
            for key in ("train_acc", "test_acc", "val_acc"):
                assert a[key] == b[key], (norm, key)
