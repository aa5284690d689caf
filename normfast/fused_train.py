"""`normfast train --norm a,b,c`: the listed normalization settings of one configuration trained
together, as one fused model (normfast.fused) from one data stream.

One loader yields each augmented batch once, unnormalized (uint8, `build_loader(normalize=False)`);
each setting's Normalizer turns it into exactly what that setting's own loader would yield, the G
results are stacked on channels and the fused model takes one step. Each setting keeps its own
loss, accuracy, best epoch and run directory `<model>-<norm>-<backend>` with the files a separate
run writes; its last.pt/best.pt hold the separate model's state (split from the fused one), so
`report`, `sweep` and a separate `--resume` read them unchanged.

A kill at any moment leaves all settings at the same epoch: the G last.pt files are replaced in
two phases. Each new checkpoint is first written whole as NEXT beside last.pt, then COMMIT (the
epoch) is written into every run directory, then each NEXT is renamed over last.pt. Starting
again, a run directory holding COMMIT means every NEXT of that epoch was complete: the renames are
finished (roll forward); without COMMIT anywhere, the NEXT files are dropped (roll back).
"""
from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import asdict, replace

import torch

from normfast.config import TrainConfig, validate
from normfast.errors import NormfastError
from normfast.fused import (MECHANISM, fuse_models, fuse_optimizer_state, fuse_state, parameter_names,
                            per_setting_loss, split_optimizer_state, split_state, state_layout)
from normfast.manifest import load_manifest
from normfast.models import build_model
from normfast.normalization import resolve_norm, settings
from normfast.ops import Normalizer
from normfast.atomic import move_into_place, write_atomic
from normfast.rundir import BEST_CKPT, LAST, RunDir
from normfast.step import Meter, TrainStep
from normfast.train import Trainer, check_resumable, epoch_line, epoch_row, select_best

NEXT = "fused-next.pt"          # a fused run's new last.pt, before its commit
COMMIT = "fused-commit.json"    # written in every setting's directory once all NEXT files are whole


def parse_norms(value: str, prefix: str = "--norm ") -> list[str]:
    """`a,b,c` or `all` -> the settings' names; an empty item, a repeat or an unknown name is an
    error (`prefix` starts its message)."""
    names = settings.names()
    if value.strip() == "all":
        return list(names)
    items = [s.strip() for s in value.split(",")]
    for item in items:
        if not item:
            raise NormfastError(f"{prefix}{value!r}: an empty item in the list (valid: {', '.join(names)}, or all)")
        if item not in names:
            raise NormfastError(f"{prefix}{value!r}: unknown setting {item!r} (valid: {', '.join(names)}, or all)")
    repeated = sorted({s for s in items if items.count(s) > 1})
    if repeated:
        raise NormfastError(f"{prefix}{value!r}: {repeated[0]!r} is listed twice")
    return items


def fused_configs(cfg: TrainConfig, norms: list[str]) -> list[TrainConfig]:
    """One config per setting, differing only in norm."""
    if cfg.run_name:
        raise NormfastError("--run-name names one run; with several --norm settings each setting's run is "
                            "named <model>-<norm>-<backend>: leave out --run-name")
    out = [replace(cfg, norm=n) for n in norms]
    for c in out:
        validate(c)
    return out


