"""CUDA checks (`make gpu-check`): every architecture trains in fp32, bf16 and fp16 on the GPU,
collectives take CPU tensors in an NCCL group, the device input path runs on the GPU, and a
2-trial sweep shares one GPU. Marked `cuda`: skipped with a reason where no GPU is visible."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from ray_xray.config import TrainConfig
from ray_xray.data import load_data
from ray_xray.models import list_models
from ray_xray.train.loop import Trainer, train_epochs

pytestmark = pytest.mark.cuda
STEPS = 30


@pytest.fixture(scope="module")
def data64():
    return load_data("synthetic:chest3:120", 64)


def _train_steps(cfg: TrainConfig, data, steps: int = STEPS) -> list[float]:
    """`steps` training steps through the real loader and DeviceFeed on cuda: losses per step."""
    torch.manual_seed(0)
    tr = Trainer.build(cfg, data, torch.device("cuda"))
    assert tr.feed.device.type == "cuda" and tr.train_loader.pin_memory
    losses, it = [], iter(())
    for _ in range(steps):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(tr.train_loader)
            batch = next(it)
        out = tr.train_epoch([batch])
        losses.append(out["train_loss"])
    return losses


RECIPES = {
    # the default: one-cycle (warm start at lr/25), AdamW
    "onecycle": {"lr_scheduler": "onecycle", "optimizer": "adamw"},
    # the seeds': Adam at a constant lr 1e-3 (plateau rule; no epoch ends within 30 steps)
    "constant": {"lr_scheduler": "plateau", "optimizer": "adam"},
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("model", list_models())
def test_every_model_trains_in_every_precision(model, precision, recipe, data64):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cfg = TrainConfig(
        model=model,
        img_size=64,
        batch_size=32,
        lr=1e-3,
        precision=precision,
        epochs=1,
        **RECIPES[recipe],
    )
    losses = _train_steps(cfg, data64)
    assert np.isfinite(losses).all(), losses
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < first, f"{model} {precision} {recipe}: loss {first:.3f} -> {last:.3f}"


@pytest.mark.timeout(120)
def test_collectives_take_cpu_tensors_in_an_nccl_group(tmp_path):
    import torch.distributed as dist

    from ray_xray.train.collectives import all_reduce_sum, backend_device

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1)
    try:
        assert backend_device().type == "cuda"
        x = torch.tensor([3.0, 4.0])  # the H200 failure: a CPU tensor into NCCL
        y = all_reduce_sum(x)
        assert y.device == x.device and torch.equal(y, x)
        g = all_reduce_sum(torch.ones(2, device="cuda"))
        assert g.device.type == "cuda"
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_fit_on_cuda_with_device_augmentation(data64):
    cfg = TrainConfig(model="resnet18", img_size=64, batch_size=64, epochs=2)
    tr = Trainer.build(cfg, data64, torch.device("cuda"))
    assert tr.feed.augment is not None  # augment_on=auto: the device side on CUDA
    progress = train_epochs(tr)
    assert [h["epoch"] for h in progress.history] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) for h in progress.history)
    compiled = dataclasses.replace(cfg, compile=True, epochs=1)
    assert train_epochs(Trainer.build(compiled, data64, torch.device("cuda"))).history


@pytest.mark.timeout(420)
@pytest.mark.parametrize("runner", ["torchtrainer", "inline"])
def test_two_trial_sweep_shares_one_gpu(tmp_path, runner):
    """Both trial runners on one GPU, two trials at half a GPU each (auto picks torchtrainer
    for GPU trials until this passes with inline on a GPU node)."""
    env = {**os.environ, "RAY_XRAY_CACHE": str(tmp_path / "cache")}
    cmd = [
        sys.executable,
        "-m",
        "ray_xray.tune",
        "--space",
        "resnet18",
        "--smoke-test",
        "--trials",
        "2",
        "--gpus-per-trial",
        "0.5",
        "--wandb",
        "off",
        "--no-ensemble",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "gpu",
        "--trial-runner",
        runner,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = pd.read_parquet(tmp_path / "runs" / "gpu" / "results.parquet")
    assert len(rows) == 2 and (rows["status"] == "TERMINATED").all(), rows.to_string()
    assert (rows["epochs"] >= 1).all()
