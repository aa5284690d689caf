"""One training step, and the running totals of an epoch: what `train` and `bench train`
share (`bench train` times this very TrainStep against its ceiling)."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from normfast.device import Dist
from normfast.models import build_model
from normfast.precision import AMP_DTYPES
from normfast.recipe import compile_modes, optimizers, schedulers

loss_fn = nn.CrossEntropyLoss()      # module level so tests can make it misbehave


class TrainStep:
    """Model, optimizer, schedule, precision, DDP and compilation: one training (or eval)
    step on a batch. `bench train` times this very object against its ceiling.

    Compiled steps (`--compile default|cudagraphs`) see only the batch sizes they were made
    for (`static_batch_sizes`: the train and the test batch size), with `dynamic=False`:
    a partial last batch (50,000 % 256 = 80) runs the same module eagerly instead of
    recompiling for a new shape (a dynamic-shape recompile crashed the compiled backward of
    channels-last convolutions on torch 2.11) or recording another CUDA graph. Every sample
    is still trained once per epoch, with the same parameters and optimizer step: the
    recipe does not change, only which kernels compute the last batch. Train and eval
    modes get separate graphs; `cudagraph_mark_step_begin` marks each compiled call as a
    new step, so a graph's outputs are read before the next replay overwrites them.
    """

    def __init__(self, model: str, num_classes: int, *, pretrained: str, device: torch.device, amp: str,
                 compile: str, lr: float, epochs: int, scheduler: str, seed: int, dist: Dist | None = None,
                 static_batch_sizes=(), optimizer: str = "adam"):
        torch.manual_seed(seed)
        net, self.weights = build_model(model, num_classes, pretrained)
        self._wire(net, device=device, amp=amp, compile=compile, lr=lr, epochs=epochs, scheduler=scheduler,
                   dist=dist, static_batch_sizes=static_batch_sizes, optimizer=optimizer)

    def _wire(self, net: nn.Module, *, device: torch.device, amp: str, compile: str, lr: float, epochs: int,
              scheduler: str, dist: Dist | None, static_batch_sizes, optimizer: str) -> None:
        """Everything around the network: device and memory format, optimizer, schedule, precision,
        DDP and compilation (shared with the fused step, whose network holds G models)."""
        self.device, self.amp = device, amp
        self.model = net.to(device, memory_format=torch.channels_last)
        self.opt = optimizers.get(optimizer)(self.model.parameters(), lr)
        self.sched = schedulers.get(scheduler)(self.opt, epochs)
        # fp16: one loss scale; for a fused step, one for all its settings (an overflow skips all)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        self.autocast = (torch.autocast(device.type, dtype=AMP_DTYPES[amp])
                         if amp in AMP_DTYPES else contextlib.nullcontext())
        self.ddp = self.model
        if dist is not None and dist.enabled:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        mode = compile_modes.get(compile)
        self.cudagraphs = mode.cuda_graphs
        self.compiled = torch.compile(self.ddp, mode=mode.mode, dynamic=False) if mode.compiled else None
        self.static = frozenset(static_batch_sizes)

    def module_for(self, batch: int) -> nn.Module:
        """The compiled module for the batch sizes it was made for, else the eager one."""
        return self.compiled if self.compiled is not None and batch in self.static else self.ddp

    def __call__(self, x: torch.Tensor, y: torch.Tensor, train: bool = True):
        """One forward (and, when training, backward + optimizer) step; returns (loss, logits)."""
        return self._step(x, y, train, lambda out: loss_fn(out.float(), y), lambda loss: loss)

    def _step(self, x: torch.Tensor, y: torch.Tensor, train: bool, losses, total):
        """forward under autocast, `losses(logits)`, and when training backward of `total(loss)`
        and the optimizer step (through the scaler); returns (loss, logits)."""
        module = self.module_for(len(x))
        if module is self.compiled and self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast:
            out = module(x)
            loss = losses(out)
        if train:
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(total(loss)).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        return loss, out

    def train(self, mode: bool) -> None:
        self.ddp.train(mode)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict() if self.sched else None,
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.sched and state["scheduler"]:
            self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


class Meter:
    """An epoch's running totals, kept on the device in few kernels per step and no host
    sync: the loss sum (float64; one in-place add of loss * batch), correct predictions
    (argmax, compare, and one in-place add into a per-position count: summed once at the
    end), samples and seconds waiting on data (host numbers). Cross-entropy is never
    negative, so the sum is finite exactly when every loss was: `finite()` needs no flag of
    its own."""

    def __init__(self, device: torch.device):
        self.device = device
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.hits = torch.zeros(0, dtype=torch.int64, device=device)   # correct, per batch position
        self.seen, self.wait = 0, 0.0

    def update(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        n = len(y)
        if n > len(self.hits):          # the first batch (or a folded-in tail): grow once
            self.hits = torch.cat([self.hits, self.hits.new_zeros(n - len(self.hits))])
        self.loss_sum.add_(loss.detach(), alpha=n)
        self.hits[:n].add_(out.argmax(1) == y)
        self.seen += n

    def finite(self) -> torch.Tensor:
        """A 0-d bool on the device: whether every loss so far was finite."""
        return torch.isfinite(self.loss_sum)

    def result(self, dist: Dist, seconds: float) -> dict:
        """Totals over all ranks: mean loss, accuracy, images/s, fraction of time waiting."""
        loss, correct = torch.stack([self.loss_sum, self.hits.sum().double()]).tolist()   # one sync
        loss, correct, seen, wait = dist.sum([loss, correct, self.seen, self.wait], self.device)
        return {"loss": loss / max(seen, 1), "acc": correct / max(seen, 1), "seconds": seconds,
                "images_per_second": seen / seconds if seconds else 0.0,
                "data_wait_fraction": wait / dist.world_size / seconds if seconds else 0.0}


class LateRead:
    """Device scalars (the finite flag, the last loss) read on the host one log interval
    late, so the training loop never waits for the GPU: each `poll` starts a non-blocking
    copy into pinned memory and returns the copy started by an earlier poll once its event
    has passed (None while it has not: it is read at a later poll; the epoch's end syncs
    anyway). On the CPU the copy is the value at once."""

    def __init__(self, device: torch.device):
        self.cuda = self.pin = device.type == "cuda"
        self.pending = None            # (host tensor, event, tag) of the copy in flight

    def poll(self, values: torch.Tensor, tag) -> tuple[list[float], object] | None:
        """Start reading `values` (a 1-d float64 device tensor); return (values, tag) of
        the earliest read now complete (on the CPU: this one), else None."""
        if not self.cuda:
            return values.tolist(), tag
        done = None
        if self.pending is not None:
            host, event, old = self.pending
            if not event.query():
                return None            # the GPU is more than an interval behind: read it later
            done, self.pending = (host.tolist(), old), None
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=self.pin)
        host.copy_(values, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending = (host, event, tag)
        return done
