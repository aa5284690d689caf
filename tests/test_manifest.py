"""The typed Manifest: what load_manifest returns and every reader takes."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import normfast.manifest as manifest_mod
from fixtures import cfg_for
from normfast.errors import NormfastError
from normfast.manifest import Manifest, load_manifest


def test_accessors_read_the_json(synthetic_dir):
    raw = json.loads((synthetic_dir / "manifest.json").read_text())
    m = load_manifest(synthetic_dir, splits=("train", "test"))
    assert m.root == synthetic_dir and m.raw == raw
    assert m.name == raw["name"] == "synthetic"
    assert m.classes == tuple(raw["classes"]) and m.num_classes == len(raw["classes"])
    assert m.image_shape == tuple(raw["image_shape"]) and m.splits == ("train", "test")
    for split in m.splits:
        assert m.count(split) == raw["splits"][split]["count"] == sum(m.class_counts(split))
        assert m.class_counts(split) == tuple(raw["splits"][split]["class_counts"])
    assert m.stats == (tuple(raw["stats"]["mean"]), tuple(raw["stats"]["std"]))
    assert m.encoding == raw["encoding"] and m.formats == tuple(raw["formats"])
    assert m.files == tuple(raw["files"])
    if "dali" in m.formats:
        tars, indexes, encoding = m.shards("train")
        assert encoding == raw["formats"]["dali"]["image_encoding"]
        assert [p.name for p in tars] == raw["splits"]["train"]["formats"]["dali"]["shards"]
        assert all(p.is_file() for p in tars + indexes) and len(tars) == len(indexes)
    if "ffcv" in m.formats:
        assert m.beton("test") == synthetic_dir / "ffcv" / "test.beton"
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.root = Path("elsewhere")


def test_unknown_split_lists_the_valid_ones(synthetic_dir):
    m = load_manifest(synthetic_dir)
    for call in (m.count, m.class_counts, m.beton, m.shards):
        with pytest.raises(NormfastError, match=r"no split 'val'; valid: train, test"):
            call("val")


def test_a_manifest_without_the_optional_keys_loads(synthetic_dir, tmp_path):
    """Datasets converted before num_classes, stats.pixels and source were written still load."""
    import shutil
    raw = json.loads((synthetic_dir / "manifest.json").read_text())
    for key in ("num_classes", "source", "seconds", "version"):
        raw.pop(key, None)
    raw["stats"].pop("pixels", None)
    shutil.copytree(synthetic_dir, tmp_path / "d")
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(raw))
    m = load_manifest(tmp_path / "d")
    assert m.count("train") == raw["splits"]["train"]["count"] and m.num_classes == len(raw["classes"])
    fmt = next(f for f in ("ffcv", "dali") if f not in m.formats) if len(m.formats) < 2 else None
    if fmt:
        with pytest.raises(NormfastError, match=f"has no {fmt} files; run `normfast convert SOURCE"):
            m.require_format(fmt)


def test_identity_follows_the_files():
    a = {"files": [{"path": "ffcv/train.beton", "size": 10, "sha256": "aa"},
                   {"path": "dali/train-00000.tar", "size": 5, "sha256": "bb"}]}
    b = {"files": list(reversed(a["files"]))}
    c = {"files": [a["files"][0], {"path": "dali/train-00000.tar", "size": 5, "sha256": "cc"}]}
    a, b, c = (Manifest(Path("d"), m).identity for m in (a, b, c))
    assert a == b != c


def test_train_reads_the_manifest_once(tiny, tmp_path, monkeypatch):
    """Its loaders (train, val and test) share the trainer's Manifest instead of re-reading it."""
    from normfast import train as train_mod
    calls = []
    validate = manifest_mod.validate
    monkeypatch.setattr(manifest_mod, "validate", lambda *a, **k: calls.append(a[1]) or validate(*a, **k))
    train_mod.train(cfg_for(tiny, tmp_path, backend="resident", val_fraction=0.25))
    assert calls == [tiny / "manifest.json"]
