"""Where a run executes: the one device resolver, and the process group under torchrun.

Every verb (train, bench, the loaders, DDP) turns a user's device into a concrete
`torch.device` here, so there is one rule: "auto"/None is CUDA when present, else CPU; a
CUDA device without an index becomes an indexed one (LOCAL_RANK under torchrun, else the
current device), because `torch.cuda.set_device`, DALI's `device_id` and DDP's
`device_ids` all need the index (`set_device(torch.device("cuda"))` raises on every torch).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from normfast.errors import NormfastError

DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(device=None, local_rank: int | None = None) -> torch.device:
    """None | "auto" | "cpu" | "cuda" | "cuda:N" | torch.device -> a torch.device; a CUDA
    device always carries its index. `local_rank` (torchrun's LOCAL_RANK) picks the GPU
    when the device names none."""
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise NormfastError(f"unknown device {str(device)!r}; valid: auto, cpu, cuda, cuda:N") from None
    if dev.type not in DEVICE_TYPES:
        raise NormfastError(f"unknown device {str(device)!r}; valid: auto, cpu, cuda, cuda:N")
    if dev.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise NormfastError(f"device {str(device)!r} requested but no CUDA GPU is available here; "
                            "use --device cpu")
    count = torch.cuda.device_count()
    index = dev.index
    if index is None:
        index = local_rank if local_rank is not None else torch.cuda.current_device()
    if not 0 <= index < count:
        raise NormfastError(f"device cuda:{index} does not exist: this machine has {count} CUDA "
                            f"device{'s' if count != 1 else ''} (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def use_device(device: torch.device) -> None:
    """Make `device` the current CUDA device (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.set_device(device.index)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Dist:
    """World size / rank from torchrun's environment (1 / 0 otherwise)."""

    def __init__(self, env=None):
        env = os.environ if env is None else env
        self.world_size = int(env.get("WORLD_SIZE", "1"))
        self.rank = int(env.get("RANK", "0"))
        self.local_rank = int(env.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested) -> torch.device:
        """The device of this process: under torchrun, a CUDA device without an index is
        the one of this process's LOCAL_RANK."""
        return resolve_device(requested, self.local_rank if self.enabled else None)

    def init(self, device: torch.device) -> None:
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    # Without DDP these return their arguments: no device tensor, no host sync.
    def sum(self, values: list[float], device) -> list[float]:
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def min(self, value: float, device) -> float:
        if not self.enabled:
            return float(value)
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t.item()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()