class FusedStep(TrainStep):
    """TrainStep for G settings: the fused model, one Adam over its parameters, and the
    settings' normalizations of the unnormalized batch."""

    def __init__(self, cfgs: list[TrainConfig], num_classes: int, *, device: torch.device, amp: str, dist,
                 static_batch_sizes=()):
        cfg = cfgs[0]
        self.groups = len(cfgs)
        torch.manual_seed(cfg.seed)          # the initial weights every separate run of this seed starts from
        net, self.weights = build_model(cfg.model, num_classes, cfg.pretrained)
        self._wire(fuse_models([net] * self.groups), device=device, amp=amp, compile=cfg.compile, lr=cfg.lr,
                   epochs=cfg.epochs, scheduler=cfg.scheduler, dist=dist, static_batch_sizes=static_batch_sizes,
                   optimizer=cfg.optimizer)
        self.layout, self.names = state_layout(self.model), parameter_names(self.model)
        self.normalizers: list[Normalizer] = []       # set once the weights (pretrain's mean/std) are known

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW channels-last -> (N, G*3, H, W): each setting's normalized batch."""
        return torch.cat([n.nchw(x) for n in self.normalizers], 1).contiguous(memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, train: bool = True):
        """One step on an unnormalized batch; returns (per-setting losses (G,), logits (N, G, classes)).
        The losses are summed for the backward: no parameter is shared, so each model gets its own
        gradient."""
        return self._step(self.inputs(x), y, train, lambda out: per_setting_loss(out, y), lambda losses: losses.sum())

    def setting_states(self) -> list[dict]:
        """Each setting's state as a separate run's TrainStep.state_dict() would hold it."""
        models = split_state(self.model.state_dict(), self.layout, self.groups)
        opts = split_optimizer_state(self.opt.state_dict(), self.names, self.layout, self.groups)
        common = {"scheduler": self.sched.state_dict() if self.sched else None, "scaler": self.scaler.state_dict()}
        return [{"model": m, "optimizer": o} | common for m, o in zip(models, opts)]

    def load_setting_states(self, states: list[dict]) -> None:
        self.model.load_state_dict(fuse_state([s["model"] for s in states], self.layout))
        self.opt.load_state_dict(fuse_optimizer_state([s["optimizer"] for s in states], self.names, self.layout))
        if self.sched and states[0]["scheduler"]:
            self.sched.load_state_dict(states[0]["scheduler"])
        self.scaler.load_state_dict(states[0]["scaler"])


