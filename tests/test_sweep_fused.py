"""The sweep trains the settings of a configuration as one fused run by default (issue 16 item 4),
one run each with --no-fuse, and a group whose settings were started apart resumes each alone."""
import yaml
from sweep_helpers import run_dirs, sweep, tiny16, write_grid


def _fused_with(d):
    return yaml.safe_load((d / "config.yaml").read_text()).get("fused_with")


def test_sweep_fuses_the_settings_of_a_configuration(tmp_path):
    data = tiny16(tmp_path)
    grid = write_grid(tmp_path / "grid.yaml", data, tmp_path / "runs", ["finetune", "minmax"], epochs=1)
    rc, out = sweep(grid, "--device", "cpu")
    assert rc == 0, out
    dirs = run_dirs(tmp_path / "runs")
    assert [d.name for d in dirs] == ["resnet18-finetune-resident", "resnet18-minmax-resident"], out
    assert all(_fused_with(d) == ["finetune", "minmax"] for d in dirs), out

    grid2 = write_grid(tmp_path / "grid2.yaml", data, tmp_path / "runs2", ["finetune", "minmax"], epochs=1)
    rc, out = sweep(grid2, "--device", "cpu", "--no-fuse")
    assert rc == 0, out
    assert [_fused_with(d) for d in run_dirs(tmp_path / "runs2")] == [None, None], out


def test_a_group_with_one_setting_started_apart_resumes_it_alone_and_fuses_the_rest(tmp_path):
    """finetune was started as a separate run and killed after an epoch: the sweep resumes it on
    its own (a fused resume needs every setting at one epoch) and fuses the two others."""
    import subprocess
    import sys
    from sweep_helpers import env, metrics_lines, wait_for
    data = tiny16(tmp_path)
    runs = tmp_path / "runs"
    epochs = 4
    grid = write_grid(tmp_path / "grid.yaml", data, runs, ["finetune", "instance", "minmax"], epochs=epochs)
    run = runs / data.name / "resnet18-finetune-resident"
    p = subprocess.Popen([sys.executable, "-m", "normfast", "train", "--data", str(data), "--runs", str(runs),
                          "--norm", "finetune", "--epochs", str(epochs), "--batch-size", "8", "--test-batch-size", "16",
                          "--device", "cpu", "--num-workers", "0", "--pretrained", "none", "-q"], env=env())
    try:
        wait_for(lambda: metrics_lines(run) >= 1 and (run / "last.pt").exists(), what="the first epoch")
    finally:
        p.kill()
        p.wait()
    rc, out = sweep(grid, "--device", "cpu")
    assert rc == 0, out
    dirs = {d.name: d for d in run_dirs(runs)}
    assert _fused_with(dirs["resnet18-finetune-resident"]) is None, out
    assert _fused_with(dirs["resnet18-instance-resident"]) == ["instance", "minmax"], out
    for d in dirs.values():
        assert (d / "metrics.jsonl").read_text().count("\n") == epochs, (d, out)
