"""Shims for FFCV's side effects, shared by the FFCV backend and the converters' FFCV writer.

FFCV is imported lazily (its import takes seconds), and it changes global torch state:
importing it sets torch's thread count to 1, and every Loader() and iter() sets it to the
loader's worker count. `keep_torch_threads` undoes that around each FFCV call.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def keep_torch_threads():
    """Undo any torch.set_num_threads done inside: FFCV sets it on import (to 1) and on
    every Loader() and iter() (to its worker count), which would silently slow CPU training."""
    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
