"""The input path on the training device: uint8 batches in, normalised model input out.

Loaders hand out uint8 images (4x less to copy than float32, and pinned for asynchronous
host-to-device copies on CUDA); everything per pixel happens here, on whole batches, on the
device the model runs on:

- `BatchAugment`: the seeds' augmentation recipe (`transforms.TrainPreset`) for a whole batch at
  once: flip, rotation, shift and random-resized crop folded into one affine matrix per image and
  applied by a single `grid_sample` (one interpolation, where the per-image albumentations
  pipeline interpolates twice), then brightness/contrast as a per-image scale and offset.
- `DeviceFeed`: moves the batch to the device, augments (training only), normalises with the
  training split's statistics, repeats the grey channel for 3-channel models, sets the memory
  format.

Why our own 60 lines instead of kornia or torchvision.transforms.v2: torchvision's v2 transforms
draw one set of parameters per call (a whole batch would get the same rotation), and kornia would
add a dependency for four transforms whose composition is a 3x3 matrix product. Measured in
`benchmarks/feed.py` (images/s per preset, loader-side vs device-side).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENT_ON = ("auto", "loader", "device")


# ImageNet's per-channel statistics (torchvision's weights' transforms); a grey input gets their
# mean over the three channels.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# A perfectly equalised histogram is uniform on [0, 1]: mean 1/2, std 1/sqrt(12).
EQUALIZED_MEAN, EQUALIZED_STD = 0.5, 12**-0.5


def normalize(
    x: torch.Tensor, mean: float, std: float, in_chans: int, mode: str = "dataset"
) -> torch.Tensor:
    """uint8 or [0, 255] float (N, 1, H, W) -> float32 (N, in_chans, H, W).

    `mode` (TrainConfig.normalize): "dataset": (x/255 - mean)/std with `mean`/`std` the training
    split's statistics on the [0, 1] scale (`PreparedData`); "image": each image's own z-score
    (its std floored at 1/255, so a blank image stays finite); "imagenet": ImageNet's mean/std,
    per channel for 3-channel input, their means for grey. Raises ValueError for another mode.
    """
    x = x.float() / 255.0
    if mode == "image":
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        s = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1 / 255)
        x = (x - m) / s
    elif mode == "dataset":
        x = (x - mean) / std
    elif mode != "imagenet":
        raise ValueError(f"normalize must be dataset, image or imagenet, got {mode!r}")
    x = x.expand(-1, in_chans, -1, -1) if in_chans > 1 else x
    if mode == "imagenet":
        chans = in_chans if in_chans == 3 else 1
        m = torch.tensor(IMAGENET_MEAN, device=x.device)
        s = torch.tensor(IMAGENET_STD, device=x.device)
        m, s = (m, s) if chans == 3 else (m.mean(0, keepdim=True), s.mean(0, keepdim=True))
        x = (x - m[None, :, None, None]) / s[None, :, None, None]
    return x


def equalize_hist(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each image: uint8 or [0, 255] float (N, 1, H, W) -> float32 grey
    levels in [0, 255], same shape, on the same device (batched: one scatter_add and one gather).

    The mapping is OpenCV's `cv2.equalizeHist`: level v -> round(255 (cdf(v) - cdf_min) /
    (H W - cdf_min)), cdf_min the count of the darkest level present; a one-level image is left
    as it is. Float input (after augmentation) is rounded to whole grey levels first.
    """
    n = x.shape[0]
    levels = x.round().clamp(0, 255).long().reshape(n, -1)
    hist = torch.zeros(n, 256, device=x.device, dtype=torch.float64)
    hist.scatter_add_(1, levels, torch.ones_like(levels, dtype=torch.float64))
    cdf = hist.cumsum(1)
    cdf_min = torch.where(hist > 0, cdf, torch.full_like(cdf, float("inf"))).amin(1, keepdim=True)
    total = cdf[:, -1:]
    span = (total - cdf_min).clamp_min(1)
    lut = ((cdf - cdf_min).clamp_min(0) * 255 / span).round()
    flat = total == cdf_min  # one grey level: cv2 leaves such an image unchanged
    lut = torch.where(flat, torch.arange(256, device=x.device, dtype=lut.dtype)[None], lut)
    return torch.gather(lut, 1, levels).reshape(x.shape).float()


