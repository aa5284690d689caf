"""Strict checks of user-given values: the one place that decides what an integer, a
boolean, a run name or a seed may be, for config files, sweep grids and the command line.

A value is never coerced into something it does not say: `epochs: 1.9` is not 1, `resume:
maybe` is not false, `seeds: [1.7, 1.2]` is not [1, 1]. Each refusal is a NormfastError
naming the key, the value and what was expected.
"""
from __future__ import annotations

import math
import os
import re

import click

from normfast.errors import NormfastError

TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
# numpy's SeedSequence takes any size, but torch.manual_seed takes at most 64 bits and DALI's
# seed is a signed 64-bit integer; 2**32 - 1 fits everything that draws from --seed
MAX_SEED = 2 ** 32 - 1
# a run directory name: one path component, short enough for NAME_MAX (255 bytes) with
# room for the suffixes normfast adds beside it (`.lock`, `-s<seed>`, temporaries)
MAX_RUN_NAME = 100
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@,-]*")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def as_int(value, where: str) -> int:
    """An integer: an int (not a bool), a float with no fraction (2.0), or a string of one."""
    if isinstance(value, bool):
        raise NormfastError(f"{where}={_shown(value)}: expected an integer, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise NormfastError(f"{where}={_shown(value)}: expected an integer")


def as_float(value, where: str) -> float:
    """A number: an int or float (not a bool), or a string of one (nan and inf are left to
    the range checks, which name them)."""
    if isinstance(value, bool):
        raise NormfastError(f"{where}={_shown(value)}: expected a number, not a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise NormfastError(f"{where}={_shown(value)}: expected a number")


def as_bool(value, where: str) -> bool:
    """A boolean: true/false (YAML's yes/no/on/off too), or the integers and strings 1 and 0."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise NormfastError(f"{where}={_shown(value)}: expected true or false")


def as_str(value, where: str) -> str:
    """A scalar as text (a number such as `run_name: 2024` too); a list or mapping is refused."""
    if isinstance(value, (str, int, float)):
        return str(value)
    if value is None:
        raise NormfastError(f"{where}: no value given")
    raise NormfastError(f"{where}: expected a single value, got a {type(value).__name__}")


def check_run_name(name: str) -> None:
    """`--run-name`: one safe path component (it becomes RUNS/<dataset>/<name>)."""
    if not name:
        return                      # the default, <model>-<norm>-<backend>
    shown = _shown(name)
    if len(name) > MAX_RUN_NAME:
        raise NormfastError(f"--run-name {shown}: {len(name)} characters, at most {MAX_RUN_NAME}")
    if not RUN_NAME.fullmatch(name) or name in (os.curdir, os.pardir):
        raise NormfastError(f"--run-name {shown}: must be one folder name of letters, digits and . _ + = @ , - "
                            "(starting with a letter or digit; no / or spaces)")


def check_seed(seed: int, option: str = "--seed") -> None:
    if not 0 <= seed <= MAX_SEED:
        raise NormfastError(f"{option} {seed}: must be in 0..{MAX_SEED} (2**32 - 1)")


def usable_workers() -> int:
    """CPU cores this process may run on: the most loader worker processes that help."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:          # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def is_one_sample_batch(error: ValueError) -> bool:
    return "Expected more than 1 value per channel" in str(error)


def one_sample_batch(px: tuple[int, int], batch_size: int, world_size: int = 1) -> NormfastError:
    """BatchNorm's "Expected more than 1 value per channel" (a batch of one sample whose feature
    maps are 1x1) as one line that says what to change: a --batch-size (global, over
    `world_size` ranks) of under 2 per rank, or else a training split too small for any."""
    ranks = " per rank" if world_size > 1 else ""
    if batch_size // world_size < 2:
        advice = f"use a --batch-size of at least 2{ranks}"
    else:
        advice = (f"the training split has one sample{ranks}, so no --batch-size helps (it is {batch_size}); "
                  f"train on at least 2 samples{ranks} (with --val-fraction, hold out fewer)")
    return NormfastError(f"a training batch of 1 sample: BatchNorm cannot train on one sample of "
                         f"{px[0]}x{px[1]} px; {advice}")


def nonempty_list(ctx, param, value):
    """A click callback for bench's comma lists: `--backend ,` names nothing and measured nothing."""
    if not [v for v in str(value).split(",") if v.strip()]:
        raise click.BadParameter("names nothing; give at least one, comma-separated")
    return value


WORKERS = click.IntRange(min=0)        # --num-workers: torch's own refusal of -1 was a traceback
WORKERS_HELP = "threads or processes; torch and ffcv use at most one per usable CPU core"
