"""A converted dataset that does not match its manifest is refused in one line before any
training, by every verb; no path outside the dataset is read (normfast issue 18, sections
1, 2, 5 and 6)."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import loader_checks
from converters.convert import ConvertConfig, convert
from fixtures import write_tiny_imagenet
from normfast.cli import main
from normfast.errors import NormfastError
from normfast.manifest import load_manifest
from fixtures import edit_manifest, the_error_line


def read_index(path):     # imported late: the tests also run against the code before issue 18
    from normfast.shards import read_index
    return read_index(path)

HAVE_FFCV = loader_checks.HAVE["ffcv"]
needs_ffcv = pytest.mark.skipif(not HAVE_FFCV, reason="needs ffcv")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """300 train + 60 test synthetic images, both formats where FFCV is installed."""
    out = tmp_path_factory.mktemp("datacheck") / "d"
    convert(ConvertConfig("synthetic", out, limit=300, quiet=True, formats=loader_checks.convert_formats()))
    return out


@pytest.fixture
def data(base, tmp_path):
    out = tmp_path / "d"
    shutil.copytree(base, out)
    return out


edit = edit_manifest


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(args, *expected):
    """The command exits 1 with one `error:` line holding every expected text, no traceback."""
    return the_error_line(run(*args), *expected)


def train_args(data, tmp_path, backend):
    return ("train", "--data", data, "--runs", tmp_path / "runs", "--backend", backend, "--epochs", 1,
            "--device", "cpu", "-q", "--pretrained", "none", "--batch-size", 16, "--num-workers", 0)


BACKENDS = loader_checks.backend_params("resident", "torch", "dali", "ffcv")
VERBS = ("verify", "stats")
FIX = "run `normfast verify"


def every_verb(data, tmp_path, *expected, backends=("resident", "torch", "dali", "ffcv")):
    for verb in VERBS:
        refused((verb, data), *expected)
    for b in backends:
        if loader_checks.HAVE.get(b, True):
            refused(train_args(data, tmp_path, b), *expected)


# ---------------------------------------------------------------- section 1 and 6: the table's rows

def test_a_count_raised_above_the_stored_samples(data, tmp_path):
    def raise_count(m):
        m["splits"]["train"]["count"] += 1
        m["splits"]["train"]["class_counts"][0] += 1
    edit(data, raise_count)
    every_verb(data, tmp_path, "splits.train.count is 301, but the train shards' index files list 300", FIX)


def test_a_count_one_below_the_stored_samples(data, tmp_path):
    """299 of 300: resident and torch trained 299 a epoch, silently."""
    def lower(m):
        m["splits"]["train"]["count"] -= 1
        m["splits"]["train"]["class_counts"][0] -= 1
    edit(data, lower)
    every_verb(data, tmp_path, "splits.train.count is 299", FIX)


def test_a_test_count_of_zero(data, tmp_path):
    """Recorded a test accuracy of 0.0 on resident, torch and ffcv."""
    def zero(m):
        m["splits"]["test"]["count"] = 0
        m["splits"]["test"]["class_counts"] = [0] * 10
    edit(data, zero)
    every_verb(data, tmp_path, "splits.test.count is 0", FIX)


@pytest.mark.parametrize("shape", [[16, 16, 3], [64, 64, 3], [64, 16, 3]])
def test_an_image_shape_that_is_not_stored(data, tmp_path, shape):
    """[64, 16, 3] has the very bytes of 32x32x3: resident, torch and dali trained on scrambled images."""
    edit(data, lambda m: m.__setitem__("image_shape", shape))
    every_verb(data, tmp_path, f"image_shape is {shape}", FIX)


def test_a_raw_dataset_relabelled_png(data, tmp_path):
    def png(m):
        m["encoding"] = "png"
        m["formats"]["dali"]["image_encoding"] = "png"
    edit(data, png)
    every_verb(data, tmp_path, "no .png", FIX, backends=("resident", "torch", "dali"))
    edit(data, lambda m: m.__setitem__("encoding", "jpg"))   # only the top-level key
    refused(("stats", data), "image_encoding is", "but encoding is 'jpg'")


def test_train_shards_replaced_by_the_test_shards(data, tmp_path):
    def swap(m):
        m["splits"]["train"]["formats"]["dali"] = m["splits"]["test"]["formats"]["dali"]
    edit(data, swap)
    for b in ("resident", "torch"):
        refused(train_args(data, tmp_path, b), "splits.train.count is 300, but the train shards' index "
                "files list 60")


def test_an_empty_shard_list(data, tmp_path):
    edit(data, lambda m: m["splits"]["train"]["formats"]["dali"].update(shards=[], indexes=[]))
    refused(train_args(data, tmp_path, "resident"), "index files list 0 samples")


def test_shard_lists_of_unequal_length(data, tmp_path):
    edit(data, lambda m: m["splits"]["train"]["formats"]["dali"]["indexes"].append("x.idx"))
    for b in ("resident", "torch"):
        refused(train_args(data, tmp_path, b), "formats.dali lists 1 shards but 2 index files")


def test_a_std_near_zero(data, tmp_path):
    edit(data, lambda m: m["stats"]["std"].__setitem__(1, 1e-30))
    refused(train_args(data, tmp_path, "torch"), "stats.std is", "cannot normalize")


def test_a_file_of_another_size_than_listed(data, tmp_path):
    """A truncated shard: `stats` said `IndexError: index 0 is out of bounds`."""
    tar = data / "dali" / "train-00000.tar"
    os.truncate(tar, tar.stat().st_size - 1000)
    refused(("stats", data), "train-00000.tar", "bytes, manifest.json files[", FIX)
    refused(train_args(data, tmp_path, "resident"), "train-00000.tar")


def test_a_truncated_shard_with_its_size_edited_too(data, tmp_path):
    tar = data / "dali" / "train-00000.tar"
    end = int(read_index(data / "dali" / "train-00000.idx")["cls"][-1].sum())
    os.truncate(tar, end - 600)           # into the last samples (a tar's end is zero padding)
    edit(data, lambda m: [f.update(size=tar.stat().st_size) for f in m["files"] if f["path"].endswith(tar.name)])
    refused(("stats", data), "train-00000.tar", "lists members up to byte", FIX)


@needs_ffcv
def test_a_truncated_beton(data, tmp_path):
    """FFCV segfaulted on it (4 of 5 runs) or trained on altered data: now one line, before FFCV reads it."""
    beton = data / "ffcv" / "train.beton"
    os.truncate(beton, beton.stat().st_size - 1000)
    refused(train_args(data, tmp_path, "ffcv"), "train.beton", "bytes, manifest.json", FIX)
    edit(data, lambda m: [f.update(size=beton.stat().st_size) for f in m["files"] if f["path"].endswith("train.beton")])
    refused(train_args(data, tmp_path, "ffcv"), "train.beton", "truncated or damaged .beton")


def test_an_index_with_a_non_number(data, tmp_path):
    idx = data / "dali" / "train-00000.idx"
    lines = idx.read_text().splitlines()
    parts = lines[5].split()
    parts[1] = "12x4"
    lines[5] = " ".join(parts)
    idx.write_text("\n".join(lines) + "\n")
    edit(data, lambda m: [f.update(size=idx.stat().st_size) for f in m["files"] if f["path"].endswith(idx.name)])
    for args in (("stats", data), train_args(data, tmp_path, "resident")):
        refused(args, "train-00000.idx: line 6: '12x4' is not a byte offset")


# ---------------------------------------------------------------- a stored label >= the class count

@pytest.fixture
def three_classes(tmp_path):
    """A 3-class dataset (labels are one ASCII digit, so a tampered one keeps the size)."""
    write_tiny_imagenet(tmp_path / "src")
    out = tmp_path / "d3"
    convert(ConvertConfig("tiny-imagenet-200", out, tmp_path / "src", quiet=True,
                          formats=loader_checks.convert_formats(), size=16))
    return out


@pytest.mark.parametrize("backend", loader_checks.backend_params("resident", "torch", "dali"))
def test_a_stored_label_beyond_the_classes_in_a_shard(three_classes, tmp_path, backend):
    """It was `IndexError: Target 15 is out of bounds` in the loss, mid-epoch."""
    idx = read_index(three_classes / "dali" / "train-00000.idx")
    off, size = idx["cls"][4]
    tar = three_classes / "dali" / "train-00000.tar"
    with open(tar, "r+b") as f:
        f.seek(int(off))
        assert size == 1
        f.write(b"7")
    refused(train_args(three_classes, tmp_path, backend), "train-00000.tar: sample 4 has label 7",
            "lists 3 classes", FIX)
    refused(("stats", three_classes), "sample 4 has label 7")


@needs_ffcv
def test_a_stored_label_beyond_the_classes_in_a_beton(three_classes, tmp_path):
    from normfast.datacheck import FIELD_DESC_BYTES, HEADER, METADATA
    beton = three_classes / "ffcv" / "train.beton"
    at = HEADER.itemsize + 2 * FIELD_DESC_BYTES + 2 * METADATA.itemsize + METADATA.fields["label"][1]
    with open(beton, "r+b") as f:
        f.seek(at)
        f.write(np.int64(15).tobytes())
    refused(train_args(three_classes, tmp_path, "ffcv"), "train.beton: sample 2 has label 15", FIX)


# ---------------------------------------------------------------- section 2: paths stay inside

def test_an_absolute_shard_path(data, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(data / "dali", outside)
    edit(data, lambda m: m["splits"]["train"]["formats"]["dali"].update(
        shards=[str(outside / "train-00000.tar")]))
    every_verb(data, tmp_path, "expected a path inside the dataset directory", backends=("resident", "torch"))


def test_a_path_climbing_out(data, tmp_path):
    shutil.copytree(data / "dali", tmp_path / "other")
    edit(data, lambda m: m["splits"]["train"]["formats"]["dali"].update(indexes=["../../other/train-00000.idx"]))
    every_verb(data, tmp_path, 'indexes is "../../other/train-00000.idx"', "expected a path inside",
               backends=("resident",))


def test_a_files_entry_climbing_out(data, tmp_path):
    edit(data, lambda m: m["files"][0].update(path="../x"))
    every_verb(data, tmp_path, "files[0].path", "expected a path inside", backends=("resident",))


def test_a_symlink_pointing_out(data, tmp_path):
    """A valid shard outside the dataset was trained on."""
    outside = tmp_path / "elsewhere"
    shutil.copytree(data / "dali", outside)
    tar = data / "dali" / "train-00000.tar"
    tar.unlink()
    tar.symlink_to(outside / "train-00000.tar")
    every_verb(data, tmp_path, "train-00000.tar: ", "leads outside the dataset directory",
               backends=("resident", "torch", "dali"))


def test_a_symlinked_format_dir_pointing_out(data, tmp_path):
    shutil.move(data / "dali", tmp_path / "dali-elsewhere")
    (data / "dali").symlink_to(tmp_path / "dali-elsewhere")
    refused(train_args(data, tmp_path, "resident"), "leads outside the dataset directory")


@needs_ffcv
def test_an_absolute_ffcv_dir(data, tmp_path, base):
    """verify said `ok` while it read another dataset's .beton."""
    edit(data, lambda m: m["formats"]["ffcv"].update(dir=str(base / "ffcv")))
    every_verb(data, tmp_path, "formats.ffcv.dir", "expected a path inside", backends=("ffcv",))


def test_a_dataset_name_that_escapes_the_runs_folder(data, tmp_path):
    edit(data, lambda m: m.update(name="../../escape"))
    refused(train_args(data, tmp_path, "resident"), 'name is "../../escape"', "one folder name")
    assert not (tmp_path.parent / "escape").exists()


def test_a_newer_format_version_is_refused(data):
    edit(data, lambda m: m.update(format_version=99))
    refused(("stats", data), "format_version 99 is newer than this normfast reads (2)")


def test_the_check_runs_once_on_load_and_is_cheap(data):
    """load_manifest checks by default; verify and convert --force opt out (they check it
    their own way, or replace it)."""
    tar = data / "dali" / "test-00000.tar"
    os.truncate(tar, 10)
    with pytest.raises(NormfastError, match="test-00000.tar: 10 bytes"):
        load_manifest(data)
    assert load_manifest(data, check=False).count("test") == 60


def test_convert_force_replaces_a_broken_dataset(data):
    """The check on load would refuse it; `--force` must still be able to replace it."""
    tar = data / "dali" / "train-00000.tar"
    os.truncate(tar, 100)
    convert(ConvertConfig("synthetic", data, limit=50, quiet=True, formats=("dali",), force=True))
    assert load_manifest(data).count("train") == 50
