"""Training on the CPU with tiny data: every backbone x backend, run files, resume, NaN guard,
argument errors, and DDP with gloo across two processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import normfast.step as step_mod
import normfast.train as train_mod
from converters.convert import ConvertConfig, convert
from fixtures import cfg_for, write_imagefolder
from normfast.cli import main
from normfast.config import resolve_train_config
from normfast.errors import NormfastError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("model", ["resnet18", "resnet50", "densenet121", "densenet161"])
def test_every_backbone_steps_with_every_backend(tiny, tmp_path, model):
    for backend in ("resident", "torch", "dali", "ffcv"):
        trainer = train_mod.Trainer(cfg_for(tiny, tmp_path, model=model, backend=backend, batch_size=8))
        trainer.build()
        before = [p.detach().clone() for p in trainer.model.parameters()][:3]
        x, y = next(iter(trainer.train_loader))
        assert x.is_contiguous(memory_format=torch.channels_last)
        out = trainer.model(x)
        assert out.shape == (len(y), 10)
        loss = step_mod.loss_fn(out, y)
        trainer.opt.zero_grad()
        loss.backward()
        trainer.opt.step()
        after = list(trainer.model.parameters())[:3]
        assert any(not torch.equal(a, b) for a, b in zip(before, after)), backend


def test_run_directory_files(tiny, tmp_path):
    best = train_mod.train(cfg_for(tiny, tmp_path, epochs=2))
    run = tmp_path / "synthetic" / "resnet18-finetune-resident"
    # the same files as before RunDir, plus the lock file; no temporary left behind
    assert {p.name for p in run.iterdir()} == {"config.yaml", "metrics.jsonl", "best_results.json", "best.pt",
                                               "last.pt", ".lock"}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for key in ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds",
                "train_images_per_second", "data_wait_fraction"):
        assert all(key in r for r in rows), key
    assert 0 <= rows[0]["data_wait_fraction"] <= 1 and rows[0]["train_images_per_second"] > 0
    assert rows[1]["lr"] == pytest.approx(0.0005)          # cosine over 2 epochs, stepped per epoch
    res = json.loads((run / "best_results.json").read_text())
    assert res["best_acc"] == best["best_acc"] == max(r["test_acc"] for r in rows)
    assert res["best_epoch"] in (0, 1) and res["finished"] and res["weights"] == "none"
    with pytest.raises(NormfastError, match="already there; pass --resume"):
        train_mod.train(cfg_for(tiny, tmp_path, epochs=2))


def test_a_last_batch_of_one_sample_is_trained_with_the_batch_before(tmp_path, monkeypatch):
    """17 training images in batches of 8: 8, 8, 1. BatchNorm cannot train on one 32 px
    sample (1x1 feature maps at the end), so the last one joins the batch before it: two
    steps, every sample trained once."""
    write_imagefolder(tmp_path / "src", classes=[f"k{i:02d}" for i in range(17)], per_class=1)
    data = tmp_path / "data"
    convert(ConvertConfig("imagefolder", data, tmp_path / "src", quiet=True))
    debug = tmp_path / "debug"
    debug.mkdir()
    monkeypatch.setenv("NORMFAST_DEBUG_DDP", str(debug))
    train_mod.train(cfg_for(data, tmp_path / "runs", batch_size=8))
    steps = [json.loads(x) for x in (debug / "rank0.jsonl").read_text().splitlines()]
    assert [len(s["labels"]) for s in steps] == [8, 9]
    assert sorted(lab for s in steps for lab in s["labels"]) == list(range(17))


def test_resume_matches_uninterrupted(tiny, tmp_path, monkeypatch):
    full = tmp_path / "full"
    train_mod.train(cfg_for(tiny, full, epochs=3, backend="torch"))
    cut = tmp_path / "cut"
    real = train_mod.Trainer.run_epoch

    def dies_in_epoch_2(self, epoch, train):
        if epoch == 2 and train:
            raise KeyboardInterrupt
        return real(self, epoch, train)

    monkeypatch.setattr(train_mod.Trainer, "run_epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg_for(tiny, cut, epochs=3, backend="torch"))
    monkeypatch.setattr(train_mod.Trainer, "run_epoch", real)
    train_mod.train(cfg_for(tiny, cut, epochs=3, backend="torch", resume=True))
    a = [json.loads(x) for x in (full / "synthetic/resnet18-finetune-torch/metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (cut / "synthetic/resnet18-finetune-torch/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in b] == [0, 1, 2]
    # the learning rate of every epoch equals the uninterrupted run's: one cosine over 3 epochs
    assert [r["lr"] for r in b] == [r["lr"] for r in a] == pytest.approx([0.001, 0.00075, 0.00025])
    for ra, rb in zip(a, b):
        for k in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), (ra["epoch"], k)
    wa = torch.load(full / "synthetic/resnet18-finetune-torch/last.pt", weights_only=False)["model"]
    wb = torch.load(cut / "synthetic/resnet18-finetune-torch/last.pt", weights_only=False)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_nan_guard_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    real = step_mod.loss_fn
    calls = {"n": 0}

    def poisoned(out, y):
        calls["n"] += 1
        loss = real(out, y)
        return loss * float("nan") if calls["n"] > 5 else loss

    monkeypatch.setattr(step_mod, "loss_fn", poisoned)
    with pytest.raises(NormfastError, match="NaN or infinite in epoch 1"):
        train_mod.train(cfg_for(tiny, tmp_path, epochs=3, log_interval=1))
    run = tmp_path / "synthetic" / "resnet18-finetune-resident"
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert json.loads((run / "best_results.json").read_text())["epochs_done"] == 1


@pytest.mark.parametrize("args, message", [
    (["--model", "vgg11"], "'--model': 'vgg11' is not one of 'resnet18', 'resnet50'"),
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--epochs", "0"], "--epochs 0: must be at least 1"),
    (["--norm", "zscore"], "'--norm': 'zscore' is not one of 'finetune'"),
    (["--backend", "nvjpeg"], "'--backend': 'nvjpeg' is not one of 'dali', 'ffcv', 'resident', 'torch'"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
])
def test_bad_arguments_one_line(tiny, tmp_path, args, message):
    r = CliRunner().invoke(main, ["train", "--data", str(tiny), "--runs", str(tmp_path), "-q"] + args)
    assert r.exit_code == 1, r.output
    assert message in r.output and r.output.strip().count("\n") == 0


def test_missing_data_dir(tmp_path):
    r = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "nope"), "-q"])
    assert r.exit_code == 1 and "nope: data directory not found" in r.output


def test_pretrained_imagenet_without_network_is_a_clear_error(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    import torch.hub
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network unreachable")))
    with pytest.raises(NormfastError, match="--pretrained PATH"):
        train_mod.train(cfg_for(tiny, tmp_path, pretrained="imagenet"))


def test_pretrained_local_file(tiny, tmp_path):
    import torchvision
    path = tmp_path / "imagenet-like.pt"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), path)
    train_mod.train(cfg_for(tiny, tmp_path, pretrained=str(path)))
    res = json.loads((tmp_path / "synthetic/resnet18-finetune-resident/best_results.json").read_text())
    assert res["weights"].startswith(f"file:{path}")


def test_config_file_and_unknown_key(tiny, tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("epochs: 7\nlr: 0.01\n")
    cfg = resolve_train_config(good, data=str(tiny), lr=0.02)
    assert cfg.epochs == 7 and cfg.lr == 0.02 and cfg.seed == 223 and cfg.batch_size == 256
    bad = tmp_path / "b.yaml"
    bad.write_text("epoch: 7\n")
    with pytest.raises(NormfastError, match="unknown key 'epoch'"):
        resolve_train_config(bad, data=str(tiny))


@pytest.mark.parametrize("n", [12, 9])
def test_ddp_two_processes_gloo(tmp_path, n):
    """12 images: shards of 6 + 6. 9 images: shards of 4 + 5, i.e. 1 vs 2 batches of 4 (global
    batch 8 over 2 ranks), where both ranks must still take the same number of steps: rank
    1's last batch of one sample joins its batch before (one step of 5), nothing skipped."""
    # one class per training image, so labels identify samples across ranks
    write_imagefolder(tmp_path / "src", classes=[f"k{i:02d}" for i in range(n)], per_class=1)
    data = tmp_path / "data"
    convert(ConvertConfig("imagefolder", data, tmp_path / "src", quiet=True))
    debug = tmp_path / "debug"
    debug.mkdir()
    env = os.environ | {"NORMFAST_DEBUG_DDP": str(debug), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={29500 + n}",
           "-m", "normfast", "train", "--data", str(data), "--runs", str(tmp_path / "runs"), "--epochs", "2",
           "--batch-size", "8", "--device", "cpu", "--num-workers", "1", "--pretrained", "none", "-q"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    logs = {k: [json.loads(x) for x in (debug / f"rank{k}.jsonl").read_text().splitlines()] for k in (0, 1)}
    assert len(logs[0]) == len(logs[1])                              # the same number of steps
    for epoch in (0, 1):
        seen = {k: [lab for row in logs[k] if row["epoch"] == epoch for lab in row["labels"]] for k in (0, 1)}
        assert not set(seen[0]) & set(seen[1])                      # disjoint
        assert set(seen[0]) | set(seen[1]) <= set(range(n))
        # 12: 2 + 2 full batches; 9: one step each (4 + 5); every sample seen once
        assert sorted(seen[0] + seen[1]) == list(range(n))
    for a, b in zip(logs[0], logs[1]):                               # same weights after every step
        assert a["checksum"] == pytest.approx(b["checksum"], rel=1e-6)
    runs = list((tmp_path / "runs").rglob("metrics.jsonl"))
    assert len(runs) == 1 and len(runs[0].read_text().splitlines()) == 2


def test_resume_refuses_a_different_run(tiny, tmp_path):
    train_mod.train(cfg_for(tiny, tmp_path, epochs=1))
    with pytest.raises(NormfastError, match=r"--resume with a different configuration \(lr 0.001 -> 0.01\)"):
        train_mod.train(cfg_for(tiny, tmp_path, epochs=1, resume=True, lr=0.01))


def test_yaml_off_and_bad_values(tiny, tmp_path):
    c = tmp_path / "c.yaml"
    c.write_text("amp: off\ncompile: no\n")
    cfg = resolve_train_config(c, data=str(tiny))
    assert cfg.amp == "off" and cfg.compile == "none"
    for bad, msg in ((dict(log_interval=0), "--log-interval 0"), (dict(seed=-1), "--seed -1"),
                     (dict(device="cuda:x"), "unknown device 'cuda:x'")):
        with pytest.raises(NormfastError, match=msg):
            resolve_train_config(None, data=str(tiny), **bad)
    c.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(NormfastError, match="cannot read it as text"):
        resolve_train_config(c, data=str(tiny))


def test_a_batch_size_of_one_is_one_line(tmp_path):
    write_imagefolder(tmp_path / "src", classes=["a", "b"], per_class=2)
    data = tmp_path / "data"
    convert(ConvertConfig("imagefolder", data, tmp_path / "src", quiet=True))
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--runs", str(tmp_path / "runs"), "--epochs", "1",
                                  "--batch-size", "1", "--device", "cpu", "--pretrained", "none", "-q"])
    assert r.exit_code == 1, r.output
    assert "BatchNorm cannot train on one sample" in r.output and "Traceback" not in r.output


