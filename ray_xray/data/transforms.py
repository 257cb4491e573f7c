"""Augmentation presets (albumentations), one `aug_strength` knob that search spaces tune."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch

from .feed import normalize


class TrainPreset:
    """The seeds' recipe scaled by `strength`: 0 = off, 1 = as published, >1 = harder.

    `preset="flip"` keeps only the horizontal flip (strength > 0 turns it on).

    flip p=0.5, rotate +-15 deg, shift 0.1, brightness/contrast 0.2, random-resized-crop 0.8-1.0.
    """

    def __init__(self, img_size: int, strength: float = 1.0, preset: str = "seeds"):
        s = max(0.0, float(strength))
        self.strength = s
        if s == 0:
            self.aug = None
            return
        if preset == "flip":
            # A plain resnet baseline on chest X-rays does best with mirror only: rotations and
            # crops cost more CPU per image than they buy on 128 px radiographs.
            self.aug = A.HorizontalFlip(p=0.5)
            return
        if preset != "seeds":
            raise ValueError(f"augment: unknown preset {preset!r} (seeds, flip)")
        self.aug = A.Compose(
            [
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
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return image if self.aug is None else self.aug(image=image)["image"]


def to_tensor(image: np.ndarray, mean: float, std: float, in_chans: int) -> torch.Tensor:
    """uint8 HxW -> float (C,H,W), normalised with the *training split's* statistics."""
    # torch.tensor copies: a read-only array (a decoded cache row) would warn if shared.
    return normalize(torch.tensor(image)[None, None], mean, std, in_chans)[0].contiguous()
