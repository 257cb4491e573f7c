"""Recurrent models that read an image row by row (top to bottom) as a sequence."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .registry import register_model, set_cam_layer

_RNNS = {"lstm": nn.LSTM, "gru": nn.GRU}


def _rnn(
    rnn_type: str, input_size: int, hidden: int, layers: int, bidir: bool, p: float
) -> nn.RNNBase:
    if rnn_type not in _RNNS:
        raise ValueError(f"rnn_type must be one of {sorted(_RNNS)}, got '{rnn_type}'")
    return _RNNS[rnn_type](
        input_size,
        hidden,
        num_layers=layers,
        batch_first=True,
        bidirectional=bidir,
        # PyTorch only applies (and otherwise warns about) dropout between stacked layers.
        dropout=p if layers > 1 else 0.0,
    )


def _rows(x: Tensor, expected: int) -> Tensor:
    """(B, C, H, W) -> (B, H, W*C); each row's pixels keep their channels together."""
    b, c, h, w = x.shape
    if w * c != expected:
        raise ValueError(
            f"row features W*C = {w}*{c} = {w * c}, but the model was built for {expected}; "
            "build it with the img_size/in_chans of the data"
        )
    return x.permute(0, 2, 3, 1).reshape(b, h, w * c)


def _final_state(rnn: nn.RNNBase, h_n: Tensor | tuple[Tensor, Tensor]) -> Tensor:
    # h_n rather than out[:, -1]: for the backward direction the last time step has only
    # seen one row, while its final state has read the whole image.
    if isinstance(h_n, tuple):  # LSTM returns (h_n, c_n)
        h_n = h_n[0]
    dirs = 2 if rnn.bidirectional else 1
    return torch.cat(list(h_n[-dirs:]), dim=-1)


class ChestXRayRNN(nn.Module):
    """The chest-X-ray seed: projected rows -> stacked BiLSTM -> additive attention -> MLP."""

    is_conv = False

    def __init__(
        self,
        num_classes: int,
        row_features: int,
        proj_dim: int,
        hidden_size: int,
        num_layers: int,
        rnn_type: str,
        bidirectional: bool,
        attention: bool,
        dropout: float,
        dropout2: float,
        rnn_dropout: float,
        proj_dropout: float,
    ) -> None:
        super().__init__()
        self.row_features = row_features
        self.proj = nn.Sequential(
            nn.Linear(row_features, proj_dim),
            nn.LayerNorm(proj_dim),
            nn.ReLU(),
            nn.Dropout(proj_dropout),
        )
        self.rnn = _rnn(rnn_type, proj_dim, hidden_size, num_layers, bidirectional, rnn_dropout)
        out_dim = hidden_size * (2 if bidirectional else 1)
        self.attn = (
            nn.Sequential(nn.Linear(out_dim, 256), nn.Tanh(), nn.Linear(256, 1))
            if attention
            else None
        )
        self.head = nn.Sequential(
            nn.Linear(out_dim, 512),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(512, 256),
            nn.ReLU(),
            nn.Dropout(dropout2),
            nn.Linear(256, num_classes),
        )
        self.last_attention: Tensor | None = None
        set_cam_layer(self, None)

    def forward(self, x: Tensor) -> Tensor:
        """float (B, in_chans, H, W) images, read as H rows of W x in_chans features -> (B,
        num_classes) logits; with attention, the (B, H) row weights are kept in `last_attention`."""
        out, h_n = self.rnn(self.proj(_rows(x, self.row_features)))
        if self.attn is None:
            return self.head(_final_state(self.rnn, h_n))
        # Softmax in fp32: under bf16 autocast the scores over ~200 rows lose too much precision.
        w = torch.softmax(self.attn(out).squeeze(-1).float(), dim=1)
        self.last_attention = w.detach()
        ctx = torch.bmm(w.unsqueeze(1).to(out.dtype), out).squeeze(1)
        return self.head(ctx)


class Conv1dRNN(nn.Module):
    """The brain-MRI seed: a 1-D conv over rows shortens the sequence before a BiLSTM."""

    is_conv = False  # 1-D convolution: channels_last does not apply

    def __init__(
        self,
        num_classes: int,
        row_features: int,
        conv_channels: int,
        kernel_size: int,
        hidden_size: int,
        num_layers: int,
        rnn_type: str,
        bidirectional: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.row_features = row_features
        self.conv = nn.Sequential(
            nn.Conv1d(row_features, conv_channels, kernel_size, padding="same"),
            nn.BatchNorm1d(conv_channels),
            nn.ReLU(),
            nn.MaxPool1d(2),
        )
        self.rnn = _rnn(rnn_type, conv_channels, hidden_size, num_layers, bidirectional, 0.0)
        out_dim = hidden_size * (2 if bidirectional else 1)
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(out_dim, 64),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(64, num_classes),
        )
        # Its feature maps are 1-D (B, C, rows), which a 2-D Grad-CAM cannot use.
        set_cam_layer(self, None)

    def forward(self, x: Tensor) -> Tensor:
        """float (B, in_chans, H, W) images -> (B, num_classes) logits: the rows convolved and
        max-pooled to H/2 steps, read by the RNN, classified from its final states."""
        seq = self.conv(_rows(x, self.row_features).transpose(1, 2)).transpose(1, 2)
        _, h_n = self.rnn(seq)
        return self.head(_final_state(self.rnn, h_n))


