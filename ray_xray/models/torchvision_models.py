"""torchvision architectures, always randomly initialised (weights=None: nothing is downloaded).

Only the stem conv (for ``in_chans``) and the head (for ``num_classes``) differ from torchvision,
so the other state-dict keys still match torchvision checkpoints given as ``pretrained=``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .registry import register_model, set_cam_layer


def _grey_stem(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    if conv.in_channels == in_chans:
        return conv
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    # Same init torchvision gives its own convs, so only the channel count changes.
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def _no_inplace(seq: nn.Sequential, idx: int) -> nn.Module:
    # The Grad-CAM hook point must not be an in-place ReLU: backward hooks reject those.
    if isinstance(seq[idx], nn.ReLU):
        seq[idx] = nn.ReLU()
    return seq[idx]


class ChannelAttention(nn.Module):
    """CBAM's channel gate (Woo et al. 2018): a shared 1x1-conv MLP (`channels` / `reduction`
    hidden) over average- and max-pooled features."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) features -> (B, C, 1, 1) gates in (0, 1)."""
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM's spatial gate: a `kernel_size` conv over the channel-wise mean and max maps."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) features -> (B, 1, H, W) gates in (0, 1)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., 2018): channel then spatial gating."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) features, gated by channel then by position; same shape."""
        x = x * self.channel(x)
        return x * self.spatial(x)


def _resnet18(num_classes: int, in_chans: int, dropout: float) -> nn.Module:
    from torchvision import models as tvm  # lazy: torchvision costs ~1.5 s per process

    model = tvm.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = _grey_stem(model.conv1, in_chans)
    # Dropout rides on the (parameter-free) pooling slot so "fc.weight" keeps torchvision's key.
    model.avgpool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Dropout(dropout))
    model.is_conv = True
    set_cam_layer(model, model.layer4, [model.layer1, model.layer2, model.layer3, model.layer4])
    return model


@register_model
def resnet18(
    num_classes: int, in_chans: int = 1, img_size: int = 128, *, dropout: float = 0.0
) -> nn.Module:
    """torchvision's ResNet-18, randomly initialised, with an `in_chans` stem and `dropout` before
    the final linear layer; `img_size` is not needed (global average pooling)."""
    return _resnet18(num_classes, in_chans, float(dropout))


@register_model
def resnet18_cbam(
    num_classes: int,
    in_chans: int = 1,
    img_size: int = 128,
    *,
    dropout: float = 0.0,
    reduction: int = 16,
) -> nn.Module:
    """ResNet-18 with a CBAM after each stage (layer1..layer4)."""
    model = _resnet18(num_classes, in_chans, float(dropout))
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        # Appended, not wrapped: the BasicBlock keys ("layer1.0.conv1...") stay torchvision's.
        stage.append(CBAM(stage[-1].conv2.out_channels, int(reduction)))
    return model


def _classic(arch: str, num_classes: int, in_chans: int, dropout: float) -> nn.Module:
    """alexnet / vgg16: torchvision's layout, grey stem; Grad-CAM stages: the ReLU before each
    max-pool (the last one is ``cam_layer``)."""
    from torchvision import models as tvm  # lazy: torchvision costs ~1.5 s per process

    model = getattr(tvm, arch)(weights=None, num_classes=num_classes, dropout=float(dropout))
    model.features[0] = _grey_stem(model.features[0], in_chans)
    model.is_conv = True
    pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    stages = [_no_inplace(model.features, i - 1) for i in pools]
    set_cam_layer(model, stages[-1], stages)
    return model


@register_model
def alexnet(
    num_classes: int, in_chans: int = 1, img_size: int = 128, *, dropout: float = 0.5
) -> nn.Module:
    """torchvision's AlexNet, randomly initialised, with an `in_chans` stem and its classifier's
    `dropout`."""
    return _classic("alexnet", num_classes, in_chans, dropout)


@register_model
def vgg16(
    num_classes: int, in_chans: int = 1, img_size: int = 128, *, dropout: float = 0.5
) -> nn.Module:
    """torchvision's VGG-16, randomly initialised, with an `in_chans` stem and its classifier's
    `dropout` (heavy on a CPU: the README runs it at 64 px)."""
    return _classic("vgg16", num_classes, in_chans, dropout)
