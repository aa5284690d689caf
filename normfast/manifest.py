"""manifest.json: what a converted dataset directory holds. Loaders trust it; verify checks it.

Stable keys other tools read: name, classes, image_shape, splits.<split>.count, stats.mean,
stats.std, encoding, files, version, format_version (absent in datasets written before it: 1).

Every path a manifest names is relative and must resolve inside the dataset directory
(`inside`), and `load_manifest` checks cheaply that the files agree with the manifest
(normfast.datacheck) before any verb reads them: a copied or tampered dataset is refused in
one line instead of being read outside its directory, or trained on scrambled.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normfast.errors import NormfastError

MANIFEST = "manifest.json"
FORMATS = ("ffcv", "dali")
ENCODINGS = ("raw", "png", "jpg")   # the image encodings a conversion can store
# 1: shards with `.raw` images and binary int64 `.cls` labels (no format_version key);
# 2: webdataset's conventions, `.npy` images and ASCII `.cls` labels (README "Formats").
FORMAT_VERSION = 2
STD_FLOOR = 1e-4    # [0,1] units (0.03 gray levels): a smaller train std is no real dataset's


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(root: Path, path: Path) -> dict:
    return {"path": path.relative_to(root).as_posix(), "size": path.stat().st_size,
            "sha256": sha256_file(path)}


def val_split(manifest: Manifest, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(train indices, val indices) of the stored train split, both sorted: a seeded subset of
    round(fraction * n) samples (at least one) held out for validation; None when fraction is 0.
    A function of (n, fraction, seed) only, so every rank and a resumed run agree."""
    if not fraction:
        return None
    n = manifest.count("train")
    k = max(1, round(fraction * n))
    if k >= n:
        raise NormfastError(f"--val-fraction {fraction}: holds out {k} of the {n} train samples, "
                            "leaving none to train on")
    val = np.sort(np.random.default_rng([seed, 4243]).choice(n, k, replace=False))
    return np.setdiff1d(np.arange(n), val), val


