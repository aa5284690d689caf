"""The sweep's work queue without training: claim files (fresh, stale, race-free takeover), the
worker's choice of job, --status/--dry-run, the naming module, and one error line per bad input."""
import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from normfast.sweep.claims import ClaimStore, hostname
from normfast.sweep.estimate import Estimator
from normfast.sweep.planning import Prepared, RunSpec, make_jobs
from normfast.sweep.pool import assign
from test_cli_errors import cli, one_error_line


def fake_claim(store: ClaimStore, key: str, host: str, pid: int, age_s: float) -> None:
    store.claims.mkdir(parents=True, exist_ok=True)
    beat = time.time() - age_s
    (store.claims / f"{key}.claim").write_text(json.dumps({"host": host, "pid": pid, "started": beat,
                                                           "heartbeat": beat, "token": "x"}))


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_other_hosts_fresh_claim_is_respected_and_a_stale_one_taken_over(tmp_path):
    store = ClaimStore(tmp_path, timeout=60)
    fake_claim(store, "ds--a", "other-host", 4242, age_s=5)
    assert store.try_claim("ds--a") is None                  # fresh heartbeat on another host: alive
    fake_claim(store, "ds--a", "other-host", 4242, age_s=120)
    claim = store.try_claim("ds--a")                         # older than the timeout: taken over
    assert claim is not None
    data = json.loads((store.claims / "ds--a.claim").read_text())
    assert data["host"] == hostname() and data["pid"] == os.getpid()
    assert ClaimStore(tmp_path, timeout=60).try_claim("ds--a") is None      # ours now, and alive
    store.release("ds--a")
    assert not (store.claims / "ds--a.claim").exists()
    assert [p.name for p in store.claims.iterdir()] == []     # no leftover of the takeover


def test_same_host_claim_is_stale_when_its_pid_is_gone(tmp_path):
    store = ClaimStore(tmp_path, timeout=3600)
    fake_claim(store, "ds--b", hostname(), os.getppid(), age_s=1)        # alive: respected
    assert store.try_claim("ds--b") is None
    fake_claim(store, "ds--b", hostname(), dead_pid(), age_s=1)          # gone: taken over at once
    assert store.try_claim("ds--b") is not None
    store.stop()


def test_takeover_never_removes_a_fresh_claim(tmp_path):
    """Two takers judged the same stale claim; the slower one must not remove the claim the
    quicker one created meanwhile."""
    a, b = ClaimStore(tmp_path, timeout=60), ClaimStore(tmp_path, timeout=60)
    fake_claim(a, "ds--c", "other-host", 1, age_s=999)
    stale_seen_by_b = b.read("ds--c")
    assert stale_seen_by_b.stale(60)
    assert a.try_claim("ds--c") is not None                  # A took it over first
    assert b._take_over(b.claims / "ds--c.claim", stale_seen_by_b) is False
    assert json.loads((a.claims / "ds--c.claim").read_text())["token"] == a.held["ds--c"].data["token"]
    assert b.try_claim("ds--c") is None
    a.stop()


def test_heartbeat_refreshes_and_a_lost_claim_is_not_written(tmp_path):
    store = ClaimStore(tmp_path, timeout=60, heartbeat=0.05)
    claim = store.try_claim("ds--d")
    first = json.loads(claim.path.read_text())["heartbeat"]
    store.start_heartbeat()
    time.sleep(0.5)
    assert json.loads(claim.path.read_text())["heartbeat"] > first
    os.rename(claim.path, tmp_path / "moved")                 # taken over by someone else
    fake_claim(store, "ds--d", "other-host", 7, age_s=0)
    time.sleep(0.3)
    assert json.loads(claim.path.read_text())["host"] == "other-host"      # never overwritten
    assert claim.lost
    store.stop()
    assert claim.path.exists()                               # release leaves the other's claim alone


def _prepared(i, norm, backend="resident", seed=223, epochs=2):
    from normfast.config import TrainConfig
    cfg = TrainConfig(data="d", norm=norm, backend=backend, seed=seed, epochs=epochs)
    return Prepared(i, RunSpec("ds", "resnet18", norm, backend, seed, f"r-{norm}-{backend}-{seed}"), cfg)


def test_jobs_fuse_settings_that_differ_only_in_norm():
    runs = [_prepared(1, "finetune"), _prepared(2, "minmax"), _prepared(3, "finetune", "torch"),
            _prepared(4, "minmax", seed=7), _prepared(5, "instance", epochs=3)]
    fused = make_jobs(runs, fuse=True)
    assert [[p.index for p in j.runs] for j in fused] == [[1, 2], [3], [4], [5]]
    assert [[p.index for p in j.runs] for j in make_jobs(runs, fuse=False)] == [[1], [2], [3], [4], [5]]


