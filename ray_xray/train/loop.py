"""The one epoch loop: train, validate, track the best epoch, early-stop, step the plateau rule.

`train_loop_per_worker` (Ray Train, worker.py) and active learning (active/loop.py) both run
`train_epochs`; what differs between them (all-reduces, reports and checkpoints, keeping the best
weights in memory) comes in through `Hooks`. `Trainer.build` puts together the model, optimiser,
schedule, loaders and the device feed the same way for both.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..data import class_weights
from ..data.dataset import loader as make_loader
from ..data.dataset import seed_augmentation
from ..data.feed import BatchAugment, DeviceFeed, pick_augment_on
from ..device import pick_precision
from ..inference import build_model, predict_proba, uses_channels_last
from ..metrics import summary
from . import engine


@dataclass
class Trainer:
    """Everything one training run steps: built once by `Trainer.build`, then stepped by
    `train_epochs`."""

    cfg: TrainConfig
    model: nn.Module  # what trains (DDP-wrapped under Ray Train with several workers)
    bare: nn.Module  # the plain module: evaluation and state dicts
    loss_fn: nn.Module
    opt: torch.optim.Optimizer
    sched: engine.Schedule
    scaler: torch.amp.GradScaler
    device: torch.device
    precision: str
    channels_last: bool
    feed: DeviceFeed
    train_loader: object
    val_loader: object
    classes: list[str]

    def train_epoch(
        self, batches, coverage: torch.Tensor | None = None, on_step=None, *, fed: bool = False
    ) -> dict:
        """One `engine.train_one_epoch` over `batches` (this run's loader, or any iterable of
        `(uint8 images (B, C, H, W), labels (B,), row ids)`, fed through `self.feed`; with
        `fed=True`, float images already on the device and normalised) with this run's model,
        loss, optimiser, schedule, scaler, precision and grad clipping.

        Returns train_one_epoch's dict (`train_loss`, `train_images`, ...)."""
        return engine.train_one_epoch(
            self.model,
            batches,
            self.loss_fn,
            self.opt,
            self.sched,
            self.scaler,
            self.device,
            self.precision,
            self.cfg.grad_clip,
            self.channels_last,
            coverage,
            on_step=on_step,
            feed=None if fed else self.feed,
        )

    @classmethod
    def build(
        cls,
        cfg: TrainConfig,
        data,
        device: torch.device,
        *,
        train_idx=None,
        prepare_model=None,
        prepare_loader=None,
        world: int = 1,
    ) -> Trainer:
        """Model, optimiser, schedule and loaders for `data` (a `PreparedData`) on `device`.

        `train_idx`: train on these training rows only (active learning's labelled set; class
        weights then come from their counts). `prepare_model`/`prepare_loader`: Ray Train's
        `prepare_model` / `prepare_data_loader` (DDP wrapping, distributed sampler).
        """
        precision = pick_precision(cfg.precision, device)
        model, bare, channels_last = _placed_model(cfg, len(data.classes), device, prepare_model)
        on = pick_augment_on(cfg.augment_on, device, cfg.augment)
        train_loader, labels = _train_loader(cfg, data, device, on, train_idx, world)
        if prepare_loader:
            train_loader = prepare_loader(train_loader)
        val_loader = None  # a refit (cv_fold -1) has no validation images
        if len(data.labels["val"]):
            val_loader = make_loader(data.dataset("val"), max(64, cfg.batch_size), device=device)
        augment = BatchAugment(cfg.aug_strength, cfg.augment) if on == "device" else None

        counts = np.bincount(labels, minlength=len(data.classes))
        loss_fn = engine.make_loss(cfg, class_weights(counts) if cfg.class_weights else None)
        opt = engine.make_optimizer(cfg, model)
        feed = data.feed(cfg.in_chans, device, channels_last, augment, cfg.normalize, cfg.equalize)
        return cls(
            cfg,
            model,
            bare,
            loss_fn.to(device),
            opt,
            engine.Schedule(cfg, opt, len(train_loader)),
            engine.make_scaler(device, precision),
            device,
            precision,
            channels_last,
            feed,
            train_loader,
            val_loader,
            list(data.classes),
        )

    def state_dict(self) -> dict:
        """Model, optimiser, schedule and scaler states: what a checkpoint resumes from."""
        return {
            "model": self.bare.state_dict(),
            "optimizer": self.opt.state_dict(),
            "schedule": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`'s output (the optimiser before the schedule, which reads
        the optimiser's learning rate when it replays an old checkpoint's schedule)."""
        self.bare.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])


def _placed_model(
    cfg: TrainConfig, num_classes: int, device: torch.device, prepare_model=None
) -> tuple[nn.Module, nn.Module, bool]:
    """(model that trains, the plain module, channels_last): `cfg`'s model for `num_classes`,
    channels-last where it helps, on `device` (or through Ray Train's `prepare_model`: DDP),
    `torch.compile`d when `cfg.compile`."""
    model = build_model(cfg, num_classes)
    channels_last = uses_channels_last(cfg, model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = prepare_model(model) if prepare_model else model.to(device)
    bare = model.module if hasattr(model, "module") else model
    if cfg.compile:
        model = torch.compile(model)
    return model, bare, channels_last


def _train_loader(
    cfg: TrainConfig, data, device: torch.device, on: str, train_idx=None, world: int = 1
) -> tuple[object, np.ndarray]:
    """(shuffled training loader, int class indices of the rows it serves). Loader-side
    augmentation when `on` is "loader"; `train_idx` keeps those training rows only; `world`
    DDP workers share each epoch (a ragged last batch of one image is dropped)."""
    strength = cfg.aug_strength if on == "loader" else 0.0
    train_ds = data.dataset("train", aug_strength=strength, augment=cfg.augment)
    seed_augmentation(train_ds, cfg.train_seed)
    labels = data.labels["train"]
    if train_idx is not None:
        train_ds = torch.utils.data.Subset(train_ds, [int(i) for i in train_idx])
        labels = labels[np.asarray(train_idx, dtype=np.int64)]
    # Drop a ragged last batch only when it would be tiny: BatchNorm cannot train on 1 image.
    drop_last = len(train_ds) // world % cfg.batch_size == 1
    gen = torch.Generator().manual_seed(cfg.train_seed)
    workers = loader_workers(cfg.loader_workers if on == "loader" else 0)
    loader = make_loader(
        train_ds,
        cfg.batch_size,
        shuffle=True,
        drop_last=drop_last,
        device=device,
        workers=workers,
        generator=gen,
    )
    return loader, labels


def loader_workers(asked: int) -> int:
    """Loader processes for a run that asked for `asked`: at most its CPU share, which is
    torch's thread count here (`worker.run_training` sets it to the trial's CPUs). Each loader
    process is one more busy CPU beside the training threads; more of them than the trial
    holds would slow the trials beside it. Says so when it takes fewer."""
    share = torch.get_num_threads()
    if asked > share:
        print(f"loader_workers {asked} -> {share}: this run holds {share} CPU(s)", flush=True)
    return min(asked, share)


@dataclass
class Progress:
    """Where a run stands: the last finished epoch, the best so far and the epochs since."""

    epoch: int = 0
    best_value: float | None = None
    best_epoch: int = 0
    since_best: int = 0
    history: list[dict] = field(default_factory=list)

    def update(self, epoch: int, value: float, maximise: bool) -> bool:
        """Record `epoch`'s monitored value; True when it is the best so far."""
        self.epoch = epoch
        best = self.best_value
        improved = best is None or (value > best if maximise else value < best)
        if improved:
            self.best_value, self.best_epoch, self.since_best = value, epoch, 0
        else:
            self.since_best += 1
        return improved

    def to_dict(self) -> dict:
        """The progress as a plain dict (for the training state)."""
        return dataclasses.asdict(self)


class Hooks:
    """What a caller of `train_epochs` adds; the defaults are a single in-process run."""

    def on_step(self, epoch: int, steps: int):
        """A callable(step) run before every training step of `epoch`, or None."""
        return None

    def before_epoch(self, epoch: int) -> None:
        """E.g. a distributed sampler's set_epoch."""

    def reduce_train(self, out: dict, coverage: torch.Tensor | None) -> dict:
        """The epoch's training figures over all workers: train_loss, train_images, ..."""
        return {"train_loss": out["train_loss"], "train_images": out["train_images"]}

    def agree_stop(self, stop: bool) -> bool:
        """Whether every worker stops (one worker's decision, shared)."""
        return stop

    def on_epoch(self, metrics: dict, improved: bool, progress: Progress) -> None:
        """After validation: report, checkpoint, keep the best weights..."""


def _validate(tr: Trainer) -> dict:
    """`val_loss` and `metrics.summary`'s figures on the validation split; {} for a refit
    (no validation images)."""
    if tr.val_loader is None:
        return {}
    y, prob, val_loss = predict_proba(
        tr.bare, tr.val_loader, tr.device, tr.precision, tr.channels_last, feed=tr.feed
    )
    return {"val_loss": val_loss, **summary(y, prob, tr.classes)}


def train_epochs(
    tr: Trainer,
    progress: Progress | None = None,
    hooks: Hooks | None = None,
    coverage_size: int = 0,
) -> Progress:
    """Train `tr` from the epoch after `progress.epoch` to `cfg.epochs`, or until `cfg.patience`
    epochs pass without a better `cfg.monitor`. Every epoch: `train_one_epoch`, validation
    metrics (`metrics.summary`), the plateau rule on the monitored value, then `hooks.on_epoch`.
    `coverage_size` > 0 counts how often each training row was seen (DDP checks).
    Returns the final `Progress` (its history holds one metrics dict per epoch)."""
    cfg, hooks = tr.cfg, hooks or Hooks()
    progress = progress or Progress()
    maximise = cfg.monitor != "val_loss"
    for epoch in range(progress.epoch + 1, cfg.epochs + 1):
        hooks.before_epoch(epoch)
        t0 = time.perf_counter()
        coverage = torch.zeros(coverage_size) if coverage_size else None
        out = tr.train_epoch(tr.train_loader, coverage, hooks.on_step(epoch, len(tr.train_loader)))
        train = hooks.reduce_train(out, coverage)
        metrics = {"epoch": epoch, **train, **_validate(tr)}
        metrics.update(
            train_s=out["train_s"],
            epoch_s=time.perf_counter() - t0,
            images_per_s=train["train_images"] / out["train_s"],
            lr=tr.opt.param_groups[0]["lr"],
        )
        if tr.val_loader is None:  # a refit: nothing to monitor; the last epoch is the model
            progress.epoch = progress.best_epoch = epoch
            improved = True
        else:
            improved = progress.update(epoch, metrics[cfg.monitor], maximise)
            metrics[f"best_{cfg.monitor}"] = progress.best_value
        tr.sched.step_epoch(metrics.get(cfg.monitor, math.nan))  # NaN: plateau never steps
        metrics.update(best_epoch=progress.best_epoch, improved=int(improved))
        stop = hooks.agree_stop(bool(cfg.patience and progress.since_best >= cfg.patience))
        progress.history.append(dict(metrics))
        hooks.on_epoch(metrics, improved, progress)
        if stop:
            break
    return progress