class BatchAugment:
    """The seeds' recipe (`TrainPreset`) on a batch, each image with its own random draw.

    Same probabilities and ranges as `TrainPreset(img_size, strength, preset)`, scaled by
    `strength` (0 = off): horizontal flip p=0.5; affine p=min(1, 0.7s) with rotation +-15s deg and
    shift +-0.1s of the side (constant black border); brightness/contrast +-0.2s p=min(1, 0.5s);
    random-resized crop p=min(1, 0.5s) of area max(0.3, 1-0.2s)..1 and aspect 0.9..1.1.
    `preset="flip"` keeps the flip only. Works on any device; square images (the cache's).
    """

    def __init__(self, strength: float = 1.0, preset: str = "seeds") -> None:
        if preset == "robust":
            raise ValueError(
                "augment=robust runs on the loader only (JPEG re-compression has no batched "
                "version): use augment_on=loader or auto"
            )
        if preset not in ("seeds", "flip"):
            raise ValueError(f"augment: unknown preset {preset!r} (seeds, flip, robust)")
        self.s, self.preset = max(0.0, float(strength)), preset

    @property
    def active(self) -> bool:
        """Whether this augmentation changes anything (strength above 0)."""
        return self.s > 0

    def sample(self, n: int, device: torch.device, generator: torch.Generator | None = None):
        """Random parameters for n images: (theta (n, 2, 3) output->input affine in
        `affine_grid`'s normalised coordinates, alpha (n,) contrast, beta (n,) brightness in
        grey levels), all float32 on `device`."""
        s = self.s

        def u(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)

        def coin(p: float) -> torch.Tensor:
            return torch.rand(n, generator=generator, device=device) < p

        eye = torch.eye(3, device=device).expand(n, 3, 3).clone()
        flip = eye.clone()
        flip[:, 0, 0] = torch.where(coin(0.5), -1.0, 1.0)
        one, zero = torch.ones(n, device=device), torch.zeros(n, device=device)
        if self.preset == "flip":
            return flip[:, :2], one, zero
        # Affine (albumentations maps input -> output; grid_sample wants output -> input).
        on = coin(min(1.0, 0.7 * s))
        angle = torch.where(on, u(-15 * s, 15 * s), zero) * math.pi / 180
        shift = torch.stack([u(-0.1 * s, 0.1 * s), u(-0.1 * s, 0.1 * s)], 1) * 2 * on[:, None]
        cos, sin = torch.cos(angle), torch.sin(angle)
        aff_inv = eye.clone()
        aff_inv[:, 0, 0], aff_inv[:, 0, 1], aff_inv[:, 1, 0], aff_inv[:, 1, 1] = cos, sin, -sin, cos
        aff_inv[:, :2, 2] = -(aff_inv[:, :2, :2] @ shift[:, :, None])[:, :, 0]
        # Random-resized crop of the affine's result: output pixels come from a sub-window.
        on = coin(min(1.0, 0.5 * s))
        area = u(max(0.3, 1 - 0.2 * s), 1.0)
        ratio = torch.exp(u(math.log(0.9), math.log(1.1)))
        w = torch.where(on, torch.sqrt(area * ratio).clamp(max=1), one)
        h = torch.where(on, torch.sqrt(area / ratio).clamp(max=1), one)
        crop = eye.clone()
        crop[:, 0, 0], crop[:, 1, 1] = w, h
        crop[:, 0, 2], crop[:, 1, 2] = u(-1, 1) * (1 - w), u(-1, 1) * (1 - h)
        theta = flip @ aff_inv @ crop
        on = coin(min(1.0, 0.5 * s))
        alpha = torch.where(on, 1 + u(-0.2 * s, 0.2 * s), one)
        beta = torch.where(on, u(-0.2 * s, 0.2 * s) * 255, zero)
        return theta[:, :2], alpha, beta

    def apply(self, x: torch.Tensor, theta, alpha, beta) -> torch.Tensor:
        """x float (N, C, H, W) in grey levels [0, 255] -> augmented, same shape and range."""
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return (x * alpha[:, None, None, None] + beta[:, None, None, None]).clamp_(0, 255)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.active:
            return x
        return self.apply(x, *self.sample(len(x), x.device, generator))


class DeviceFeed:
    """Turns a loader's batch into the model's input on `device`.

    `feed(x)` with x uint8 (N, 1, H, W) (or already-augmented uint8 from a loader-side preset)
    returns float32 (N, in_chans, H, W) on `device`: histogram-equalised when `equalize="hist"`,
    then scaled as `normalize` says (`normalize()`; "dataset" uses the training split's
    `mean`/`std` on the [0, 1] scale, which `equalize="hist"` replaces by those of a uniform
    histogram), in channels_last when asked; `feed(x, train=True)` applies `augment` first (a
    `BatchAugment`, or None when the loader already augmented). Train, validation, `predict`
    and `evaluate` all go through this one path, so a model sees the same scaling everywhere.
    """

    def __init__(
        self,
        mean: float,
        std: float,
        in_chans: int,
        device: torch.device,
        channels_last: bool = False,
        augment: BatchAugment | None = None,
        normalize: str = "dataset",
        equalize: str = "none",
    ) -> None:
        if equalize not in ("none", "hist"):
            raise ValueError(f"equalize must be none or hist, got {equalize!r}")
        if equalize == "hist":
            mean, std = EQUALIZED_MEAN, EQUALIZED_STD
        self.mean, self.std, self.in_chans = float(mean), float(std), int(in_chans)
        self.norm, self.equalize = normalize, equalize == "hist"
        self.device, self.augment = torch.device(device), augment
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.ndim == 3:
            x = x[:, None]
        if train and self.augment is not None and self.augment.active:
            x = self.augment(x.float())
        if self.equalize:
            x = equalize_hist(x)
        x = normalize(x, self.mean, self.std, self.in_chans, self.norm)
        return x.contiguous(memory_format=self.fmt)

    @classmethod
    def for_config(
        cls,
        cfg,
        mean: float,
        std: float,
        device: torch.device,
        channels_last: bool = False,
        augment: BatchAugment | None = None,
    ) -> DeviceFeed:
        """The feed for a `TrainConfig` (its in_chans, normalize, equalize) and data statistics."""
        return cls(
            mean,
            std,
            cfg.in_chans,
            device,
            channels_last,
            augment,
            normalize=cfg.normalize,
            equalize=cfg.equalize,
        )


def pick_augment_on(augment_on: str, device: torch.device, preset: str = "seeds") -> str:
    """Where the augmentation runs: `loader` (albumentations, per image, on CPU) or `device`
    (`BatchAugment`, per batch). `auto`: the device on CUDA (the loader cannot keep a GPU fed:
    2,700 images/s measured on an H200 host against a 7,155 images/s step), the loader on CPU
    (albumentations, what users configure), and the loader for the `robust` preset (JPEG
    re-compression per image). Raises ValueError for an unknown value."""
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {', '.join(AUGMENT_ON)}, got {augment_on!r}")
    if augment_on == "auto" and preset == "robust":
        return "loader"
    if augment_on == "auto":
        return "device" if torch.device(device).type == "cuda" else "loader"
    return augment_on
