"""Augmentation presets (albumentations), one `aug_strength` knob that search spaces tune."""

from __future__ import annotations

import math

import albumentations as A
import cv2
import numpy as np
import torch

from .feed import normalize


class TrainPreset:
    """The seeds' recipe scaled by `strength`: 0 = off, 1 = as published, >1 = harder.

    `preset="seeds"`: flip p=0.5, rotate +-15 deg, shift 0.1, brightness/contrast 0.2,
    random-resized-crop 0.8-1.0 (the seed projects' albumentations pipelines).
    `preset="flip"` keeps only the horizontal flip (strength > 0 turns it on).
    `preset="robust"`: the seeds' recipe plus what a new site or export pipeline changes without
    changing the diagnosis (the same kinds as `evaluate --stress`, milder than its middle
    severity at strength 1): gamma 0.7-1.4, Gaussian blur sigma up to 1.2 % of the side, noise
    sigma up to 8 grey levels, down-scaling to 1/2 and back, JPEG quality 30-90; each p=0.3
    (scaled by strength). Raises ValueError for another preset name.
    """

    def __init__(self, img_size: int, strength: float = 1.0, preset: str = "seeds"):
        s = max(0.0, float(strength))
        self.strength = s
        if preset not in ("seeds", "flip", "robust"):
            raise ValueError(f"augment: unknown preset {preset!r} (seeds, flip, robust)")
        if s == 0:
            self.aug = None
            return
        if preset == "flip":
            # A plain resnet baseline on chest X-rays does best with mirror only: rotations and
            # crops cost more CPU per image than they buy on 128 px radiographs.
            self.aug = A.HorizontalFlip(p=0.5)
            return
        steps = [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                rotate=(-15 * s, 15 * s),
                translate_percent=(-0.1 * s, 0.1 * s),
                border_mode=cv2.BORDER_CONSTANT,
                p=min(1.0, 0.7 * s),
            ),
            A.RandomBrightnessContrast(
                brightness_limit=0.2 * s, contrast_limit=0.2 * s, p=min(1.0, 0.5 * s)
            ),
            A.RandomResizedCrop(
                size=(img_size, img_size),
                scale=(max(0.3, 1 - 0.2 * s), 1.0),
                ratio=(0.9, 1.1),
                p=min(1.0, 0.5 * s),
            ),
        ]
        if preset == "robust":
            steps += site_changes(img_size, s)
        self.aug = A.Compose(steps)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return image if self.aug is None else self.aug(image=image)["image"]


def site_changes(img_size: int, s: float) -> list:
    """The `robust` preset's acquisition changes at strength `s` (> 0), albumentations 2 steps.

    Ranges widen with `s` (gamma 1 +- 0.35s in log space, noise up to 8s grey levels, blur
    sigma up to 1.2 % of the side times s, JPEG quality down to 90 - 60s, down-scaling to
    1/(1 + s)); each applies with p = min(1, 0.3 s)."""
    p = min(1.0, 0.3 * s)
    g = math.exp(0.35 * s)
    sigma = max(0.3, 0.012 * img_size * s)
    return [
        A.RandomGamma(gamma_limit=(100 / g, 100 * g), p=p),
        A.GaussianBlur(blur_limit=0, sigma_limit=(0.2, sigma), p=p),
        A.GaussNoise(std_range=(0.0, min(1.0, 8 * s / 255)), p=p),
        # Area-average down, bilinear up (as a lower-resolution acquisition, and as the stress
        # test does): albumentations' default nearest-neighbour makes blocks no scanner makes.
        A.Downscale(
            scale_range=(1 / (1 + s), 0.9),
            interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
            p=p,
        ),
        A.ImageCompression(quality_range=(max(5, round(90 - 60 * s)), 95), p=p),
    ]


def to_tensor(image: np.ndarray, mean: float, std: float, in_chans: int) -> torch.Tensor:
    """uint8 HxW -> float (C,H,W), normalised with the *training split's* statistics."""
    # torch.tensor copies: a read-only array (a decoded cache row) would warn if shared.
    return normalize(torch.tensor(image)[None, None], mean, std, in_chans)[0].contiguous()
