"""Data order that does not bend the study: class-by-class sources are stored shuffled (so
`--limit` keeps every class), and each epoch is one permutation of the whole split divided
among ranks (so every rank sees every class)."""
import numpy as np
import pytest
from PIL import Image

from converters.convert import ORDER_SEED, ConvertConfig, convert, stored_order
from fixtures import rand_images
from normfast.loaders import epoch_order, shard_bounds
from normfast.shards import ShardReader
from normfast.manifest import load_manifest

CLASSES = [f"c{k}" for k in range(5)]


def write_grouped(root, per_class=20, test_per_class=4):
    """An ImageFolder whose image (class k, file i) has pixel [0, 0] = (k, i, split)."""
    for split, n, tag in (("train", per_class, 1), ("test", test_per_class, 2)):
        for k, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                img = rand_images(1, 8, 8, seed=k * 100 + i)[0]
                img[0, 0] = (k, i, tag)
                Image.fromarray(img).save(d / f"{i:03d}.png")


def read(out, split):
    reader = ShardReader(load_manifest(out, splits=(split,)), split)
    images, labels = zip(*reader.batches(4096))
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    root = tmp_path_factory.mktemp("order")
    write_grouped(root / "src")
    return root


def test_stored_order_is_a_seeded_permutation_keeping_labels(grouped, tmp_path):
    a = convert(ConvertConfig("imagefolder", tmp_path / "a", grouped / "src", formats=("dali",), quiet=True))
    b = convert(ConvertConfig("imagefolder", tmp_path / "b", grouped / "src", formats=("dali",), quiet=True))
    assert [f["sha256"] for f in a["files"]] == [f["sha256"] for f in b["files"]]   # same seed, same order
    assert a["order"] == b["order"] and a["order"]["seed"] == ORDER_SEED and a["order"]["shuffled"]
    for split, n in (("train", 20), ("test", 4)):
        x, y = read(tmp_path / "a", split)
        key = [tuple(p) for p in x[:, 0, 0].tolist()]
        assert sorted(key) == [(k, i, 1 if split == "train" else 2) for k in range(5) for i in range(n)]
        assert y.tolist() == [k for k, _, _ in key]            # every image kept with its label
        assert y.tolist() != sorted(y.tolist())               # not class by class any more
        # the documented rule: source listing (class by class) permuted by stored_order
        assert [k * n + i for k, i, _ in key] == stored_order(5 * n, split).tolist()
    assert stored_order(100, "train").tolist() != stored_order(100, "train", seed=ORDER_SEED + 1).tolist()


def test_limit_keeps_every_class_in_proportion(grouped, tmp_path):
    m = convert(ConvertConfig("imagefolder", tmp_path / "o", grouped / "src", formats=("dali",),
                              limit=40, quiet=True))
    counts = m["splits"]["train"]["class_counts"]
    assert sum(counts) == 40 and all(4 <= c <= 12 for c in counts), counts    # ~8 each, not [20, 20, 0...]
    x, y = read(tmp_path / "o", "train")
    full = stored_order(100, "train")[:40]                 # the first 40 of the shuffled order
    assert [k * 20 + i for k, i, _ in x[:, 0, 0].tolist()] == full.tolist()
    assert set(read(tmp_path / "o", "test")[1].tolist()) == set(range(5))


@pytest.mark.parametrize("n,world_size", [(60, 2), (61, 3), (7, 7), (5, 8)])
def test_epoch_shares_cover_the_split_once(n, world_size):
    for shuffle in (False, True):
        for e in (0, 1):
            shares = [epoch_order(n, 3, e, shuffle, r, world_size) for r in range(world_size)]
            sizes = [len(s) for s in shares]
            assert max(sizes) - min(sizes) <= 1
            assert sizes == [b - a for a, b in (shard_bounds(n, r, world_size) for r in range(world_size))]
            assert sorted(np.concatenate(shares).tolist()) == list(range(n))    # no padding, no duplicate
            # a function of (seed, epoch, rank, world_size) only: resume-exact
            assert all(np.array_equal(s, epoch_order(n, 3, e, shuffle, r, world_size))
                       for r, s in enumerate(shares))


def test_every_rank_sees_every_class_each_epoch():
    """Labels grouped class by class in stored order (the old layout), 4 ranks: each rank's
    share of a shuffled epoch holds every class, and shares change from epoch to epoch."""
    labels = np.repeat(np.arange(10), 50)
    for rank in range(4):
        shares = [epoch_order(500, 223, e, True, rank, 4) for e in (0, 1)]
        for s in shares:
            assert set(labels[s].tolist()) == set(range(10))
        assert set(shares[0].tolist()) != set(shares[1].tolist())