class CNNRNN(nn.Module):
    """A small conv stem, then the rows of its feature map as a sequence."""

    is_conv = True

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        img_size: int,
        channels: Sequence[int],
        hidden_size: int,
        num_layers: int,
        rnn_type: str,
        bidirectional: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_chans
        for cout in channels:
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),  # not in-place: the last one is the Grad-CAM hook point
                nn.MaxPool2d(2),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.row_features = cin * (img_size // 2 ** len(channels))
        if self.row_features == 0:
            raise ValueError(f"img_size {img_size} is too small for {len(channels)} poolings")
        self.rnn = _rnn(rnn_type, self.row_features, hidden_size, num_layers, bidirectional, 0.0)
        out_dim = hidden_size * (2 if bidirectional else 1)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(out_dim, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        relus = [m for m in self.features if isinstance(m, nn.ReLU)]
        set_cam_layer(self, self.features[-2], relus)

    def forward(self, x: Tensor) -> Tensor:
        """float (B, in_chans, H, W) images -> (B, num_classes) logits: the conv stem's feature map
        read row by row by the RNN, classified from its final states."""
        f = self.features(x)
        _, h_n = self.rnn(_rows(f, self.row_features))
        return self.head(_final_state(self.rnn, h_n))


@register_model
def lstm(
    num_classes: int,
    in_chans: int = 1,
    img_size: int = 128,
    *,
    proj_dim: int = 512,
    hidden_size: int = 512,
    num_layers: int = 3,
    rnn_type: str = "lstm",
    bidirectional: bool = True,
    attention: bool = True,
    dropout: float = 0.5,
    dropout2: float = 0.4,
    rnn_dropout: float = 0.3,
    proj_dropout: float = 0.2,
) -> nn.Module:
    """ChestXRayRNN; ``attention=False`` classifies from the final hidden states instead."""
    return ChestXRayRNN(
        num_classes,
        row_features=img_size * in_chans,
        proj_dim=int(proj_dim),
        hidden_size=int(hidden_size),
        num_layers=int(num_layers),
        rnn_type=rnn_type,
        bidirectional=bool(bidirectional),
        attention=bool(attention),
        dropout=float(dropout),
        dropout2=float(dropout2),
        rnn_dropout=float(rnn_dropout),
        proj_dropout=float(proj_dropout),
    )


@register_model
def conv1d_lstm(
    num_classes: int,
    in_chans: int = 1,
    img_size: int = 128,
    *,
    conv_channels: int = 64,
    kernel_size: int = 5,
    hidden_size: int = 128,
    num_layers: int = 1,
    rnn_type: str = "lstm",
    bidirectional: bool = True,
    dropout: float = 0.5,
) -> nn.Module:
    """Conv1dRNN, the brain-MRI seed: a 1-D conv (`conv_channels`, `kernel_size`) over the image
    rows, max-pool, then an RNN (`rnn_type` lstm or gru) and a small dropout MLP head."""
    return Conv1dRNN(
        num_classes,
        row_features=img_size * in_chans,
        conv_channels=int(conv_channels),
        kernel_size=int(kernel_size),
        hidden_size=int(hidden_size),
        num_layers=int(num_layers),
        rnn_type=rnn_type,
        bidirectional=bool(bidirectional),
        dropout=float(dropout),
    )


@register_model
def cnn_lstm(
    num_classes: int,
    in_chans: int = 1,
    img_size: int = 128,
    *,
    channels: Sequence[int] = (32, 64),
    hidden_size: int = 128,
    num_layers: int = 1,
    rnn_type: str = "lstm",
    bidirectional: bool = True,
    dropout: float = 0.5,
) -> nn.Module:
    """CNNRNN: a conv stem (one conv-BN-ReLU-maxpool block per `channels` entry), then the rows of
    its feature map through an RNN (`rnn_type` lstm or gru) and a dropout + linear head."""
    return CNNRNN(
        num_classes,
        in_chans,
        img_size,
        channels=tuple(int(c) for c in channels),
        hidden_size=int(hidden_size),
        num_layers=int(num_layers),
        rnn_type=rnn_type,
        bidirectional=bool(bidirectional),
        dropout=float(dropout),
    )