def test_chunk_batches_reaches_the_loaders(tiny, tmp_path):
    """`train --chunk-batches` / the `chunk_batches` key runs what `bench --chunk-batches`
    measures: every loader of the run prepares that many batches at once ("auto": the
    backend's default)."""
    c = tmp_path / "c.yaml"
    c.write_text("chunk_batches: 3\n")
    assert resolve_train_config(c, data=str(tiny)).chunk_batches == 3
    assert resolve_train_config(None, data=str(tiny), chunk_batches="auto").chunk_batches == 0
    with pytest.raises(NormfastError, match="--chunk-batches -1: must be at least 0"):
        resolve_train_config(None, data=str(tiny), chunk_batches="-1")
    trainer = train_mod.Trainer(cfg_for(tiny, tmp_path, backend="dali", chunk_batches=3, batch_size=8))
    trainer.build()
    try:
        assert trainer.train_loader.chunk == trainer.test_loader.chunk == 3
    finally:
        trainer.close()
    r = CliRunner().invoke(main, ["train", "--data", str(tiny), "--runs", str(tmp_path / "r"), "--epochs", "1",
                                  "--device", "cpu", "--pretrained", "none", "--backend", "dali",
                                  "--chunk-batches", "2", "-q"])
    assert r.exit_code == 0, r.output
    cfg = (tmp_path / "r" / "synthetic" / "resnet18-finetune-dali" / "config.yaml").read_text()
    assert "chunk_batches: 2" in cfg


