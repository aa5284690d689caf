"""The sweep's workers on the CPU, as separate processes: --workers 2, two sweeps at once on one
runs directory, and a worker SIGKILLed mid-run whose run the next sweep takes over exactly."""
import os
import signal

import pytest

from sweep_helpers import (assert_trained_once, claim_pid, interrupt_one_run, metrics_lines, same_weights, start,
                           sweep, tiny16, wait_for, write_grid)

NORMS = ("finetune", "pretrain", "instance")
BACKENDS = ("resident", "torch")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny16(tmp_path_factory.mktemp("sweepdata"))


def test_two_workers_train_every_run_once(data, tmp_path):
    runs = tmp_path / "runs"
    grid = write_grid(tmp_path / "grid.yaml", data, runs, NORMS, BACKENDS)
    code, out = sweep(grid, "--workers", "2", "--device", "cpu", "--no-fuse")
    assert code == 0, out
    assert "started 2 workers: w1 cpu" in out
    assert_trained_once(runs, 6, 2, out)
    assert out.count(": ran\n") == 6 and out.count("| ran |") == 6


def test_two_sweeps_at_once_share_the_grid(data, tmp_path):
    runs = tmp_path / "runs"
    grid = write_grid(tmp_path / "grid.yaml", data, runs, NORMS[:2], BACKENDS)
    a, b = start(grid, "--no-fuse"), start(grid, "--no-fuse", "-q")
    out_a, _ = a.communicate(timeout=600)
    out_b, _ = b.communicate(timeout=600)
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    assert_trained_once(runs, 4, 2, out_a + out_b)
    # each sweep's summary counts the runs the other one trained as ran, none as missing; a sweep
    # that ends while the other still trains its last run shows that one as running (with its host)
    for out in (out_a, out_b):
        assert out.count("| ran |") + out.count("| running (host ") == 4, out_a + out_b


def test_killed_worker_is_taken_over_and_resumes_exactly(data, tmp_path):
    grid, run, ref, victim, pid = interrupt_one_run(tmp_path, data, "finetune", signal.SIGKILL,   # the worker
                                                    "--workers", "1", "--device", "cpu")
    runs, key = run.parent.parent, "synthetic--resnet18-finetune-resident"
    out, _ = victim.communicate(timeout=120)
    assert victim.returncode == 1 and "ended by signal SIGKILL" in out and "| not run |" in out, out
    assert claim_pid(runs, key) == pid and metrics_lines(run) < 3            # its claim is left behind
    code, out = sweep(grid, "-q")               # same host, PID gone: the claim is stale at once
    assert code == 0 and "resnet18-finetune-resident: resuming" in out and "| ran |" in out, out
    assert metrics_lines(run) == 3 and claim_pid(runs, key) is None
    same_weights(run, ref)


def test_sigterm_stops_every_worker_and_leaves_the_runs_resumable(data, tmp_path):
    runs = tmp_path / "runs"
    grid = write_grid(tmp_path / "grid.yaml", data, runs, ["finetune", "minmax"], epochs=6)
    dirs = [runs / "synthetic" / n for n in ("resnet18-finetune-resident", "resnet18-minmax-resident")]
    p = start(grid, "--workers", "2", "--device", "cpu", "--no-fuse")
    wait_for(lambda: all((d / "last.pt").exists() for d in dirs), what="a checkpoint of each run")
    pids = [claim_pid(runs, f"synthetic--{d.name}") for d in dirs]
    p.send_signal(signal.SIGTERM)                       # the sweep, not its workers
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130 and "interrupted" in out, out
    for pid in pids:                                    # every worker ended, and released its claim
        assert pid is None or not os.path.exists(f"/proc/{pid}")
    assert list((runs / ".sweep" / "claims").iterdir()) == []
    unfinished = [d for d in dirs if metrics_lines(d) < 6]
    assert unfinished and all((d / "last.pt").exists() for d in unfinished)
    code, out = sweep(grid, "-q", "--no-fuse")
    assert code == 0 and out.count(": resuming") == len(unfinished) and out.count("| ran |") == 2, out
    assert all(metrics_lines(d) == 6 for d in dirs)
