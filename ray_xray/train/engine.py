"""Plain torch, no Ray: the training engine. Loss, optimiser, learning-rate schedule, scaler
and one training epoch (device and precision choice: `ray_xray.device`).

Running a saved model (autocast, building a model from its record, predict_proba, ensembles)
is `ray_xray.inference`'s; the checkpoint files themselves are `ray_xray.checkpoint`'s.

`train_loop_per_worker` (worker.py) strings these together under Ray Train; the benchmark's
bare loop calls the very same functions, so the two can be compared honestly.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..inference import autocast


class TrainingDiverged(RuntimeError):
    """Loss became NaN or infinite: the trial fails with this reason instead of reporting junk."""


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """The GradScaler for `precision` (resolved): enabled only for fp16, a no-op otherwise."""
    # Only fp16 underflows gradients; bf16 has fp32's exponent range.
    if precision == "fp16" and device.type == "cuda":
        # cuBLAS may reduce split-K fp16 GEMMs in fp16 (PyTorch's default allows it): with the
        # 9,216-25,088-wide inputs of the alexnet/vgg16/cnn heads that loses precision and can
        # overflow. A defensive setting, not a verified fix of the fp16 divergence (issue #15).
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017); gamma=0 is exactly (weighted, smoothed) cross-entropy."""

    def __init__(
        self, gamma: float = 0.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0
    ):
        super().__init__()
        self.gamma, self.label_smoothing = gamma, label_smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss (scalar) of logits (N, K) against int64 targets (N,)."""
        logits = logits.float()  # the (1-p)^gamma term is fragile in half precision
        ce = F.cross_entropy(
            logits,
            target,
            weight=self.weight,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )
        if self.gamma == 0:
            loss = ce
        else:
            p_true = F.softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
            loss = (1 - p_true).clamp(min=0) ** self.gamma * ce
        if self.weight is not None:  # match cross_entropy's weighted mean
            return loss.sum() / self.weight[target].sum()
        return loss.mean()


def make_loss(cfg: TrainConfig, class_weights: torch.Tensor | None) -> nn.Module:
    """The training loss: `FocalLoss` (gamma 0, i.e. cross-entropy, unless cfg.loss is
    "focal"), with `class_weights` (K,) when cfg.class_weights, and cfg.label_smoothing."""
    gamma = cfg.focal_gamma if cfg.loss == "focal" else 0.0
    return FocalLoss(gamma, class_weights if cfg.class_weights else None, cfg.label_smoothing)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov, cfg.momentum), AdamW or Adam at cfg.lr, in two parameter groups: the
    weights with cfg.weight_decay, norms and biases (ndim <= 1) without."""
    # No weight decay on norms and biases: standard practice, matters for ViT/LSTM.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr)


def lr_schedulers(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    """(per_batch, plateau): torch's schedulers for `cfg.lr_scheduler`, composed as torchvision's
    references/classification/train.py does. `per_batch` (stepped after every optimiser step)
    is None or an LRScheduler; `plateau` (stepped with the monitored metric after every
    validation) is None or a ReduceLROnPlateau.

    - onecycle: OneCycleLR over epochs x steps_per_epoch steps; its rise is the warm-up
      (`warmup_epochs`, else 30 % of the run), clipped to 1-90 %.
    - cosine: CosineAnnealingLR to 0 at the last step, after a LinearLR warm-up from lr/warm
      to lr over the first `warm` steps when warmup_epochs > 0 (SequentialLR).
    - plateau: ReduceLROnPlateau on `monitor` (factor, patience, min_lr); none: constant lr.
      Either after the same LinearLR warm-up, which leaves the lr alone once it is done
      (it rescales the lr it finds, so the plateau rule owns the lr from then on).
    """
    sched = torch.optim.lr_scheduler
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.lr_scheduler == "onecycle":
        pct = warm / total if warm else 0.3
        one = sched.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total, pct_start=min(max(pct, 0.01), 0.9)
        )
        return one, None
    # Step s of the warm-up runs at lr x (s + 1) / warm, reaching lr at step warm - 1.
    warmup = sched.LinearLR(opt, 1 / warm, 1.0, max(warm - 1, 0)) if warm else None
    per_batch = warmup
    if cfg.lr_scheduler == "cosine":
        cosine = sched.CosineAnnealingLR(opt, T_max=max(1, total - warm))
        per_batch = sched.SequentialLR(opt, [warmup, cosine], [warm]) if warm else cosine
    plateau = None
    if cfg.lr_scheduler == "plateau":  # defaults: the seeds' factor 0.5, patience 5
        plateau = sched.ReduceLROnPlateau(
            opt,
            mode="min" if cfg.monitor == "val_loss" else "max",
            factor=cfg.plateau_factor,
            patience=cfg.plateau_patience,
            min_lr=cfg.min_lr,
        )
    return per_batch, plateau


