"""Typed configuration for `normfast train`: defaults <- configs/defaults.yaml <- --config FILE
<- command-line flags. Unknown keys are rejected; the resolved config is saved with the run."""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from normfast.configfiles import CONFIG_DIR, load_yaml
from normfast.errors import NormfastError
from normfast.precision import AMP_NAMES, amp_name


@dataclass
class TrainConfig:
    data: str = ""
    model: str = "resnet18"
    norm: str = "finetune"
    backend: str = "resident"
    stats: str = "manifest"          # finetune statistics: manifest | reference
    pretrained: str = "imagenet"     # imagenet (torchvision) | timm | none | PATH
    epochs: int = 100
    batch_size: int = 256            # GLOBAL: under DDP each of W ranks trains batch_size / W per step
    test_batch_size: int = 256       # global too, split over ranks (rounded up: it changes no result)
    val_fraction: float = 0.0        # held out of train at load time (seeded), evaluated each epoch
    lr: float = 0.001
    optimizer: str = "adam"
    scheduler: str = "cosine"
    seed: int = 223
    amp: str = "auto"                # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    compile: str = "none"            # none | default | cudagraphs
    device: str = "auto"
    num_workers: int = 2
    chunk_batches: int = 0           # training batches a loader prepares at once; 0 = auto (the backend's default)
    runs: str = "runs"
    run_name: str = ""               # default: <model>-<norm>-<backend>
    log_interval: int = 10
    log: str = "none"                # experiment tracking: none | tensorboard | wandb
    resume: bool = False
    quiet: bool = False

    def run_dir(self, dataset: str) -> Path:
        name = self.run_name or f"{self.model}-{self.norm}-{self.backend}"
        return Path(self.runs) / dataset / name


FIELDS = {f.name: f for f in fields(TrainConfig)}


def _coerce(key: str, value, where: str):
    typ = FIELDS[key].type
    if key == "chunk_batches" and str(value).strip() == "auto":     # as `bench --chunk-batches auto`
        return 0
    if typ == "str" and isinstance(value, bool):   # YAML reads a bare off/on/no as a boolean
        value = {"amp": "off" if not value else value, "compile": "none" if not value else value}.get(key, value)
    try:
        if typ == "bool":
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        return {"int": int, "float": float, "str": str}[typ](value)
    except (TypeError, ValueError):
        raise NormfastError(f"{where}: {key}={value!r} is not a valid {typ}") from None


def merge(base: dict, new: dict, where: str) -> dict:
    if not isinstance(new, dict):
        raise NormfastError(f"{where}: expected a mapping of train options, got {type(new).__name__}")
    out = dict(base)
    for key, value in new.items():
        key = str(key).replace("-", "_")
        if key not in FIELDS:
            raise NormfastError(f"{where}: unknown key {key!r}; valid: {', '.join(FIELDS)}")
        out[key] = _coerce(key, value, where)
    return out


def resolve_train_config(config_file: str | Path | None = None,
                         layers: list[tuple[str, dict]] | tuple = (), **overrides) -> TrainConfig:
    """`layers`: (where, options) pairs applied after the config file and before the flags, each
    named by `where` in its errors (e.g. a sweep grid's `train:` section)."""
    values = asdict(TrainConfig())
    defaults = load_yaml(CONFIG_DIR / "defaults.yaml")
    defaults = {k: v for k, v in defaults.items() if k in FIELDS}   # log_interval etc. shared with the seed
    values = merge(values, defaults, str(CONFIG_DIR / "defaults.yaml"))
    if config_file:
        values = merge(values, load_yaml(config_file), str(config_file))
    for where, options in layers:
        values = merge(values, options, where)
    values = merge(values, {k: v for k, v in overrides.items() if v is not None}, "command line")
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    from normfast.loaders import backends
    from normfast.models import check_pretrained, models
    from normfast.normalization import settings, stats_sources
    from normfast.recipe import compile_modes, optimizers, schedulers
    from normfast.tracking import check_logger
    models.get(cfg.model)
    settings.get(cfg.norm)
    backends.get(cfg.backend)
    if not cfg.data:
        raise NormfastError("--data DIR is required (a directory written by `normfast convert`)")
    if cfg.epochs < 1:
        raise NormfastError(f"--epochs {cfg.epochs}: must be at least 1")
    for k in ("batch_size", "test_batch_size"):
        if getattr(cfg, k) < 1:
            raise NormfastError(f"--{k.replace('_', '-')} {getattr(cfg, k)}: must be at least 1")
    if not (math.isfinite(cfg.val_fraction) and 0 <= cfg.val_fraction < 1):
        raise NormfastError(f"--val-fraction {cfg.val_fraction}: must be in [0, 1) (0 = no validation split)")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise NormfastError(f"--lr {cfg.lr}: must be a positive finite number")
    for k, low in (("log_interval", 1), ("seed", 0), ("num_workers", 0), ("chunk_batches", 0)):
        if getattr(cfg, k) < low:
            raise NormfastError(f"--{k.replace('_', '-')} {getattr(cfg, k)}: must be at least {low}")
    cfg.amp = amp_name(cfg.amp)             # one precision vocabulary: bfloat16 / float32 accepted too
    choices = {"amp": AMP_NAMES, "compile": compile_modes.names(), "optimizer": optimizers.names(),
               "scheduler": schedulers.names(), "stats": stats_sources.names(), "device": ("auto", "cpu", "cuda")}
    for key, valid in choices.items():
        value = getattr(cfg, key)
        if value not in valid and not (key == "device" and re.fullmatch(r"cuda:\d+", str(value))):
            raise NormfastError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")
    check_pretrained(cfg.pretrained)      # before a run directory exists: a missing timm or file
    check_logger(cfg.log)
