"""Seed recipes: plateau settings, the seed spaces, pretrained grey stems and timm backbones."""

from __future__ import annotations

import pytest
import torch

from ray_xray.config import TrainConfig
from ray_xray.train import engine as E


def _plateau_lrs(cfg: TrainConfig, metrics: list[float]) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = E.Schedule(cfg, opt, 10)
    out = []
    for m in metrics:
        sched.step_epoch(m)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_plateau_factor_patience_and_floor_are_settings():
    flat = [0.5] * 8  # never improves after the first epoch
    # Defaults: the seeds' factor 0.5 after 5 stalled epochs.
    assert _plateau_lrs(TrainConfig(scheduler="plateau", lr=1.0), flat)[-1] == 0.5
    brain = TrainConfig(scheduler="plateau", lr=1e-5, plateau_factor=0.1, plateau_patience=3,
                        min_lr=1e-6)  # fmt: skip
    lrs = _plateau_lrs(brain, flat)
    assert lrs[3] == pytest.approx(1e-5) and lrs[4] == pytest.approx(1e-6)  # after 3 stalls
    assert lrs[-1] == pytest.approx(1e-6)  # never below min_lr
    for bad in ({"plateau_factor": 1.0}, {"plateau_patience": -1}, {"min_lr": -1.0}):
        with pytest.raises(ValueError, match="plateau|min_lr"):
            TrainConfig(**bad)
