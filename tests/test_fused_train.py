"""`normfast train --norm a,b,...`: a fused run against the separate runs, its run directories,
resume after kills, and bad lists (tiny data, CPU, float32)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import normfast.fused_train as fused_train
from fixtures import cfg_for
from normfast.cli import main
from normfast.fused_train import COMMIT, NEXT, fused_configs, recover, train_fused
from normfast.rundir import RunDir
from normfast.train import train

ROOT = Path(__file__).resolve().parent.parent
# lr 1e-4 and 2 steps an epoch: float32 runs of random-init ResNet18 on 40 images stay within
# float32 rounding of each other for 2 epochs (at the recipe's 1e-3 a change of summation
# order alone, fused or not, moves epoch 2's train loss by ~3e-4: the dynamics amplify it)
RECIPE = dict(epochs=2, batch_size=20, test_batch_size=8, lr=1e-4)
# resident and ffcv normalize as Normalizer does (x * scale + shift); dali ((x - m) / s in pixel
# units) and torch (ToTensor then Normalize) round their inputs differently by an ulp, which the
# 4 steps amplify to ~1e-4 in epoch 2's loss and the weights (measured: a separate dali run
# differs from a separate resident run of the same pixels by 8.7e-5 in the weights, exactly as
# the fused dali run differs from the separate dali run)
LOSS_RTOL = {"resident": 1e-5, "ffcv": 1e-5, "dali": 1e-3, "torch": 1e-3}


def _rows(dataset, cfg):
    return RunDir(cfg.run_dir(dataset)).read_metrics()


def _compare(tiny, tmp_path, backend, norms):
    cfgs = fused_configs(cfg_for(tiny, tmp_path / "fused", backend=backend, **RECIPE), norms)
    bests = train_fused(cfgs)
    for cfg, best in zip(cfgs, bests):
        sep_cfg = cfg_for(tiny, tmp_path / "sep", backend=backend, norm=cfg.norm, **RECIPE)
        sep_best = train(sep_cfg)
        got, want = _rows("synthetic", cfg), _rows("synthetic", sep_cfg)
        assert [r["epoch"] for r in got] == [0, 1]
        for a, b in zip(got, want):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=LOSS_RTOL[backend]), (cfg.norm, a, b)
            assert a["test_loss"] == pytest.approx(b["test_loss"], rel=LOSS_RTOL[backend]), (cfg.norm, a, b)
            assert a["test_acc"] == b["test_acc"] and a["train_acc"] == b["train_acc"], cfg.norm
            assert a["lr"] == b["lr"]
        assert best["best_epoch"] == sep_best["best_epoch"] and best["best_acc"] == sep_best["best_acc"]
        run = cfg.run_dir("synthetic")
        conf = yaml.safe_load((run / "config.yaml").read_text())
        assert conf["fused_with"] == norms and conf["fused_mechanism"] == "hfta-grouped-conv"
        assert conf["norm"] == cfg.norm
        # last.pt holds the separate model's state: it loads into a separate run's model as is
        fused_ckpt = torch.load(run / "last.pt", weights_only=False)
        sep_ckpt = torch.load(sep_cfg.run_dir("synthetic") / "last.pt", weights_only=False)
        assert fused_ckpt["model"].keys() == sep_ckpt["model"].keys()
        # float32: the whole state within 1e-5 relative (single elements of tiny gradients can
        # differ by up to an Adam step, ~lr: Adam divides by the gradient's own size); a setting
        # trained on another's data would be ~1e-2 off
        diff = sum(float((fused_ckpt["model"][k] - v).square().sum()) for k, v in sep_ckpt["model"].items()
                   if v.is_floating_point())
        norm = sum(float(v.square().sum()) for v in sep_ckpt["model"].values() if v.is_floating_point())
        assert (diff / norm) ** 0.5 < LOSS_RTOL[backend], (cfg.norm, (diff / norm) ** 0.5)
        assert all(fused_ckpt["model"][k].shape == v.shape for k, v in sep_ckpt["model"].items())
        assert json.loads((run / "best_results.json").read_text())["finished"]
        assert not (run / NEXT).exists() and not (run / COMMIT).exists()


def test_fused_run_equals_separate_runs_resident_all_settings(tiny, tmp_path):
    _compare(tiny, tmp_path, "resident", ["finetune", "pretrain", "instance", "minmax"])


@pytest.mark.parametrize("backend", ["dali", "ffcv", "torch"])
def test_fused_run_equals_separate_runs_per_backend(tiny, tmp_path, backend):
    _compare(tiny, tmp_path, backend, ["finetune", "instance"])


def _cli(*args):
    r = CliRunner().invoke(main, list(map(str, args)))
    return r.exit_code, r.output


def _train_args(data, runs, *extra):
    return ["train", "--data", data, "--runs", runs, "--epochs", "2", "--batch-size", "20", "--lr", "1e-4",
            "--test-batch-size", "8", "--device", "cpu", "--num-workers", "1", "--pretrained", "none", "-q", *extra]


@pytest.mark.parametrize("norm, message", [
    ("finetune,finetune", "'finetune' is listed twice"),
    ("finetune,zscore", "unknown setting 'zscore'"),
    ("finetune,,instance", "an empty item in the list"),
])
def test_bad_norm_lists_are_one_error_line(tiny, tmp_path, norm, message):
    code, out = _cli(*_train_args(tiny, tmp_path, "--norm", norm))
    assert code == 1 and out.startswith("error: ") and out.strip().count("\n") == 0, out
    assert message in out and "--norm" in out, out
    assert not (tmp_path / "synthetic").exists()


def test_run_name_with_a_list_and_a_finished_setting(tiny, tmp_path):
    code, out = _cli(*_train_args(tiny, tmp_path, "--norm", "finetune,instance", "--run-name", "x"))
    assert code == 1 and "--run-name names one run" in out and out.strip().count("\n") == 0, out
    train(cfg_for(tiny, tmp_path, norm="instance", **RECIPE))       # a finished separate run
    r = subprocess.run([sys.executable, "-m", "normfast", *_train_args(tiny, tmp_path, "--norm", "all")],
                       env=os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("note: ") == 1 and "instance left out of the fused run" in r.stderr, r.stderr
    for norm in ("finetune", "pretrain", "minmax"):
        conf = yaml.safe_load((tmp_path / "synthetic" / f"resnet18-{norm}-resident" / "config.yaml").read_text())
        assert conf["fused_with"] == ["finetune", "pretrain", "minmax"]
    assert "fused_with" not in yaml.safe_load(
        (tmp_path / "synthetic" / "resnet18-instance-resident" / "config.yaml").read_text())


def test_a_diverged_setting_is_named(tiny, tmp_path, monkeypatch):
    real = fused_train.per_setting_loss

    def nan_for_instance(out, y):
        loss = real(out, y)
        return loss * torch.tensor([1.0, float("nan")], device=loss.device)
    monkeypatch.setattr(fused_train, "per_setting_loss", nan_for_instance)
    code, out = _cli(*_train_args(tiny, tmp_path, "--norm", "finetune,instance"))
    assert code == 1 and out.strip().count("\n") == 0, out
    assert "the loss of instance became NaN or infinite in epoch 1 " in out, out


def _states(runs_root, norms):
    return {n: torch.load(runs_root / "synthetic" / f"resnet18-{n}-resident" / "last.pt", weights_only=False)
            for n in norms}


def test_sigkill_during_an_epoch_resumes_to_the_same_weights(tiny, tmp_path):
    norms = ["finetune", "minmax"]
    args = ("--norm", ",".join(norms), "--batch-size", "4", "--epochs", "3")
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, "-m", "normfast", *_train_args(tiny, straight, *args)], env=env, check=True,
                   capture_output=True, timeout=600, cwd=ROOT)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "normfast", *_train_args(tiny, killed, *args)], env=env,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = killed / "synthetic" / "resnet18-minmax-resident" / "best_results.json"   # after epoch 1's commit
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:      # into epoch 2 (10 steps an epoch)
        if done.is_file():
            time.sleep(0.5)
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len({c["epoch"] for c in _states(killed, norms).values()}) == 1
    subprocess.run([sys.executable, "-m", "normfast", *_train_args(tiny, killed, *args, "--resume")], env=env,
                   check=True, capture_output=True, timeout=600, cwd=ROOT)
    want, got = _states(straight, norms), _states(killed, norms)
    for n in norms:
        assert got[n]["epoch"] == want[n]["epoch"] == 2
        for k, v in want[n]["model"].items():
            assert torch.equal(got[n]["model"][k], v), (n, k)
        rows = RunDir(killed / "synthetic" / f"resnet18-{n}-resident").read_metrics()
        assert [r["epoch"] for r in rows] == [0, 1, 2]


def _fake_runs(tmp_path, names):
    runs = []
    for i, name in enumerate(names):
        r = RunDir(tmp_path / name)
        r.path.mkdir(parents=True)
        torch.save({"epoch": 0}, r.last_checkpoint)
        runs.append(r)
    return runs


def test_a_kill_during_the_commit_leaves_all_settings_at_one_epoch(tmp_path):
    """Every point a kill can interrupt `commit` at: recover() leaves all last.pt at one epoch."""
    real_replace = os.replace
    for stop_after in range(1, 12):       # 2 NEXT writes (with their renames), 2 COMMIT, 2 renames, 2 unlinks
        root = tmp_path / f"k{stop_after}"
        runs = _fake_runs(root, ["a", "b"])
        calls = {"n": 0}

        def counted(fn):
            def wrapper(*a, **kw):
                calls["n"] += 1
                if calls["n"] > stop_after:
                    raise KeyboardInterrupt      # a kill: nothing after this point happens
                return fn(*a, **kw)
            return wrapper
        try:
            os.replace = counted(real_replace)
            try:
                fused_train.commit(runs, [{"epoch": 1}, {"epoch": 1}], 1)
            except KeyboardInterrupt:
                pass
        finally:
            os.replace = real_replace
        recover(runs)
        epochs = {torch.load(r.last_checkpoint, weights_only=False)["epoch"] for r in runs}
        assert len(epochs) == 1, (stop_after, epochs)
        assert not any((r.path / NEXT).exists() or (r.path / COMMIT).exists() for r in runs)


def test_bench_train_fused_json(tiny, tmp_path):
    out = tmp_path / "b.json"
    r = CliRunner().invoke(main, ["bench", "train", "--data", str(tiny), "--device", "cpu", "--backend", "resident",
                                  "--model", "resnet18", "--norm", "finetune,instance", "--batch-size", "8",
                                  "--steps", "1", "--warmup", "0", "--repeats", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rec, = json.loads(out.read_text())["records"]
    assert rec["fused"] and rec["norms"] == ["finetune", "instance"] and rec["settings"] == 2
    assert [p["norm"] for p in rec["per_setting"]] == ["finetune", "instance"]
    each = [p["images_per_second"] for p in rec["per_setting"]]
    assert rec["sequential_images_per_second"] == pytest.approx(2 / sum(1 / v for v in each))
    assert rec["speedup"] == pytest.approx(rec["fused_images_per_second"] / rec["sequential_images_per_second"])
    assert "| resnet18 | none | resident | cpu | off | 2 |" in r.output
    r = CliRunner().invoke(main, ["bench", "train", "--data", str(tiny), "--device", "cpu", "--norm", "finetune,"])
    assert r.exit_code == 1 and "an empty item" in r.output and r.output.strip().count("\n") == 0, r.output
