"""`--executor local`: submitit's local executor runs a job array of sweep workers on this machine,
the path `--executor slurm` takes on a cluster; a preemption/time-out signal (USR2, what Slurm sends
before the time limit) checkpoints, requeues and resumes the run exactly."""
import os
import signal

import pytest

from sweep_helpers import (assert_trained_once, claim_pid, interrupt_one_run, metrics_lines, same_weights, sweep,
                           tiny16, write_grid)

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
    # USR2: what the local executor (and Slurm) send a task before its time limit or on preemption
    grid, run, ref, p, pid = interrupt_one_run(tmp_path, data, "minmax", signal.SIGUSR2,
                                               "--executor", "local", "--array", "1", "--device", "cpu")
    runs, key = run.parent.parent, "synthetic--resnet18-minmax-resident"
    out, _ = p.communicate(timeout=400)
    assert p.returncode == 0 and "| ran |" in out, out + logs(runs)
    text = logs(runs)
    assert "time limit or preemption; requeued" in text and "resnet18-minmax-resident: resuming" in text, text
    assert metrics_lines(run) == 3 and claim_pid(runs, key) is None
    same_weights(run, ref)


def test_slurm_submission_writes_the_array_script(data, tmp_path, monkeypatch):
    """`--executor slurm` on a fake cluster (srun and sbatch stubs on PATH): one job array whose
    sbatch script carries the grid's slurm: settings overridden by the flags, the requeue
    signal, and logs under RUNS/.sweep/submitit/; the command returns at once."""
    from click.testing import CliRunner

    from normfast.cli import main
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_ / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho Submitted batch job 4242\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    runs = tmp_path / "runs"
    grid = write_grid(tmp_path / "grid.yaml", data, runs, ["finetune", "minmax"])
    text = grid.read_text() + "slurm: {array: 2, partition: cpu, time: '2:00:00', extra: {account: proj}}\n"
    grid.write_text(text)
    r = CliRunner().invoke(main, ["sweep", str(grid), "--executor", "slurm", "--array", "3", "--slurm-time", "90",
                                  "--slurm-extra", "qos=low", "--cpus-per-task", "4"])
    assert r.exit_code == 0, r.output
    assert "submitted 3 sweep workers through submitit (slurm): 4242_0, 4242_1, 4242_2" in r.output
    assert f"logs in {runs / '.sweep' / 'submitit'}" in r.output and "--status" in r.output
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --partition=cpu", "#SBATCH --time=90", "#SBATCH --account=proj",
                 "#SBATCH --qos=low", "#SBATCH --cpus-per-task=4", "#SBATCH --gpus-per-task=1",
                 "#SBATCH --signal=USR2@"):
        assert line in script, script
    assert not any(runs.glob("*/*/config.yaml"))          # nothing trained here
