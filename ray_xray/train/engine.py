"""Plain torch, no Ray: autocast, loss, optimiser, schedule, one epoch, evaluation, saved models.

The checkpoint files themselves (writing, reading, the format) are `ray_xray.checkpoint`'s.

`train_loop_per_worker` (worker.py) strings these together under Ray Train; the benchmark's
bare loop calls the very same functions, so the two can be compared honestly.
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import preprocess
from ..config import TrainConfig
from ..device import pick_precision
from ..models import create_model


class TrainingDiverged(RuntimeError):
    """Loss became NaN or infinite: the trial fails with this reason instead of reporting junk."""


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
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
    gamma = cfg.focal_gamma if cfg.loss == "focal" else 0.0
    return FocalLoss(gamma, class_weights if cfg.class_weights else None, cfg.label_smoothing)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
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


class Schedule:
    """One object for every policy: `step_batch()` after each optimiser step,
    `step_epoch(val_metric)` after each validation."""

    def __init__(self, cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
        self.kind, total = cfg.scheduler, max(1, cfg.epochs * steps_per_epoch)
        self.warm = int(cfg.warmup_epochs * steps_per_epoch)
        self.batch_sched, self.plateau, self.step = None, None, 0
        if self.kind == "onecycle":
            pct = self.warm / total if self.warm else 0.3
            self.batch_sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=cfg.lr, total_steps=total, pct_start=min(max(pct, 0.01), 0.9)
            )
            return
        warm = self.warm

        def factor(s: int) -> float:
            w = min(1.0, (s + 1) / warm) if warm else 1.0
            if self.kind != "cosine":
                return w
            progress = min(1.0, max(0, s - warm) / max(1, total - warm))
            return w * 0.5 * (1 + math.cos(math.pi * progress))

        if self.kind == "cosine" or warm:
            self.batch_sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        if self.kind == "plateau":  # defaults: the seeds' factor 0.5, patience 5
            mode = "min" if cfg.monitor == "val_loss" else "max"
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt,
                mode=mode,
                factor=cfg.plateau_factor,
                patience=cfg.plateau_patience,
                min_lr=cfg.min_lr,
            )

    def step_batch(self) -> None:
        self.step += 1
        # After warm-up a plain/plateau schedule stops touching the lr so the plateau rule owns it.
        if self.batch_sched is not None and (
            self.kind in ("onecycle", "cosine") or self.step <= self.warm
        ):
            self.batch_sched.step()

    def step_epoch(self, metric: float) -> None:
        if self.plateau is not None and np.isfinite(metric):
            self.plateau.step(metric)

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "batch": self.batch_sched.state_dict() if self.batch_sched else None,
            "plateau": self.plateau.state_dict() if self.plateau else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        if self.batch_sched and state["batch"]:
            self.batch_sched.load_state_dict(state["batch"])
        if self.plateau and state["plateau"]:
            self.plateau.load_state_dict(state["plateau"])


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    return create_model(
        cfg.model, num_classes, in_chans=cfg.in_chans, img_size=cfg.img_size, **cfg.model_kwargs
    )


def uses_channels_last(cfg: TrainConfig, model: nn.Module) -> bool:
    return cfg.channels_last and getattr(model, "is_conv", False)


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


@torch.no_grad()
def predict_proba(
    model, loader, device, precision, channels_last=False, feed=None
) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels int64 (N,), softmax probabilities float32 (N, K), mean cross-entropy) over a
    loader of (x, y, index) batches, in eval mode; x as `train_one_epoch` takes it."""
    model.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ys, logits_all = [], []
    for x, y, _ in loader:
        if feed is not None:
            x = feed(x)
        else:
            x = x.to(device, non_blocking=True, memory_format=fmt)
        with autocast(device, precision):
            logits_all.append(model(x).float())
        ys.append(y)
    if not ys:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), float("nan")
    logits, y = torch.cat(logits_all).cpu(), torch.cat(ys).long()  # one copy back
    loss = F.cross_entropy(logits, y).item()
    return y.numpy(), F.softmax(logits, 1).numpy(), loss


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- saved models


def inference_setup(record: dict, device: torch.device):
    """(model, feed, precision, channels_last) to run a saved model on `device` as validation
    did: eval mode, the record's memory format and precision, and a `DeviceFeed` with the
    record's own training normalisation (whatever data it is shown)."""
    cfg = TrainConfig.from_dict(record["config"])
    model = model_from_record(record).to(device)
    channels_last = uses_channels_last(cfg, model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    feed = record_feed(record, device, channels_last)
    return model, feed, pick_precision(cfg.precision, device), channels_last


def record_feed(record: dict, device: torch.device, channels_last: bool = False):
    """The `DeviceFeed` that turns uint8 (N, 1, H, W) images into a saved model's input as its
    training did: the record's data statistics, in_chans, `normalize` and `equalize` (records
    saved before those settings existed get their defaults, which is what they trained with)."""
    from ..data.feed import DeviceFeed

    cfg = TrainConfig.from_dict(record["config"])
    pre = preprocess(record)
    return DeviceFeed.for_config(cfg, pre["mean"], pre["std"], device, channels_last)


def model_from_record(record: dict) -> nn.Module:
    cfg = TrainConfig.from_dict(record["config"])
    model = build_model(cfg, len(record["classes"]))
    model.load_state_dict(record["state_dict"])
    return model.eval()
