"""Converters: every source's real on-disk format, round trips, statistics, bad input."""
import json
import pickle

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from converters.convert import ORDER_SEED, ConvertConfig, convert, stored_order
from fixtures import (rand_images, write_cifar10, write_cifar100, write_imagefolder, write_svhn,
                      write_tiny_imagenet)
from normfast.cli import main
from normfast.errors import NormfastError
from normfast.manifest import load_manifest
from normfast.readback import iter_split
from normfast.shards import ShardReader


def read_all(out, split, fmt="dali"):
    m = load_manifest(out)
    if fmt == "dali":
        xs, ys = zip(*ShardReader(m, split).batches(10_000))
    else:
        from normfast.readback import iter_ffcv
        xs, ys = zip(*iter_ffcv(m, split, 10_000))
    return np.concatenate(xs), np.concatenate(ys)


def no_leftovers(parent):
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_cifar10_round_trip_and_stats(tmp_path):
    tx, ty, vx, vy = write_cifar10(tmp_path / "src")
    out = tmp_path / "out"
    m = convert(ConvertConfig("cifar10", out, tmp_path / "src", formats=("dali",), quiet=True))
    assert m["splits"]["train"]["count"] == 30 and m["splits"]["test"]["count"] == 8
    assert m["classes"] == [f"c{i}" for i in range(10)] and m["image_shape"] == [32, 32, 3]
    x, y = read_all(out, "train")
    np.testing.assert_array_equal(x, tx)
    np.testing.assert_array_equal(y, ty)
    x, y = read_all(out, "test")
    np.testing.assert_array_equal(x, vx)
    np.testing.assert_array_equal(y, vy)
    ref = tx.astype(np.float64) / 255
    np.testing.assert_allclose(m["stats"]["mean"], ref.mean(axis=(0, 1, 2)), atol=1e-6, rtol=0)
    np.testing.assert_allclose(m["stats"]["std"], ref.std(axis=(0, 1, 2)), atol=1e-6, rtol=0)
    # every written file is listed with its size and checksum
    listed = {f["path"]: f for f in m["files"]}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(listed) == on_disk
    for f in m["files"]:
        assert (out / f["path"]).stat().st_size == f["size"] and len(f["sha256"]) == 64
    assert no_leftovers(tmp_path) == []


def test_cifar100_and_svhn(tmp_path):
    tx, ty, vx, vy = write_cifar100(tmp_path / "c100")
    convert(ConvertConfig("cifar100", tmp_path / "o1", tmp_path / "c100", formats=("dali",), quiet=True))
    x, y = read_all(tmp_path / "o1", "train")
    np.testing.assert_array_equal(x, tx)
    np.testing.assert_array_equal(y, ty)
    assert load_manifest(tmp_path / "o1").num_classes == 100

    sx, sy, svx, svy = write_svhn(tmp_path / "svhn")
    convert(ConvertConfig("svhn", tmp_path / "o2", tmp_path / "svhn", formats=("dali",), quiet=True))
    x, y = read_all(tmp_path / "o2", "test")
    np.testing.assert_array_equal(x, svx)
    np.testing.assert_array_equal(y, svy)     # label 10 became digit 0
    assert 0 in y


def test_tiny_imagenet_and_grayscale(tmp_path):
    write_tiny_imagenet(tmp_path / "tin")
    m = convert(ConvertConfig("tiny-imagenet-200", tmp_path / "o", tmp_path / "tin",
                              formats=("dali",), quiet=True))
    assert m["splits"]["train"]["count"] == 9 and m["splits"]["test"]["count"] == 4
    assert m["image_shape"] == [64, 64, 3]
    x, y = read_all(tmp_path / "o", "train")
    assert x.shape == (9, 64, 64, 3)
    # stored in the seeded shuffled order (class-by-class folders must not stay grouped)
    order = stored_order(9, "train")
    assert list(y) == [[0, 0, 0, 1, 1, 1, 2, 2, 2][i] for i in order] and list(y) != sorted(y)
    first = int(np.flatnonzero(order == 0)[0])          # where the grayscale JPEG went
    assert (x[first, ..., 0] == x[first, ..., 1]).all()   # the grayscale JPEG became RGB
    _, vy = read_all(tmp_path / "o", "test")
    assert list(vy) == [[0, 1, 2, 0][i] for i in stored_order(4, "test")]
    assert m["order"]["shuffled"] and m["order"]["seed"] == ORDER_SEED


