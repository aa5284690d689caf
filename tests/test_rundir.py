"""normfast.rundir on its own (no training): atomic writes, the one metrics reader, best_results
checks, checkpoints, the lock and stale temporaries."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import normfast.rundir as rundir_mod
from normfast.errors import NormfastError
from normfast.rundir import RunDir, write_atomic

ROOT = Path(__file__).resolve().parent.parent
ENV = os.environ | {"PYTHONPATH": str(ROOT)}


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if ".tmp-" in p.name)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


ROW = {"epoch": 0, "lr": 0.001, "train_loss": 2.0, "train_acc": 0.1, "test_loss": 2.1, "test_acc": 0.2,
       "train_images_per_second": 100.0}


def row(epoch: int) -> dict:
    return ROW | {"epoch": epoch, "test_acc": 0.2 + epoch / 100}


# ---------------------------------------------------------------- write_atomic

def test_write_atomic_replaces_or_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    write_atomic(path, "old\n")
    write_atomic(path, b"new\n")
    assert path.read_text() == "new\n" and leftovers(tmp_path) == []

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(rundir_mod.os, "replace", full_disk)
    with pytest.raises(NormfastError, match=r"f.json: cannot write it \(No space left on device\)"):
        write_atomic(path, "newer\n")
    assert path.read_text() == "new\n" and leftovers(tmp_path) == []


def test_write_atomic_removes_its_temporary_on_ctrl_c(tmp_path, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt
    monkeypatch.setattr(rundir_mod.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "f.txt", "x")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- metrics.jsonl

def test_metrics_cut_last_line_is_dropped(tmp_path):
    run = RunDir(tmp_path)
    run.append_metrics(row(0))
    run.append_metrics(row(1))
    with open(run.metrics_path, "a") as f:
        f.write('{"epoch": 2, "test_a')                    # a kill during the append
    assert [r["epoch"] for r in run.read_metrics()] == [0, 1]
    assert [r["epoch"] for r in run.truncate_metrics(1)] == [0]
    assert run.metrics_path.read_text() == json.dumps(row(0)) + "\n"


@pytest.mark.parametrize("damage, message", [
    (b"\xff\xfe\x00\x01binary\n", "line 1 is not UTF-8 text"),
    (b"not json\n", "line 1 is not a JSON line"),
    (b'{"epoch": "x", "test_acc": 0.5}\n', "line 1 is a row without an integer epoch"),
    (b"[1, 2]\n", "line 1 is not a JSON object"),
])
def test_metrics_damage_names_file_and_line(tmp_path, damage, message):
    run = RunDir(tmp_path)
    run.metrics_path.write_bytes(damage)
    with pytest.raises(NormfastError, match=f"metrics.jsonl: {message}"):
        run.read_metrics()


def test_metrics_damage_in_the_middle_is_not_skipped(tmp_path):
    run = RunDir(tmp_path)
    run.metrics_path.write_text(json.dumps(row(0)) + "\n{garbage\n" + json.dumps(row(2)) + "\n")
    with pytest.raises(NormfastError, match=r"line 2 is not a JSON line; the file is damaged \(1 good rows"):
        run.read_metrics()
    assert [r["epoch"] for r in run.read_metrics(strict=False)] == [0]      # summaries: rows up to it
    with pytest.raises(NormfastError, match="line 2"):
        run.truncate_metrics(1)                              # resuming over damage is refused
    assert run.truncate_metrics(0) == [] and run.metrics_path.read_text() == ""   # a fresh start is not
    assert RunDir(tmp_path / "none").read_metrics() == []


# ---------------------------------------------------------------- best_results.json, finished

@pytest.mark.parametrize("content, message", [
    ({"best_epoch": "x", "best_acc": 0.5}, "best_epoch is 'x', expected an integer"),
    ({"best_epoch": 1, "best_acc": "high"}, "best_acc is 'high', expected a number"),
    ({"best_epoch": 1, "epochs_done": True}, "epochs_done is True, expected an integer"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_best_results_names_the_file(tmp_path, content, message):
    run = RunDir(tmp_path)
    run.best_path.write_text(json.dumps(content))
    with pytest.raises(NormfastError, match=f"best_results.json: {message}"):
        run.read_best()
    run.best_path.write_bytes(b"\x00\xff")
    with pytest.raises(NormfastError, match="best_results.json: "):
        run.read_best()


def test_finished_needs_the_same_schedule(tmp_path):
    run = RunDir(tmp_path)
    assert not run.finished()
    run.write_best({"best_epoch": 0, "best_acc": 0.5, "epochs_done": 2, "epochs": 2, "finished": True})
    assert run.finished() and run.finished(2)
    assert not run.finished(3) and not run.finished(1)      # another length is another run
    run.write_best({"best_epoch": 0, "best_acc": 0.5, "epochs_done": 1, "epochs": 2, "finished": False})
    assert not run.finished() and not run.finished(2)


def test_reads_a_run_directory_in_the_old_format(tmp_path):
    """Files exactly as train.py wrote them before RunDir (write_json_atomic, yaml.safe_dump)."""
    (tmp_path / "config.yaml").write_text("data: d\nmodel: resnet18\nnorm: finetune\nbackend: dali\nepochs: 2\n")
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row(e)) + "\n" for e in (0, 1)))
    (tmp_path / "best_results.json").write_text(json.dumps(
        {"best_epoch": 1, "best_acc": 0.21, "epochs_done": 2, "epochs": 2, "finished": True,
         "weights": "none"}, indent=2) + "\n")
    torch.save({"model": {}, "optimizer": {}, "scheduler": None, "scaler": {}, "epoch": 1,
                "best": {"best_epoch": 1, "best_acc": 0.21}, "amp": "off", "config": {}}, tmp_path / "last.pt")
    run = RunDir(tmp_path)
    assert run.read_config()["model"] == "resnet18" and len(run.read_metrics()) == 2
    assert run.read_best()["best_epoch"] == 1 and run.finished(2)
    assert run.load_checkpoint()["epoch"] == 1 and "data_identity" not in run.load_checkpoint()


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_save_on_a_full_disk_leaves_no_temporary(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.save_checkpoint({"epoch": 0})
    stale = tmp_path / f".best.pt.tmp-{dead_pid()}"            # a killed writer's leftover
    stale.write_bytes(b"x" * 1000)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(rundir_mod.os, "fsync", full_disk)
    with pytest.raises(NormfastError, match=r"last.pt: cannot write the checkpoint \(No space left on device\)"):
        run.save_checkpoint({"epoch": 1})
    assert leftovers(tmp_path) == []                           # ours and the stale one
    monkeypatch.undo()
    assert torch.load(run.last_checkpoint, weights_only=False) == {"epoch": 0}


@pytest.mark.parametrize("content", [b"", b"garbage bytes", "cut"])
def test_unreadable_checkpoint_is_one_error(tmp_path, content):
    run = RunDir(tmp_path)
    if content == "cut":
        torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 0}, run.last_checkpoint)
        data = run.last_checkpoint.read_bytes()
        run.last_checkpoint.write_bytes(data[: len(data) // 2])
    else:
        run.last_checkpoint.write_bytes(content)
    with pytest.raises(NormfastError, match=r"last.pt: not a readable checkpoint \(.*\); it is damaged"):
        run.load_checkpoint()
    torch.save({"weights": 1}, run.last_checkpoint)
    with pytest.raises(NormfastError, match="last.pt: not a normfast checkpoint"):
        run.load_checkpoint()


# ---------------------------------------------------------------- lock and leftovers

HOLD = ("import sys; from normfast.rundir import RunDir; r = RunDir(sys.argv[1]); "
        "r.path.mkdir(parents=True, exist_ok=True); r.lock(); print('locked', flush=True); sys.stdin.read()")


def hold_lock(path: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, cwd=ROOT, env=ENV)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    holder = hold_lock(tmp_path / "run")
    try:
        with pytest.raises(NormfastError, match=rf"in use by another normfast process \(PID {holder.pid}, lock "):
            RunDir(tmp_path / "run").open_for_writing(resume=False)
    finally:
        holder.stdin.close()
        holder.wait()
    with RunDir(tmp_path / "run").open_for_writing(resume=False) as run:     # free again once it ended
        assert run.lock_path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(NormfastError, match=f"PID {os.getpid()}"):       # also within one process
            RunDir(tmp_path / "run").open_for_writing(resume=False)


def test_stale_temporaries_removed_live_ones_kept(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        names = {f".last.pt.tmp-{dead_pid()}": False, f".best.pt.tmp-{os.getpid()}": False,
                 f".metrics.jsonl.tmp-{dead_pid()}": False, f".last.pt.tmp-{live.pid}": True,
                 f".other.txt.tmp-{dead_pid()}": True, "notes.txt": True}
        for name in names:
            (tmp_path / name).write_bytes(b"partial")
        with RunDir(tmp_path).open_for_writing(resume=False):
            kept = {p.name for p in tmp_path.iterdir()} - {".lock"}
        assert kept == {n for n, keep in names.items() if keep}
    finally:
        live.stdin.close()
        live.wait()


def test_resume_without_a_run_creates_nothing(tmp_path):
    with pytest.raises(NormfastError, match=r"runs/ds/typo: nothing to resume \(no last.pt\)"):
        RunDir(tmp_path / "runs/ds/typo").open_for_writing(resume=True)
    assert not (tmp_path / "runs").exists()


def test_failed_start_removes_the_directory_it_created(tmp_path):
    run = RunDir(tmp_path / "runs/ds/new")
    with run.open_for_writing(resume=False):
        assert run.path.is_dir()
    assert not run.path.exists()                      # nothing but the lock was written
    with run.open_for_writing(resume=False):
        run.write_best({"best_epoch": 0})
    assert {p.name for p in run.path.iterdir()} == {".lock", "best_results.json"}


def test_runs_that_is_a_file(tmp_path):
    (tmp_path / "runs").write_text("oops")
    with pytest.raises(NormfastError, match=r"runs: is a file, not a directory \(the run directory .* check --runs\)"):
        RunDir(tmp_path / "runs/ds/r").open_for_writing(resume=False)
