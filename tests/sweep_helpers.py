"""Shared by the sweep's worker tests: a tiny grid, the CLI as a separate process, and what a
finished grid must look like."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
TRAIN = {"epochs": 2, "batch_size": 8, "test_batch_size": 16, "device": "cpu", "num_workers": 0,
         "pretrained": "none"}


def tiny16(root: Path) -> Path:
    """24 train images of 16 px (+ test): the cheapest dataset a run trains on."""
    from converters.convert import ConvertConfig, convert
    out = root / "data" / "synthetic"
    if not out.exists():
        convert(ConvertConfig("synthetic", out, limit=24, size=16, quiet=True))
    return out


def write_grid(path: Path, data: Path, runs: Path, norms, backends=("resident",), **train) -> Path:
    grid = {"data_root": str(data.parent), "runs": str(runs), "datasets": [data.name], "models": ["resnet18"],
            "norms": list(norms), "backends": list(backends), "train": TRAIN | train}
    path.write_text(yaml.safe_dump(grid))
    return path


def env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), OMP_NUM_THREADS="1")


def start(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "normfast", "sweep", *map(str, args)], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def sweep(*args, timeout=400) -> tuple[int, str]:
    p = start(*args)
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


def run_dirs(runs: Path) -> list[Path]:
    return sorted(p.parent for p in runs.glob("*/*/config.yaml"))


def assert_trained_once(runs: Path, n: int, epochs: int, outputs: str) -> None:
    """n finished runs, each with one metrics line per epoch, each started once (no second
    writer, no run refused as in use), and no claim left behind."""
    dirs = run_dirs(runs)
    assert len(dirs) == n, (dirs, outputs)
    for d in dirs:
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == list(range(epochs)), (d, outputs)
        assert json.loads((d / "best_results.json").read_text())["finished"]
        assert outputs.count(f" {d.name}: starting") == 1, (d.name, outputs)
    assert "in use by another" not in outputs and "failed" not in outputs, outputs
    assert list((runs / ".sweep" / "claims").iterdir()) == []


def wait_for(predicate, timeout=300, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def metrics_lines(run: Path) -> int:
    try:
        return (run / "metrics.jsonl").read_text().count("\n")
    except FileNotFoundError:
        return 0


def claim_pid(runs: Path, key: str) -> int | None:
    try:
        return json.loads((runs / ".sweep" / "claims" / f"{key}.claim").read_text())["pid"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def weights(run: Path) -> dict:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=False)["model"]


def same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def interrupt_one_run(tmp_path: Path, data: Path, norm: str, sig, *how):
    """Train one 3-epoch run uninterrupted (under RUNS ref/), then start `sweep *how` on the same
    grid (under RUNS runs/) and send `sig` to the worker holding the run's claim once its first
    checkpoint is written. Returns (grid, run directory, reference run directory, the sweep's
    process, the worker's PID)."""
    ref_runs, runs = tmp_path / "ref", tmp_path / "runs"
    grid = write_grid(tmp_path / "grid.yaml", data, runs, [norm], epochs=3)
    code, out = sweep(grid, "--runs", ref_runs, "-q")
    assert code == 0, out
    name = f"resnet18-{norm}-resident"
    run = runs / "synthetic" / name
    p = start(grid, *how)
    wait_for(lambda: metrics_lines(run) >= 1 and (run / "last.pt").exists(), what="the first checkpoint")
    pid = claim_pid(runs, f"synthetic--{name}")
    os.kill(pid, sig)
    return grid, run, ref_runs / "synthetic" / name, p, pid