class Schedule:
    """A run's learning-rate schedule (`lr_schedulers`): `step_batch()` after each optimiser
    step, `step_epoch(val_metric)` after each validation; `state_dict`/`load_state_dict` for
    checkpoints."""

    # state_dict's "format": 2 holds torch's own scheduler states. Checkpoints saved before
    # (no "format") hold a hand-written LambdaLR's state; they resume by replaying the steps.
    FORMAT = 2

    def __init__(self, cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
        self.opt, self.step = opt, 0
        self.batch_sched, self.plateau = lr_schedulers(cfg, opt, steps_per_epoch)

    def step_batch(self) -> None:
        """After every optimiser step."""
        self.step += 1
        if self.batch_sched is not None:
            self.batch_sched.step()

    def step_epoch(self, metric: float) -> None:
        """After every validation, with the monitored metric (NaN/inf: ignored)."""
        if self.plateau is not None and np.isfinite(metric):
            self.plateau.step(metric)

    def state_dict(self) -> dict:
        """{"format", "step", "batch", "plateau"}: torch's scheduler states, for checkpoints."""
        return {
            "format": self.FORMAT,
            "step": self.step,
            "batch": self.batch_sched.state_dict() if self.batch_sched else None,
            "plateau": self.plateau.state_dict() if self.plateau else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`'s output; call after the optimiser's own load_state_dict.
        Raises ValueError (one line) for a state from a newer format."""
        fmt = state.get("format", 1)
        if fmt > self.FORMAT:
            raise ValueError(f"schedule state format {fmt} is newer than this version's")
        if fmt == 1 and self.batch_sched is not None:
            self._replay(int(state["step"]))
        elif self.batch_sched is not None and state["batch"]:
            self.batch_sched.load_state_dict(state["batch"])
        self.step = state["step"]
        if self.plateau and state["plateau"]:
            self.plateau.load_state_dict(state["plateau"])

    def _replay(self, steps: int) -> None:
        # An old checkpoint: step a fresh scheduler to where the run was, then give the
        # optimiser back the lr it saved (which has any plateau reductions in it).
        saved = [g["lr"] for g in self.opt.param_groups]
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()"
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(steps):
                self.batch_sched.step()
        for g, lr in zip(self.opt.param_groups, saved, strict=True):
            g["lr"] = lr


# How often the training loop looks at the loss on the host. Every look waits for the device to
# finish (a `.item()` each step measured 13 % of the step rate on an H200 with the old loader), so
# the loss is summed on the device and checked for NaN/inf every CHECK_EVERY steps and at the end.
CHECK_EVERY = 50


def _diverged(total: torch.Tensor, step: int) -> TrainingDiverged:
    return TrainingDiverged(
        f"loss became {float(total)} by step {step}; lower lr, add warmup_epochs, or use fp32"
    )


def train_one_epoch(
    model,
    loader,
    loss_fn,
    opt,
    sched,
    scaler,
    device,
    precision,
    grad_clip,
    channels_last=False,
    coverage: torch.Tensor | None = None,
    on_step=None,
    feed=None,
) -> dict:
    """One pass over `loader`: forward under autocast, scaled backward, clipped step, schedule.

    Batches are (x, y, index). With `feed` (a `DeviceFeed`), x is uint8 (N, 1, H, W) and `feed`
    moves, augments and normalises it on `device`; without, x is the model's float input.
    Returns {"train_loss": mean loss (float), "train_images": int, "train_s": seconds}; the only
    host synchronisations are every CHECK_EVERY steps and at the end. Raises TrainingDiverged
    when the loss is not finite.
    """
    model.train()
    total = torch.zeros((), device=device)
    n, t0 = 0, time.perf_counter()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    step = -1
    for step, (x, y, idx) in enumerate(loader):
        if on_step is not None:
            on_step(step)
        if feed is not None:
            x = feed(x, train=True)
        else:
            x = x.to(device, non_blocking=True, memory_format=fmt)
        y = y.to(device, non_blocking=True)
        with autocast(device, precision):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(opt)
        scaler.update()
        sched.step_batch()
        total += loss.detach().float() * len(y)
        n += len(y)
        if coverage is not None:
            coverage[idx] += 1
        if step % CHECK_EVERY == CHECK_EVERY - 1 and not torch.isfinite(total):
            raise _diverged(total, step)
    if not torch.isfinite(total):
        raise _diverged(total, step)
    mean = float(total) / max(n, 1)  # one synchronisation per epoch
    dt = time.perf_counter() - t0
    return {"train_loss": mean, "train_images": n, "train_s": dt}


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU and CUDA)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
