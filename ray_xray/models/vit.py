"""A small pre-norm Vision Transformer (the seed's ViT, trained from scratch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_model, set_cam_layer


class Attention(nn.Module):
    """Multi-head self-attention (`heads` heads over `dim`) through torch's
    scaled_dot_product_attention; with `record` set, an explicit softmax whose weights are kept
    in `last_weights` for the report's attention maps."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        # Only the last block records: explicit softmax costs memory that SDPA avoids.
        self.record = False
        self.last_weights: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, dim) tokens -> (B, N, dim); records (B, heads, N, N) weights when `record`."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        if self.record:
            scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
            # fp32 softmax so the recorded map is the same under bf16 autocast.
            attn = scores.float().softmax(dim=-1)
            self.last_weights = attn.detach()
            out = F.dropout(attn, p, self.training).to(v.dtype) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """A pre-norm transformer block: x + attention(LN(x)), then + MLP(LN(x)) (GELU, `mlp_dim`)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, dim) tokens -> (B, N, dim)."""
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A Vision Transformer (Dosovitskiy et al. 2021) for training from scratch: `patch_size`
    patches embedded by a strided conv, a class token, learned position embeddings, `depth`
    pre-norm blocks, and a linear head on the normalised class token."""

    is_conv = False  # only the patch embedding is a conv; channels_last buys nothing

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        img_size: int,
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        dropout: float,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"vit: dim {dim} must be divisible by heads {heads}")
        if img_size % patch_size:
            raise ValueError(
                f"vit: img_size {img_size} must be divisible by patch_size {patch_size}"
            )
        self.grid = img_size // patch_size
        self.patch_embed = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2 + 1, dim))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            *(Block(dim, heads, int(dim * mlp_ratio), dropout) for _ in range(depth))
        )
        self.blocks[-1].attn.record = True
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.last_attention: Tensor | None = None
        # Token maps need a reshape that a generic Grad-CAM lacks; use last_attention instead.
        set_cam_layer(self, None)
        self._init_weights()

    def _init_weights(self) -> None:
        # Small-std init (as in ViT/DeiT): from scratch, default Linear init trains poorly.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """float (B, in_chans, img_size, img_size) images -> (B, num_classes) logits; the last
        block's attention, (B, heads, N+1, N+1), is kept in `last_attention`. Raises ValueError for
        an image size other than the one it was built for."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        if x.shape[1] + 1 != self.pos_embed.shape[1]:
            raise ValueError(
                f"vit built for a {self.grid}x{self.grid} patch grid, got {x.shape[1]} patches"
            )
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(self.pos_drop(x + self.pos_embed))
        self.last_attention = self.blocks[-1].attn.last_weights  # (B, heads, N+1, N+1)
        return self.head(self.norm(x[:, 0]))


@register_model
def vit(
    num_classes: int,
    in_chans: int = 1,
    img_size: int = 128,
    *,
    patch_size: int = 16,
    dim: int = 512,
    depth: int = 6,
    heads: int = 8,
    mlp_ratio: float = 4.0,
    dropout: float = 0.1,
) -> nn.Module:
    """ViT: `img_size` must be divisible by `patch_size` and `dim` by `heads` (ValueError
    otherwise); the MLP width is `dim` x `mlp_ratio`."""
    return ViT(
        num_classes,
        in_chans,
        img_size,
        patch_size=int(patch_size),
        dim=int(dim),
        depth=int(depth),
        heads=int(heads),
        mlp_ratio=float(mlp_ratio),
        dropout=float(dropout),
    )
