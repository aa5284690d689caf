"""`normfast train` under kills, resumes and concurrent starts (tiny data, CPU, 1-2 epochs)."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import normfast.rundir as rundir_mod
import normfast.train as train_mod
from converters.convert import ConvertConfig, convert
from normfast.cli import main
from fixtures import cfg_for, tmpfs
from normfast.errors import NormfastError

ROOT = Path(__file__).resolve().parent.parent
RUN = "synthetic/resnet18-finetune-resident"


@pytest.fixture(scope="module")
def other_tiny(tmp_path_factory):
    """Another dataset with the same name ("synthetic") but other images."""
    out = tmp_path_factory.mktemp("other") / "synthetic"
    convert(ConvertConfig("synthetic", out, limit=48, quiet=True))
    return out


def cli(*args):
    r = CliRunner().invoke(main, list(map(str, args)))
    return r.exit_code, r.output


def train_args(data, runs, *extra):
    return ["train", "--data", data, "--runs", runs, "--epochs", "1", "--batch-size", "16",
            "--test-batch-size", "16", "--device", "cpu", "--num-workers", "1", "--pretrained", "none", "-q",
            *extra]


def one_error_line(code, out, *parts):
    assert code == 1, out
    assert out.startswith("error: ") and out.strip().count("\n") == 0, out
    for p in parts:
        assert p in out, out


# ---------------------------------------------------------------- issue 11: other data, same name

def test_resume_refuses_another_dataset_with_the_same_name(tiny, other_tiny, tmp_path):
    train_mod.train(cfg_for(tiny, tmp_path))
    cfg = yaml_config(tmp_path / RUN)
    assert len(cfg["data_identity"]) == 64
    assert torch.load(tmp_path / RUN / "last.pt", weights_only=False)["data_identity"] == cfg["data_identity"]
    code, out = cli(*train_args(other_tiny, tmp_path, "--resume"))
    one_error_line(code, out, "last.pt: --resume on different data: --data", str(other_tiny),
                   f"from {tiny}", "--run-name")
    train_mod.train(cfg_for(tiny, tmp_path, resume=True))       # the same data still resumes


def test_resume_accepts_an_old_checkpoint_without_identity(tiny, other_tiny, tmp_path):
    train_mod.train(cfg_for(tiny, tmp_path))
    last = tmp_path / RUN / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    del ckpt["data_identity"]
    torch.save(ckpt, last)
    assert train_mod.train(cfg_for(other_tiny, tmp_path, resume=True))["best_epoch"] == 0


def yaml_config(run_dir):
    import yaml
    return yaml.safe_load((run_dir / "config.yaml").read_text())


# ---------------------------------------------------------------- issue 12: nothing to resume

def test_resume_with_no_previous_run_is_refused(tiny, tmp_path):
    code, out = cli(*train_args(tiny, tmp_path / "runz", "--resume"))
    one_error_line(code, out, f"{tmp_path / 'runz' / RUN}: nothing to resume (no last.pt)", "--runs")
    assert not (tmp_path / "runz" / RUN).exists()


# ---------------------------------------------------------------- issue 13: two writers

def test_a_second_train_on_the_same_run_is_refused(tiny, tmp_path):
    hold = ("import sys; from normfast.rundir import RunDir; r = RunDir(sys.argv[1]); "
            "r.path.mkdir(parents=True, exist_ok=True); r.lock(); print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / RUN)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, out = cli(*train_args(tiny, tmp_path))
        one_error_line(code, out, "in use by another normfast process", f"PID {holder.pid}")
        assert {p.name for p in (tmp_path / RUN).iterdir()} == {".lock"}       # nothing written
    finally:
        holder.stdin.close()
        holder.wait()
    code, out = cli(*train_args(tiny, tmp_path))
    assert code == 0, out
    rows = (tmp_path / RUN / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [0]


# ---------------------------------------------------------------- issue 15: leftovers, full disk

def test_resume_removes_a_killed_writers_temporaries(tiny, tmp_path):
    train_mod.train(cfg_for(tiny, tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name in ("last.pt", "best.pt"):
        (tmp_path / RUN / f".{name}.tmp-{dead.pid}").write_bytes(b"\0" * 4096)    # killed in torch.save
    train_mod.train(cfg_for(tiny, tmp_path, resume=True))
    assert not [p for p in (tmp_path / RUN).iterdir() if ".tmp-" in p.name]


def test_full_disk_during_a_checkpoint_is_one_line_and_resumable(tiny, tmp_path):
    """A real full disk (a 1 MB tmpfs): torch's zip writer used to hide the ENOSPC in a
    RuntimeError ("enforce fail at inline_container.cc"); the checkpoint is now serialized in
    memory and written by normfast, so the message names the errno (issue 18 §6)."""
    with tmpfs(tmp_path / "full", "size=1m") as runs:
        code, out = cli(*train_args(tiny, runs))
        one_error_line(code, out, "best.pt: cannot write the checkpoint (No space left on device)")
        assert not [p for p in (runs / RUN).iterdir() if ".tmp-" in p.name]
    code, out = cli(*train_args(tiny, tmp_path / "roomy"))
    assert code == 0, out


class _InterruptedFile:
    """A checkpoint's temporary whose write is cut by Ctrl-C once 1 KB have been written, as a
    SIGINT arriving during the write would cut it."""

    def __init__(self, f):
        self.f, self.written = f, 0

    def write(self, data):
        self.written += len(data)
        if self.written > 1024:
            raise KeyboardInterrupt
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_ctrl_c_during_a_checkpoint_write_is_interrupted_130(tiny, tmp_path, monkeypatch, name):
    """Issue 18 §6: Ctrl-C during a checkpoint write gave torch's RuntimeError [enforce fail at
    inline_container.cc] in 2 of 3 tries; it must be `interrupted`, exit 130."""
    import builtins
    real_open = builtins.open

    def opener(path, *a, **k):
        f = real_open(path, *a, **k)
        return _InterruptedFile(f) if f".{name}.tmp-" in str(path) else f

    monkeypatch.setattr(builtins, "open", opener)
    code, out = cli(*train_args(tiny, tmp_path))
    monkeypatch.undo()
    assert code == 130 and out.strip() == "interrupted", out
    assert not [p for p in (tmp_path / RUN).iterdir() if ".tmp-" in p.name]
    assert not (tmp_path / RUN / "last.pt").exists()


def test_unwritable_runs_is_one_line(tiny, tmp_path, monkeypatch):
    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(rundir_mod.os, "replace", read_only)
    code, out = cli(*train_args(tiny, tmp_path))
    one_error_line(code, out, "config.yaml: cannot write it (Read-only file system)")


def test_runs_that_is_a_file_is_one_line(tiny, tmp_path):
    (tmp_path / "runs").write_text("")
    code, out = cli(*train_args(tiny, tmp_path / "runs"))
    one_error_line(code, out, "runs: is a file, not a directory")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_last_pt_on_resume_is_one_line(tiny, tmp_path, damage):
    train_mod.train(cfg_for(tiny, tmp_path))
    last = tmp_path / RUN / "last.pt"
    data = last.read_bytes()
    last.write_bytes(b"\x00garbage" * 10 if damage == "garbage" else data[: len(data) // 3])
    code, out = cli(*train_args(tiny, tmp_path, "--resume"))
    one_error_line(code, out, "last.pt: not a readable checkpoint", "Remove it to train this run again")


def test_binary_metrics_on_resume_is_one_line(tiny, tmp_path):
    train_mod.train(cfg_for(tiny, tmp_path))
    (tmp_path / RUN / "metrics.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    code, out = cli(*train_args(tiny, tmp_path, "--resume"))
    one_error_line(code, out, "metrics.jsonl: line 1 is not UTF-8 text")


# ---------------------------------------------------------------- 9.1: --epochs on resume

def test_resume_with_other_epochs_is_refused_and_pretrained_last_pt_starts_a_new_run(tiny, tmp_path):
    train_mod.train(cfg_for(tiny, tmp_path, epochs=1))
    last = tmp_path / RUN / "last.pt"
    before = last.read_bytes()
    code, out = cli(*train_args(tiny, tmp_path, "--resume", "--epochs", "3"))
    one_error_line(code, out, "last.pt: --resume with --epochs 3, but this run was scheduled for 1 epochs",
                   "--run-name", f"--pretrained {last}")
    assert last.read_bytes() == before
    # the way the message offers: a new run from the saved weights, with its own full schedule
    train_mod.train(cfg_for(tiny, tmp_path, epochs=2, run_name="longer", pretrained=str(last)))
    rows = [json.loads(x) for x in (tmp_path / "synthetic/longer/metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([0.001, 0.0005])
    assert yaml_config(tmp_path / "synthetic/longer")["weights"].startswith(f"file:{last}")


def test_interrupted_run_resumed_with_other_epochs_is_refused(tiny, tmp_path, monkeypatch):
    real = train_mod.Trainer.run_epoch

    def dies_in_epoch_1(self, epoch, train):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch, train)

    monkeypatch.setattr(train_mod.Trainer, "run_epoch", dies_in_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg_for(tiny, tmp_path, epochs=3))
    monkeypatch.setattr(train_mod.Trainer, "run_epoch", real)
    with pytest.raises(NormfastError, match="--resume with --epochs 2, but this run was scheduled for 3"):
        train_mod.train(cfg_for(tiny, tmp_path, epochs=2, resume=True))
    # the lock of the interrupted process was released (no stale lock after Ctrl-C)
    train_mod.train(cfg_for(tiny, tmp_path, epochs=3, resume=True))
    rows = [json.loads(x) for x in (tmp_path / RUN / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["lr"] for r in rows] == pytest.approx([0.001, 0.00075, 0.00025])   # one cosine over 3 epochs


def test_kill_between_metrics_row_and_checkpoint(tiny, tmp_path, monkeypatch):
    """A kill after the metrics row of epoch 1 but before its last.pt: on resume the row is
    dropped and epoch 1 trained again, so each epoch appears once."""
    real = rundir_mod.RunDir.save_checkpoint

    def killed_at_epoch_1(self, state, name=rundir_mod.LAST):
        if name == rundir_mod.LAST and state["epoch"] == 1:
            raise KeyboardInterrupt
        return real(self, state, name)

    monkeypatch.setattr(rundir_mod.RunDir, "save_checkpoint", killed_at_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg_for(tiny, tmp_path, epochs=2))
    rows = (tmp_path / RUN / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [0, 1]
    monkeypatch.setattr(rundir_mod.RunDir, "save_checkpoint", real)
    train_mod.train(cfg_for(tiny, tmp_path, epochs=2, resume=True))
    rows = (tmp_path / RUN / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [0, 1]
    assert json.loads((tmp_path / RUN / "best_results.json").read_text())["finished"]


def test_ddp_refusal_on_rank_0_stops_every_rank(tiny, tmp_path):
    """Only rank 0 locks and checks the run directory; its refusal must end rank 1 too (no hang)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "normfast", *train_args(tiny, tmp_path / "runs", "--resume")]
    r = subprocess.run(cmd, env=os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert r.returncode != 0
    assert "nothing to resume (no last.pt)" in r.stderr and "rank 0 refused to start the run" in r.stderr
    # torchrun's launcher prints its own traceback for a failed child; none comes from normfast
    assert not [x for x in r.stderr.splitlines() if 'File "' in x and "/normfast/" in x], r.stderr[-2000:]
    assert not (tmp_path / "runs" / RUN).exists()
