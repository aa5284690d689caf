"""Progress bars for long work: tqdm on a terminal, silent otherwise (CI logs, pipes)."""
from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, quiet: bool = False, unit: str = "img") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False,
                disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True)
