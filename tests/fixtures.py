"""Tiny datasets written in the real on-disk formats of each source."""
from __future__ import annotations

import contextlib
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def rand_images(n: int, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def write_cifar10(root: Path, per_batch: int = 6,
                  test: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    train_x, train_y = [], []
    for i in range(1, 6):
        x = rand_images(per_batch, seed=i)
        y = rng.integers(0, 10, per_batch).tolist()
        _pickle(root / f"data_batch_{i}", {b"data": x.transpose(0, 3, 1, 2).reshape(per_batch, -1),
                                           b"labels": y, b"batch_label": b"x"})
        train_x.append(x)
        train_y += y
    tx = rand_images(test, seed=99)
    ty = rng.integers(0, 10, test).tolist()
    _pickle(root / "test_batch", {b"data": tx.transpose(0, 3, 1, 2).reshape(test, -1), b"labels": ty})
    _pickle(root / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return np.concatenate(train_x), np.array(train_y), tx, np.array(ty)


def write_cifar100(root: Path, n_train: int = 20, n_test: int = 10):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    out = []
    for name, n, seed in (("train", n_train, 3), ("test", n_test, 4)):
        x = rand_images(n, seed=seed)
        y = rng.integers(0, 100, n).tolist()
        _pickle(root / name, {b"data": x.transpose(0, 3, 1, 2).reshape(n, -1), b"fine_labels": y,
                              b"coarse_labels": [0] * n})
        out += [x, np.array(y)]
    _pickle(root / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    return tuple(out)


def write_svhn(root: Path, n_train: int = 12, n_test: int = 7):
    import scipy.io
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for name, n, seed in (("train", n_train, 5), ("test", n_test, 6)):
        x = rand_images(n, seed=seed)
        digits = np.arange(n) % 10                        # 0..9
        y = np.where(digits == 0, 10, digits).reshape(-1, 1).astype(np.uint8)
        scipy.io.savemat(root / f"{name}_32x32.mat", {"X": x.transpose(1, 2, 3, 0), "y": y})
        out += [x, digits]
    return tuple(out)


def write_tiny_imagenet(root: Path, wnids=("n01", "n02", "n03"), per_class: int = 3, n_val: int = 4,
                        gray_first: bool = True):
    """PNG-free, JPEG-only like the real thing; returns nothing (pixels are lossy)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    k = 0
    for w in wnids:
        d = root / "train" / w / "images"
        d.mkdir(parents=True)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(per_class):
            img = rand_images(1, 64, 64, seed=k)[0]
            k += 1
            if gray_first and k == 1:
                Image.fromarray(img[..., 0], mode="L").save(d / f"{w}_{i}.JPEG")
            else:
                Image.fromarray(img).save(d / f"{w}_{i}.JPEG")
    vd = root / "val" / "images"
    vd.mkdir(parents=True)
    lines = []
    for i in range(n_val):
        Image.fromarray(rand_images(1, 64, 64, seed=100 + i)[0]).save(vd / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnids[i % len(wnids)]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def write_imagefolder(root: Path, classes=("cat", "dog"), per_class: int = 3, size=(32, 32), test_dir="test"):
    for split, n in (("train", per_class), (test_dir, 2)):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rand_images(1, *size, seed=hash((split, c, i)) % 1000)[0]
                Image.fromarray(img).save(d / f"{i}.png")


def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def cfg_for(data, runs, **kw):
    """A quick CPU train configuration on `data` (from scratch: no network here)."""
    from normfast.config import resolve_train_config
    base = dict(data=str(data), runs=str(runs), epochs=1, batch_size=16, test_batch_size=16,
                quiet=True, num_workers=1, device="cpu", pretrained="none")
    return resolve_train_config(None, **(base | kw))


@contextlib.contextmanager
def tmpfs(path, options: str):
    """A tmpfs mounted at `path` (e.g. "size=3m" for a full disk, "ro,size=1m" for a read-only
    one) for the duration; the test is skipped where mounting is not allowed."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def cli(*args):
    """`normfast ARGS` in this process: (exit code, output)."""
    from click.testing import CliRunner
    from normfast.cli import main
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.output


def one_error_line(code, out, *parts):
    """A user mistake: exit 1 and one `error:` line holding every part."""
    assert code == 1, out
    assert out.startswith("error: ") and out.strip().count("\n") == 0, out
    for p in parts:
        assert p in out, out


def edit_manifest(out: Path, change) -> None:
    """Apply `change` to the dataset's manifest.json (a tampering test's edit)."""
    import json
    p = out / "manifest.json"
    m = json.loads(p.read_text())
    change(m)
    p.write_text(json.dumps(m))


def the_error_line(result, *expected) -> str:
    """A click Result of a refused command: exit 1, exactly one `error:` line holding every
    expected text, no traceback; returns that line."""
    out = result.output
    assert result.exit_code == 1, out
    lines = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in out, out
    for e in expected:
        assert e in lines[0], lines[0]
    return lines[0]


def one_run_grid(path: Path, data: Path, runs: Path, train: dict) -> Path:
    """A grid file of one resnet18/finetune/resident run on `data` with this `train:` section."""
    import yaml
    path.write_text(yaml.safe_dump({"data_root": str(data.parent), "runs": str(runs), "datasets": [data.name],
                                    "models": ["resnet18"], "norms": ["finetune"], "backends": ["resident"],
                                    "train": train}))
    return path