def test_meter_sums_match_the_batches():
    """The Meter's few-kernel sums (a float64 loss sum, per-position hits summed once) give
    the plain totals, with batches of different sizes, and its finite flag follows the sum."""
    from normfast.device import Dist
    meter = step_mod.Meter(torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    want_loss, want_correct = 0.0, 0
    for n in (5, 8, 3, 9):
        out, y = torch.randn(n, 4, generator=g), torch.randint(0, 4, (n,), generator=g)
        loss = torch.rand((), generator=g)
        meter.update(loss, out, y)
        want_loss += float(loss) * n
        want_correct += int((out.argmax(1) == y).sum())
    res = meter.result(Dist({}), 2.0)
    assert res["loss"] == pytest.approx(want_loss / 25) and res["acc"] == pytest.approx(want_correct / 25)
    assert res["images_per_second"] == 12.5 and bool(meter.finite())
    meter.update(torch.tensor(float("nan")), torch.zeros(2, 4), torch.zeros(2, dtype=torch.int64))
    assert not bool(meter.finite())


def test_the_finite_flag_is_read_one_interval_late(monkeypatch):
    """On CUDA, LateRead never waits for the GPU: a poll starts a non-blocking copy and hands
    back an earlier one only once its event has passed (a fake event here)."""
    class FakeEvent:
        made: list = []

        def __init__(self):
            self.done = False
            FakeEvent.made.append(self)

        def record(self, stream=None):
            pass

        def query(self):
            return self.done

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    late = step_mod.LateRead(torch.device("cpu"))
    assert late.poll(torch.tensor([1.0, 2.0], dtype=torch.float64), 10) == ([1.0, 2.0], 10)   # CPU: at once
    late.cuda, late.pin = True, False       # the CUDA path, on CPU tensors
    assert late.poll(torch.tensor([1.0, 0.5], dtype=torch.float64), 10) is None
    assert late.poll(torch.tensor([0.0, 0.4], dtype=torch.float64), 20) is None      # 10's copy not done yet
    FakeEvent.made[0].done = True
    assert late.poll(torch.tensor([0.0, 0.3], dtype=torch.float64), 30) == ([1.0, 0.5], 10)
    assert len(FakeEvent.made) == 2          # 20 was never started: one copy in flight at a time
    FakeEvent.made[1].done = True
    assert late.poll(torch.tensor([1.0, 0.2], dtype=torch.float64), 40) == ([0.0, 0.3], 30)


def test_dist_without_ddp_makes_no_device_tensor(monkeypatch):
    from normfast.device import Dist
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a tensor")))
    d = Dist({})
    assert d.min(3, "cpu") == 3.0 and d.sum([1, 2.5], "cpu") == [1.0, 2.5]
