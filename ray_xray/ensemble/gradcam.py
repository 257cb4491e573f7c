"""Where a model looked: Grad-CAM for convolutional models, attention maps for lstm / vit.

All maps are numpy float arrays in [0, 1]: Grad-CAM and ViT maps are (B, H, W) at the input
size; LSTM row attention is (B, H), one weight per image row.
"""

from __future__ import annotations

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
    return bool(getattr(model, "is_conv", False)) and getattr(model, "cam_layer", None) is not None


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> np.ndarray:
    """Grad-CAM (Selvaraju et al., 2017) on `model.cam_layer`, in fp32 and eval mode.

    map = ReLU(sum_c mean_{h,w}(d score / d A_c) * A_c), upsampled (bilinear) to x's H x W and
    normalised to [0, 1] per image. `target` (B,) is the class explained; default: predicted.
    """
    layer = getattr(model, "cam_layer", None)
    if layer is None:
        raise ValueError(f"{type(model).__name__} has no cam_layer: Grad-CAM does not apply")
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        store["act"] = output

    handle = layer.register_forward_hook(hook)
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(x.float())
            if target is None:
                target = logits.argmax(1)
            score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
            act = store["act"]
            if act.dim() != 4:
                raise ValueError(f"cam_layer output must be (B, C, h, w), got {tuple(act.shape)}")
            (grad,) = torch.autograd.grad(score, act)
    finally:
        handle.remove()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return _normalise(cam[:, 0].cpu())


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


@torch.no_grad()
def cam_resolution(model: nn.Module, img_size: int, in_chans: int = 1) -> tuple[int, int] | None:
    """(h, w) of the cam_layer's feature map for this input size (1x1 makes Grad-CAM flat)."""
    layer = getattr(model, "cam_layer", None)
    if layer is None:
        return None
    shape: dict[str, tuple] = {}

    def hook(_module, _inputs, output) -> None:  # returning anything would replace the output
        shape["s"] = tuple(output.shape)

    handle = layer.register_forward_hook(hook)
    try:
        model.eval()
        model(torch.zeros(1, in_chans, img_size, img_size))
    finally:
        handle.remove()
    s = shape.get("s")
    return (int(s[2]), int(s[3])) if s and len(s) == 4 else None
