"""Where a model looked: Grad-CAM for convolutional models, attention maps for lstm / vit.

All maps are numpy float arrays in [0, 1]: Grad-CAM and ViT maps are (B, H, W) at the input
size; LSTM row attention is (B, H), one weight per image row. Grad-CAM itself is
pytorch-grad-cam's (the maintained implementation); this module only picks the layer.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _normalise(maps: torch.Tensor) -> np.ndarray:
    """Per-sample min-max to [0, 1]; a constant map becomes zeros."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp(min=1e-12), torch.zeros_like(flat))
    return out.reshape(maps.shape).numpy()


def supports_gradcam(model: nn.Module) -> bool:
    """Whether `model` is convolutional and has Grad-CAM stages (False for lstm / vit)."""
    return bool(getattr(model, "is_conv", False)) and bool(_stages(model))


class CamTarget(NamedTuple):
    """The layer Grad-CAM hooks for one input size."""

    name: str  # qualified module name in the model, e.g. "layer3"
    layer: nn.Module
    size: tuple[int, int]  # (h, w) of its feature map at that input size


# Selvaraju et al. (2017, arXiv:1610.02391) take VGG-16's last conv layer at 224 px: a 14x14
# map, 1/16 of the input side. ResNet's last stage is 1/32 (4x4 at 128 px): one cell covers a
# quarter of a lung, so the map is a blob. Hence: the deepest stage with at least 1/16 of the
# input side, never under 8x8.
MIN_CAM_SIDE = 8
CAM_SIDE_FRACTION = 16


def min_cam_side(img_side: int) -> int:
    """Smallest feature-map side Grad-CAM should use for an input side: max(8, ceil(side/16))."""
    return max(MIN_CAM_SIDE, math.ceil(img_side / CAM_SIDE_FRACTION))


def _stages(model: nn.Module) -> tuple[nn.Module, ...]:
    stages = tuple(getattr(model, "cam_stages", ()) or ())
    layer = getattr(model, "cam_layer", None)
    return stages or ((layer,) if layer is not None else ())


@torch.no_grad()
def _stage_sizes(model: nn.Module, stages, hw: tuple[int, int], in_chans: int) -> list:
    """(h, w) of every stage's output for one zero image of size hw (None if not 4-D)."""
    sizes: dict[int, tuple] = {}

    def hook(i):
        def fn(_module, _inputs, output) -> None:  # returning anything would replace it
            sizes[i] = tuple(output.shape)

        return fn

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(stages)]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model(torch.zeros(1, in_chans, *hw, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [(s[2], s[3]) if len(s := sizes.get(i, ())) == 4 else None for i in range(len(stages))]


def _pick(model: nn.Module, hw: tuple[int, int], in_chans: int) -> CamTarget | None:
    stages = _stages(model)
    if not stages:
        return None
    sizes = _stage_sizes(model, stages, hw, in_chans)
    found = [(i, s) for i, s in enumerate(sizes) if s is not None]
    if not found:
        return None
    need = min_cam_side(min(hw))
    ok = [(i, s) for i, s in found if min(s) >= need]
    # Too small an input for any stage: the largest map (the deepest of equals).
    i, size = ok[-1] if ok else max(reversed(found), key=lambda f: min(f[1]))
    names = {id(m): n for n, m in model.named_modules()}
    return CamTarget(
        names.get(id(stages[i]), type(stages[i]).__name__), stages[i], (int(size[0]), int(size[1]))
    )


def cam_target(model: nn.Module, img_size: int, in_chans: int = 1) -> CamTarget | None:
    """The layer Grad-CAM uses for img_size x img_size input; None without Grad-CAM stages.

    Among ``model.cam_stages`` (shallow to deep, see ray_xray.models), the deepest whose
    feature map's smaller side is at least ``min_cam_side(img_size)`` = max(8, img_size / 16):
    the original paper's resolution (VGG-16, 14x14 at 224 px). resnet18: layer3 at 128 px
    (8x8) and 224 px (14x14), not layer4 (4x4 / 7x7). When no stage is that large, the one with
    the largest map. Runs one forward pass of a zero image (no gradients; mode is restored).
    """
    return _pick(model, (int(img_size), int(img_size)), int(in_chans))


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> np.ndarray:
    """Grad-CAM (Selvaraju et al., 2017) by pytorch-grad-cam's GradCAM, in fp32 and eval mode.

    x: (B, C, H, W) normalised input; target: (B,) class indices explained, default the
    predicted class. Returns (B, H, W) float32 in [0, 1]: ReLU(sum_c mean_hw(d score/d A_c) A_c)
    on the layer ``cam_target`` picks for this input size, min-max scaled per image and
    resized (bilinear) to H x W; a constant map becomes zeros. Leaves the model in eval mode
    with no gradients on its parameters. Raises ValueError when Grad-CAM does not apply.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = x.float()
    chosen = _pick(model, (int(x.shape[-2]), int(x.shape[-1])), int(x.shape[1]))
    if chosen is None:
        raise ValueError(f"{type(model).__name__} has no 4-D cam stage: Grad-CAM does not apply")
    targets = None
    if target is not None:
        targets = [ClassifierOutputTarget(int(t)) for t in torch.as_tensor(target).view(-1)]
    cam = GradCAM(model=model, target_layers=[chosen.layer])  # puts the model in eval mode
    try:
        with torch.enable_grad():
            maps = cam(input_tensor=x, targets=targets)
    finally:
        # Not `with GradCAM(...)`: its __exit__ swallows IndexError.
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)  # its backward() fills every parameter's .grad
    return np.asarray(maps, dtype=np.float32)


@torch.no_grad()
def attention_maps(model: nn.Module, x: torch.Tensor) -> tuple[str, np.ndarray] | None:
    """("rows", (B, H)) for the lstm, ("image", (B, H, W)) for the vit, None otherwise.

    ViT: attention of the CLS token to every patch in the last block, averaged over heads,
    upsampled to the image. LSTM: the additive attention weight of every image row.
    """
    if not hasattr(model, "last_attention"):
        return None
    model.eval()
    model(x.float())
    att = getattr(model, "last_attention", None)
    if att is None:  # e.g. lstm built with attention=False
        return None
    att = att.float().cpu()
    if att.dim() == 2:  # (B, rows)
        return "rows", _normalise(att)
    if att.dim() == 4:  # (B, heads, N+1, N+1)
        cls = att[:, :, 0, 1:].mean(1)  # (B, N)
        g = int(round(cls.shape[1] ** 0.5))
        if g * g != cls.shape[1]:
            return None
        grid = cls.reshape(-1, 1, g, g)
        up = F.interpolate(grid, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return "image", _normalise(up[:, 0])
    return None


def cam_resolution(model: nn.Module, img_size: int, in_chans: int = 1) -> tuple[int, int] | None:
    """(h, w) of the Grad-CAM layer's feature map for this input size (see cam_target); None
    without one. A 1x1 map makes Grad-CAM flat."""
    chosen = cam_target(model, img_size, in_chans)
    return chosen.size if chosen else None
