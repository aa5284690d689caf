"""Conversion reliability: what --force may replace, temporaries, recovery after a kill,
worker failures and signals (normfast issue 11)."""
import json
import os
import subprocess
import sys

import pytest

from converters.convert import ConvertConfig, convert
from converters.output import MARKER, clean
from fixtures import tmpfs, write_imagefolder
from normfast.errors import NormfastError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synth(out, **kw):
    kw.setdefault("formats", ("dali",))
    return convert(ConvertConfig("synthetic", out, limit=kw.pop("limit", 20), quiet=True, **kw))


def dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# ---------------------------------------------------------------- --force (items 1, 2)

def test_force_refuses_a_directory_with_an_empty_manifest_and_other_files(tmp_path):
    w = tmp_path / "w"
    (w / "src").mkdir(parents=True)
    (w / "manifest.json").write_text("{}")
    (w / "src" / "app.js").write_text("x")
    with pytest.raises(NormfastError, match=r"w: exists and is not a converted dataset"):
        synth(w, force=True)
    assert (w / "src" / "app.js").read_text() == "x"


def test_force_refuses_a_dataset_with_unlisted_files_naming_them(tmp_path):
    out = tmp_path / "d"
    synth(out)
    (out / "notes.txt").write_text("mine")
    (out / "dali" / "extra").mkdir()
    with pytest.raises(NormfastError, match=r"does not list \(dali/extra/, notes.txt\)"):
        synth(out, force=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_force_replaces_a_dataset_and_an_empty_directory(tmp_path):
    out = tmp_path / "d"
    synth(out)
    assert synth(out, force=True, limit=30)["splits"]["train"]["count"] == 30
    (tmp_path / "empty").mkdir()
    synth(tmp_path / "empty", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "empty"]
    assert not (out / MARKER).exists()


def test_force_refuses_an_output_that_is_a_symlink(tmp_path):
    real = tmp_path / "real"
    synth(real)
    os.symlink(real, tmp_path / "link")
    with pytest.raises(NormfastError, match=r"link: is a symlink; --force replaces only a real directory"):
        synth(tmp_path / "link", force=True)
    assert (tmp_path / "link").is_symlink() and (real / "manifest.json").is_file()


def test_out_may_not_contain_or_lie_inside_the_source(tmp_path):
    d = tmp_path / "D"
    write_imagefolder(d / "raw")
    convert(ConvertConfig("imagefolder", tmp_path / "first", d / "raw", formats=("dali",), quiet=True))
    with pytest.raises(NormfastError, match=r"contains the source --src"):
        convert(ConvertConfig("imagefolder", d, d / "raw", formats=("dali",), quiet=True, force=True))
    with pytest.raises(NormfastError, match=r"lies inside the source --src"):
        convert(ConvertConfig("imagefolder", d / "raw" / "train" / "newclass", d / "raw",
                              formats=("dali",), quiet=True))
    os.symlink(d, tmp_path / "link")          # resolved: a symlink to the parent is the parent
    with pytest.raises(NormfastError, match=r"contains the source"):
        convert(ConvertConfig("imagefolder", tmp_path / "link", d / "raw", formats=("dali",), quiet=True,
                              force=True))
    assert len(list((d / "raw" / "train" / "cat").iterdir())) == 3
    assert not (d / "raw" / "train" / "newclass").exists()


# ---------------------------------------------------------------- temporaries (items 3, 4, 16)

def test_unmarked_lookalike_siblings_are_left_alone(tmp_path):
    mine = [tmp_path / ".mydata.old-2023", tmp_path / f".mydata.tmp-{dead_pid()}"]
    for p in mine:
        p.mkdir()
        (p / "keep.txt").write_text("user data")
    synth(tmp_path / "mydata")
    assert all((p / "keep.txt").read_text() == "user data" for p in mine)


def test_a_kill_between_the_two_renames_is_recovered(tmp_path, capsys):
    out = tmp_path / "data"
    synth(out)
    before = (out / "manifest.json").read_text()
    # the state a SIGKILL between os.replace(out, old) and os.replace(tmp, out) leaves behind
    pid = dead_pid()
    (out / MARKER).write_text(json.dumps({"pid": pid, "kind": "old"}))
    os.replace(out, tmp_path / f".data.old-{pid}")
    half = tmp_path / f".data.tmp-{pid}"
    (half / "dali").mkdir(parents=True)
    (half / MARKER).write_text(json.dumps({"pid": pid, "kind": "tmp"}))
    (half / "dali" / "big.tar").write_bytes(b"x" * 1_000_000)
    with pytest.raises(NormfastError, match="already exists"):
        synth(out)                            # the next run restores the dataset first
    err = capsys.readouterr().err
    assert "restored the dataset from .data.old-" in err
    assert f"removed {half} (1.0 MB), left by a killed conversion" in err
    assert (out / "manifest.json").read_text() == before and not (out / MARKER).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def _convert_and_die_at(out, step):
    """In a forked child: replace `out` with --force, dying (as SIGKILL would: no cleanup) just
    before the step-th filesystem action of the swap."""
    import converters.output as o
    calls = [0]

    def dying(real):
        def f(*a, **k):
            calls[0] += 1
            if calls[0] == step:
                os._exit(9)
            return real(*a, **k)
        return f
    o.mark, o.os.replace, o.shutil.rmtree = dying(o.mark), dying(os.replace), dying(o.shutil.rmtree)
    synth(out, limit=30, force=True)
    os._exit(0)


@pytest.mark.parametrize("step", [1, 2, 3, 4, 5, 6])
def test_a_kill_at_any_step_of_the_swap_leaves_one_whole_dataset(tmp_path, step):
    import multiprocessing
    from converters.output import recover
    from normfast.manifest import load_manifest
    from normfast.verify import check_files
    out = tmp_path / "data"
    synth(out)
    child = multiprocessing.get_context("fork").Process(target=_convert_and_die_at, args=(out, step))
    child.start()
    child.join(60)
    assert child.exitcode in (0, 9)
    recover(out)                              # what the next run does first
    m = load_manifest(out)
    assert m.count("train") in (20, 30)
    check_files(m)                       # every listed file, nothing else (no marker left)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_clean_removes_only_marked_leftovers_of_dead_processes(tmp_path, capsys):
    pid = dead_pid()
    ours, alive, user = (tmp_path / f".x.tmp-{pid}", tmp_path / f".x.tmp-{os.getpid()}",
                         tmp_path / f".x.old-{pid}")
    for p in (ours, alive, user):
        p.mkdir()
    (ours / MARKER).write_text("{}")
    (alive / MARKER).write_text("{}")
    (user / "thesis.tex").write_text("mine")
    assert clean(tmp_path / "x") == 1
    assert not ours.exists() and alive.exists() and (user / "thesis.tex").exists()
    assert f"removed {ours}" in capsys.readouterr().err


def test_cli_clean_removes_a_killed_runs_temporary(tmp_path):
    from click.testing import CliRunner
    from normfast.cli import main
    pid = dead_pid()
    left = tmp_path / f".x.tmp-{pid}"
    left.mkdir()
    (left / MARKER).write_text("{}")
    r = CliRunner().invoke(main, ["convert", "--clean", "--out", str(tmp_path / "x")])
    assert r.exit_code == 0, r.output
    assert f"notice: removed {left}" in r.output and "1 leftover(s) of killed conversions handled" in r.output
    assert list(tmp_path.iterdir()) == []
    r = CliRunner().invoke(main, ["convert", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "error: convert: missing SOURCE" in r.output


def test_a_failed_run_leaves_no_marked_or_unmarked_temporary(tmp_path, monkeypatch):
    import converters.convert as cv

    def boom(*a, **k):
        raise NormfastError("boom")
    monkeypatch.setattr(cv, "_convert_into", boom)
    with pytest.raises(NormfastError, match="boom"):
        synth(tmp_path / "o")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- FFCV workers (items 5, 6)

@pytest.fixture
def alarm():
    """Turn a hang into a failure: raise after `seconds` (cleanup then runs as on Ctrl-C)."""
    import signal

    def ring(signum, frame):
        raise TimeoutError("hung")
    old = signal.signal(signal.SIGALRM, ring)
    yield signal.alarm
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_a_failing_ffcv_worker_ends_the_conversion(tmp_path, monkeypatch, alarm):
    from converters.formats import StagingDataset
    real = StagingDataset.__getitem__

    def broken(self, i):               # runs inside FFCV's worker processes (forked)
        if i == 7:
            raise OSError(28, "No space left on device")
        return real(self, i)
    monkeypatch.setattr(StagingDataset, "__getitem__", broken)
    alarm(120)
    with pytest.raises(NormfastError, match=r"train.beton: No space left on device$"):
        synth(tmp_path / "o", formats=("ffcv",), limit=300)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_the_ffcv_write_is_one_error(tmp_path):
    with tmpfs(tmp_path / "small", "size=3m") as mnt:
        r = run_cli(["convert", "synthetic", "--limit", "600", "--format", "ffcv", "--out", str(mnt / "w")],
                    timeout=120)
        assert r.returncode == 1, r.stderr
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
        assert "train.beton: No space left on device" in r.stderr
        assert list(mnt.iterdir()) == []


def run_cli(args, timeout, **kw):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "normfast", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, **kw)


def processes_mentioning(text: str) -> list[int]:
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(d))
            except OSError:
                pass
    return found


def start_ffcv_conversion(tmp_path):
    """A CLI conversion stopped the moment its FFCV writer has begun."""
    import time
    out = tmp_path / "sig"
    env = dict(os.environ, PYTHONPATH=REPO)
    p = subprocess.Popen([sys.executable, "-m", "normfast", "convert", "synthetic", "--limit", "20000",
                          "--format", "ffcv", "--encoding", "jpg", "--out", str(out), "-q"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (tmp_path / f".sig.tmp-{p.pid}" / "ffcv" / "train.beton").exists():
        assert p.poll() is None and time.monotonic() < deadline, "conversion ended before its FFCV phase"
        time.sleep(0.02)
    time.sleep(0.3)                   # the writer's workers are running now
    assert len(processes_mentioning(str(out))) >= 3, "expected the writer and its workers"
    return p, out


def wait_gone(text: str, seconds: float) -> list[int]:
    import time
    deadline = time.monotonic() + seconds
    while processes_mentioning(text) and time.monotonic() < deadline:
        time.sleep(0.1)
    return processes_mentioning(text)


def test_sigterm_during_the_ffcv_phase_exits_within_seconds(tmp_path):
    import signal
    p, out = start_ffcv_conversion(tmp_path)
    p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=15)
    finally:
        p.kill()
    assert p.returncode == 130 and err.strip() == "interrupted"
    assert wait_gone(str(out), 5) == []
    assert list(tmp_path.iterdir()) == []


def test_sigkill_during_the_ffcv_phase_takes_the_workers_along(tmp_path):
    import signal
    p, out = start_ffcv_conversion(tmp_path)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=15)
    assert wait_gone(str(out), 10) == []
    note = tmp_path / f".sig.tmp-{p.pid}" / "ffcv" / ".ffcv-shared-memory"
    shm = "/dev/shm/" + note.read_text().strip().lstrip("/")   # may be freed already, or not
    # what it left is marked, so the next run removes it and says so
    r = run_cli(["convert", "synthetic", "--limit", "20", "--format", "dali", "--out", str(out), "-q"],
                timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"notice: removed {tmp_path / f'.sig.tmp-{p.pid}'} (" in r.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["sig"] and not os.path.exists(shm)