@pytest.fixture
def grid(tmp_path, tiny):
    g = {"data_root": str(tiny.parent), "runs": str(tmp_path / "runs"), "datasets": ["synthetic"],
         "models": ["resnet18"], "norms": ["finetune", "minmax"], "backends": ["resident"],
         "train": {"epochs": 2, "device": "cpu", "pretrained": "none"}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(g))
    return path, g


def test_status_and_dry_run_show_claims_and_estimates(grid):
    path, g = grid
    store = ClaimStore(g["runs"], timeout=300)
    fake_claim(store, "synthetic--resnet18-finetune-resident", "other-host", 4242, age_s=2)
    code, out = cli("sweep", path, "--status")
    assert code == 0, out
    assert "synthetic resnet18-finetune-resident: running (host other-host, PID 4242, heartbeat 2 s ago, " \
           "epoch 0/2;" in out
    assert "synthetic resnet18-minmax-resident: pending (to run;" in out and "img/s fallback" in out
    assert "estimated GPU-hours left: " in out
    # resnet18 fallback: 21,000 img/s at 32 px; the tiny set (40 train images at 32 px) x 2 epochs, twice
    est = 2 * 2 * 40 / 21000 / 3600
    assert f"estimated GPU-hours left: {est:.2f} (img/s of the runs left: 2 fallback" in out
    store.failed_dir.mkdir(parents=True)
    (store.failed_dir / "synthetic--resnet18-minmax-resident.json").write_text(
        json.dumps({"error": "RuntimeError: boom", "time": 1.0}))
    fake_claim(store, "synthetic--resnet18-finetune-resident", "other-host", 4242, age_s=900)
    code, out = cli("sweep", path, "--status")
    assert "resnet18-finetune-resident: pending (to run;" in out           # the stale claim is no runner
    assert "resnet18-minmax-resident: failed (RuntimeError: boom;" in out
    code, out = cli("sweep", path, "--dry-run", "--no-fuse")
    assert code == 0, out
    assert "job 1: synthetic resnet18-finetune-resident: " in out and "job 2: synthetic resnet18-minmax" in out
    assert "plan: 2 jobs, estimated" in out
    code, out = cli("sweep", path, "--dry-run")
    assert "job 1 (fused): synthetic resnet18-finetune-resident + synthetic resnet18-minmax-resident" in out


def test_estimates_prefer_measured_then_bench_then_fallback(tmp_path):
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps({"records": [{"model": "resnet18", "images_per_second": 1000.0,
                                              "image_shape": [64, 64, 3]}]}))
    p = _prepared(1, "finetune")
    p.run_dir, p.train_count, p.image_side = tmp_path / "runs" / "ds" / "r", 1000, 32
    assert Estimator(tmp_path / "runs").rate(p) == (21000.0, "fallback")
    assert Estimator(tmp_path / "runs", str(bench)).rate(p) == (4000.0, "bench")     # 64 px -> 32 px: x4
    old = tmp_path / "runs" / "ds" / "old"
    old.mkdir(parents=True)
    (old / "config.yaml").write_text(yaml.safe_dump({"model": "resnet18", "device": "cpu"}))
    (old / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "test_acc": 0.1,
                                                           "train_images_per_second": v}) + "\n"
                                               for e, v in enumerate([5.0, 100.0, 300.0])))
    p.cfg.device = "cpu"
    assert Estimator(tmp_path / "runs", str(bench)).rate(p) == (200.0, "measured")   # first epoch left out
    assert Estimator(tmp_path / "runs").seconds_left(p) == (2 * 1000 / 200.0, "measured")


def test_worker_slots():
    assert [(s.label, s.cuda) for s in assign(3, None, None, "cpu")] == [("w1 cpu", ""), ("w2 cpu", ""),
                                                                          ("w3 cpu", "")]
    slots = assign(None, "0,2,5", 2, None, count=8)
    assert [s.cuda for s in slots] == ["0", "2", "5", "0", "2", "5"]
    assert [s.cuda for s in assign(8, "all", None, None, count=8)] == [str(i) for i in range(8)]


