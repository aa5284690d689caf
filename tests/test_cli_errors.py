"""One `error:` line and exit status 1 for each user mistake the reliability issue lists (no training
except where a sweep needs one tiny run)."""
import json
import tempfile

import pytest
import yaml

from fixtures import cli, one_error_line, one_run_grid
from normfast.sweep import plan


@pytest.mark.parametrize("lr", ["nan", "inf", "-inf"])
def test_lr_nan_and_inf(synthetic_dir, tmp_path, lr):
    code, out = cli("train", "--data", synthetic_dir, "--runs", tmp_path, "--device", "cpu", "-q", "--lr", lr)
    one_error_line(code, out, f"--lr {float(lr)}: must be a positive finite number")
    assert not (tmp_path / "synthetic").exists()


def test_click_usage_errors_are_one_line_with_status_1():
    code, out = cli("convert", "synthetic", "--limit", "ten", "--out", "x")
    one_error_line(code, out, "convert: Invalid value for '--limit': 'ten' is not a valid integer",
                   "convert --help")
    one_error_line(*cli("frobnicate"), "No such command 'frobnicate'")
    one_error_line(*cli("convert", "synthetic"), "Missing option '--out'")


def test_help_and_version_still_work():
    for args in (["--help"], ["train", "--help"], ["bench", "loaders", "-h"]):
        code, out = cli(*args)
        assert code == 0 and out.startswith("Usage:"), out
    code, out = cli("--version")
    assert code == 0 and "version" in out




@pytest.mark.parametrize("command", [["bench", "loaders"], ["bench", "train"]])
def test_bench_json_into_a_missing_folder(synthetic_dir, tmp_path, no_bench, command):
    target = tmp_path / "nope" / "b.json"
    one_error_line(*cli(*command, "--data", synthetic_dir, "--json", target),
                   f"--json {target}: folder {target.parent} does not exist")
    one_error_line(*cli(*command, "--data", synthetic_dir, "--json", tmp_path),
                   f"--json {tmp_path}: is a directory")


def test_bench_json_into_a_read_only_folder(synthetic_dir, tmp_path, no_bench, monkeypatch):
    def read_only(*a, **k):          # root ignores chmod, so the refusal is simulated at the OS call
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    one_error_line(*cli("bench", "loaders", "--data", synthetic_dir, "--json", tmp_path / "b.json"),
                   f"cannot write into {tmp_path} (Permission denied)")


def make_run(runs, name="resnet18-finetune-dali", metrics=None, best=None):
    d = runs / "cifar10" / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"model": "resnet18", "norm": "finetune", "backend": "dali",
                                                   "epochs": 1, "dataset": "cifar10", "weights": "none"}))
    (d / "metrics.jsonl").write_bytes(metrics if metrics is not None else
                                      (json.dumps({"epoch": 0, "test_acc": 0.5, "lr": 0.001}) + "\n").encode())
    (d / "best_results.json").write_text(json.dumps(
        best or {"best_epoch": 0, "best_acc": 0.5, "epochs_done": 1, "epochs": 1, "finished": True}))
    return d


def test_report_out_that_is_a_file(tmp_path):
    make_run(tmp_path / "runs")
    (tmp_path / "out").write_text("")
    one_error_line(*cli("report", tmp_path / "runs", "--out", tmp_path / "out"),
                   f"--out {tmp_path / 'out'}: {tmp_path / 'out'} is a file, not a directory")


def test_report_names_a_binary_metrics_file(tmp_path):
    d = make_run(tmp_path / "runs", metrics=b"\x00\xff\xfe binary \x01\n")
    one_error_line(*cli("report", tmp_path / "runs", "--out", tmp_path / "rep"),
                   f"{d / 'metrics.jsonl'}: line 1 is not UTF-8 text")
    assert not (tmp_path / "rep").exists()


def test_report_names_a_bad_best_results_file(tmp_path):
    d = make_run(tmp_path / "runs", best={"best_epoch": "x", "best_acc": 0.5})
    one_error_line(*cli("report", tmp_path / "runs", "--out", tmp_path / "rep"),
                   f"{d / 'best_results.json'}: best_epoch is 'x', expected an integer")


def test_grid_train_section_errors_name_the_grid_file(synthetic_dir, tmp_path):
    grid = one_run_grid(tmp_path / "grid.yaml", synthetic_dir, tmp_path / "runs", {"epoch": 1})
    code, out = cli("sweep", grid, "--dry-run")
    assert code == 1 and f"failed: {grid}: train: unknown key 'epoch'" in out, out
    assert "command line" not in out


def test_grid_axis_written_as_a_string_is_one_item():
    grid = {"datasets": "cifar10", "models": "resnet18", "norms": ["finetune", "minmax"], "backends": "dali"}
    runs = plan(grid, {}, None, None)
    assert [(r.dataset, r.run_name) for r in runs] == [("cifar10", "resnet18-finetune-dali"),
                                                       ("cifar10", "resnet18-minmax-dali")]
