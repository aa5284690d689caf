"""Conversion reliability: what --force may replace, temporaries, recovery after a kill,
worker failures and signals (normfast issue 11)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from converters.convert import ConvertConfig, convert
from converters.output import MARKER, clean
from fixtures import write_imagefolder
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


def test_a_failed_run_leaves_no_marked_or_unmarked_temporary(tmp_path, monkeypatch):
    import converters.convert as cv

    def boom(*a, **k):
        raise NormfastError("boom")
    monkeypatch.setattr(cv, "_convert_into", boom)
    with pytest.raises(NormfastError, match="boom"):
        synth(tmp_path / "o")
    assert list(tmp_path.iterdir()) == []