class FusedMeter(Meter):
    """Meter with a row per setting: losses (G,) and logits (N, G, classes) per update."""

    def __init__(self, device: torch.device, groups: int):
        super().__init__(device)
        self.loss_sum = torch.zeros(groups, dtype=torch.float64, device=device)
        self.hits = torch.zeros(groups, 0, dtype=torch.int64, device=device)

    def update(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        n = len(y)
        if n > self.hits.shape[1]:
            self.hits = torch.cat([self.hits, self.hits.new_zeros(len(self.hits), n - self.hits.shape[1])], 1)
        self.loss_sum.add_(loss.detach(), alpha=n)
        self.hits[:, :n].add_((out.argmax(2) == y[:, None]).T)
        self.seen += n

    def finite(self) -> torch.Tensor:
        return torch.isfinite(self.loss_sum).all()

    def diverged(self) -> list[int]:
        """The settings whose loss sum is not finite (a host sync: only when stopping)."""
        return [g for g, ok in enumerate(torch.isfinite(self.loss_sum).tolist()) if not ok]

    def result(self, dist, seconds: float) -> list[dict]:
        groups = len(self.loss_sum)
        values = torch.cat([self.loss_sum, self.hits.sum(1).double()]).tolist()
        totals = dist.sum(values + [self.seen, self.wait], self.device)
        seen, wait = totals[-2], totals[-1]
        return [{"loss": totals[g] / max(seen, 1), "acc": totals[groups + g] / max(seen, 1), "seconds": seconds,
                 "images_per_second": seen / seconds if seconds else 0.0,
                 "data_wait_fraction": wait / dist.world_size / seconds if seconds else 0.0}
                for g in range(groups)]


class FusedTrainer(Trainer):
    """Trainer over G configs differing only in norm: one loader, one fused step, G run directories."""

    def __init__(self, cfgs: list[TrainConfig]):
        super().__init__(cfgs[0])
        self.cfgs = cfgs
        self.norms = [c.norm for c in cfgs]
        self.run_dirs = [c.run_dir(self.dataset) for c in cfgs]

    def build_step(self) -> None:
        self.step = FusedStep(self.cfgs, self.manifest.num_classes, device=self.device, amp=self.amp,
                              dist=self.dist, static_batch_sizes=(self.batch_size, self.test_batch_size))
        self.model, self.opt, self.sched = self.step.model, self.step.opt, self.step.sched
        self.weights, self.weights_record = self.step.weights.name, self.step.weights.record()
        self.step.normalizers = [
            Normalizer(resolve_norm(c.norm, self.manifest, c.stats, weights=self.step.weights), self.device,
                       self.in_dtype) for c in self.cfgs]

    def build_loaders(self, **loader_options) -> None:
        super().build_loaders(normalize=False, **loader_options)

    def new_meter(self) -> FusedMeter:
        self.meter = FusedMeter(self.device, len(self.cfgs))
        return self.meter

    def _log_interval(self, late, meter, loss, epoch, steps, per_epoch) -> None:
        super()._log_interval(late, meter, loss.detach().sum(), epoch, steps, per_epoch)

    def _diverged(self, epoch: int, steps: int, what: str) -> NormfastError:
        bad = [self.norms[g] for g in self.meter.diverged()] if hasattr(self, "meter") else []
        which = ", ".join(bad) if bad else "a setting (on another rank)"
        return NormfastError(
            f"training diverged: the {what} of {which} became NaN or infinite in epoch {epoch + 1} (by step {steps}); "
            f"the fused run of {', '.join(self.norms)} stopped, each setting's last good checkpoint is kept "
            f"in {self.run_dirs[0].parent}/<run>/last.pt")

    # ------------------------------------------------------------------ main
    def fit(self) -> list[dict]:
        resume, identity, groups = self.cfg.resume, self.manifest.identity, len(self.cfgs)
        if self.cfg.log != "none":
            raise NormfastError(f"--log {self.cfg.log}: experiment tracking is not supported for a fused run "
                                f"(several --norm settings); train them separately to track them")
        runs = [RunDir(p) for p in self.run_dirs]
        with contextlib.ExitStack() as stack:
            refusal = None
            if self.dist.main:
                try:
                    for r in runs:
                        stack.enter_context(r)
                        r.open_for_writing(resume)
                    recover(runs)
                except NormfastError as e:
                    refusal = e
            self._all_ranks_agree(refusal)
            ckpts = None
            if resume:
                ckpts = [r.load_checkpoint(LAST, map_location=self.device) for r in runs]
                for c, cfg, r in zip(ckpts, self.cfgs, runs):
                    check_resumable(c, cfg, self.amp, r.last_checkpoint, identity)
                epochs = [int(c["epoch"]) for c in ckpts]
                if len(set(epochs)) > 1:
                    at = ", ".join(f"{n} at epoch {e + 1}" for n, e in zip(self.norms, epochs))
                    raise NormfastError(f"--resume: the settings' runs are at different epochs ({at}); "
                                        f"resume them as separate runs (one --norm each)")
            self.build()
            start, bests = 0, [{"best_epoch": -1, "best_acc": 0.0} for _ in range(groups)]
            if ckpts is not None:
                try:
                    self.step.load_setting_states(ckpts)
                except (KeyError, RuntimeError, ValueError, TypeError, NormfastError) as e:
                    raise NormfastError(f"{runs[0].last_checkpoint} (and the others): do not fit this fused run "
                                        f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
                                        ) from None
                start, bests = int(ckpts[0]["epoch"]) + 1, [dict(c["best"]) for c in ckpts]
                del ckpts
            if self.dist.main:
                for cfg, r in zip(self.cfgs, runs):
                    r.write_config(self.resolved_config(cfg) | {"fused_with": self.norms,
                                                                "fused_mechanism": MECHANISM})
                    r.truncate_metrics(start)
            for epoch in range(start, self.cfg.epochs):
                lr = self.opt.param_groups[0]["lr"]
                trs = self.run_epoch(epoch, train=True)
                tes = self.run_epoch(epoch, train=False)
                vas = self.run_epoch(epoch, train=False, loader=self.val_loader) if self.val_loader else [None] * groups
                if self.sched:
                    self.sched.step()
                improved = []
                for g in range(groups):
                    bests[g], better = select_best(bests[g], epoch, tes[g]["acc"], vas[g] and vas[g]["acc"])
                    improved.append(better)
                if self.dist.main:
                    rows = [epoch_row(epoch, lr, trs[g], tes[g], vas[g]) for g in range(groups)]
                    self.write_fused_epoch(runs, epoch, rows, bests, improved, identity)
            if self.dist.main and start >= self.cfg.epochs:
                for g in range(groups):
                    self._write_setting_best(g, bests[g], start)
            self.dist.barrier()
        return bests

    def write_fused_epoch(self, runs, epoch, rows, bests, improved, identity) -> None:
        """Per setting what a separate run writes, in its order; the G last.pt in two phases."""
        states = [s | {"epoch": epoch, "best": b, "amp": self.amp, "config": asdict(c), "weights": self.weights,
                       "data_identity": identity, "fused_with": self.norms}
                  for s, b, c in zip(self.step.setting_states(), bests, self.cfgs)]
        for r, state, row, better in zip(runs, states, rows, improved):
            if better:
                r.save_checkpoint(state, BEST_CKPT)
            r.append_metrics(row)
        commit(runs, states, epoch)
        for g, row in enumerate(rows):
            self._write_setting_best(g, bests[g], epoch + 1)
            if not self.cfg.quiet:
                print(f"epoch {epoch + 1}/{self.cfg.epochs} {self.norms[g]:>9}  {epoch_line(row)} "
                      f"({len(rows)} settings)", flush=True)

    def _write_setting_best(self, g: int, best: dict, epochs_done: int) -> None:
        self._write_best(best, epochs_done, self.cfgs[g], self.run_dirs[g])


def commit(runs: list[RunDir], states: list[dict], epoch: int) -> None:
    """Replace every run's last.pt by its state, all or none (see the module's docstring)."""
    for r, state in zip(runs, states):
        r.save_checkpoint(state, NEXT)
    note = json.dumps({"epoch": epoch, "runs": [r.path.name for r in runs]})
    for r in runs:
        write_atomic(r.path / COMMIT, note)
    for r in runs:
        move_into_place(r.path / NEXT, r.last_checkpoint)
    for r in runs:
        (r.path / COMMIT).unlink(missing_ok=True)


def recover(runs: list[RunDir]) -> None:
    """Finish (COMMIT present in any directory) or undo (absent) an interrupted commit."""
    committed = any((r.path / COMMIT).is_file() for r in runs)
    for r in runs:
        nxt = r.path / NEXT
        if nxt.is_file():
            if committed:
                move_into_place(nxt, r.last_checkpoint)
            else:
                nxt.unlink()
    for r in runs:
        (r.path / COMMIT).unlink(missing_ok=True)


def train_command(config_file, options: dict, echo) -> None:
    """`normfast train --norm a,b,...`: the CLI's options -> train_fused, one result line each."""
    from normfast.config import resolve_train_config
    norms = options["norm"].split(",")
    cfgs = fused_configs(resolve_train_config(config_file, **(options | {"norm": norms[0]})), norms)
    for c, best in zip(cfgs, train_fused(cfgs)):
        if not c.quiet:
            echo(f"{c.norm}: best test accuracy {best['best_acc']:.4f} at epoch {best['best_epoch'] + 1} "
                 f"of {c.epochs}; run directory {c.run_dir(load_manifest(c.data).name)}")


def train_fused(cfgs: list[TrainConfig]) -> list[dict]:
    """Train configs differing only in norm (and run name) as one fused run; returns each one's
    best (as `train` does). A setting whose run already finished is left out with a note (its
    recorded best is returned); an unfinished separate run of a setting is refused unless
    resuming (RunDir's own error)."""
    base = {k: v for k, v in asdict(cfgs[0]).items() if k not in ("norm", "run_name")}
    for c in cfgs[1:]:
        other = {k: v for k, v in asdict(c).items() if k not in ("norm", "run_name")}
        diff = sorted(k for k in base if base[k] != other[k])
        if diff:
            raise NormfastError(f"fused training: the settings' configs differ in {', '.join(diff)}, not only in norm")
    norms = [c.norm for c in cfgs]
    if len(set(norms)) != len(norms):
        raise NormfastError(f"fused training: a setting is listed twice ({', '.join(norms)})")
    dataset = load_manifest(cfgs[0].data).name
    results: list[dict | None] = [None] * len(cfgs)
    todo = []
    for i, c in enumerate(cfgs):
        run = RunDir(c.run_dir(dataset))
        if run.finished(c.epochs):
            print(f"note: {run.path} already finished; {c.norm} left out of the fused run", file=sys.stderr)
            results[i] = run.read_best()
        else:
            todo.append(i)
    if len(todo) == 1:          # one setting left: an ordinary run
        from normfast.train import train
        results[todo[0]] = train(cfgs[todo[0]])
    elif todo:
        trainer = FusedTrainer([cfgs[i] for i in todo])
        try:
            for i, best in zip(todo, trainer.fit()):
                results[i] = best
        finally:
            trainer.close()
            trainer.dist.close()
    return results  # type: ignore[return-value]
