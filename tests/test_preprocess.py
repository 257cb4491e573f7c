"""Shift-robust input options (issue #19 item 3): per-image normalisation, histogram
equalisation, the `robust` augmentation preset, and that a saved model is fed at inference
exactly as it was in training."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ray_xray import checkpoint, inference
from ray_xray.config import TrainConfig
from ray_xray.data import load_data
from ray_xray.data.feed import BatchAugment, DeviceFeed, equalize_hist, normalize, pick_augment_on
from ray_xray.data.transforms import TrainPreset
from ray_xray.predict import predict
from ray_xray.train.loop import Trainer

CPU = torch.device("cpu")


def _images(n: int = 6, side: int = 40) -> np.ndarray:
    """Grey images of different kinds: full range, low contrast, dark, two levels, constant."""
    rng = np.random.default_rng(0)
    ims = [
        rng.integers(0, 256, (side, side)),
        rng.integers(100, 140, (side, side)),
        (rng.random((side, side)) ** 3 * 255).astype(int),
        np.where(rng.random((side, side)) < 0.3, 20, 200),
        np.full((side, side), 77),
        rng.normal(128, 30, (side, side)).clip(0, 255).astype(int),
    ]
    return np.stack(ims[:n]).astype(np.uint8)


def test_equalize_hist_is_opencvs_mapping_on_a_batch():
    ims = _images()
    got = equalize_hist(torch.from_numpy(ims)[:, None])
    assert got.shape == (len(ims), 1, 40, 40) and got.dtype == torch.float32
    for k, im in enumerate(ims):
        assert np.array_equal(got[k, 0].numpy().astype(np.uint8), cv2.equalizeHist(im)), k


def test_image_normalisation_is_a_z_score_that_ignores_brightness_and_contrast():
    x = torch.from_numpy(_images()[:4])[:, None].float()
    z = normalize(x, 0.3, 0.2, 1, "image")
    assert torch.allclose(z.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(z.std(dim=(1, 2, 3)), torch.ones(4), atol=1e-4)
    # A new site's linear grey-level response (here 0.5 x + 40, no clipping) changes nothing.
    assert torch.allclose(normalize(0.5 * x + 40, 0.3, 0.2, 1, "image"), z, atol=1e-4)
    # Under the dataset's statistics the same change moves every pixel.
    moved = normalize(0.5 * x + 40, 0.3, 0.2, 1) - normalize(x, 0.3, 0.2, 1)
    assert moved.abs().mean() > 0.3
    blank = normalize(torch.full((1, 1, 8, 8), 77.0), 0.3, 0.2, 1, "image")
    assert torch.isfinite(blank).all() and blank.abs().max() == 0


def test_imagenet_normalisation_uses_imagenets_statistics():
    x = torch.full((1, 1, 2, 2), 255.0 * 0.5)
    grey = normalize(x, 0.0, 1.0, 1, "imagenet")
    assert torch.allclose(grey, torch.full_like(grey, (0.5 - 0.449) / 0.226), atol=1e-6)
    rgb = normalize(x, 0.0, 1.0, 3, "imagenet")[0, :, 0, 0]
    want = [(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.5 - 0.406) / 0.225]
    assert torch.allclose(rgb, torch.tensor(want), atol=1e-6)
    with pytest.raises(ValueError, match="normalize must be dataset, image or imagenet"):
        normalize(x, 0.0, 1.0, 1, "minmax")


def test_equalised_input_is_scaled_by_a_uniform_histograms_statistics():
    ims = torch.from_numpy(_images()[:1])[:, None]
    out = DeviceFeed(0.9, 0.01, 1, CPU, equalize="hist")(ims)  # dataset stats are replaced
    assert abs(float(out.mean())) < 0.1 and abs(float(out.std()) - 1) < 0.1


def test_robust_preset_adds_site_changes_and_runs_on_the_loader_only():
    seeds, robust = TrainPreset(64, 1.0, "seeds"), TrainPreset(64, 1.0, "robust")
    added = [type(t).__name__ for t in robust.aug.transforms[len(seeds.aug.transforms) :]]
    assert added == ["RandomGamma", "GaussianBlur", "GaussNoise", "Downscale", "ImageCompression"]
    assert [type(t).__name__ for t in seeds.aug.transforms] == [
        type(t).__name__ for t in robust.aug.transforms[: len(seeds.aug.transforms)]
    ]
    # What the robust preset adds is what the stress test measures: each step changes an image
    # (a grey ramp with a bright square) when forced on, and keeps uint8 and the size.
    smooth = np.tile(np.linspace(30, 200, 64, dtype=np.float32), (64, 1)).astype(np.uint8)
    smooth[16:48, 16:48] = 240
    for t in robust.aug.transforms[len(seeds.aug.transforms) :]:
        t.p = 1.0
        t.set_random_seed(0)
        outs = [t(image=smooth)["image"] for _ in range(8)]
        assert all(o.dtype == np.uint8 and o.shape == smooth.shape for o in outs)
        change = max(np.abs(o.astype(int) - smooth).mean() for o in outs)
        assert change > 0.5, (type(t).__name__, change)
    assert TrainPreset(64, 0.0, "robust").aug is None
    with pytest.raises(ValueError, match="unknown preset 'rand'"):
        TrainPreset(64, 1.0, "rand")
    with pytest.raises(ValueError, match="robust runs on the loader only"):
        BatchAugment(1.0, "robust")
    with pytest.raises(ValueError, match="augment=robust runs on the loader only"):
        TrainConfig(augment="robust", augment_on="device")  # refused before any training
    assert pick_augment_on("auto", torch.device("cuda"), "robust") == "loader"
    assert pick_augment_on("auto", torch.device("cuda"), "seeds") == "device"


@pytest.mark.parametrize(("normalize_", "equalize"), [("image", "hist"), ("imagenet", "none")])
def test_a_saved_model_is_fed_at_inference_as_in_training(normalize_, equalize, tmp_path):
    data = load_data("synthetic:chest3:8", 32)
    cfg = TrainConfig(
        model="cnn",
        img_size=32,
        normalize=normalize_,
        equalize=equalize,
        precision="fp32",
        model_kwargs={"width": 8, "head_dims": [16], "pool_size": 2},
    )
    tr = Trainer.build(cfg, data, CPU)
    record = checkpoint.model_record(
        tr.bare, cfg, data.classes, data.mean, data.std, {"val_acc": 0.5}
    )
    checkpoint.atomic_save(record, tmp_path / "best_model.pt")
    loaded = checkpoint.load_checkpoint(tmp_path / "best_model.pt")
    x = torch.from_numpy(data.images["val"][:5])
    assert torch.equal(inference.record_feed(loaded, CPU)(x), tr.feed(x))
    # predict() from PNG files: the same probabilities as the model on the training feed.
    paths = []
    for i, im in enumerate(data.images["val"][:5]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(im).save(paths[-1])
    with torch.no_grad():
        want = torch.softmax(inference.model_from_record(loaded)(tr.feed(x)), 1).numpy()
    got = np.array([[r["probabilities"][c] for c in data.classes] for r in predict(loaded, paths)])
    assert np.allclose(got, want, atol=1e-5)
