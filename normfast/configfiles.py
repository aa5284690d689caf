"""The YAML files under configs/ and how they are read: load_yaml, the dataset registry
(configs/datasets.yaml) and its reference statistics. (config.py is the train configuration.)"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from normfast.errors import NormfastError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def load_yaml(path: str | Path, missing: str = "config file not found") -> dict:
    """A YAML mapping from `path` (empty file: {}); one NormfastError naming the file when it is
    missing (`missing` says how), not YAML, unreadable, or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise NormfastError(f"{path}: {missing}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise NormfastError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise NormfastError(f"{path}: cannot read it as text ({e})") from None
    if not isinstance(data, dict):
        raise NormfastError(f"{path}: expected a mapping of keys to values")
    return data


@lru_cache(maxsize=None)
def dataset_registry() -> dict:
    """configs/datasets.yaml: classes, image size and the seed's reference statistics."""
    return load_yaml(CONFIG_DIR / "datasets.yaml")


def reference_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    entry = dataset_registry().get(name.replace("_", "-"), {})
    if "mean" in entry and "std" in entry:
        return tuple(entry["mean"]), tuple(entry["std"])
    return None


IMAGENET_MEAN, IMAGENET_STD = reference_stats("imagenet")
