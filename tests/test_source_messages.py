"""Conversion mistakes are refused or named, never silent (normfast issue 18, sections 4 and 6):
a wnid listed twice, hidden ImageFolder entries, symlink loops, an empty split, `--out
FILE/sub`; `stats --name` compares with a named dataset's published statistics."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from converters.convert import ConvertConfig, convert
from fixtures import write_imagefolder, write_tiny_imagenet
from normfast.cli import main
from normfast.configfiles import reference_stats
from normfast.errors import NormfastError
from normfast.manifest import load_manifest


def run(tmp_path, source, src, **kw):
    return convert(ConvertConfig(source, tmp_path / "out", src, quiet=True, formats=("dali",), **kw))


def refused(tmp_path, match, source, src):
    with pytest.raises(NormfastError, match=match):
        run(tmp_path, source, src)
    assert not (tmp_path / "out").exists()


def test_a_wnid_listed_twice_is_refused_naming_both_lines(tmp_path):
    """It converted with exit 0: class 0 empty, its images stored twice as class 3."""
    write_tiny_imagenet(tmp_path / "t")
    with open(tmp_path / "t" / "wnids.txt", "a") as f:
        f.write("\nn01\n")
    refused(tmp_path, r"wnids.txt: lines 1 and 5 both list 'n01'", "tiny-imagenet-200", tmp_path / "t")


def test_hidden_imagefolder_entries_are_named(tmp_path, capsys):
    """torchvision's ImageFolder reads `.c/` as a class and `a/.hid.png` as an image: normfast
    leaves them out, and now says so."""
    write_imagefolder(tmp_path / "if", classes=("a", "b"))
    (tmp_path / "if" / "train" / ".c").mkdir()
    for p in (tmp_path / "if" / "train" / ".c" / "x.png", tmp_path / "if" / "train" / "a" / ".hid.png"):
        shutil.copy(tmp_path / "if" / "train" / "a" / "0.png", p)
    (tmp_path / "if" / "train" / "a" / ".DS_Store").write_bytes(b"\0")    # torchvision skips it too
    m = run(tmp_path, "imagefolder", tmp_path / "if")
    err = capsys.readouterr().err
    assert "notice: skipped 2 hidden entries" in err and "torchvision's ImageFolder would read them" in err
    assert "train/.c/" in err and "train/a/.hid.png" in err and ".DS_Store" not in err
    assert m["classes"] == ["a", "b"] and m["splits"]["train"]["count"] == 6


def test_a_symlink_loop_is_called_one(tmp_path):
    """It was called a "broken symlink", with a path 40 levels deep."""
    write_imagefolder(tmp_path / "if")
    os.symlink("..", tmp_path / "if" / "train" / "cat" / "up")
    msg = refused(tmp_path, r"cat/up: symlink loop \(points to \.\., a folder above it\)",
                  "imagefolder", tmp_path / "if")
    os.unlink(tmp_path / "if" / "train" / "cat" / "up")
    os.symlink("self.png", tmp_path / "if" / "train" / "cat" / "self.png")
    refused(tmp_path, r"cat/self.png: symlink loop \(points to self.png\)$", "imagefolder", tmp_path / "if")
    del msg


def test_an_empty_split_names_the_source_folder(tmp_path):
    """It named an internal file, `.staging-test`."""
    write_imagefolder(tmp_path / "if")
    for d in (tmp_path / "if" / "test").iterdir():
        shutil.rmtree(d)
    refused(tmp_path, rf"^{tmp_path / 'if' / 'test'}: the test split holds no images$", "imagefolder",
            tmp_path / "if")


def test_out_below_a_file_is_one_line(tmp_path):
    """It said `[Errno 17] File exists`."""
    (tmp_path / "file").write_text("x")
    r = CliRunner().invoke(main, ["convert", "synthetic", "--limit", "20", "--out", str(tmp_path / "file" / "sub")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"error: --out {tmp_path / 'file' / 'sub'}: {tmp_path / 'file'} is a file, not a folder" in r.output


def test_stats_name_compares_with_the_named_dataset(tmp_path):
    """An ImageFolder conversion of CIFAR-10, named after its folder, got no reference row."""
    write_imagefolder(tmp_path / "mycifar")
    convert(ConvertConfig("imagefolder", tmp_path / "d", tmp_path / "mycifar", quiet=True, formats=("dali",)))
    assert load_manifest(tmp_path / "d").name == "mycifar"
    plain = CliRunner().invoke(main, ["stats", str(tmp_path / "d")])
    assert plain.exit_code == 0 and "| seed's reference (stats.py) | — | — |" in plain.output
    named = CliRunner().invoke(main, ["stats", str(tmp_path / "d"), "--name", "cifar10"])
    mean = reference_stats("cifar10")[0]
    assert named.exit_code == 0, named.output
    assert f"({mean[0]:.4f}, {mean[1]:.4f}, {mean[2]:.4f})" in named.output and "| difference |" in named.output
    bad = CliRunner().invoke(main, ["stats", str(tmp_path / "d"), "--name", "nope"])
    assert bad.exit_code == 1 and "error: --name nope: no published statistics; known: " in bad.output
    assert np.isfinite(mean).all()


def test_an_unsafe_folder_name_falls_back_to_imagefolder(tmp_path):
    write_imagefolder(tmp_path / "x")
    m = run(tmp_path, "imagefolder", tmp_path / "x" / "train" / "..")
    assert m["name"] == "x"
