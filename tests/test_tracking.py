"""`--log none|tensorboard|wandb`: what the trainer logs, where, offline, rank 0 only; a missing
package is one error line. wandb is faked; tensorboard is tested for real where it is installed."""
import importlib.util
import json
import sys
import types

import pytest
from click.testing import CliRunner

import normfast.train as train_mod
from converters.convert import ConvertConfig, convert
from normfast.cli import main
from normfast.config import resolve_train_config
from normfast.device import Dist
from normfast.errors import NormfastError
from normfast.tracking import make_tracker

RUN = "resnet18-finetune-resident"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "synthetic"
    convert(ConvertConfig("synthetic", out, limit=40, quiet=True))     # 40 train images: 5 steps of 8
    return out


def cfg_for(data, runs, **kw):
    base = dict(data=str(data), runs=str(runs), epochs=2, batch_size=8, test_batch_size=16, quiet=True,
                num_workers=1, device="cpu", pretrained="none", backend="resident", log_interval=2)
    return resolve_train_config(None, **(base | kw))


class FakeWriter:
    instances = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.texts, self.closed = log_dir, [], [], False
        FakeWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        assert isinstance(value, float) and isinstance(step, int)     # host numbers, never tensors
        self.scalars.append((tag, value, step))

    def add_text(self, tag, text):
        self.texts.append(tag)

    def close(self):
        self.closed = True


@pytest.fixture
def fake_tensorboard(monkeypatch):
    FakeWriter.instances = []
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    return FakeWriter.instances


@pytest.fixture
def fake_wandb(monkeypatch):
    record = {"init": [], "log": [], "finished": 0}

    class Run:
        def log(self, values, step):
            record["log"].append((values, step))

        def finish(self):
            record["finished"] += 1

    def init(**kw):
        record["init"].append(kw)
        return Run()

    module = types.ModuleType("wandb")
    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return record


EPOCH_KEYS = {"test_acc", "train_acc", "train_loss", "test_loss", "lr", "train_images_per_second",
              "data_wait_fraction", "epoch_seconds", "test_images_per_second"}


def test_tensorboard_logs_steps_and_epochs_into_the_run_directory(fake_tensorboard, tiny, tmp_path):
    train_mod.train(cfg_for(tiny, tmp_path, log="tensorboard"))
    run = tmp_path / "synthetic" / RUN
    (w,) = fake_tensorboard
    assert w.log_dir == str(run / "tb") and w.closed and w.texts == ["config"]
    steps = sorted({s for tag, _, s in w.scalars if tag == "train/loss"})
    assert steps == [2, 4, 7, 9]               # every 2nd of 5 steps per epoch, global steps
    assert {s for tag, _, s in w.scalars if tag == "train/lr"} == set(steps)
    epoch_tags = {tag.split("/", 1)[1] for tag, _, _ in w.scalars if tag.startswith("epoch/")}
    assert EPOCH_KEYS <= epoch_tags
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    acc = {s: v for tag, v, s in w.scalars if tag == "epoch/test_acc"}
    assert acc == {1: rows[0]["test_acc"], 2: rows[1]["test_acc"]}       # the very numbers of metrics.jsonl


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_for_real(tiny, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train_mod.train(cfg_for(tiny, tmp_path, log="tensorboard", epochs=1))
    acc = EventAccumulator(str(tmp_path / "synthetic" / RUN / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "epoch/test_acc" in tags and "epoch/train_images_per_second" in tags
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4]


def test_wandb_is_offline_inside_the_run_directory(fake_wandb, tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    train_mod.train(cfg_for(tiny, tmp_path, log="wandb"))
    run = tmp_path / "synthetic" / RUN
    (init,) = fake_wandb["init"]
    assert init["mode"] == "offline" and init["dir"] == str(run) and init["resume"] == "allow"
    assert init["config"]["model"] == "resnet18" and init["config"]["weights"] == "none"
    steps = [s for _, s in fake_wandb["log"]]
    assert steps == sorted(steps)                       # wandb drops a step that goes backwards
    epochs = [v for v, _ in fake_wandb["log"] if "epoch" in v]
    assert [v["epoch"] for v in epochs] == [1, 2]
    assert EPOCH_KEYS <= {k.split("/", 1)[1] for k in epochs[0] if k != "epoch"}
    assert any("train/loss" in v and "train/lr" in v for v, _ in fake_wandb["log"])
    assert fake_wandb["finished"] == 1


def test_only_rank_0_logs(fake_wandb, tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(Dist, "main", property(lambda self: False))
    train_mod.train(cfg_for(tiny, tmp_path, log="wandb", epochs=1))
    assert fake_wandb["init"] == [] and fake_wandb["log"] == []


def test_none_logs_nothing_and_writes_nothing(tiny, tmp_path):
    train_mod.train(cfg_for(tiny, tmp_path, epochs=1))
    assert {p.name for p in (tmp_path / "synthetic" / RUN).iterdir()} == {
        "config.yaml", "metrics.jsonl", "best_results.json", "best.pt", "last.pt", ".lock"}


@pytest.mark.parametrize("name, module", [("wandb", "wandb"), ("tensorboard", "torch.utils.tensorboard")])
def test_missing_package_is_one_error_line(monkeypatch, tiny, tmp_path, name, module):
    monkeypatch.setitem(sys.modules, module, None)        # its import raises ImportError
    r = CliRunner().invoke(main, ["train", "--data", str(tiny), "--runs", str(tmp_path), "--device", "cpu",
                                  "--pretrained", "none", "-q", "--log", name])
    assert r.exit_code == 1 and r.output.strip().count("\n") == 0, r.output
    assert r.output.startswith(f"error: --log {name} needs the {name} package") and f"normfast[{name}]" in r.output
    assert not (tmp_path / "synthetic").exists()


def test_unknown_logger_lists_the_valid_ones(tiny, tmp_path):
    r = CliRunner().invoke(main, ["train", "--data", str(tiny), "--runs", str(tmp_path), "--pretrained", "none",
                                  "-q", "--log", "mlflow"])
    assert r.exit_code == 1
    assert "unknown experiment logger (--log) 'mlflow'; valid: none, tensorboard, wandb" in r.output


def test_wandb_start_failure_is_a_normfast_error(monkeypatch, tmp_path):
    module = types.ModuleType("wandb")
    module.init = lambda **kw: (_ for _ in ()).throw(RuntimeError("bad settings"))
    monkeypatch.setitem(sys.modules, "wandb", module)
    with pytest.raises(NormfastError, match="--log wandb: could not start a wandb run .*bad settings"):
        make_tracker("wandb", tmp_path, {})