def test_imagefolder_png_and_size(tmp_path):
    write_imagefolder(tmp_path / "if", size=(40, 50), test_dir="val")
    m = convert(ConvertConfig("imagefolder", tmp_path / "o", tmp_path / "if", formats=("dali",),
                              size=32, encoding="png", quiet=True))
    assert m["image_shape"] == [32, 32, 3] and m["classes"] == ["cat", "dog"]
    x, _ = read_all(tmp_path / "o", "train")
    assert x.shape == (6, 32, 32, 3)


def test_ffcv_round_trip(tmp_path):
    tx, ty, vx, vy = write_cifar10(tmp_path / "src")
    convert(ConvertConfig("cifar10", tmp_path / "o", tmp_path / "src", formats=("ffcv",), quiet=True))
    x, y = read_all(tmp_path / "o", "train", "ffcv")
    np.testing.assert_array_equal(x, tx)
    np.testing.assert_array_equal(y, ty)


def test_limit_and_synthetic_deterministic(tmp_path):
    a = convert(ConvertConfig("synthetic", tmp_path / "a", limit=50, formats=("dali",), quiet=True))
    b = convert(ConvertConfig("synthetic", tmp_path / "b", limit=50, formats=("dali",), quiet=True))
    assert a["splits"]["train"]["count"] == 50 and a["splits"]["test"]["count"] == 10
    assert [f["sha256"] for f in a["files"]] == [f["sha256"] for f in b["files"]]


# ---------------------------------------------------------------- bad input

def expect_error(tmp_path, match, **kw):
    out = tmp_path / "out"
    with pytest.raises(NormfastError, match=match):
        convert(ConvertConfig(out=out, formats=("dali",), quiet=True, **kw))
    assert not out.exists()
    assert no_leftovers(tmp_path) == []


def test_missing_file(tmp_path):
    write_cifar10(tmp_path / "src")
    (tmp_path / "src" / "data_batch_3").unlink()
    expect_error(tmp_path, r"data_batch_3: missing", source="cifar10", src=tmp_path / "src")


def test_truncated_pickle(tmp_path):
    write_cifar10(tmp_path / "src")
    p = tmp_path / "src" / "data_batch_2"
    p.write_bytes(p.read_bytes()[:1000])
    expect_error(tmp_path, r"data_batch_2: corrupt or truncated pickle", source="cifar10", src=tmp_path / "src")


def test_label_out_of_range(tmp_path):
    write_cifar10(tmp_path / "src")
    p = tmp_path / "src" / "test_batch"
    d = pickle.loads(p.read_bytes())
    d[b"labels"][3] = 10
    p.write_bytes(pickle.dumps(d))
    expect_error(tmp_path, r"test_batch: label 10 at index 3 is out of range 0..9",
                 source="cifar10", src=tmp_path / "src")


def test_svhn_bad_label_and_truncated_mat(tmp_path):
    import scipy.io
    write_svhn(tmp_path / "src")
    p = tmp_path / "src" / "train_32x32.mat"
    d = scipy.io.loadmat(p)
    d["y"][2] = 11
    scipy.io.savemat(p, {"X": d["X"], "y": d["y"]})
    expect_error(tmp_path, r"train_32x32.mat .*out of range", source="svhn", src=tmp_path / "src")
    p.write_bytes(p.read_bytes()[:500])
    expect_error(tmp_path, r"train_32x32.mat: corrupt or truncated", source="svhn", src=tmp_path / "src")


def test_unknown_class_in_val_annotations(tmp_path):
    write_tiny_imagenet(tmp_path / "tin")
    ann = tmp_path / "tin" / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text().replace("n02", "n99", 1))
    expect_error(tmp_path, r"val_annotations.txt:2: unknown class 'n99'", source="tiny-imagenet-200",
                 src=tmp_path / "tin")


def test_unlabelled_val_image_is_not_dropped(tmp_path):
    write_tiny_imagenet(tmp_path / "tin")
    Image.fromarray(rand_images(1, 64, 64)[0]).save(tmp_path / "tin" / "val" / "images" / "extra.JPEG")
    expect_error(tmp_path, r"extra.JPEG: image has no label", source="tiny-imagenet-200", src=tmp_path / "tin")


