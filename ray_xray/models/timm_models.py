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

# timm name -> the modules Grad-CAM may hook, shallow to deep (4-D outputs no later op changes
# in place; strides 4, 8, 16, 32); the last is cam_layer, the last 4-D feature map.
ARCHS = {
    "densenet121": tuple(f"features.denseblock{i}" for i in (1, 2, 3, 4)),
    "efficientnet_b0": ("blocks.1", "blocks.2", "blocks.4", "conv_head"),
    "convnext_tiny": tuple(f"stages.{i}" for i in range(4)),
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
        arch,
        pretrained=bool(hub_weights),
        num_classes=int(num_classes),
        in_chans=int(in_chans),
        drop_rate=float(dropout),  # before the classifier
    )
    model.is_conv = True
    stages = [model.get_submodule(name) for name in ARCHS[arch]]
    set_cam_layer(model, stages[-1], stages)
    return model


def _register(arch: str) -> None:
    def build(
        num_classes: int,
        in_chans: int = 1,
        img_size: int = 128,
        *,
        dropout: float = 0.0,
        hub_weights: bool = False,
    ) -> nn.Module:
        return _build(arch, num_classes, in_chans, dropout, hub_weights)

    build.__doc__ = f"timm's {arch}: (B, in_chans, H, W) float -> (B, num_classes) logits."
    register_model(build, name=f"timm/{arch}")


for _arch in ARCHS:
    _register(_arch)
