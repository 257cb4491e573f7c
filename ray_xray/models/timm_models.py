"""timm architectures by name (``timm/densenet121``, the CheXNet backbone; ``timm/efficientnet_b0``;
``timm/convnext_tiny``), with the registry's builder signature. timm is an optional extra
(``pip install 'ray_xray[timm]'``): the names are always registered, so spaces can name them,
and building one without timm raises a ValueError that says what to install.

Weights: ``pretrained=FILE`` (any model) loads a local state dict, an RGB stem summed for grey
input; ``hub_weights=True`` asks timm for its own ImageNet weights (a download, where the machine
can reach Hugging Face; timm adapts the stem to ``in_chans`` the same way).
"""

from __future__ import annotations

import importlib.util

from torch import nn

from .registry import register_model, set_cam_layer

# timm name -> the module whose output Grad-CAM uses (the last 4-D feature map, no in-place op).
ARCHS = {
    "densenet121": "features.denseblock4",
    "efficientnet_b0": "conv_head",
    "convnext_tiny": "stages.3",
}


def timm_available() -> bool:
    """Whether the optional timm package is installed (nothing is imported)."""
    return importlib.util.find_spec("timm") is not None


def _build(
    arch: str, num_classes: int, in_chans: int, dropout: float, hub_weights: bool
) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ValueError(f"model 'timm/{arch}' needs timm: pip install 'ray_xray[timm]'") from None
    model = timm.create_model(
        arch, pretrained=bool(hub_weights), num_classes=int(num_classes), in_chans=int(in_chans),
        drop_rate=float(dropout),  # before the classifier
    )  # fmt: skip
    model.is_conv = True
    set_cam_layer(model, model.get_submodule(ARCHS[arch]))
    return model


def _register(arch: str) -> None:
    def build(
        num_classes: int, in_chans: int = 1, img_size: int = 128, *, dropout: float = 0.0,
        hub_weights: bool = False,
    ) -> nn.Module:  # fmt: skip
        return _build(arch, num_classes, in_chans, dropout, hub_weights)

    build.__doc__ = f"timm's {arch}: (B, in_chans, H, W) float -> (B, num_classes) logits."
    register_model(build, name=f"timm/{arch}")


for _arch in ARCHS:
    _register(_arch)
