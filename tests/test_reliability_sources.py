"""Source readers never change or drop a sample without a word (normfast issue 11)."""
import os
import pickle

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from converters.convert import ConvertConfig, convert, stored_order
from fixtures import tmpfs, rand_images, write_cifar10, write_imagefolder, write_svhn, write_tiny_imagenet
from normfast.cli import main
from normfast.errors import NormfastError
from normfast.manifest import load_manifest
from normfast.shards import ShardReader


def run(tmp_path, source, src, **kw):
    kw.setdefault("formats", ("dali",))
    return convert(ConvertConfig(source, tmp_path / "out", src, quiet=True, **kw))


def refused(tmp_path, match, source, src, **kw):
    with pytest.raises(NormfastError, match=match):
        run(tmp_path, source, src, **kw)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def stored(out, split="train"):
    xs, ys = zip(*ShardReader(load_manifest(out), split).batches(10_000))
    return np.concatenate(xs), np.concatenate(ys)


def at(i: int, n: int, split: str = "train") -> int:
    """Where source sample i of n is stored (folder layouts are stored in a seeded shuffle)."""
    return int(np.flatnonzero(stored_order(n, split) == i)[0])


def test_sixteen_bit_grayscale_png_is_scaled_to_eight_bits(tmp_path):
    write_imagefolder(tmp_path / "if")
    ramp = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)  # 0..65472
    Image.fromarray(ramp).save(tmp_path / "if" / "train" / "cat" / "deep.png")
    assert Image.open(tmp_path / "if" / "train" / "cat" / "deep.png").mode.startswith("I")
    run(tmp_path, "imagefolder", tmp_path / "if")
    x, _ = stored(tmp_path / "out")
    img = x[at(3, 7)]                   # cat: 0.png 1.png 2.png deep.png
    expect = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(img[..., 0], expect)
    assert (img[..., 0] == img[..., 2]).all() and img.min() == 0 and img.max() == 255


def test_images_in_subfolders_of_a_class_are_read_as_that_class(tmp_path):
    write_imagefolder(tmp_path / "if")
    more = tmp_path / "if" / "train" / "cat" / "more"
    more.mkdir()
    Image.fromarray(rand_images(1, seed=7)[0]).save(more / "x.png")
    m = run(tmp_path, "imagefolder", tmp_path / "if")
    assert m["splits"]["train"]["class_counts"] == [4, 3]
    x, y = stored(tmp_path / "out")
    np.testing.assert_array_equal(x[at(3, 7)], rand_images(1, seed=7)[0])
    assert y[at(3, 7)] == 0


def test_tiny_imagenet_subfolder_in_images_is_refused(tmp_path):
    write_tiny_imagenet(tmp_path / "tin")
    (tmp_path / "tin" / "train" / "n01" / "images" / "sub").mkdir()
    refused(tmp_path, r"images/sub: unexpected folder", "tiny-imagenet-200", tmp_path / "tin")


@pytest.mark.parametrize("label, shown", [(1.7, "1.7"), ("3", "'3'")])
def test_cifar_labels_that_are_not_integers_are_refused(tmp_path, label, shown):
    write_cifar10(tmp_path / "src")
    p = tmp_path / "src" / "data_batch_2"
    d = pickle.loads(p.read_bytes())
    d[b"labels"] = [float(v) for v in d[b"labels"]] if isinstance(label, float) else [str(v) for v in d[b"labels"]]
    d[b"labels"][4] = label
    p.write_bytes(pickle.dumps(d))
    index = 4 if isinstance(label, float) else 0
    refused(tmp_path, rf"data_batch_2: label {shown if index == 4 else '.*'} at index {index} is not an integer",
            "cifar10", tmp_path / "src")


def test_integral_float_labels_are_kept(tmp_path):
    _, ty, _, _ = write_cifar10(tmp_path / "src")
    for i in range(1, 6):
        p = tmp_path / "src" / f"data_batch_{i}"
        d = pickle.loads(p.read_bytes())
        d[b"labels"] = np.asarray(d[b"labels"], dtype=np.float64)
        p.write_bytes(pickle.dumps(d))
    run(tmp_path, "cifar10", tmp_path / "src")
    np.testing.assert_array_equal(stored(tmp_path / "out")[1], ty)


def test_svhn_float_label_is_refused(tmp_path):
    import scipy.io
    write_svhn(tmp_path / "src")
    p = tmp_path / "src" / "test_32x32.mat"
    d = scipy.io.loadmat(p)
    y = d["y"].astype(np.float64)
    y[5] = 2.5
    scipy.io.savemat(p, {"X": d["X"], "y": y})
    refused(tmp_path, r"test_32x32.mat .*label 2.5 at index 5 is not an integer", "svhn", tmp_path / "src")


def test_val_annotation_listed_twice_with_two_classes(tmp_path):
    write_tiny_imagenet(tmp_path / "tin")
    ann = tmp_path / "tin" / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_0.JPEG\tn02\t0\t0\t63\t63\n")
    refused(tmp_path, r"val_annotations.txt:5: val_0.JPEG listed again with class 'n02'; line 1 gave 'n01'",
            "tiny-imagenet-200", tmp_path / "tin")


def test_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    write_imagefolder(tmp_path / "if")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)     # 32x32 = 1024 > 2 x 400: the bomb error
    refused(tmp_path, r"train/(cat|dog)/\d.png: image too large to decode safely", "imagefolder", tmp_path / "if")


def test_broken_test_symlink_is_reported_as_such(tmp_path):
    import shutil
    write_imagefolder(tmp_path / "if")
    shutil.rmtree(tmp_path / "if" / "test")
    os.symlink(tmp_path / "gone", tmp_path / "if" / "test")
    refused(tmp_path, r"if/test: broken symlink \(points to .*gone", "imagefolder", tmp_path / "if")


def test_empty_format_is_refused(tmp_path):
    r = CliRunner().invoke(main, ["convert", "synthetic", "--limit", "10", "--format", "", "--out",
                                  str(tmp_path / "o")])
    assert r.exit_code == 1 and "error: --format: names no format; valid: " in r.output
    assert r.output.count("\n") == 1 and not (tmp_path / "o").exists()


def test_read_only_out_is_one_error(tmp_path, monkeypatch):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        r = CliRunner().invoke(main, ["convert", "synthetic", "--limit", "10", "--format", "dali", "--out",
                                      str(ro / "data")])
        assert r.exit_code == 1, r.output
        assert r.output.count("\n") == 1 and "Read-only file system" in r.output
        assert str(ro) in r.output and list(ro.iterdir()) == []
