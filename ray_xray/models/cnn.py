"""The seed's custom 5-block CNN (VGG-like, one conv per block to stay fast on CPU)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from .registry import register_model, set_cam_layer

# The seed tuned dropout per depth: lighter early, where features are still generic.
SEED_CONV_DROPOUT = (0.25, 0.25, 0.30, 0.30, 0.30)
WIDTH_MULT = (1, 2, 4, 8, 8)


def _block(cin: int, cout: int, p: float) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            # No conv bias: BatchNorm's shift makes it redundant.
            conv=nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            bn=nn.BatchNorm2d(cout),
            # Not in-place: Grad-CAM hooks this module and backward hooks reject in-place ops.
            act=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            drop=nn.Dropout(p),
        )
    )


class SimpleCNN(nn.Module):
    """The seed's CNN: five conv-BN-ReLU-maxpool-dropout blocks (widths `width` x 1, 2, 4, 8, 8),
    adaptive average pooling to `pool_size` x `pool_size`, then an MLP head (`head_dims`, ReLU,
    `dropout`). `conv_dropout`: one rate per block (None: the seed's 0.25-0.30)."""

    is_conv = True

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        width: int,
        pool_size: int,
        head_dims: Sequence[int],
        dropout: float,
        conv_dropout: float | Sequence[float] | None,
    ) -> None:
        super().__init__()
        if conv_dropout is None:
            conv_dropout = SEED_CONV_DROPOUT
        elif isinstance(conv_dropout, (int, float)):
            conv_dropout = (float(conv_dropout),) * len(WIDTH_MULT)
        if len(conv_dropout) != len(WIDTH_MULT):
            raise ValueError(f"conv_dropout needs {len(WIDTH_MULT)} values, got {conv_dropout}")

        widths = [width * m for m in WIDTH_MULT]
        blocks, cin = [], in_chans
        for cout, p in zip(widths, conv_dropout, strict=True):
            blocks.append(_block(cin, cout, p))
            cin = cout
        self.features = nn.Sequential(*blocks)
        # Adaptive pooling decouples the head from img_size (64 px gives 2x2 maps, upsampled).
        self.pool = nn.AdaptiveAvgPool2d(pool_size)

        head: list[nn.Module] = [nn.Flatten()]
        dim = cin * pool_size * pool_size
        for h in head_dims:
            head += [nn.Linear(dim, h), nn.ReLU(), nn.Dropout(dropout)]
            dim = h
        head.append(nn.Linear(dim, num_classes))
        self.classifier = nn.Sequential(*head)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        set_cam_layer(self, self.features[-1].act, [b.act for b in self.features])

    def forward(self, x: Tensor) -> Tensor:
        """float (B, in_chans, H, W) images -> (B, num_classes) logits."""
        return self.classifier(self.pool(self.features(x)))


@register_model
def cnn(
    num_classes: int,
    in_chans: int = 1,
    img_size: int = 128,
    *,
    width: int = 64,
    pool_size: int = 7,
    head_dims: Sequence[int] = (4096, 2048),
    dropout: float = 0.5,
    conv_dropout: float | None = None,
) -> nn.Module:
    """Custom CNN; ``conv_dropout`` None keeps the seed's per-block rates, a float sets all five."""
    # Ray Tune's quantised samplers hand out floats; layer sizes must be ints.
    return SimpleCNN(
        num_classes,
        in_chans,
        width=int(width),
        pool_size=int(pool_size),
        head_dims=tuple(int(h) for h in head_dims),
        dropout=float(dropout),
        conv_dropout=conv_dropout,
    )