def inside(root: Path, rel, what: str) -> Path:
    """root/rel, refused unless `rel` is a relative path that stays inside `root` with every
    symlink resolved: a dataset must not make normfast read a file outside its directory."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise NormfastError(f"{root / MANIFEST}: {what} is {str(rel)!r}, expected a path inside the "
                            "dataset directory")
    full = root / p
    try:
        real, top = full.resolve(), root.resolve()
    except (OSError, RuntimeError) as e:      # a symlink loop
        raise NormfastError(f"{full}: cannot be resolved ({e}); {what} must lie inside the dataset") from None
    if real != top and top not in real.parents:
        raise NormfastError(f"{full}: {what} leads outside the dataset directory (to {real}); "
                            "normfast reads only files inside it")
    return full


def load_manifest(data_dir: str | Path, splits: tuple[str, ...] = ("train",), check: bool = True) -> Manifest:
    """The manifest of a converted dataset, its types and shape checked (see `validate`).
    `splits`: those that must be present (verify and stats need train and test).
    `check`: also check cheaply that the files agree with it (normfast.datacheck: sizes,
    counts, the first sample of each shard, the .beton's header), so a mismatched dataset
    is one error line before any training; off only for `verify` (which checks it all in its
    own order) and for `convert --force` (which may replace a broken dataset)."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not data_dir.is_dir():
        raise NormfastError(f"{data_dir}: data directory not found (create it with `normfast convert`)")
    if not path.is_file():
        raise NormfastError(f"{path}: missing; {data_dir} is not a converted dataset "
                            "(run `normfast convert SOURCE --out DIR`)")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise NormfastError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise NormfastError(f"{path}: unreadable ({e})") from None
    validate(m, path, splits)
    manifest = Manifest(data_dir, m)
    if check:
        from normfast.datacheck import check_dataset
        check_dataset(manifest)
    return manifest


def _kind(v) -> str:
    return "null" if v is None else type(v).__name__


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(m, path: Path, splits: tuple[str, ...] = ("train",)) -> None:
    """Raise NormfastError naming the first key whose value has the wrong type or shape.

    Loaders and verify then index the manifest without further checks. Whether the values
    agree with the stored data (counts, labels, statistics) is for `normfast verify`.
    """
    def bad(key: str, value, expected: str):
        raise NormfastError(f"{path}: {key} is {json.dumps(value)[:60]} ({_kind(value)}), expected {expected}")

    def need(d: dict, key: str, where: str):
        if key not in d:
            raise NormfastError(f"{path}: missing key {where + key!r}")
        return d[key]

    if not isinstance(m, dict):
        bad("the manifest", m, "a JSON object")
    for key in ("name", "classes", "image_shape", "splits", "stats", "encoding", "files", "formats"):
        need(m, key, "")
    version = m.get("format_version", 1)
    if not _is_int(version) or version < 1:
        bad("format_version", version, "a whole number from 1")
    if version > FORMAT_VERSION:
        raise NormfastError(f"{path}: format_version {version} is newer than this normfast reads "
                            f"({FORMAT_VERSION}); upgrade normfast, or re-convert the dataset with this one")
    name = m["name"]
    if not (isinstance(name, str) and safe_name(name)):
        bad("name", name, "a dataset name usable as one folder name (no '/', not '.' or '..')")
    classes = m["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        bad("classes", classes, "a non-empty list of class names")
    if len(set(classes)) != len(classes):
        dup = next(c for c in classes if classes.count(c) > 1)
        raise NormfastError(f"{path}: classes lists {dup!r} twice")
    if "num_classes" in m and m["num_classes"] != len(classes):
        bad("num_classes", m["num_classes"], f"{len(classes)}, the length of classes")
    shape = m["image_shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(v) and v > 0 for v in shape)
            and shape[2] == 3):
        bad("image_shape", shape, "[height, width, 3]")
    if m["encoding"] not in ENCODINGS:
        bad("encoding", m["encoding"], f"one of {', '.join(ENCODINGS)}")
    formats = m["formats"]
    if not isinstance(formats, dict) or not formats or not all(f in FORMATS for f in formats):
        bad("formats", formats, f"an object keyed by {' and/or '.join(FORMATS)}")
    for fmt, info in formats.items():
        if not isinstance(info, dict) or info.get("image_encoding") not in ENCODINGS:
            bad(f"formats.{fmt}", info, f"an object with image_encoding one of {', '.join(ENCODINGS)}")
        d = info.get("dir", fmt)
        if not isinstance(d, str) or Path(d).is_absolute() or ".." in Path(d).parts or not Path(d).parts:
            bad(f"formats.{fmt}.dir", d, "a path inside the dataset directory")
        stored = "raw" if fmt == "ffcv" and m["encoding"] == "png" else m["encoding"]  # FFCV has no png
        if info["image_encoding"] != stored:
            raise NormfastError(f"{path}: formats.{fmt}.image_encoding is {info['image_encoding']!r} but "
                                f"encoding is {m['encoding']!r}; run `normfast verify {path.parent}`")
    stats = m["stats"]
    if not isinstance(stats, dict):
        bad("stats", stats, "an object")
    for key in ("mean", "std"):
        v = need(stats, key, "stats.")
        if not (isinstance(v, list) and len(v) == 3 and all(_is_num(x) and x >= (0 if key == "std" else -1e9)
                                                             for x in v)):
            bad(f"stats.{key}", v, "3 finite numbers" + (", none negative" if key == "std" else ""))
    if min(stats["std"]) < STD_FLOOR:
        raise NormfastError(f"{path}: stats.std is {stats['std']}: a channel below {STD_FLOOR} cannot "
                            "normalize (it would divide by almost zero); re-convert the dataset")
    if "pixels" in stats and not (_is_int(stats["pixels"]) and stats["pixels"] >= 0):
        bad("stats.pixels", stats["pixels"], "a count")
    files = m["files"]
    if not isinstance(files, list):
        bad("files", files, "a list")
    for i, f in enumerate(files):
        ok = isinstance(f, dict) and isinstance(f.get("path"), str) and _is_int(f.get("size")) \
            and f["size"] >= 0 and isinstance(f.get("sha256"), str) and len(f["sha256"]) == 64
        if not ok:
            bad(f"files[{i}]", f, "{path, size, sha256}")
        p = Path(f["path"])
        if p.is_absolute() or ".." in p.parts or not p.parts:
            bad(f"files[{i}].path", f["path"], "a path inside the dataset directory")
    all_splits = m["splits"]
    if not isinstance(all_splits, dict):
        bad("splits", all_splits, "an object keyed by split name")
    for split in splits:
        if split not in all_splits:
            raise NormfastError(f"{path}: missing key 'splits.{split}' (a converted dataset has "
                                f"{' and '.join(splits)} splits)")
    for split, info in all_splits.items():
        where = f"splits.{split}."
        if not isinstance(info, dict):
            bad(where[:-1], info, "an object")
        count = need(info, "count", where)
        if not (_is_int(count) and count >= 0):
            bad(where + "count", count, "a whole number")
        counts = need(info, "class_counts", where)
        if not (isinstance(counts, list) and all(_is_int(c) and c >= 0 for c in counts)):
            bad(where + "class_counts", counts, "a list of whole numbers")
        if len(counts) != len(classes):
            raise NormfastError(f"{path}: {where}class_counts has {len(counts)} entries (labels up to "
                                f"{len(counts) - 1}) but classes lists {len(classes)}")
        if sum(counts) != count:
            raise NormfastError(f"{path}: {where}count is {count} but its class_counts add up to "
                                f"{sum(counts)}; run `normfast verify {path.parent}`")
        fmts = info.get("formats", {})
        if not isinstance(fmts, dict):
            bad(where + "formats", fmts, "an object")
        for fmt, entry in fmts.items():
            if fmt not in formats:
                raise NormfastError(f"{path}: {where}formats has {fmt!r}, which formats does not list")
            lists = ("shards", "indexes") if fmt == "dali" else ()
            ok = isinstance(entry, dict) and all(
                isinstance(entry.get(k), list) and all(isinstance(x, str) for x in entry[k]) for k in lists) \
                and (fmt != "ffcv" or isinstance(entry.get("file"), str))
            if not ok:
                bad(where + f"formats.{fmt}", entry,
                    "{shards: [...], indexes: [...]}" if fmt == "dali" else "{file: NAME}")
            names = [("file", entry["file"])] if fmt == "ffcv" else \
                [(k, x) for k in ("shards", "indexes") for x in entry[k]]
            for k, rel in names:
                p = Path(rel)
                if p.is_absolute() or ".." in p.parts or not p.parts:
                    bad(where + f"formats.{fmt}.{k}", rel, "a path inside the dataset directory")
            if fmt == "dali" and len(entry["shards"]) != len(entry["indexes"]):
                raise NormfastError(f"{path}: {where}formats.dali lists {len(entry['shards'])} shards but "
                                    f"{len(entry['indexes'])} index files; run `normfast verify {path.parent}`")


def safe_name(name: str) -> bool:
    """Whether `name` can be one path component of a run directory: a dataset's name picks
    the folder under --runs, so "../../escape" would write outside it."""
    return bool(name) and name not in (".", "..") and len(name.encode()) <= 200 \
        and not any(c in name for c in "/\\\0") and name.isprintable()


def files_identity(files: list[dict]) -> str:
    """A hash of a dataset's files (path, size, sha256), independent of their listed order."""
    rows = sorted((str(f.get("path")), int(f.get("size", -1)), str(f.get("sha256"))) for f in files)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class Manifest:
    """A converted dataset's manifest.json, validated once by `load_manifest`; readers use
    these accessors instead of indexing the JSON. `raw` is the parsed JSON itself, for
    writers and `verify` that need every key: treat it as read-only."""
    root: Path
    raw: dict

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def source(self) -> str:
        return self.raw.get("source", "SOURCE")

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.raw["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.raw["classes"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.raw["image_shape"])

    @property
    def splits(self) -> tuple[str, ...]:
        """The split names, in manifest order."""
        return tuple(self.raw["splits"])

    def _split(self, split: str) -> dict:
        if split not in self.raw["splits"]:
            raise NormfastError(f"{self.root}: no split {split!r}; valid: {', '.join(self.raw['splits'])}")
        return self.raw["splits"][split]

    def count(self, split: str) -> int:
        return self._split(split)["count"]

    def class_counts(self, split: str) -> tuple[int, ...]:
        return tuple(self._split(split)["class_counts"])

    @property
    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per channel of the train split, in [0, 1] pixel units."""
        return tuple(self.raw["stats"]["mean"]), tuple(self.raw["stats"]["std"])

    @property
    def encoding(self) -> str:
        return self.raw["encoding"]

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(self.raw["formats"])

    @property
    def files(self) -> tuple[dict, ...]:
        """{path, size, sha256} of every data file, paths relative to `root`."""
        return tuple(self.raw["files"])

    @property
    def identity(self) -> str:
        """A hash of the converted dataset's files: two datasets with the same name but
        different contents get different identities."""
        return files_identity(self.raw["files"])

    def require_format(self, fmt: str) -> dict:
        """The manifest's entry for one format, or an error saying which convert to run."""
        if fmt not in self.raw["formats"]:
            raise NormfastError(
                f"{self.root}: has no {fmt} files; run `normfast convert {self.source} "
                f"--src PATH --out {self.root} --format {fmt} --force`")
        return self.raw["formats"][fmt]

    def split_format(self, split: str, fmt: str) -> dict:
        """A split's entry for one format (shards, or the .beton), with the errors a user can meet."""
        self.require_format(fmt)
        info = self._split(split).get("formats", {}).get(fmt)
        if info is None:
            raise NormfastError(f"{self.root}: split {split!r} has no {fmt} files in manifest.json")
        return info

    @property
    def format_version(self) -> int:
        return self.raw.get("format_version", 1)

    def format_dir(self, fmt: str) -> str:
        """The folder of a format's files, relative to `root` (checked by `inside` on use)."""
        return self.raw["formats"][fmt].get("dir", fmt)

    def path(self, rel: str, what: str) -> Path:
        """root/rel, refused unless it stays inside the dataset (see `inside`)."""
        return inside(self.root, rel, what)

    def beton(self, split: str) -> Path:
        """A split's FFCV .beton, checked to exist (readers need no FFCV import to find it)."""
        info = self.split_format(split, "ffcv")
        path = self.path(f"{self.format_dir('ffcv')}/{info['file']}", f"splits.{split}.formats.ffcv.file")
        if not path.is_file():
            raise NormfastError(f"{path}: missing (listed in manifest.json); re-run `normfast convert`")
        return path

    def shards(self, split: str) -> tuple[list[Path], list[Path], str]:
        """(tar paths, index paths, image encoding) of a split's webdataset shards, all present."""
        info = self.split_format(split, "dali")
        encoding = self.raw["formats"]["dali"]["image_encoding"]
        d = self.format_dir("dali")
        paths = [self.path(f"{d}/{s}", f"splits.{split}.formats.dali.shards") for s in info["shards"]]
        indexes = [self.path(f"{d}/{s}", f"splits.{split}.formats.dali.indexes") for s in info["indexes"]]
        for p in paths + indexes:
            if not p.is_file():
                raise NormfastError(f"{p}: missing (listed in manifest.json); re-run `normfast convert`")
        return paths, indexes, encoding
