"""The GPU path, checked on CPU: collectives on the group's device, the device-side input path
(uint8 batches, batch augmentation, normalisation), the one epoch loop. CUDA-only checks live in
tests/test_cuda.py (marked `cuda`, skipped without a GPU)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ray_xray.config import TrainConfig
from ray_xray.data import load_data
from ray_xray.data.feed import BatchAugment, DeviceFeed, normalize, pick_augment_on
from ray_xray.data.transforms import TrainPreset, to_tensor
from ray_xray.train import collectives
from ray_xray.train.loop import Hooks, Trainer, train_epochs

CPU = torch.device("cpu")

# ----------------------------------------------------------------- collectives


def test_backend_device_is_cuda_for_nccl_and_cpu_for_gloo(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert collectives.backend_device("nccl") == torch.device("cuda", 3)
    assert collectives.backend_device("NCCL") == torch.device("cuda", 3)
    assert collectives.backend_device("gloo") == CPU
    assert collectives.backend_device() == CPU  # no process group: one worker on the CPU


def test_all_reduce_hands_the_backend_tensors_on_its_device(monkeypatch):
    """The H200 failure: NCCL got CPU tensors. The helper must move a tensor to the group's
    device before the collective and bring the sum back to the caller's device."""
    seen = {}

    def fake_all_reduce(t, op=None):
        seen["device"], seen["dtype"] = t.device, t.dtype
        t.mul_(2)  # as if two workers held the same value

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    # No GPU here to copy to: check the helper asks backend_device (tested above) where the
    # tensor must go, and hands over a copy there.
    asked = []
    monkeypatch.setattr(collectives, "backend_device", lambda backend=None: asked.append(1) or CPU)
    x = torch.tensor([1.5, 2.0], dtype=torch.float64)
    y = collectives.all_reduce_sum(x)
    assert asked and seen["device"] == CPU and seen["dtype"] == torch.float64
    assert torch.equal(y, torch.tensor([3.0, 4.0], dtype=torch.float64))
    assert torch.equal(x, torch.tensor([1.5, 2.0], dtype=torch.float64))  # input untouched


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        loss_sum = collectives.all_reduce_sum(torch.tensor([10.0 * (rank + 1), 4.0]))
        stop = collectives.all_reduce_sum(torch.tensor([float(rank == 0)]))
        cover = collectives.all_reduce_sum(
            torch.zeros(6).index_fill_(0, torch.tensor([rank, rank + 2]), 1)
        )
        out.put(
            (
                rank,
                loss_sum.tolist(),
                stop.item(),
                cover.tolist(),
                str(collectives.backend_device()),
            )
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_all_reduce_sums_over_a_real_two_process_gloo_group():
    ctx = mp.get_context("spawn")
    out, port = ctx.SimpleQueue(), _free_port()
    mp.start_processes(_worker, args=(2, port, out), nprocs=2, join=True, start_method="spawn")
    results = sorted(out.get() for _ in range(2))
    for _, loss_sum, stop, cover, device in results:
        assert loss_sum == [30.0, 8.0]  # 10 + 20 images' loss, 4 + 4 images
        assert stop == 1.0  # rank 0's decision reaches rank 1
        assert cover == [1, 1, 1, 1, 0, 0]
        assert device == "cpu"


# ----------------------------------------------------------------- input path


def _image(size: int = 32) -> np.ndarray:
    """An asymmetric uint8 test image: a bright block in the upper left, a ramp elsewhere."""
    img = np.tile(np.linspace(40, 200, size, dtype=np.float32), (size, 1))
    img[2 : size // 3, 2 : size // 4] = 250
    return img.astype(np.uint8)


def test_normalize_matches_the_per_image_reference():
    img = _image()
    ref = to_tensor(img, 0.4, 0.2, 3)
    batch = normalize(torch.from_numpy(img)[None, None], 0.4, 0.2, 3)
    assert batch.shape == (1, 3, 32, 32) and batch.dtype == torch.float32
    assert torch.allclose(batch[0], ref)
    assert torch.allclose(ref[0], (torch.from_numpy(img).float() / 255 - 0.4) / 0.2)


def test_batch_augment_at_strength_zero_is_the_identity():
    x = torch.from_numpy(_image()).float()[None, None].repeat(4, 1, 1, 1)
    assert torch.equal(BatchAugment(0.0)(x), x)


def test_batch_augment_geometry_is_exact_for_known_parameters():
    aug = BatchAugment(1.0)
    x = torch.from_numpy(_image()).float()[None, None]
    one, zero = torch.ones(1), torch.zeros(1)
    ident = torch.tensor([[[1.0, 0, 0], [0, 1, 0]]])
    assert torch.allclose(aug.apply(x, ident, one, zero), x, atol=1e-3)
    flip = torch.tensor([[[-1.0, 0, 0], [0, 1, 0]]])
    assert torch.allclose(aug.apply(x, flip, one, zero), x.flip(-1), atol=1e-3)
    # 90 degrees: grid_sample on the pixel grid is an exact rot90.
    rot = torch.tensor([[[0.0, -1, 0], [1, 0, 0]]])
    assert torch.allclose(aug.apply(x, rot, one, zero), torch.rot90(x, 1, (-2, -1)), atol=1e-3)
    # Brightness/contrast: alpha * x + beta, clipped to grey levels.
    out = aug.apply(x, ident, torch.tensor([1.2]), torch.tensor([-30.0]))
    assert torch.allclose(out, (x * 1.2 - 30).clamp(0, 255), atol=1e-3)


def test_batch_augment_draws_per_image_and_follows_the_flip_probability():
    aug = BatchAugment(1.0, "flip")
    g = torch.Generator().manual_seed(0)
    theta, _, _ = aug.sample(4000, CPU, g)
    flipped = (theta[:, 0, 0] < 0).float().mean().item()
    assert abs(flipped - 0.5) < 0.03  # p = 0.5, 4000 draws: sd 0.008
    x = torch.from_numpy(_image()).float()[None, None].repeat(64, 1, 1, 1)
    out = aug(x, torch.Generator().manual_seed(1))
    same = [torch.equal(o, x[0]) for o in out]
    assert 0 < sum(same) < 64  # some images flipped, some not: one draw per image


def test_batch_augment_matches_the_albumentations_recipe_on_average():
    """The device recipe and the loader recipe (albumentations, what runs on CPU) are the same
    distribution: the mean image over many draws, the black-border share and the brightness
    spread agree. A wrong sign, range or probability moves these by far more than the bounds."""
    size, n = 48, 1500
    img = _image(size)
    preset = TrainPreset(size, 1.0, "seeds")
    preset.aug.set_random_seed(0)
    ref = np.stack([preset(img) for _ in range(n)]).astype(np.float32)
    x = torch.from_numpy(img).float()[None, None].repeat(n, 1, 1, 1)
    dev = BatchAugment(1.0, "seeds")(x, torch.Generator().manual_seed(0))[:, 0].numpy()
    mean_ref, mean_dev = ref.mean(0), dev.mean(0)
    assert np.abs(mean_ref - mean_dev).mean() < 4.0  # grey levels, of a 0-255 image
    black_ref, black_dev = (ref < 1).mean(), (dev < 1).mean()
    assert abs(black_ref - black_dev) < 0.02, (black_ref, black_dev)
    spread_ref, spread_dev = ref.mean((1, 2)).std(), dev.mean((1, 2)).std()
    assert abs(spread_ref - spread_dev) / spread_ref < 0.2, (spread_ref, spread_dev)


def test_device_feed_augments_only_in_training_and_sets_the_format():
    img = torch.from_numpy(_image())[None, None].repeat(8, 1, 1, 1)
    feed = DeviceFeed(0.5, 0.25, 3, CPU, channels_last=True, augment=BatchAugment(1.0))
    plain = feed(img)
    assert plain.shape == (8, 3, 32, 32) and plain.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(plain, normalize(img, 0.5, 0.25, 3))
    torch.manual_seed(0)
    assert not torch.allclose(feed(img, train=True), plain)


def test_augment_on_auto_picks_the_device_on_cuda_and_the_loader_on_cpu():
    assert pick_augment_on("auto", torch.device("cuda")) == "device"
    assert pick_augment_on("auto", CPU) == "loader"
    assert pick_augment_on("device", CPU) == "device"
    with pytest.raises(ValueError, match="augment_on"):
        pick_augment_on("gpu", CPU)


def test_uint8_batches_reach_the_device_and_only_the_device_normalises():
    data = load_data("synthetic:chest3:8", 32)
    ds = data.dataset("train")
    x, y, i = ds[3]
    assert x.dtype == torch.uint8 and x.shape == (1, 32, 32) and i == 3
    assert torch.equal(x[0], torch.from_numpy(data.images["train"][3]))


# ----------------------------------------------------------------- one loop


class _Count(Hooks):
    def __init__(self):
        self.epochs, self.improved = [], []

    def on_epoch(self, metrics, improved, progress):
        self.epochs.append(metrics["epoch"])
        self.improved.append(improved)


@pytest.mark.parametrize("augment_on", ["loader", "device"])
def test_fit_trains_on_either_augmentation_side_and_stops_early(augment_on):
    data = load_data("synthetic:chest3:12", 32)
    cfg = TrainConfig(
        model="cnn_lstm",
        img_size=32,
        epochs=6,
        batch_size=8,
        patience=1,
        augment_on=augment_on,
        precision="fp32",
        lr=3e-3,
    )
    torch.manual_seed(0)
    tr = Trainer.build(cfg, data, CPU)
    hooks = _Count()
    progress = train_epochs(tr, hooks=hooks)
    h = progress.history
    assert hooks.epochs == [m["epoch"] for m in h] and len(h) <= 6
    assert all(np.isfinite(m["train_loss"]) and m["train_images"] == 36 for m in h)
    assert progress.best_epoch == max(h, key=lambda m: m["val_macro_f1"])["epoch"]
    if len(h) < 6:  # stopped early: exactly `patience` epochs without a gain
        assert progress.since_best == 1 and not hooks.improved[-1]
