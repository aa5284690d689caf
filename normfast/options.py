"""The click option types and the `train` options, shared by `normfast train` and read by
the CLI (cli.py parses and dispatches; this holds what its options accept)."""
from __future__ import annotations

import importlib

import click

from normfast.errors import NormfastError
from normfast.validate import WORKERS, WORKERS_HELP


class Names(click.Choice):
    """click.Choice over a registry's names ("module:attribute", or a tuple attribute such as
    precision's AMP_NAMES), read when first needed: the registries' modules import torch, which
    `normfast --version` and the other verbs should not pay for."""

    def __init__(self, where: str):
        self.where = where
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        module, attr = self.where.split(":")
        names = getattr(importlib.import_module(module), attr)
        return tuple(names.names() if hasattr(names, "names") else names)

    @choices.setter
    def choices(self, value) -> None:      # click.Choice.__init__ assigns it; the registry decides
        pass


class NormList(Names):
    """`train --norm`: one setting as before, or a comma list or `all` (a fused run)."""

    def convert(self, value, param, ctx):
        if "," not in str(value) and value != "all":
            return super().convert(value, param, ctx)
        from normfast.fused_train import parse_norms
        try:
            return ",".join(parse_norms(str(value), prefix=""))
        except NormfastError as e:
            self.fail(str(e), param, ctx)


def _all(where: str):
    """A comma list of all the registry's names, as a lazy default."""
    return lambda: ",".join(Names(where).choices)


AMP = "normfast.precision:AMP_CHOICES"


def train_options(f):
    """Every `normfast train` flag (each also a config-file key; see normfast.config)."""
    opts = [
        click.option("--data", help="Converted dataset directory (from `normfast convert`)."),
        click.option("--model", type=Names("normfast.models:models"), help="Backbone (default resnet18)."),
        click.option("--norm", type=NormList("normfast.normalization:settings"), help="Normalization setting "
                     "(default finetune); a comma list or `all`: trained together as one fused model."),
        click.option("--backend", type=Names("normfast.loaders:backends"), help="Loader backend (default resident)."),
        click.option("--stats", type=Names("normfast.normalization:stats_sources"),
                     help="finetune statistics: manifest (computed at conversion) "
                     "or reference (the seed's)."),
        click.option("--pretrained", help="Initial weights: imagenet (torchvision IMAGENET1K_V1, the default) | timm "
                     "(timm's default weights, as the seed used; pip install 'normfast[timm]') | none (from scratch) | "
                     "PATH to a state dict. `--norm pretrain` uses these weights' own mean/std."),
        click.option("--epochs", type=int, help="Epochs (seed: 100)."),
        click.option("--batch-size", type=int, help="GLOBAL train batch size (seed: 256); under DDP each of N ranks "
                     "trains batch-size/N per step."),
        click.option("--val-fraction", type=float,
                     help="Hold out this seeded fraction of train for validation (default 0 = off); "
                     "best epoch is then chosen by val accuracy."),
        click.option("--test-batch-size", type=int, help="Test batch size (seed: 256)."),
        click.option("--lr", type=float, help="Adam learning rate (seed: 0.001)."),
        click.option("--scheduler", type=Names("normfast.recipe:schedulers"),
                     help="cosine (annealed over the epochs, the seed's) | none."),
        click.option("--seed", type=int, help="Random seed (seed: 223)."),
        click.option("--amp", type=Names(AMP),
                     help="auto (the default: bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp16 (with a "
                     "grad scaler) | off. The seed trained in fp32: --amp off reproduces it."),
        click.option("--compile", type=Names("normfast.recipe:compile_modes"),
                     help="none | default (torch.compile) | cudagraphs (CUDA only)."),
        click.option("--device", help="auto | cuda | cpu (default: cuda when present)."),
        click.option("--num-workers", type=WORKERS, help=f"Loader workers (default 2; {WORKERS_HELP})."),
        click.option("--chunk-batches", help="Batches a loader prepares at once: auto (default) or N, as in bench."),
        click.option("--runs", help="Root of run directories (default ./runs)."),
        click.option("--run-name", help="Run directory name (default <model>-<norm>-<backend>)."),
        click.option("--log", help="Experiment tracking: none (default) | tensorboard (RUN/tb) | wandb (offline, "
                     "RUN/wandb); per-step loss and lr, per-epoch accuracy, images/s and data wait."),
        click.option("--resume", is_flag=True, default=None, help="Continue from last.pt."),
        click.option("-q", "--quiet", is_flag=True, default=None, help="No progress bars or epoch lines."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f
