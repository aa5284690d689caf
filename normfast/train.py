"""`normfast train`: fine-tune one backbone on one converted dataset with one normalization.

Channels-last model and batches, one autocast context and one GradScaler switch (fp16
only), optional torch.compile / CUDA graphs, DDP under torchrun. Every epoch appends one
line to metrics.jsonl and rewrites last.pt atomically; --resume continues exactly.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from normfast.config import TrainConfig
from normfast.device import Dist, sync, use_device
from normfast.errors import NormfastError
from normfast.loaders import build_loader
from normfast.manifest import load_manifest, val_split
from normfast.normalization import resolve_norm
from normfast.precision import input_dtype, resolve_amp
from normfast.progress import progress_bar
from normfast.provenance import provenance
from normfast.recipe import compile_modes
from normfast.rundir import BEST_CKPT, LAST, RunDir
from normfast.step import LateRead, Meter, TrainStep
from normfast.tracking import Tracker, make_tracker
from normfast.validate import is_one_sample_batch, one_sample_batch


class Trainer:
    """One run: `build` (the model step, then the loaders), `run_epoch`, `fit` (the epoch
    loop, resume) and `write_epoch` (what each epoch leaves in the run directory)."""
    tracker: Tracker = Tracker()      # --log: made in fit() on rank 0, closed in close()

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.dist = Dist()
        self.batch_size, self.test_batch_size = per_rank_batch_sizes(cfg, self.dist.world_size)
        self.device = self.dist.device(cfg.device)     # a CUDA device always has its index here
        use_device(self.device)
        self.dist.init(self.device)
        self.amp = resolve_amp(cfg.amp, self.device)
        if compile_modes.get(cfg.compile).cuda_graphs and self.device.type != "cuda":
            raise NormfastError(f"--compile {cfg.compile} needs a CUDA device")
        self.manifest = load_manifest(cfg.data)
        self.dataset = self.manifest.name
        self.run_dir = cfg.run_dir(self.dataset)
        self.in_dtype = input_dtype(self.amp)

    # ------------------------------------------------------------------ set-up
    def build(self):
        self.build_step()
        self.build_loaders()

    def build_step(self) -> None:
        """The model step (model, optimizer, schedule, precision, DDP, compilation)."""
        cfg = self.cfg
        self.step = TrainStep(cfg.model, self.manifest.num_classes, pretrained=cfg.pretrained,
                              device=self.device, amp=self.amp, compile=cfg.compile, lr=cfg.lr,
                              epochs=cfg.epochs, scheduler=cfg.scheduler, seed=cfg.seed, dist=self.dist,
                              static_batch_sizes=(self.batch_size, self.test_batch_size), optimizer=cfg.optimizer)
        self.model, self.opt, self.sched = self.step.model, self.step.opt, self.step.sched
        self.weights, self.weights_record = self.step.weights.name, self.step.weights.record()

    def build_loaders(self, **loader_options) -> None:
        """The train, test and (with --val-fraction) val loaders; `loader_options` go to
        every `build_loader` call (e.g. normalize=False)."""
        cfg = self.cfg
        # `pretrain` normalizes with the weights' own mean/std, so the weights come before the loaders
        norm = resolve_norm(cfg.norm, self.manifest, cfg.stats, weights=self.step.weights)
        common = dict(backend=cfg.backend, norm=norm, device=self.device, dtype=self.in_dtype,
                      seed=cfg.seed, rank=self.dist.rank, world_size=self.dist.world_size,
                      stats=cfg.stats, num_workers=cfg.num_workers,
                      chunk_batches=cfg.chunk_batches or None) | loader_options
        held_out = val_split(self.manifest, cfg.val_fraction, cfg.seed)
        self.train_loader = build_loader(self.manifest, "train", batch_size=self.batch_size, augment=True,
                                         shuffle=True, drop_last=False,
                                         subset=held_out[0] if held_out else None, **common)
        self.test_loader = build_loader(self.manifest, "test", batch_size=self.test_batch_size, augment=False,
                                        shuffle=False, drop_last=False, **common)
        self.val_loader = None
        if held_out:     # evaluated like test: no augmentation, stored order
            self.val_loader = build_loader(self.manifest, "train", batch_size=self.test_batch_size, augment=False,
                                           shuffle=False, drop_last=False, subset=held_out[1], **common)

    def close(self) -> None:
        """Release both loaders (pipelines, threads, device memory)."""
        for loader in (getattr(self, "train_loader", None), getattr(self, "test_loader", None),
                       getattr(self, "val_loader", None)):
            if loader is not None:
                loader.close()
        self.tracker.close()
        self.tracker = Tracker()

    def state(self, epoch: int, best: dict) -> dict:
        return self.step.state_dict() | {"epoch": epoch, "best": best, "amp": self.amp,
                                         "config": asdict(self.cfg), "weights": self.weights}

    # ------------------------------------------------------------------ epochs
    def run_epoch(self, epoch: int, train: bool, loader=None) -> dict:
        loader = loader or (self.train_loader if train else self.test_loader)
        loader.set_epoch(epoch)
        self.step.train(train)
        meter, late = self.new_meter(), LateRead(self.device)
        steps = 0
        # A last training batch of ONE sample is trained with the batch before it (BatchNorm
        # cannot normalize a single sample whose feature maps are 1x1, as at 32 px). This also
        # keeps DDP ranks in step: shards differ by at most one sample, so a rank has one batch
        # more than another exactly when its last batch holds one sample, now folded in.
        steps_here = len(loader) - (1 if train and single_last_batch(loader) else 0)
        # Under DDP every rank must take the same number of optimizer steps (Adam's state
        # would drift apart otherwise); the fold above makes the counts equal, min() guards it.
        limit = int(self.dist.min(steps_here, self.device)) if (train and self.dist.enabled) else steps_here
        desc = f"epoch {epoch + 1}/{self.cfg.epochs} {'train' if train else 'test'}"
        bar = progress_bar(loader.num_samples, desc, self.cfg.quiet or not self.dist.main)
        self._sync()
        start = time.perf_counter()
        with bar, torch.set_grad_enabled(train), contextlib.closing(iter(loader)) as it:
            while steps < limit:
                t0 = time.perf_counter()
                batch = next(it, None)
                meter.wait += time.perf_counter() - t0
                if batch is None:
                    break
                x, y = batch
                if steps == steps_here - 1 and steps_here < len(loader):    # fold the single last sample in
                    tail = next(it, None)
                    if tail is not None:
                        x, y = torch.cat([x, tail[0]]), torch.cat([y, tail[1]])
                loss, out = self.model_step(x, y, train)
                if train:
                    self._debug_step(epoch, steps, y)
                meter.update(loss, out, y)
                steps += 1
                if train and steps % self.cfg.log_interval == 0:
                    self._log_interval(late, meter, loss, epoch, steps, len(loader))
                    bar.set_postfix(img_s=f"{meter.seen / (time.perf_counter() - start):.0f}")
                bar.update(len(y))
        self._sync()
        seconds = time.perf_counter() - start
        self._check_finite(meter.finite(), epoch, steps, "loss" if train else "test loss")
        return meter.result(self.dist, seconds)

    def new_meter(self) -> Meter:
        """An epoch's running totals (a fused run keeps one per setting)."""
        return Meter(self.device)

    def model_step(self, x: torch.Tensor, y: torch.Tensor, train: bool):
        """One step of the model on a batch: (loss, logits)."""
        try:
            return self.step(x, y, train)
        except ValueError as e:
            if not is_one_sample_batch(e):
                raise
            raise one_sample_batch(x.shape[2:], self.cfg.batch_size, self.dist.world_size) from None

    def _log_interval(self, late: LateRead, meter: Meter, loss: torch.Tensor, epoch: int, steps: int,
                      per_epoch: int) -> None:
        """Every --log-interval steps: the NaN check and the tracker's step row. Without DDP
        nothing here waits for the GPU: the finite flag and the loss are read one interval
        late (LateRead). Under DDP every rank must stop at the same step on any rank's NaN,
        so the flag is all-reduced now (one host sync per interval)."""
        if self.dist.enabled:
            self._check_finite(meter.finite(), epoch, steps)
            read = ([1.0, loss.item()], steps) if self.tracker.enabled else None
        else:
            read = late.poll(torch.stack([meter.finite().double(), loss.detach().double()]), steps)
            if read is not None and read[0][0] < 1:
                raise self._diverged(epoch, read[1], "loss")
        if read is not None and self.tracker.enabled:
            self.tracker.log_step(epoch * per_epoch + read[1],
                                  {"loss": read[0][1], "lr": self.opt.param_groups[0]["lr"]})

    def _sync(self):
        sync(self.device)

    def _check_finite(self, finite: torch.Tensor, epoch: int, steps: int, what: str = "loss") -> None:
        """Stop on a NaN/inf loss; under DDP every rank learns of any rank's (no hang)."""
        ok = self.dist.min(float(finite), self.device) if self.dist.enabled else bool(finite)
        if ok < 1:
            raise self._diverged(epoch, steps, what)

    def _diverged(self, epoch: int, steps: int, what: str) -> NormfastError:
        return NormfastError(
            f"training diverged: the {what} became NaN or infinite in epoch {epoch + 1} (by step {steps}); "
            f"run stopped, the last good checkpoint is kept in {self.run_dir / 'last.pt'}")

    def _debug_step(self, epoch: int, step: int, y: torch.Tensor) -> None:
        """With NORMFAST_DEBUG_DDP=DIR, each rank logs its labels and a weight checksum per step
        (the multi-process test uses it to check disjoint data and identical weights)."""
        path = os.environ.get("NORMFAST_DEBUG_DDP")
        if path:
            checksum = sum(float(p.detach().double().sum()) for p in self.model.parameters())
            with open(Path(path) / f"rank{self.dist.rank}.jsonl", "a") as f:
                f.write(json.dumps({"epoch": epoch, "step": step, "labels": y.tolist(),
                                    "checksum": checksum}) + "\n")

    # ------------------------------------------------------------------ main
    def fit(self) -> dict:
        """Train (or, with --resume, continue) the run; the run directory is locked meanwhile."""
        cfg, run = self.cfg, RunDir(self.run_dir)
        identity = self.manifest.identity
        with run:
            refusal = None
            if self.dist.main:               # under DDP only rank 0 locks and writes the run directory
                try:
                    run.open_for_writing(cfg.resume)
                except NormfastError as e:
                    refusal = e
            self._all_ranks_agree(refusal)
            ckpt = None
            if cfg.resume:
                ckpt = run.load_checkpoint(LAST, map_location=self.device)
                check_resumable(ckpt, cfg, self.amp, run.last_checkpoint, identity)
            self.build()
            start, best = 0, {"best_epoch": -1, "best_acc": 0.0}
            if ckpt is not None:
                start, best = self._load_state(ckpt, run.last_checkpoint)
                del ckpt
            if self.dist.main:
                resolved = self.resolved_config(cfg)
                run.write_config(resolved)
                run.truncate_metrics(start)      # rows beyond the checkpoint are trained again
                self.tracker = make_tracker(cfg.log, run.path, resolved)
            for epoch in range(start, cfg.epochs):
                lr = self.opt.param_groups[0]["lr"]
                tr = self.run_epoch(epoch, train=True)
                te = self.run_epoch(epoch, train=False)
                va = self.run_epoch(epoch, train=False, loader=self.val_loader) if self.val_loader else None
                if self.sched:
                    self.sched.step()
                best, improved = select_best(best, epoch, te["acc"], va and va["acc"])
                if self.dist.main:
                    self.write_epoch(run, epoch, epoch_row(epoch, lr, tr, te, va), best, improved, identity)
            if self.dist.main and start >= cfg.epochs:     # killed after its last last.pt
                self._write_best(best, start)
            self.dist.barrier()
        return best

    def resolved_config(self, cfg: TrainConfig) -> dict:
        """What config.yaml records: the config and what it resolved to (after build())."""
        return asdict(cfg) | {"dataset": self.dataset, **self.weights_record, "amp": self.amp,
                              "device": str(self.device), "world_size": self.dist.world_size,
                              "global_batch_size": cfg.batch_size, "per_rank_batch_size": self.batch_size,
                              "val_count": len(self.val_loader.cfg.subset) if self.val_loader else 0,
                              "versions": provenance(), "data_identity": self.manifest.identity}

    def write_epoch(self, run: RunDir, epoch: int, row: dict, best: dict, improved: bool, identity) -> None:
        """What an epoch leaves in the run directory (rank 0). Order matters for a kill at
        any moment: a metrics row beyond last.pt is dropped on resume; best_results.json
        (what "finished" is read from) comes last."""
        state = self.state(epoch, best) | {"data_identity": identity}
        if improved:
            run.save_checkpoint(state, BEST_CKPT)
        run.append_metrics(row)
        run.save_checkpoint(state, LAST)
        self._write_best(best, epoch + 1)
        self.tracker.log_epoch(epoch, (epoch + 1) * len(self.train_loader), row)
        if not self.cfg.quiet:
            print(f"epoch {epoch + 1}/{self.cfg.epochs}  {epoch_line(row)}  "
                  f"data wait {row['data_wait_fraction']:.0%}", flush=True)

    def _all_ranks_agree(self, refusal: NormfastError | None) -> None:
        """Rank 0's refusal (lock held, nothing to resume, ...) stops every rank, not only rank 0."""
        if self.dist.enabled:
            ok = self.dist.min(0.0 if refusal else 1.0, self.device)
            if refusal is None and ok < 1:
                raise NormfastError(f"{self.run_dir}: rank 0 refused to start the run (its error says why)")
        if refusal is not None:
            raise refusal

    def _load_state(self, ckpt: dict, path: Path) -> tuple[int, dict]:
        try:
            self.step.load_state_dict(ckpt)
            return int(ckpt["epoch"]) + 1, dict(ckpt["best"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise NormfastError(f"{path}: does not fit this run ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:160] if str(e) else ''}); use --run-name") from None

    def _write_best(self, best: dict, epochs_done: int, cfg: TrainConfig | None = None, run_dir=None) -> None:
        """best_results.json of this run (or, for a fused run, of the setting `cfg` in `run_dir`)."""
        cfg = cfg or self.cfg
        RunDir(run_dir or self.run_dir).write_best(
            {"selected_by": "val" if cfg.val_fraction else "test"} | best
            | {"epochs_done": epochs_done, "epochs": cfg.epochs, "finished": epochs_done >= cfg.epochs,
               **self.weights_record})


def epoch_line(row: dict) -> str:
    """An epoch's losses, accuracies and speed as the epoch line shows them."""
    return (f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
            f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}  "
            f"{row['train_images_per_second']:.0f} img/s")


def epoch_row(epoch: int, lr: float, tr: dict, te: dict, va: dict | None) -> dict:
    """An epoch's metrics.jsonl row from its train, test and val results."""
    row = {"epoch": epoch, "lr": lr, "train_loss": tr["loss"], "train_acc": tr["acc"],
           "test_loss": te["loss"], "test_acc": te["acc"], "epoch_seconds": tr["seconds"] + te["seconds"],
           "train_seconds": tr["seconds"], "train_images_per_second": tr["images_per_second"],
           "data_wait_fraction": tr["data_wait_fraction"], "test_images_per_second": te["images_per_second"]}
    if va is not None:
        row |= {"val_loss": va["loss"], "val_acc": va["acc"]}
    return row


def single_last_batch(loader) -> bool:
    """Whether an epoch of `loader` ends in a batch of exactly one sample after others."""
    n, bs = loader.num_samples, loader.cfg.batch_size
    return len(loader) > 1 and n % bs == 1


def per_rank_batch_sizes(cfg: TrainConfig, world_size: int) -> tuple[int, int]:
    """--batch-size is the GLOBAL batch (the recipe): each of `world_size` ranks trains
    batch_size / world_size per step, so DDP keeps the seed's batch and learning rate. The
    test batch is split rounding up (it changes no result)."""
    if cfg.batch_size % world_size:
        raise NormfastError(f"--batch-size {cfg.batch_size}: the global batch must divide by the world size "
                            f"{world_size} (each rank trains batch-size / {world_size} per step)")
    return cfg.batch_size // world_size, -(-cfg.test_batch_size // world_size)


def select_best(best: dict, epoch: int, test_acc: float, val_acc: float | None) -> tuple[dict, bool]:
    """The best epoch so far: by validation accuracy when there is a val split (its test
    accuracy is then reported, not the best test accuracy), else by test accuracy."""
    by = "val" if val_acc is not None else "test"
    score = val_acc if by == "val" else test_acc
    improved = best["best_epoch"] < 0 or score > best.get("best_val_acc" if by == "val" else "best_acc", 0.0)
    if not improved:
        return best, False
    new = {"best_epoch": epoch, "best_acc": test_acc, "selected_by": by}
    if by == "val":
        new["best_val_acc"] = val_acc
    return new, True


RESUME_KEYS = ("model", "norm", "backend", "stats", "pretrained", "batch_size", "lr", "optimizer",
               "scheduler", "seed", "val_fraction")


def check_resumable(ckpt: dict, cfg: TrainConfig, amp: str, path: Path, identity: str | None = None) -> None:
    """A resumed run must be the same run: same data, model, recipe, schedule and precision."""
    old = ckpt.get("config") or {}
    if "epochs" in old and old["epochs"] != cfg.epochs:
        # the cosine schedule is made for the epochs it started with: extending it would train the
        # new epochs at (nearly) lr 0, shortening it would jump the schedule
        raise NormfastError(f"{path}: --resume with --epochs {cfg.epochs}, but this run was scheduled for "
                            f"{old['epochs']} epochs; start a new run with --run-name NAME (from these "
                            f"weights with --pretrained {path})")
    old_identity = ckpt.get("data_identity")        # checkpoints before it was recorded: accepted
    if identity and old_identity and old_identity != identity:
        raise NormfastError(f"{path}: --resume on different data: --data {cfg.data} is named like this run's "
                            f"dataset but holds other files (identity {identity[:12]}, the run's "
                            f"{old_identity[:12]}, from {old.get('data', '?')}); start a new run with --run-name")
    diff = [f"{k} {old.get(k)!r} -> {getattr(cfg, k)!r}" for k in RESUME_KEYS
            if k in old and old[k] != getattr(cfg, k)]
    if "amp" in ckpt and ckpt["amp"] != amp:
        diff.append(f"amp {ckpt['amp']!r} -> {amp!r}")
    if diff:
        raise NormfastError(f"{path}: --resume with a different configuration ({'; '.join(diff)}); "
                            "start a new run with --run-name")


def train(cfg: TrainConfig) -> dict:
    trainer = Trainer(cfg)
    try:
        return trainer.fit()
    finally:
        trainer.close()
        trainer.dist.close()


def is_finished(run_dir: Path, epochs: int | None = None) -> bool:
    """True when the run finished (a schedule of `epochs`, when given); see RunDir.finished."""
    return RunDir(run_dir).finished(epochs)


__all__ = ["train", "Trainer", "TrainStep", "Meter", "is_finished"]