def test_bad_input_is_one_error_line(grid, tmp_path):
    path, g = grid
    one_error_line(*cli("sweep", path, "--workers", "0"), "--workers 0: must be at least 1")
    one_error_line(*cli("sweep", path, "--jobs-per-gpu", "0"), "--jobs-per-gpu 0: must be at least 1")
    one_error_line(*cli("sweep", path, "--gpus", "9"), "--gpus 9: there is no GPU 9 on this machine")
    one_error_line(*cli("sweep", path, "--gpus", "x"), "--gpus 'x': expected all or GPU numbers")
    one_error_line(*cli("sweep", path, "--workers", "2", "--device", "cpu", "--gpus", "0"),
                   "--gpus 0 with --device cpu")
    one_error_line(*cli("sweep", path, "--executor", "pbs"), "--executor 'pbs': valid: slurm, local")
    one_error_line(*cli("sweep", path, "--slurm-time", "1:00:00"), "--slurm-time applies to --executor")
    one_error_line(*cli("sweep", path, "--executor", "local", "--slurm-time", "soon"), "slurm time 'soon'")
    one_error_line(*cli("sweep", path, "--executor", "local", "--slurm-extra", "account"),
                   "--slurm-extra 'account': expected KEY=VALUE")
    one_error_line(*cli("sweep", path, "--executor", "local", "--array", "0"), "--array 0: must be at least 1")
    one_error_line(*cli("sweep", path, "--status", "--dry-run"), "--status and --dry-run")
    one_error_line(*cli("sweep", path, "--claim-timeout", "0"), "--claim-timeout 0.0: must be a positive number")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(g | {"slurm": {"partitin": "gpu"}}))
    one_error_line(*cli("sweep", bad, "--executor", "local"), f"{bad}: slurm: unknown field 'partitin'; valid: array")
    one_error_line(*cli("sweep", bad, "--dry-run"), "unknown field 'partitin'")
    bad.write_text(yaml.safe_dump(g | {"slurm": {"array": "many"}}))
    one_error_line(*cli("sweep", bad, "--executor", "local"), "slurm: array='many' is not a valid int")
    empty = tmp_path / "empty.yaml"                          # issue 18: no runs is not an empty table
    empty.write_text(yaml.safe_dump(g | {"models": []}))
    one_error_line(*cli("sweep", empty), f"{empty} names no runs: models is empty or missing")
    code, out = cli("sweep", path, "--shard", "3/3")
    assert code == 0 and out.strip() == "--shard 3/3: no runs in this shard (the grid has 2)", out


def test_without_submitit_the_error_names_the_install_command(grid, monkeypatch):
    path, _ = grid
    monkeypatch.setitem(sys.modules, "submitit", None)       # import submitit -> ImportError
    one_error_line(*cli("sweep", path, "--executor", "slurm"),
                   "--executor needs submitit, which is not installed: pip install 'normfast[slurm]'")


def test_naming_has_one_owner_and_no_import_cycle():
    # the report's one-run-per-seed rule reads names without importing the sweep (it did: a cycle)
    code = ("import sys, normfast.report.runs as r, normfast.config; r.pick_one_per_seed([]); "
            "assert not [m for m in sys.modules if m.startswith('normfast.sweep')], sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    from normfast.config import TrainConfig
    from normfast.naming import run_name
    assert str(TrainConfig(model="resnet50", norm="minmax", backend="ffcv", seed=5).run_dir("c")) == \
        "runs/c/resnet50-minmax-ffcv"
    assert run_name("resnet50", "minmax", "ffcv", 5) == "resnet50-minmax-ffcv-s5"


def test_a_failing_run_is_recorded_and_the_others_go_on(grid):
    path, g = grid
    broken = os.path.join(g["runs"], "synthetic", "resnet18-finetune-resident")
    os.makedirs(broken)
    with open(os.path.join(broken, "last.pt"), "wb") as f:
        f.write(b"not a checkpoint")
    code, out = cli("sweep", path, "-q", "--epochs", "1", "--no-fuse")
    assert code == 1, out
    assert "resnet18-finetune-resident: failed: " in out and "not a readable checkpoint" in out, out
    assert "resnet18-minmax-resident: ran" in out and "| minmax | resident | 223 | ran |" in out, out
    record = json.loads(open(os.path.join(g["runs"], ".sweep", "failed",
                                          "synthetic--resnet18-finetune-resident.json")).read())
    assert "not a readable checkpoint" in record["error"] and record["host"] == hostname()
    code, out = cli("sweep", path, "--status", "--epochs", "1")
    assert "resnet18-finetune-resident: failed (" in out and "resnet18-minmax-resident: done (best acc" in out


def test_a_fused_job_claims_only_its_unfinished_unclaimed_runs(tmp_path):
    from normfast.sweep.planning import Job
    from normfast.sweep.worker import next_job
    runs = [_prepared(i, n) for i, n in enumerate(("finetune", "pretrain", "instance", "minmax"), 1)]
    for p in runs:
        p.run_dir, p.key = tmp_path / "ds" / p.spec.run_name, f"ds--{p.spec.run_name}"
    done = runs[0].run_dir
    done.mkdir(parents=True)
    (done / "best_results.json").write_text(json.dumps({"epochs_done": 2, "epochs": 2, "finished": True}))
    mine, other = ClaimStore(tmp_path, timeout=60), ClaimStore(tmp_path, timeout=60)
    assert other.try_claim(runs[1].key) is not None                        # another worker has pretrain
    mine.record_failure(runs[3].key, "RuntimeError: boom")                  # minmax failed in this sweep
    job = next_job([Job(runs)], mine, set(), since=0.0)
    assert [p.spec.norm for p in job.runs] == ["instance"] and list(mine.held) == [runs[2].key]
    assert next_job([Job(runs)], mine, set(), since=time.time() + 60).runs[0].spec.norm == "minmax"
    mine.stop()
    other.stop()
