"""How long a sweep will take, said before it starts: the plan (trials x epochs, so many at a
time) times one epoch of its first trial's model, timed on this machine just now."""

from __future__ import annotations

import math
import time

import torch

from ..config import TrainConfig
from ..device import pick_precision
from ..inference import autocast, build_model, uses_channels_last

WARMUP_STEPS, TIMED_STEPS = 2, 3
# Seconds of a trial's wall time outside train/val compute, by trial runner: the medians that
# `python -m benchmarks --only overhead` measured on 2 idle CPU cores (README, 2026-12-06). A
# loaded machine takes longer (a smoke sweep on the shared 2-core box: median 14 s).
STARTUP_S = {"inline": 4.1, "torchtrainer": 16.5}
# A validation image costs about a third of a training one (forward only, no backward).
VAL_SHARE = 1 / 3


def step_seconds(cfg: TrainConfig, threads: int) -> float:
    """Seconds of one training step of `cfg`'s model (forward, loss, backward, AdamW step) on
    a random batch of ``cfg.batch_size`` grey ``cfg.img_size`` px images, on the CPU with
    `threads` threads and the precision ``cfg.precision`` resolves to there
    (`device.pick_precision`), as a one-worker trial runs it; median of `TIMED_STEPS` after
    `WARMUP_STEPS`. Raises ValueError for an unknown model or hyperparameter."""
    device = torch.device("cpu")
    precision = pick_precision(cfg.precision, device)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        torch.manual_seed(0)
        model = build_model(cfg, 3).train()
        x = torch.rand(cfg.batch_size, cfg.in_chans, cfg.img_size, cfg.img_size)
        if uses_channels_last(cfg, model):
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 3, (cfg.batch_size,))
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        times = []
        for k in range(WARMUP_STEPS + TIMED_STEPS):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with autocast(device, precision):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if k >= WARMUP_STEPS:
                times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]
    finally:
        torch.set_num_threads(old_threads)


def expected_length(
    cfg: TrainConfig,
    n_train: int,
    n_val: int,
    trials: int,
    epochs: int,
    slots: int,
    threads: int,
    runner: str = "inline",
) -> tuple[float, str]:
    """(seconds, one line saying how they were reckoned) for `trials` trials of `epochs`
    epochs, `slots` at a time: per trial, `STARTUP_S[runner]` plus `epochs` epochs, each
    ceil(n_train / batch) timed training steps of `cfg` (`step_seconds` with `threads`
    threads) plus `n_val` validation images at `VAL_SHARE` of a training image. The ensemble
    after is not counted (the line says so); trials that ASHA stops early make it shorter."""
    step = step_seconds(cfg, threads)
    epoch = math.ceil(n_train / cfg.batch_size) * step + n_val * step / cfg.batch_size * VAL_SHARE
    rounds = math.ceil(trials / max(1, slots))
    startup = STARTUP_S.get(runner, STARTUP_S["torchtrainer"])
    total = rounds * (startup + epochs * epoch)
    line = (
        f"expected length: ~{_minutes(total)} ({trials} trials x ({epochs} epochs x "
        f"~{epoch:.0f} s + ~{startup:.0f} s start-up), {slots} at a time; an epoch of "
        f"{cfg.model} at {cfg.img_size} px timed just now, other architectures differ), plus "
        "the ensemble; ASHA's early stops make it shorter"
    )
    return total, line


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"
