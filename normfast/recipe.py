"""The training recipe's named choices and what each name means: optimizers, learning-rate
schedulers and compile modes. `train --optimizer/--scheduler/--compile`, the config's
validation and `bench train --compile` all take their names from these registries."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from normfast.registry import Registry

optimizers: Registry[Callable] = Registry("optimizer")     # name -> factory(params, lr)
schedulers: Registry[Callable] = Registry("scheduler")     # name -> factory(opt, epochs) -> scheduler | None


@optimizers.register("adam")
def _adam(params, lr: float):
    import torch
    return torch.optim.Adam(params, lr=lr)


@schedulers.register("cosine")
def _cosine(opt, epochs: int):
    """Annealed over the run's epochs (the seed's)."""
    import torch
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)


@schedulers.register("none")
def _constant(opt, epochs: int):
    return None


@dataclass(frozen=True)
class CompileMode:
    """`compiled`: whether the step goes through torch.compile; `mode`: torch.compile's mode
    (None: its default); `cuda_graphs`: the compiled step replays CUDA graphs, so it needs a
    CUDA device."""
    name: str
    compiled: bool
    mode: str | None = None
    cuda_graphs: bool = False


compile_modes: Registry[CompileMode] = Registry("compile")
for _mode in (CompileMode("none", compiled=False),
              CompileMode("default", compiled=True),
              CompileMode("cudagraphs", compiled=True, mode="reduce-overhead", cuda_graphs=True)):
    compile_modes.register(_mode.name)(_mode)
