"""Semantic attention (SA) module: a [CLS] token and two ViT blocks on top of one Swin stage.

Swin attends only inside local windows and has no [CLS] token, so it cannot produce the global
[CLS]-to-patch attention that attention-guided masking needs. The SA module (DAGMaN sec. 3.1,
SMART sec. III-B) prepends a learnable [CLS] to the tokens of one Swin stage and runs ViT blocks
with LayerScale over them; the head-averaged attention of the [CLS] query over the patch tokens of
the last block is SATT (paper eq. 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from monai.networks.blocks import MLPBlock, SABlock
from monai.networks.layers import DropPath, trunc_normal_

__all__ = ["LayerScaleTransformerBlock", "SemanticAttention", "SemanticAttentionOutput"]


class LayerScaleTransformerBlock(nn.Module):
    """Pre-norm ViT block with LayerScale (Touvron et al., CaiT), built from MONAI's ``SABlock`` and ``MLPBlock``.

    MONAI's ``TransformerBlock`` has no LayerScale, which the SMART paper names for the SA module.
    The attention matrix of the last forward is kept (``attn.att_mat``, detached) so SATT needs no
    second pass.

    Args:
        dim: token dimension C.
        num_heads: attention heads; ``dim`` must be divisible by it.
        mlp_ratio: MLP hidden size as a multiple of ``dim`` (4.0, ViT).
        qkv_bias: bias in the qkv projection (True, as the papers' eq. 1 has b_q, b_k, b_v).
        drop_path: stochastic depth rate.
        layer_scale_init: initial LayerScale gain (0.1, iBOT) **[choice]**: the papers do not give it.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        layer_scale_init: float = 0.1,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SABlock(dim, num_heads, qkv_bias=qkv_bias, save_attn=True)
        self.gamma_1 = nn.Parameter(layer_scale_init * torch.ones(dim))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act="GELU")
        self.gamma_2 = nn.Parameter(layer_scale_init * torch.ones(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, N+1, C) -> (B, N+1, C)."""
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))

    @property
    def attention(self) -> torch.Tensor:
        """Softmax attention of the last forward, (B, heads, N+1, N+1), detached."""
        return self.attn.att_mat


@dataclass
class SemanticAttentionOutput:
    """What the SA module returns.

    Attributes:
        features: (B, C, d, h, w) residual stream of the patch tokens, same layout as the input map.
        tokens: (B, N, C) patch tokens after the final LayerNorm.
        cls: (B, C) [CLS] token after the final LayerNorm.
        satt: (B, N) head-averaged [CLS] attention over patches, each row sums to 1 (float32).
        head_attention: (B, heads, N) per-head [CLS] attention over patches, rows sum to 1 (float32).
    """

    features: torch.Tensor
    tokens: torch.Tensor
    cls: torch.Tensor
    satt: torch.Tensor
    head_attention: torch.Tensor


class SemanticAttention(nn.Module):
    """[CLS] token + ``depth`` LayerScale ViT blocks over the tokens of one Swin stage.

    Args:
        dim: channels of the Swin stage (384 at stage 3 with ``feature_size=48``).
        num_heads: attention heads (default in ``SASwinEncoder``: the Swin stage's own heads) **[choice]**.
        depth: number of ViT blocks (2, papers).
        mlp_ratio: MLP ratio (4.0).
        qkv_bias: qkv bias (True).
        drop_path: stochastic depth rate of the blocks.
        layer_scale_init: LayerScale init (0.1, iBOT) **[choice]**.

    No positional embedding is added **[choice]**: the Swin features already carry position
    (relative position bias and the convolutional patch embedding).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        depth: int = 2,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        layer_scale_init: float = 0.1,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"SemanticAttention needs depth >= 1, got {depth}.")
        self.num_heads = num_heads
        self.input_norm = nn.LayerNorm(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(
            LayerScaleTransformerBlock(dim, num_heads, mlp_ratio, qkv_bias, drop_path, layer_scale_init)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, feature_map: torch.Tensor) -> SemanticAttentionOutput:
        """``feature_map``: (B, C, d, h, w) Swin stage output; N = d*h*w tokens."""
        b, c, *grid = feature_map.shape
        tokens = self.input_norm(feature_map.flatten(2).transpose(1, 2))
        z = torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)
        for block in self.blocks:
            z = block(z)
        # [CLS] row of the last block, [CLS] column dropped, renormalised so each row sums to 1 (eq. 1).
        cls_attention = self.blocks[-1].attention[:, :, 0, 1:].float()
        head_attention = cls_attention / cls_attention.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        normed = self.norm(z)
        features = z[:, 1:].transpose(1, 2).reshape(b, c, *grid)
        return SemanticAttentionOutput(
            features=features,
            tokens=normed[:, 1:],
            cls=normed[:, 0],
            satt=head_attention.mean(dim=1),
            head_attention=head_attention,
        )
