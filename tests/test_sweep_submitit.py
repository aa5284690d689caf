"""`--executor local`: submitit's local executor runs a job array of sweep workers on this machine,
the path `--executor slurm` takes on a cluster; a preemption/time-out signal (USR2, what Slurm sends
before the time limit) checkpoints, requeues and resumes the run exactly."""
import os
import signal

import pytest

from sweep_helpers import (assert_trained_once, claim_pid, metrics_lines, same_weights, start, sweep, tiny16,
                           wait_for, write_grid)

pytest.importorskip("submitit")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny16(tmp_path_factory.mktemp("submititdata"))


def logs(runs) -> str:
    return "".join(p.read_text() for p in sorted((runs / ".sweep" / "submitit").glob("*.out")))


def test_local_job_array_of_two_finishes_the_grid(data, tmp_path):
    runs = tmp_path / "runs"
    grid = write_grid(tmp_path / "grid.yaml", data, runs, ["finetune", "instance"], ["resident", "torch"])
    code, out = sweep(grid, "--executor", "local", "--array", "2", "--device", "cpu", "--no-fuse")
    assert code == 0, out
    assert "submitted 2 sweep workers through submitit (local)" in out and out.count("| ran |") == 4, out
    text = logs(runs)
    assert text.count(" task 0 ") >= 1 and text.count(" task 1 ") >= 1, text      # both workers trained
    assert_trained_once(runs, 4, 2, text)


def test_preempted_worker_requeues_and_resumes_exactly(data, tmp_path):
    ref_runs, runs = tmp_path / "ref", tmp_path / "runs"
    grid = write_grid(tmp_path / "grid.yaml", data, runs, ["minmax"], epochs=3)
    code, out = sweep(grid, "--runs", ref_runs, "-q")                       # uninterrupted
    assert code == 0, out
    key, run = "synthetic--resnet18-minmax-resident", runs / "synthetic" / "resnet18-minmax-resident"
    p = start(grid, "--executor", "local", "--array", "1", "--device", "cpu")
    wait_for(lambda: metrics_lines(run) >= 1 and (run / "last.pt").exists(), what="the first checkpoint")
    pid = claim_pid(runs, key)                 # the submitit task running the worker
    os.kill(pid, signal.SIGUSR2)               # what the local executor (and Slurm) send before the limit
    out, _ = p.communicate(timeout=400)
    assert p.returncode == 0 and "| ran |" in out, out + logs(runs)
    text = logs(runs)
    assert "time limit or preemption; requeued" in text and "resnet18-minmax-resident: resuming" in text, text
    assert metrics_lines(run) == 3 and claim_pid(runs, key) is None
    same_weights(run, ref_runs / "synthetic" / "resnet18-minmax-resident")