def test_empty_class_folder(tmp_path):
    write_imagefolder(tmp_path / "if")
    (tmp_path / "if" / "train" / "emu").mkdir()
    expect_error(tmp_path, r"emu: empty class folder", source="imagefolder", src=tmp_path / "if")


def test_wrong_layout(tmp_path):
    (tmp_path / "if" / "cat").mkdir(parents=True)
    expect_error(tmp_path, r"train: missing", source="imagefolder", src=tmp_path / "if")


def test_corrupt_image(tmp_path):
    write_tiny_imagenet(tmp_path / "tin")
    p = tmp_path / "tin" / "train" / "n02" / "images" / "n02_1.JPEG"
    p.write_bytes(p.read_bytes()[:100])
    expect_error(tmp_path, r"n02_1.JPEG: corrupt or unreadable image", source="tiny-imagenet-200",
                 src=tmp_path / "tin")


def test_mixed_sizes_need_size(tmp_path):
    write_imagefolder(tmp_path / "if")
    Image.fromarray(rand_images(1, 20, 30)[0]).save(tmp_path / "if" / "train" / "dog" / "odd.png")
    # both images are named (which one comes first depends on the seeded stored order)
    expect_error(tmp_path, r"(odd.png: image is 30x20, but .*\.png is 32x32|"
                           r"\.png: image is 32x32, but .*odd.png is 30x20); pass --size N",
                 source="imagefolder", src=tmp_path / "if")


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "out"
    convert(ConvertConfig("synthetic", out, limit=20, formats=("dali",), quiet=True))
    before = (out / "manifest.json").read_text()
    with pytest.raises(NormfastError, match="already exists; pass --force"):
        convert(ConvertConfig("synthetic", out, limit=30, formats=("dali",), quiet=True))
    assert (out / "manifest.json").read_text() == before
    convert(ConvertConfig("synthetic", out, limit=30, formats=("dali",), quiet=True, force=True))
    assert json.loads((out / "manifest.json").read_text())["splits"]["train"]["count"] == 30
    assert no_leftovers(tmp_path) == []


def test_cli_one_line_errors(tmp_path):
    r = CliRunner().invoke(main, ["convert", "cifar10", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1
    assert r.output.strip().count("\n") == 0 and "nope: source directory not found" in r.output
    r = CliRunner().invoke(main, ["convert", "mnist", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "unknown source 'mnist'; valid: cifar10" in r.output
    r = CliRunner().invoke(main, ["stats", str(tmp_path)])
    assert r.exit_code == 1 and "manifest.json: missing" in r.output


def test_stats_cli(synthetic_dir):
    r = CliRunner().invoke(main, ["stats", str(synthetic_dir), "--json"])
    assert r.exit_code == 0, r.output
    t = json.loads(r.output)
    np.testing.assert_allclose(t["after"]["finetune"]["mean"], 0, atol=1e-9)
    np.testing.assert_allclose(t["after"]["finetune"]["std"], 1, atol=1e-9)
    # instance: every image-channel has mean 0 and unbiased std 1 -> population std sqrt((n-1)/n)
    np.testing.assert_allclose(t["after"]["instance"]["mean"], 0, atol=1e-9)
    np.testing.assert_allclose(t["after"]["instance"]["std"], np.sqrt(1023 / 1024), atol=1e-9)
    x = np.concatenate([b for b, _ in iter_split(load_manifest(synthetic_dir), "train")])
    np.testing.assert_allclose(t["after"]["minmax"]["mean"], (x / 255.0).mean(axis=(0, 1, 2)), atol=1e-6)
    assert "Table 1" in CliRunner().invoke(main, ["stats", str(synthetic_dir)]).output


def test_force_replaces_only_a_converted_dataset(tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(NormfastError, match="is not a converted dataset"):
        convert(ConvertConfig("synthetic", precious, limit=10, formats=("dali",), quiet=True, force=True))
    assert (precious / "thesis.tex").read_text() == "do not delete"


def test_leftovers_of_a_killed_conversion_are_removed(tmp_path):
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".out.tmp-{dead.pid}"
    (stale / "dali").mkdir(parents=True)
    (stale / ".normfast-temporary").write_text("{}")     # normfast marks what it creates
    convert(ConvertConfig("synthetic", tmp_path / "out", limit=10, formats=("dali",), quiet=True))
    assert not stale.exists() and no_leftovers(tmp_path) == []
