"""manifest.json: what a converted dataset directory holds. Loaders trust it; verify checks it.

Stable keys other tools read: name, classes, image_shape, splits.<split>.count, stats.mean,
stats.std, encoding, files, version.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from normfast.errors import NormfastError

MANIFEST = "manifest.json"
FORMATS = ("ffcv", "dali")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(root: Path, path: Path) -> dict:
    return {"path": path.relative_to(root).as_posix(), "size": path.stat().st_size,
            "sha256": sha256_file(path)}


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def load_manifest(data_dir: str | Path) -> dict:
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
    for key in ("name", "classes", "image_shape", "splits", "stats", "encoding", "files", "formats"):
        if key not in m:
            raise NormfastError(f"{path}: missing key {key!r}")
    return m


def require_format(manifest: dict, data_dir: Path, fmt: str) -> dict:
    """The manifest's entry for one format, or an error saying which convert to run."""
    if fmt not in manifest["formats"]:
        raise NormfastError(
            f"{data_dir}: has no {fmt} files; run `normfast convert {manifest.get('source', 'SOURCE')} "
            f"--src PATH --out {data_dir} --format {fmt} --force`")
    return manifest["formats"][fmt]


def split_format(manifest: dict, data_dir: Path, split: str, fmt: str) -> dict:
    """A split's entry for one format (shards, or the .beton), with the errors a user can meet."""
    require_format(manifest, data_dir, fmt)
    if split not in manifest["splits"]:
        raise NormfastError(f"{data_dir}: no split {split!r}; valid: {', '.join(manifest['splits'])}")
    info = manifest["splits"][split].get("formats", {}).get(fmt)
    if info is None:
        raise NormfastError(f"{data_dir}: split {split!r} has no {fmt} files in manifest.json")
    return info
