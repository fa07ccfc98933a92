"""``SASwinUNETR``: the pretrained semantic-attention Swin encoder with a SwinUNETR decoder, for 3D segmentation.

The papers' segmentation network (DAGMaN Task 2, SMART): "a U-Net decoder, initialised from scratch,
added to the pretrained encoder", all of it fine-tuned. The decoder here is MONAI ``SwinUNETR``'s, block
for block (``UnetrBasicBlock`` skip encoders, ``UnetrUpBlock`` decoders, ``UnetOutBlock`` head, instance
norm, residual blocks), fed by the five ``hidden_states`` of :class:`SASwinEncoder` instead of
``SwinUNETR.swinViT``. The encoder keeps its key names (``encoder.swinViT.*``, ``encoder.semantic_attention.*``),
so a pretrain-bundle ``model.pt`` loads into ``encoder`` unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock

from dagman_components.networks.sa_swin import SASwinEncoder, make_encoder
from dagman_components.options import as_bool

__all__ = ["SASwinUNETR"]

logger = logging.getLogger(__name__)

class SASwinUNETR(nn.Module):
    """Semantic-attention Swin encoder (optionally pretrained) + SwinUNETR decoder -> per-voxel logits.

    Args:
        encoder: the encoder: an :class:`SASwinEncoder`; a path to a pretrain-bundle ``model.pt`` (weights and
            architecture, loaded strictly; a missing file or weights that do not fit are errors naming the file);
            a mapping of ``SASwinEncoder`` arguments, or None for its defaults (the papers'), from scratch.
            See :func:`make_encoder`. The decoder's widths follow the encoder's ``feature_size``.
        out_channels: output classes including background (2: background + tumour).
        norm_name: decoder normalisation ("instance", as ``SwinUNETR``).
        freeze_encoder: keep the encoder's weights fixed (only the decoder learns; the segmentation analogue of
            linear probing, DAGMaN sec. 4.6 "LP"); the frozen encoder also stays in eval mode (no drop path)
            (False: full fine-tuning, papers' "FT").
        encoder_args: the architecture of a bare state dict at ``encoder`` (older files); a self-describing
            file ignores them.
        drop_path_rate: stochastic depth in the encoder while fine-tuning (None: 0.0, as MONAI ``SwinUNETR``) **[choice]**.
        use_checkpoint: gradient checkpointing in the Swin blocks (MONAI's option), for large crops (None: off).

    Input (B, in_channels, H, W, D) with every spatial size a multiple of ``min_input_multiple`` (32) and at
    least ``min_input_size`` (64: the decoder's instance norm needs more than one voxel at stride 32);
    output (B, out_channels, H, W, D) logits.
    """

    def __init__(
        self,
        encoder: SASwinEncoder | str | Path | Mapping[str, Any] | None = None,
        out_channels: int = 2,
        norm_name: tuple | str = "instance",
        freeze_encoder: bool = False,
        encoder_args: Mapping[str, Any] | None = None,
        drop_path_rate: float | None = None,
        use_checkpoint: bool | None = None,
    ) -> None:
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}.")
        self.out_channels = out_channels
        self.freeze_encoder = as_bool(freeze_encoder, "freeze_encoder")
        self.encoder = make_encoder(encoder, encoder_args, drop_path_rate=drop_path_rate, use_checkpoint=use_checkpoint)
        self.in_channels = in_channels = self.encoder.in_channels

        def skip_block(channels_in: int, channels_out: int) -> UnetrBasicBlock:
            return UnetrBasicBlock(3, channels_in, channels_out, kernel_size=3, stride=1, norm_name=norm_name,
                                   res_block=True)

        def up_block(channels_in: int, channels_out: int) -> UnetrUpBlock:
            return UnetrUpBlock(3, channels_in, channels_out, kernel_size=3, upsample_kernel_size=2,
                                norm_name=norm_name, res_block=True)

        f = self.encoder.feature_size
        # the layout and attribute names of monai.networks.nets.SwinUNETR's decoder
        self.encoder1 = skip_block(in_channels, f)
        self.encoder2 = skip_block(f, f)
        self.encoder3 = skip_block(2 * f, 2 * f)
        self.encoder4 = skip_block(4 * f, 4 * f)
        self.encoder10 = skip_block(16 * f, 16 * f)
        self.decoder5 = up_block(16 * f, 8 * f)
        self.decoder4 = up_block(8 * f, 4 * f)
        self.decoder3 = up_block(4 * f, 2 * f)
        self.decoder2 = up_block(2 * f, f)
        self.decoder1 = up_block(f, f)
        self.out = UnetOutBlock(3, in_channels=f, out_channels=out_channels)

        if self.freeze_encoder:
            if encoder is None or isinstance(encoder, Mapping):
                logger.warning("freeze_encoder=True with an encoder built from scratch: it stays at its random init.")
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    @property
    def min_input_multiple(self) -> int:
        """Every spatial size of the input must be a multiple of this (32 with ``patch_size=2``)."""
        return self.encoder.min_input_multiple

    @property
    def min_input_size(self) -> int:
        """Smallest spatial size per axis (64 with ``patch_size=2``): two voxels at the deepest stage."""
        return 2 * self.encoder.min_input_multiple

    def train(self, mode: bool = True) -> SASwinUNETR:
        """As ``nn.Module.train``, but a frozen encoder always stays in eval mode."""
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, in_channels, H, W, D) -> logits (B, out_channels, H, W, D)."""
        if any(int(s) < self.min_input_size for s in x.shape[2:]):
            raise ValueError(
                f"SASwinUNETR needs every spatial size >= {self.min_input_size} (and a multiple of "
                f"{self.min_input_multiple}), got input shape {tuple(x.shape)}; use roi_size 64, 96 or 128."
            )
        hidden_states = self.encoder(x).hidden_states
        enc0 = self.encoder1(x)
        enc1 = self.encoder2(hidden_states[0])
        enc2 = self.encoder3(hidden_states[1])
        enc3 = self.encoder4(hidden_states[2])
        dec4 = self.encoder10(hidden_states[4])
        dec3 = self.decoder5(dec4, hidden_states[3])
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        return self.out(self.decoder1(dec0, enc0))
