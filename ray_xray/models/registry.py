"""Model registry: every architecture is a builder function looked up by name.

Builders share one signature, ``fn(num_classes, in_chans=1, img_size=128, *, <hp>=<default>...)``,
so a search space can name a model and its hyperparameters as plain strings and numbers.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import safe_load

Builder = Callable[..., nn.Module]

_REGISTRY: dict[str, Builder] = {}
# Passed positionally by create_model, so they are not hyperparameters of any one model.
_COMMON = ("num_classes", "in_chans", "img_size")


def register_model(fn: Builder, name: str | None = None) -> Builder:
    """Register ``fn`` under ``name`` (default its ``__name__``); validates the signature at
    import time."""
    name = name or fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model '{name}' is registered twice")
    params = inspect.signature(fn).parameters
    if list(params)[:3] != list(_COMMON):
        raise TypeError(f"builder '{name}' must start with {_COMMON}")
    for p in params.values():
        # A **kwargs builder would swallow typos from search spaces; a keyword without a
        # default would make model_hparams() unable to describe the model's defaults.
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            raise TypeError(f"builder '{name}' must not take *args/**kwargs")
        if p.name not in _COMMON and p.default is p.empty:
            raise TypeError(f"builder '{name}': hyperparameter '{p.name}' needs a default")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    """Every registered model name, sorted; the `timm/...` names are always there (building
    one needs the optional timm package)."""
    return sorted(_REGISTRY)


def _builder(name: str) -> Builder:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model '{name}'; choose from: {', '.join(list_models())}"
        ) from None


def model_hparams(name: str) -> dict[str, Any]:
    """Tunable keywords of ``name`` and their defaults (``pretrained`` is always accepted too)."""
    params = inspect.signature(_builder(name)).parameters
    return {k: p.default for k, p in params.items() if k not in _COMMON}


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 1,
    img_size: int = 128,
    pretrained: str | Path | None = None,
    **hp: Any,
) -> nn.Module:
    """Build model ``name``; ``pretrained`` is a local state-dict file, never a download.

    The model maps a float batch (B, in_chans, img_size, img_size) to logits (B, num_classes);
    ``hp`` are its hyperparameters (``model_hparams(name)`` lists them with defaults).
    Raises ValueError for an unknown name or hyperparameter, or unusable ``pretrained`` weights.
    """
    fn = _builder(name)
    # Search spaces write "unset" as None; dropping it lets the builder's default apply.
    hp = {k: v for k, v in hp.items() if v is not None}
    accepted = model_hparams(name)
    unknown = sorted(set(hp) - set(accepted))
    if unknown:
        raise ValueError(
            f"model '{name}' got unknown hyperparameter(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(accepted)) or '(none)'}, pretrained"
        )
    model = fn(int(num_classes), in_chans=int(in_chans), img_size=int(img_size), **hp)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


def load_pretrained(model: nn.Module, path: str | Path) -> nn.Module:
    """Load matching tensors from a state-dict file; mismatched shapes are skipped with a warning.

    Skipping (rather than failing) is what makes other-task checkpoints usable when the head
    has a different class count. An RGB (ImageNet) stem loaded into a grey model is kept, its
    filters summed over the colour channels (`_grey_filters`), not dropped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"pretrained weights file not found: {path}")
    state = safe_load(path, "pretrained weights file")
    # Training checkpoints often wrap the weights; DDP prefixes every key with "module.".
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}

    own = model.state_dict()
    state = {k: _grey_filters(v, own[k]) if k in own else v for k, v in state.items()}
    keep = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    if not keep:
        raise ValueError(f"no tensor in {path} matches this model's parameters")
    skipped = [k for k in state if k in own and k not in keep]
    if skipped:
        warnings.warn(
            f"{path}: skipped {len(skipped)} tensor(s) with mismatched shapes: "
            + "; ".join(f"{k} {tuple(state[k].shape)} -> {tuple(own[k].shape)}" for k in skipped),
            stacklevel=3,
        )
    missing = [k for k in model.load_state_dict(keep, strict=False).missing_keys if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        warnings.warn(
            f"{path}: {len(missing)} model tensor(s) absent from the file (left at init), "
            f"{len(unexpected)} file tensor(s) unused",
            stacklevel=3,
        )
    return model


def _grey_filters(weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """An RGB stem's filters (out, 3, kh, kw) for a grey model (out, 1, kh, kw): summed over the
    colour channels, so a grey image x gives what the RGB model gives for (x, x, x) (the usual
    fix, timm's too); anything else is returned unchanged."""
    if (
        weight.ndim == 4
        and target.ndim == 4
        and weight.shape[1] == 3
        and target.shape[1] == 1
        and weight.shape[0] == target.shape[0]
        and weight.shape[2:] == target.shape[2:]
    ):
        return weight.sum(dim=1, keepdim=True)
    return weight


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """The number of parameters (elements) of `model`; with `trainable_only`, only those that
    require gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def is_convolutional(model: nn.Module | str) -> bool:
    """Whether channels_last pays off; a name is resolved on the meta device (no memory, no init)."""
    if isinstance(model, str):
        with torch.device("meta"):
            model = create_model(model, num_classes=2)
    return bool(getattr(model, "is_conv", False))


def set_cam_layer(
    model: nn.Module, layer: nn.Module | None, stages: Sequence[nn.Module] = ()
) -> None:
    """Set ``model.cam_layer`` (the last 4-D feature map, or None) and ``model.cam_stages``.

    ``stages``: the modules Grad-CAM may hook, shallow to deep (each gives (B, C, h, w) and no
    later op changes that output in place); empty means ``(layer,)``. Grad-CAM picks one of
    them per input size (ray_xray.gradcam.cam_target).
    """
    # object.__setattr__ keeps nn.Module from registering the layer a second time, which
    # would duplicate its tensors in state_dict() under a "cam_layer." prefix.
    object.__setattr__(model, "cam_layer", layer)
    if layer is None:
        stages = ()
    elif not stages:
        stages = (layer,)
    object.__setattr__(model, "cam_stages", tuple(stages))
