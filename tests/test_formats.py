"""The shards follow webdataset's conventions and read with its defaults; datasets of format
version 1 still load; a fresh conversion passes verify for every encoding, its statistics
computed from what is stored; jpg stores the same JPEG bytes in both formats (issue 18)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import loader_checks
from converters.convert import ConvertConfig, convert
from converters.formats import ShardWriter
from normfast.manifest import file_entry, load_manifest
from normfast.shards import ShardReader, read_index
from normfast.stats import ChannelStats
from normfast.verify import verify


@pytest.fixture(scope="module", params=["raw", "png", "jpg"])
def converted(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"fmt-{request.param}") / "d"
    convert(ConvertConfig("synthetic", out, limit=300, encoding=request.param, quiet=True,
                          formats=loader_checks.convert_formats()))
    return out


def test_webdataset_reads_every_sample_with_its_defaults(converted):
    """`.decode()` and `.decode("rgb8")` failed on the first sample (an int64 .cls; a .raw
    without shape); now every sample equals normfast's own reading, key = stored index."""
    wds = pytest.importorskip("webdataset")
    m = load_manifest(converted, splits=("train", "test"))
    for split in m.splits:
        reader = ShardReader(m, split)
        tars = [str(p) for p in m.shards(split)[0]]
        for handler in ((), ("rgb8",)):
            n = 0
            for i, sample in enumerate(wds.WebDataset(tars, shardshuffle=False, empty_check=False).decode(*handler)):
                image = next(v for k, v in sample.items() if k in ("npy", "png", "jpg"))
                x, y = reader[i]
                assert sample["__key__"] == f"{i:09d}" and sample["cls"] == y
                if isinstance(image, bytes):       # png/jpg without an image handler: the bytes
                    assert image == reader.raw(i)[0]
                else:
                    assert image.dtype == np.uint8 and np.array_equal(image, x), (split, i)
                n += 1
            assert n == m.count(split)


def test_the_members_are_self_describing(converted):
    m = load_manifest(converted)
    tar = m.shards("train")[0][0]
    index = read_index(tar.with_suffix(".idx"))
    data = tar.read_bytes()
    off, size = index["cls"][0]
    assert data[off:off + size].decode().isdigit()                 # b"7", not 8 bytes of int64
    member = {"raw": "npy", "png": "png", "jpg": "jpg"}[m.encoding]
    assert set(index) == {member, "cls"} and m.format_version == 2


def test_a_fresh_conversion_passes_verify(converted):
    """jpg failed its own verify: the manifest's std (0.300) was of the pixels before JPEG."""
    lines = list(verify(converted, 64))      # raises on the first failure
    assert lines[1].startswith("manifest: counts") and lines[-1].startswith("test: 60 samples")


def test_the_statistics_are_those_of_the_stored_pixels(converted):
    m = load_manifest(converted)
    stats = ChannelStats()
    for x, _ in ShardReader(m, "train").batches(128):
        stats.add(x)
    mean, std = stats.mean_std()
    assert np.allclose(mean, m.stats[0], rtol=0, atol=1e-12) and np.allclose(std, m.stats[1], rtol=0, atol=1e-12)


@loader_checks.needs("ffcv")
def test_jpg_stores_the_same_bytes_in_both_formats(converted):
    """FFCV re-encoded with OpenCV: its pixels were 44.9 dB from the shards' (max 9 apart)."""
    if load_manifest(converted).encoding != "jpg":
        pytest.skip("jpg only")
    from ffcv.reader import Reader
    m = load_manifest(converted)
    r = Reader(str(m.beton("train")))
    beton = m.beton("train").read_bytes()
    shards = ShardReader(m, "train")
    for i in range(m.count("train")):
        ptr = r.metadata["f0"]["data_ptr"][i]
        size = int(r.alloc_table["size"][r.alloc_table["ptr"] == ptr][0])
        assert beton[ptr:ptr + size] == shards.raw(i)[0], i
    line = [x for x in verify(converted, 64) if x.startswith("train:")][0]
    assert "the shards and the .beton hold the same JPEG bytes; FFCV's JPEG decoder gives other pixels" in line


# ---------------------------------------------------------------- format version 1 still loads

class LegacyWriter(ShardWriter):
    """What normfast wrote before format_version 2: `<key>.raw` pixels, int64 `.cls`."""

    def write(self, img, label):
        if self.tar is None or len(self.entries) == self.shard_samples:
            self._close()
            self._open()
        key = f"{self.count:09d}"
        a = self._add(f"{key}.raw", np.ascontiguousarray(img).tobytes())
        c = self._add(f"{key}.cls", np.int64(label).tobytes())
        self.entries.append((key, ("raw", *a), ("cls", *c)))
        self.count += 1


def make_legacy(new, out):
    """`new` (a dali-only raw dataset) rewritten as format 1, with its manifest to match."""
    shutil.copytree(new, out)
    m = load_manifest(new, splits=("train", "test"))
    shutil.rmtree(out / "dali")
    raw = dict(m.raw)
    raw.pop("format_version")
    for split in m.splits:
        w = LegacyWriter(out / "dali", split, "raw", 90, shard_samples=128)
        for x, y in ShardReader(m, split).batches(64):
            for img, label in zip(x, y):
                w.write(img, int(label))
        names = w.close()
        raw["splits"][split]["formats"]["dali"] = {"shards": [f"{s}.tar" for s in names],
                                                   "indexes": [f"{s}.idx" for s in names]}
    raw["files"] = [file_entry(out, p) for p in sorted((out / "dali").iterdir())]
    (out / "manifest.json").write_text(json.dumps(raw))


def test_a_format_1_dataset_loads_through_every_reader(tmp_path):
    new = tmp_path / "new"
    convert(ConvertConfig("synthetic", new, limit=300, quiet=True, formats=("dali",)))
    make_legacy(new, tmp_path / "old")
    a, b = (load_manifest(d, splits=("train", "test")) for d in (new, tmp_path / "old"))
    assert b.format_version == 1 and read_index(b.shards("train")[1][0]).keys() == {"raw", "cls"}
    for split in a.splits:
        ra, rb = ShardReader(a, split), ShardReader(b, split)
        assert rb.member == "raw" and rb.header == 0 and np.array_equal(ra.labels, rb.labels)
        assert all(np.array_equal(ra[i][0], rb[i][0]) for i in range(len(ra)))
        if loader_checks.HAVE["dali"]:
            from normfast.loaders.dali_backend import ShardSamples, dali_uint8_batches
            idx = np.arange(len(ra))[::-1].copy()
            assert np.array_equal(ShardSamples(ra).images(idx), ShardSamples(rb).images(idx))
            (x, y), = list(dali_uint8_batches(b, split, 1000))
            assert np.array_equal(y, ra.labels) and np.array_equal(x, ShardSamples(ra).images(np.arange(len(ra))))
    assert list(verify(tmp_path / "old", 64))[-1].startswith("test: 60 samples")
