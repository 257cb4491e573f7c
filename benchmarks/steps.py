"""A real training step on synthetic batches, through the project's own `train_one_epoch`.

Precision, roofline and datapath time exactly what training runs (autocast, channels_last,
AdamW, gradient clipping, the loss, `loss.item()` each step), only without data loading.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ray_xray.config import TrainConfig
from ray_xray.inference import build_model, uses_channels_last
from ray_xray.train import engine

CPU = torch.device("cpu")


class TrainStep:
    """One model + optimiser; `rate(steps, precision)` trains `steps` batches, returns images/s."""

    def __init__(
        self,
        model: str,
        img_size: int,
        batch_size: int,
        channels_last: bool,
        num_classes: int = 3,
        seed: int = 0,
        cfg: TrainConfig | None = None,
    ):
        """`cfg`: take model hyperparameters, loss and optimiser settings from it."""
        base = cfg or TrainConfig(model=model)
        self.cfg = dataclasses.replace(
            base,
            model=model,
            img_size=img_size,
            batch_size=batch_size,
            channels_last=channels_last,
            precision="fp32",
        )
        torch.manual_seed(seed)
        self.model = build_model(self.cfg, num_classes)
        self.channels_last = uses_channels_last(self.cfg, self.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = engine.make_optimizer(self.cfg, self.model)
        self.sched = engine.Schedule(
            self.cfg, self.opt, 10**6
        )  # one-cycle over a horizon never reached
        self.loss = engine.make_loss(self.cfg, None)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(batch_size, self.cfg.in_chans, img_size, img_size, generator=g)
        y = torch.randint(0, num_classes, (batch_size,), generator=g)
        self.batch = (x, y, torch.arange(batch_size))
        self.is_conv = bool(getattr(self.model, "is_conv", False))

    def run(self, steps: int, precision: str) -> dict:
        scaler = engine.make_scaler(CPU, precision)
        return engine.train_one_epoch(
            self.model,
            [self.batch] * steps,
            self.loss,
            self.opt,
            self.sched,
            scaler,
            CPU,
            precision,
            self.cfg.grad_clip,
            self.channels_last,
        )

    def rate(self, steps: int, precision: str) -> float:
        out = self.run(steps, precision)
        return out["train_images"] / out["train_s"]

    def steps_for(self, seconds: float, precision: str, max_steps: int = 50) -> int:
        """How many steps make one measurement last about `seconds` (at least one)."""
        t0 = time.perf_counter()
        self.run(1, precision)
        dt = time.perf_counter() - t0
        return int(min(max_steps, max(1, round(seconds / max(dt, 1e-6)))))


def count_step_flops(step: TrainStep, precision: str = "fp32") -> dict:
    """FLOPs of one training step (forward + backward) by torch.utils.flop_counter.

    The counter sees matmuls, convolutions and attention, not elementwise work (activations,
    norms, the optimiser) nor fused RNN kernels: the usual basis for a roofline.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step.run(1, precision)
    per_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return {"total": int(counter.get_total_flops()), "per_op": per_op}
