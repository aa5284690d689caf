"""The YAML files under configs/ and how they are read: load_yaml, the dataset registry
(configs/datasets.yaml) and its reference statistics. (config.py is the train configuration.)"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from normfast.errors import NormfastError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


# Bounds on what one YAML file may hold. normfast's own files are a few KB (a run's config.yaml
# about 3 KB, a grid under 1 KB), so these are far above any real use and far below trouble: an
# alias "bomb" (`a: &a [x, x]`, `b: &b [*a, *a]`, ...) is a few hundred bytes that expand to
# billions of values as soon as anything walks or prints them (str(), json.dumps).
MAX_YAML_BYTES = 1 << 20         # 1 MiB of text
MAX_YAML_VALUES = 100_000        # scalars, lists and mappings, counted with every alias expanded


def load_yaml(path: str | Path, missing: str = "config file not found") -> dict:
    """A YAML mapping from `path` (empty file: {}); one NormfastError naming the file when it is
    missing (`missing` says how), not YAML, unreadable, too large, or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise NormfastError(f"{path}: {missing}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:
            raise NormfastError(f"{path}: larger than {MAX_YAML_BYTES >> 20} MiB; not a normfast YAML file")
        data = yaml.safe_load(raw.decode()) or {}
    except yaml.YAMLError as e:
        raise NormfastError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise NormfastError(f"{path}: not valid YAML (nested too deeply)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise NormfastError(f"{path}: cannot read it as text ({e})") from None
    if not isinstance(data, dict):
        raise NormfastError(f"{path}: expected a mapping of keys to values")
    if _expanded_size(data, MAX_YAML_VALUES) > MAX_YAML_VALUES:
        raise NormfastError(f"{path}: expands to more than {MAX_YAML_VALUES:,} values "
                            "(YAML aliases repeating others?); not a normfast YAML file")
    return data


def _expanded_size(data, limit: int) -> int:
    """Values in `data` counted as if every alias were copied out; stops past `limit` (an
    alias cycle, `a: &a [*a]`, is infinite)."""
    n, stack = 1, [data]
    while stack and n <= limit:
        value = stack.pop()
        children = [*value.keys(), *value.values()] if isinstance(value, dict) else \
            value if isinstance(value, list) else ()
        n += len(children)
        stack.extend(children)
    return n


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
