"""The cheap check, on load, that a converted dataset's files agree with its manifest.

`load_manifest` runs `check_dataset` for every verb (train, bench, stats, verify, sweep),
before any sample is read for training. It costs a stat per file, the index files, one
image header per shard, the labels, and the .beton's header, metadata and allocation table
(about 50 bytes a sample): no pixel is read and nothing is hashed. Full checksums and the
statistics recomputed from the pixels stay `normfast verify`'s job.

What it refuses, each in one line naming the file and the field: a listed path outside the
dataset (absolute, `..`, or a symlink out); a file missing or of another size than listed;
a split whose count disagrees with its shards' index entries or its .beton's header; shard
lists of unequal length; an image member whose shape or encoding is not the manifest's; a
shard shorter than its index says; a label outside 0..classes-1; a .beton cut short.
"""
from __future__ import annotations


import numpy as np

from normfast.errors import NormfastError
from normfast.manifest import MANIFEST, Manifest
from normfast.shards import hint, split_shards

# FFCV's .beton layout (ffcv/types.py, format version 2), parsed without importing FFCV:
# a header, one descriptor per field, one metadata record per sample, the sample data, and
# at the end the allocation table (one entry per allocated region).
BETON_VERSION = 2
HEADER = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"),
                   ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")], align=True)
FIELD_DESC_BYTES = 1041                 # type_id u1, name 16 u1, arguments 1024 u1
FIELD_TYPES = (2, 1)                    # normfast's fields: RGBImageField `image`, IntField `label`
METADATA = np.dtype({"names": ["image", "label"], "offsets": [0, 16], "itemsize": 24,
                     "formats": [np.dtype([("mode", "u1"), ("width", "<u2"), ("height", "<u2"),
                                           ("data_ptr", "<u8")]), "<i8"]})
ALLOC = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
FFCV_MODES = {"jpg": 0, "raw": 1}


def check_dataset(m: Manifest) -> None:
    """Raise NormfastError on the first disagreement between the manifest and its files."""
    fix = hint(m.root)
    listed = {}
    for i, f in enumerate(m.files):
        p = m.path(f["path"], f"files[{i}].path")
        listed[p] = f["size"]
        try:
            size = p.stat().st_size
        except OSError as e:
            raise NormfastError(f"{p}: listed in manifest.json but {e.strerror.lower()}; {fix}") from None
        if not p.is_file():
            raise NormfastError(f"{p}: listed in manifest.json but not a regular file; {fix}")
        if size != f["size"]:
            raise NormfastError(f"{p}: {size} bytes, manifest.json files[{i}].size says {f['size']}; {fix}")
    for fmt in m.formats:
        m.path(m.format_dir(fmt), f"formats.{fmt}.dir")
    for split in m.splits:
        fmts = m.raw["splits"][split].get("formats", {})
        if "dali" in fmts and "dali" in m.formats:
            n = len(split_shards(m, split).labels)
            if n != m.count(split):
                raise NormfastError(f"{m.root / MANIFEST}: splits.{split}.count is {m.count(split)}, but the "
                                    f"{split} shards' index files list {n} samples; {fix}")
        if "ffcv" in fmts and "ffcv" in m.formats:
            check_beton(m, split, listed)


def check_beton(m: Manifest, split: str, listed: dict | None = None) -> np.ndarray:
    """A split's .beton against the manifest and its own header, before FFCV reads it: FFCV
    trusts the file, so a cut one made it crash (SIGSEGV) or read garbage. Returns the labels."""
    path, fix = m.beton(split), hint(m.root)
    size, count = path.stat().st_size, m.count(split)
    if listed is None:
        listed = {m.root / f["path"]: f["size"] for f in m.files}
    if path in listed and listed[path] != size:
        raise NormfastError(f"{path}: {size} bytes, manifest.json says {listed[path]}; {fix}")
    meta_at = HEADER.itemsize + len(FIELD_TYPES) * FIELD_DESC_BYTES
    if size < meta_at:
        raise NormfastError(f"{path}: {size} bytes, too short for an FFCV header; {fix}")
    with open(path, "rb") as f:
        head = np.frombuffer(f.read(meta_at), np.uint8)
        h = head[:HEADER.itemsize].view(HEADER)[0]
        types = [int(head[HEADER.itemsize + k * FIELD_DESC_BYTES]) for k in range(len(FIELD_TYPES))]
        if int(h["version"]) != BETON_VERSION or int(h["num_fields"]) != len(FIELD_TYPES) \
                or tuple(types) != FIELD_TYPES:
            raise NormfastError(f"{path}: not a normfast .beton (FFCV version {int(h['version'])}, "
                                f"{int(h['num_fields'])} fields of types {types}); {fix}")
        n, table_at = int(h["num_samples"]), int(h["alloc_table_ptr"])
        if n != count:
            raise NormfastError(f"{path}: holds {n} samples (its header), manifest.json says {count} "
                                f"(splits.{split}.count); {fix}")
        data_at = meta_at + n * METADATA.itemsize
        if not data_at <= table_at <= size or (size - table_at) % ALLOC.itemsize:
            raise NormfastError(f"{path}: {size} bytes, but its header puts the allocation table at byte "
                                f"{table_at} (a truncated or damaged .beton); {fix}")
        meta = np.frombuffer(f.read(n * METADATA.itemsize), METADATA)
        f.seek(table_at)
        table = np.frombuffer(f.read(size - table_at), ALLOC)
    if (table["ptr"] + table["size"] > table_at).any() or len(table) < (n > 0):
        raise NormfastError(f"{path}: its allocation table points past the data (a damaged .beton); {fix}")
    img, labels = meta["image"], meta["label"].astype(np.int64)
    hgt, wid = m.image_shape[:2]
    encoding = m.raw["formats"]["ffcv"]["image_encoding"]
    mode = FFCV_MODES.get(encoding, FFCV_MODES["raw"])      # png is stored raw in FFCV
    wrong = (img["height"] != hgt) | (img["width"] != wid) | (img["mode"] != mode)
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise NormfastError(f"{path}: sample {i} is a {img['width'][i]}x{img['height'][i]} "
                            f"{'jpg' if img['mode'][i] == 0 else 'raw'} image, manifest.json says image_shape "
                            f"{list(m.image_shape)}, formats.ffcv.image_encoding {encoding}; {fix}")
    if n and not np.isin(img["data_ptr"], table["ptr"]).all():
        raise NormfastError(f"{path}: a sample's data lies outside its allocation table (a damaged .beton); {fix}")
    bad = (labels < 0) | (labels >= m.num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise NormfastError(f"{path}: sample {i} has label {int(labels[i])}, but manifest.json lists "
                            f"{m.num_classes} classes (labels 0..{m.num_classes - 1}); {fix}")
    return labels

