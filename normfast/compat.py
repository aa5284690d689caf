"""Shims for FFCV's side effects, shared by the FFCV backend and the converters' FFCV writer.

FFCV is imported lazily (its import takes seconds), and it changes global torch state:
importing it sets torch's thread count to 1, and every Loader() and iter() sets it to the
loader's worker count. `keep_torch_threads` undoes that around each FFCV call.

FFCV 1.0.2 also imports `distutils` (ffcv/pipeline/graph.py), which Python 3.12 no longer
has; setuptools provides it, but only through a .pth hook that a package carried in on
PYTHONPATH never runs. `keep_torch_threads` (entered around every FFCV import) therefore
first makes `distutils` importable from setuptools when it is missing.
"""
from __future__ import annotations

import contextlib
import importlib

import torch

_distutils_checked = False


def ensure_distutils() -> None:
    """Make `import distutils` work on Python >= 3.12 by importing setuptools (which installs
    its own copy as `distutils`); a no-op where distutils exists or setuptools is missing
    (FFCV's import then fails and its error names distutils)."""
    global _distutils_checked
    if _distutils_checked:
        return
    _distutils_checked = True
    try:
        importlib.import_module("distutils")
    except ImportError:
        try:
            importlib.import_module("setuptools")      # its _distutils_hack provides distutils
        except ImportError:
            pass


@contextlib.contextmanager
def keep_torch_threads():
    """Undo any torch.set_num_threads done inside: FFCV sets it on import (to 1) and on
    every Loader() and iter() (to its worker count), which would silently slow CPU training."""
    ensure_distutils()
    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
