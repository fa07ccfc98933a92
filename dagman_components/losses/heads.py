"""Projection heads of the co-distillation losses."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import trunc_normal_

__all__ = ["HEAD_INPUT_NORMS", "DINOHead", "ReconstructionHead", "batch_standardize"]

#: normalisation of a DINO head's input rows: ``"none"`` (DINO/SMIT) or ``"batch"`` (per-feature
#: standardisation over the rows of the step, always with the step's own statistics)
HEAD_INPUT_NORMS: tuple[str, ...] = ("none", "batch")


def batch_standardize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-feature standardisation of (M, C) rows with this batch's mean and variance (BatchNorm without affine or running stats).

    At initialisation the crops of a batch give nearly the same token (a shared direction dominates
    every feature), so a head sees one point and the teacher gives every sample the same target.
    Removing the batch mean and scaling each feature to unit variance keeps the differences between
    samples, in train and eval mode alike (teacher and student use the statistics of their own rows).
    One row is returned unchanged. Under DDP the statistics are per process.
    """
    if x.shape[0] < 2:
        return x
    return F.batch_norm(x, None, None, training=True, eps=eps)


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
        input_norm: ``"none"`` (DINO/SMIT, the papers) or ``"batch"`` (:func:`batch_standardize` on the
            input rows) **[choice]**; see :data:`HEAD_INPUT_NORMS`.
        output_norm: ``"none"`` (DINO/SMIT, the papers) or ``"batch"``: :func:`batch_standardize` on the
            bottleneck rows before the L2 normalisation **[choice]**. A small-batch head can map every sample to
            nearly one bottleneck point (the centering then flattens the targets to uniform); standardising
            the bottleneck over the rows keeps the samples apart, as BN in the projector does for BYOL.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 8192,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
        input_norm: str = "none",
        output_norm: str = "none",
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"DINOHead needs num_layers >= 1, got {num_layers}.")
        if input_norm not in HEAD_INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {HEAD_INPUT_NORMS}, got {input_norm!r}.")
        if output_norm not in HEAD_INPUT_NORMS:
            raise ValueError(f"output_norm must be one of {HEAD_INPUT_NORMS}, got {output_norm!r}.")
        self.input_norm = input_norm
        self.output_norm = output_norm
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
        if self.input_norm == "batch":
            with torch.autocast(device_type=x.device.type, enabled=False):
                x = batch_standardize(x.float())
        x = self.mlp(x).float()
        if self.output_norm == "batch":
            with torch.autocast(device_type=x.device.type, enabled=False):
                x = batch_standardize(x)
        x = F.normalize(x, dim=-1, eps=1e-6)
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
        """``x``: (B, C, d, h, w) -> (B, out_channels, d*stride, h*stride, w*stride).

        ``self.proj``'s 1x1x1 convolution and MONAI's ``pixelshuffle``, computed as one matrix product over
        the tokens and one copy into voxel order: PyTorch's CPU ``conv3d`` runs a 1x1x1 kernel with
        32768 output channels through its unfold path (``slow_conv3d``, about twice the time of the
        product forward and backward at feature size 48). Same parameters, same result.
        """
        b, c, d, h, w = x.shape
        s = self.stride
        weight = self.proj.weight.view(self.proj.out_channels, c)
        y = F.linear(x.permute(0, 2, 3, 4, 1), weight, self.proj.bias)  # (B, d, h, w, out * s^3)
        # MONAI's pixelshuffle splits the channels as (out, s, s, s) and puts each s after its spatial axis
        y = y.view(b, d, h, w, -1, s, s, s).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return y.reshape(b, -1, d * s, h * s, w * s)
