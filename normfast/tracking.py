"""Experiment tracking for `normfast train --log none|tensorboard|wandb`.

A tracker receives what the trainer already has on the host, never a tensor: the loss and
learning rate every `log_interval` steps (where the trainer synchronizes anyway for its
NaN check) and each epoch's metrics.jsonl row (accuracy beside throughput and data wait).
Both packages are optional extras and are imported only when asked for. Everything works
offline and stays inside the run directory: tensorboard writes RUN/tb, wandb runs in
offline mode in RUN/wandb (`wandb sync RUN/wandb/offline-run-*` uploads it later; set
WANDB_MODE=online to log live). Under DDP only rank 0 makes a tracker (the trainer's job).
"""
from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

from normfast.errors import NormfastError
from normfast.registry import Registry

trackers: Registry = Registry("experiment logger (--log)")


class Tracker:
    """The interface, and `--log none`: every call does nothing."""
    enabled = False       # the trainer reads per-step values (a host sync) only for a real tracker

    def __init__(self, run_dir: Path | None = None, config: dict | None = None):
        pass

    def log_step(self, step: int, values: dict[str, float]) -> None:
        """Per-step values (loss, lr) at the global optimizer step `step`."""

    def log_epoch(self, epoch: int, step: int, values: dict[str, float]) -> None:
        """One epoch's metrics (0-based `epoch`), ending at global step `step`."""

    def close(self) -> None:
        pass


trackers.register("none")(Tracker)

INSTALL = {"tensorboard": "pip install 'normfast[tensorboard]' (or: pip install tensorboard)",
           "wandb": "pip install 'normfast[wandb]' (or: pip install wandb)"}


def _import(name: str, module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise NormfastError(f"--log {name} needs the {name} package; install it with: {INSTALL[name]}") from None


def check_logger(name: str) -> None:
    """An unknown name or a missing package: one error line, before anything is written."""
    trackers.get(name)
    if name == "tensorboard":
        _import(name, "torch.utils.tensorboard")
    elif name == "wandb":
        _import(name, "wandb")


def _scalars(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}


@trackers.register("tensorboard")
class TensorBoardTracker(Tracker):
    """Scalars in RUN/tb: train/loss and train/lr over global steps, epoch/* over epochs (1-based)."""
    enabled = True

    def __init__(self, run_dir: Path, config: dict | None = None):
        writer_cls = _import("tensorboard", "torch.utils.tensorboard").SummaryWriter
        self.writer = writer_cls(log_dir=str(Path(run_dir) / "tb"))
        if config:
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()))

    def log_step(self, step, values):
        for k, v in _scalars(values).items():
            self.writer.add_scalar(f"train/{k}", v, step)

    def log_epoch(self, epoch, step, values):
        for k, v in _scalars(values).items():
            self.writer.add_scalar(f"epoch/{k}", v, epoch + 1)

    def close(self):
        self.writer.close()


@trackers.register("wandb")
class WandbTracker(Tracker):
    """One wandb run per run directory (a --resume continues it), offline unless WANDB_MODE says
    otherwise. Its step is the global optimizer step; epoch rows carry `epoch` (1-based)."""
    enabled = True

    def __init__(self, run_dir: Path, config: dict | None = None):
        wandb = _import("wandb", "wandb")
        run_dir = Path(run_dir)
        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "normfast"),
                                  name=f"{run_dir.parent.name}/{run_dir.name}", id=run_id, resume="allow",
                                  dir=str(run_dir), mode=os.environ.get("WANDB_MODE", "offline"),
                                  config=config or {})
        except Exception as e:  # noqa: BLE001 - wandb raises its own error types
            raise NormfastError(f"--log wandb: could not start a wandb run in {run_dir} "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None

    def log_step(self, step, values):
        self.run.log({f"train/{k}": v for k, v in _scalars(values).items()}, step=step)

    def log_epoch(self, epoch, step, values):
        self.run.log({f"epoch/{k}": v for k, v in _scalars(values).items()} | {"epoch": epoch + 1}, step=step)

    def close(self):
        self.run.finish()


def make_tracker(name: str, run_dir: Path, config: dict | None = None) -> Tracker:
    return trackers.get(name)(run_dir, config)
