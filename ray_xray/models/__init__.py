"""Model zoo: ``create_model("resnet18", num_classes=3, in_chans=1, img_size=128, **hp)``.

Every model exposes ``is_conv`` (channels_last helps), ``cam_layer`` (its last (B, C, h, w)
feature map's module, or None) and ``cam_stages`` (the modules Grad-CAM may hook, shallow to
deep; it picks one per input size); ``lstm`` and ``vit`` also keep the
attention of their last forward pass in ``last_attention``.
"""

# Importing the family modules is what registers their builders.
from . import cnn, recurrent, timm_models, torchvision_models, vit  # noqa: F401
from .registry import (
    count_params,
    create_model,
    is_convolutional,
    list_models,
    load_pretrained,
    model_hparams,
    register_model,
)

__all__ = [
    "count_params",
    "create_model",
    "is_convolutional",
    "list_models",
    "load_pretrained",
    "model_hparams",
    "register_model",
]
