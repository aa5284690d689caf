"""Where a number came from: one record for every run's config.yaml and every benchmark JSON.

normfast's version and git commit (when run from a checkout), a digest of the code that
ran (`source`: the git commit can be stale where a working tree is copied without its
history, as on a lent GPU machine), the library versions (torch, torchvision, numpy, DALI,
FFCV), the GPU, the CPU and the command line.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

# (key, module, distribution names to ask for metadata, in order)
OPTIONAL = (("dali", "nvidia.dali", ("nvidia-dali-cuda120", "nvidia-dali-cuda130", "nvidia-dali")),
            ("ffcv", "ffcv", ("ffcv",)))


def _dist_version(names) -> str | None:
    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def _module_version(module: str, dists) -> str | None:
    """The installed version, or the module's own __version__ when it was carried onto
    PYTHONPATH without package metadata; None when absent."""
    found = _dist_version(dists)
    if found:
        return found
    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        return None
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken optional package is recorded, not fatal
        return "present (does not import)"
    return str(getattr(mod, "__version__", "present (no version)"))


def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


SOURCE_PACKAGES = ("normfast", "converters")


def source_digest(root: Path | None = None) -> str | None:
    """12 hex digits of SHA-256 over the .py files of normfast and the converters (relative
    path and content, sorted): the same code gives the same digest on every machine."""
    root = Path(__file__).resolve().parent.parent if root is None else Path(root)
    files = sorted(f for pkg in SOURCE_PACKAGES for f in (root / pkg).rglob("*.py") if "__pycache__" not in f.parts)
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def provenance() -> dict:
    import numpy
    import torchvision
    info = {"normfast": _dist_version(("normfast",)), "commit": git_commit(), "source": source_digest(),
            "python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "numpy": numpy.__version__}
    for key, module, dists in OPTIONAL:
        info[key] = _module_version(module, dists)
    info |= {"cuda": torch.version.cuda,
             "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
             "cpu": cpu_name(), "cpus": os.cpu_count(), "machine": platform.machine(),
             "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    return info
