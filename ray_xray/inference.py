"""The saved-model runtime: build a model from its config or record, feed it images as its
training did, run it under its precision, and average an ensemble's members.

Training (`train/`) uses `autocast`, `build_model` and `predict_proba` for its own validation;
`predict`, `evaluate`, `ensemble` and `report` run saved models through this module only, so
none of them imports the training engine. The checkpoint format itself is `checkpoint.py`'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import preprocess
from .config import TrainConfig
from .device import pick_precision
from .models import create_model


def autocast(device: torch.device, precision: str):
    """The autocast context for `precision` ("fp32": none; "bf16"/"fp16": torch.autocast with
    that dtype on `device`'s type). `precision` is already resolved (`pick_precision`)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """A fresh (untrained) `cfg.model` with `num_classes` outputs, `cfg.in_chans` input
    channels, sized for `cfg.img_size` pixels, with `cfg.model_kwargs`. Raises ValueError for
    an unknown model or hyperparameter (`models.create_model`)."""
    return create_model(
        cfg.model, num_classes, in_chans=cfg.in_chans, img_size=cfg.img_size, **cfg.model_kwargs
    )


def uses_channels_last(cfg: TrainConfig, model: nn.Module) -> bool:
    """Whether `model` runs in channels_last memory format: asked for and a convolutional net."""
    return cfg.channels_last and getattr(model, "is_conv", False)


def model_from_record(record: dict) -> nn.Module:
    """The model a record (`checkpoint.model_record`) saved: built from its config, weights
    loaded, in eval mode, on the CPU. Raises RuntimeError when the weights do not fit."""
    cfg = TrainConfig.from_dict(record["config"])
    model = build_model(cfg, len(record["classes"]))
    model.load_state_dict(record["state_dict"])
    return model.eval()


def record_feed(record: dict, device: torch.device, channels_last: bool = False):
    """The `DeviceFeed` that turns uint8 (N, 1, H, W) images into a saved model's input as its
    training did: the record's data statistics, in_chans, `normalize` and `equalize` (records
    saved before those settings existed get their defaults, which is what they trained with)."""
    from .data.feed import DeviceFeed

    cfg = TrainConfig.from_dict(record["config"])
    pre = preprocess(record)
    return DeviceFeed.for_config(cfg, pre["mean"], pre["std"], device, channels_last)


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


@torch.no_grad()
def predict_proba(
    model, loader, device, precision, channels_last=False, feed=None
) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels int64 (N,), softmax probabilities float32 (N, K), mean cross-entropy) over a
    loader of (x, y, index) batches, in eval mode. With `feed` (a `DeviceFeed`) x is uint8
    (N, 1, H, W) and `feed` makes the model's input; without, x is that input already."""
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


def member_proba(logits, temperature: float = 1.0) -> np.ndarray:
    """float64 (N, K) softmax(logits / temperature) of one (calibrated) member's logits (N, K)
    (numpy or torch). float64 so that an ensemble's mean sums to 1 to ~1e-12."""
    from .calibration import softmax  # lazily: scipy.optimize, which training never needs

    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().numpy()
    return softmax(np.asarray(logits, dtype=np.float64) / float(temperature))


def ensemble_proba(member_probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """An ensemble's answer: the weighted mean of its members' (N, K) probabilities (each
    `member_proba` of its logits at its own temperature), float64 (N, K), rows summing to 1.

    `weights` (one per member, >= 0, any scale) are normalised; members of weight 0 are left
    out, so they cannot bring a NaN in. Raises ValueError when no weight is positive.
    """
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != len(member_probs) or not (w > 0).any():
        raise ValueError(f"ensemble_proba: need one weight per member, some > 0; got {list(w)}")
    w = w / w.sum()
    total = sum(
        wi * np.asarray(p, dtype=np.float64)
        for wi, p in zip(w, member_probs, strict=True)
        if wi > 0
    )
    return total / total.sum(axis=1, keepdims=True)
