"""Projection heads of the co-distillation losses."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import trunc_normal_
from monai.networks.utils import pixelshuffle

__all__ = ["DINOHead", "ReconstructionHead"]


class DINOHead(nn.Module):
    """DINO/iBOT projection head: MLP -> L2-normalise -> weight-normalised linear to K prototypes.

    Defaults are SMIT/iBOT's: ``in_dim -> 2048 -> 2048 -> 256`` with GELU, then
    ``Linear(256, K=8192, bias=False)`` under ``parametrizations.weight_norm`` with the gain
    (``last_layer.parametrizations.weight.original0``) fixed at 1 (``norm_last_layer=True``).

    Args:
        in_dim: token dimension C.
        out_dim: number of prototypes K (8192).
        hidden_dim: MLP hidden size (2048).
        bottleneck_dim: bottleneck size before the prototypes (256).
        num_layers: MLP layers (3).
        norm_last_layer: freeze the weight-norm gain (True, DINO's stable setting).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 8192,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"DINOHead needs num_layers >= 1, got {num_layers}.")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad = not norm_last_layer

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (M, in_dim) -> logits (M, out_dim), float32 (normalisation runs in fp32 under AMP)."""
        x = F.normalize(self.mlp(x).float(), dim=-1, eps=1e-6)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.last_layer(x)


class ReconstructionHead(nn.Module):
    """AMIP prediction head: one 1x1x1 convolution + pixel shuffle from the last stage back to voxels (SMIT/SimMIM).

    Args:
        in_channels: channels of the last Swin stage (16F; 768 at F=48).
        out_channels: image channels (1).
        stride: voxels per last-stage token along an axis (32 with patch size 2).
    """

    def __init__(self, in_channels: int, out_channels: int = 1, stride: int = 32) -> None:
        super().__init__()
        self.stride = stride
        self.proj = nn.Conv3d(in_channels, out_channels * stride**3, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C, d, h, w) -> (B, out_channels, d*stride, h*stride, w*stride)."""
        return pixelshuffle(self.proj(x), spatial_dims=3, scale_factor=self.stride)
