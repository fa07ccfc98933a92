"""Encoder + the projection/reconstruction heads the pretraining losses need (one student or teacher)."""

from __future__ import annotations

import torch
import torch.nn as nn

from dagman_components.losses.dagman_loss import LOSS_TERMS, DAGMaNLoss, HeadOutputs
from dagman_components.losses.heads import DINOHead, ReconstructionHead
from dagman_components.masking import upsample_token_mask
from dagman_components.networks.sa_swin import EncoderOutput, SASwinEncoder

__all__ = ["AMPD_TOKENS", "DAGMaNPretrainModel"]

#: where AMPD reads its patch tokens: ``"premerge"`` (the SA stage before its patch merging, stride
#: token_stride / 2, SMART sec. III-C), ``"stage"`` (the SA-stage map after merging, before the SA
#: blocks) or ``"sa"`` (patch tokens after the SA blocks)
AMPD_TOKENS: tuple[str, ...] = ("premerge", "stage", "sa")


class DAGMaNPretrainModel(nn.Module):
    """An ``SASwinEncoder`` with the heads of the active losses.

    The student and the EMA teacher are two instances (the teacher a deep copy of the student).
    The loss is the one source of the heads (as DINOv2's ``do_dino = loss_weight > 0``): a head is built
    exactly when its term's weight is > 0, so weight 0 removes the head's parameters too, and a head without
    its loss term (or a term without its head) cannot be configured.

    Args:
        encoder: the encoder (its ``sa_dim`` / ``out_dim`` size the heads).
        loss: the :class:`~dagman_components.losses.DAGMaNLoss` this model is trained with: its active terms
            (``amip``, ``ampd``, ``aitd``, ``gitd``) pick the heads, its ``out_dim`` (prototypes K; 8192,
            SMIT/iBOT) sizes the DINO heads.
        hidden_dim: DINO head hidden size (2048).
        bottleneck_dim: DINO head bottleneck (256).
        ampd_tokens: one of :data:`AMPD_TOKENS`. ``"premerge"`` (default): stage-``sa_stage`` tokens
            before the patch merging that ends the stage (SMART sec. III-C: "before performing patch
            merging of stage #3 output"; 8 tokens per student-mask token, half the channels);
            ``"stage"``: the SA-stage map after merging, before the SA blocks (SMART eq. 5 "before the
            semantic attention layer"); ``"sa"``: patch tokens after the SA blocks.
        head_input_norm: ``"none"`` (papers) or ``"batch"`` (per-feature batch standardisation in
            front of every DINO head, teacher too) **[choice]**, see :class:`DINOHead`.
        head_output_norm: ``"none"`` (papers) or ``"batch"`` (the same on every DINO head's bottleneck, before its
            L2 normalisation) **[choice]**, see :class:`DINOHead`.
    """

    def __init__(
        self,
        encoder: SASwinEncoder,
        loss: DAGMaNLoss,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        ampd_tokens: str = "premerge",
        head_input_norm: str = "none",
        head_output_norm: str = "none",
    ) -> None:
        super().__init__()
        if not isinstance(loss, DAGMaNLoss):
            raise TypeError(f"loss must be the DAGMaNLoss the model is trained with (it picks the heads), got {type(loss).__name__}.")
        #: the loss terms whose heads this model has (the loss's active terms when it was built)
        self.loss_terms = tuple(name for name in LOSS_TERMS if loss.active(name))
        ampd_head, aitd_head, gitd_head, amip_head = (name in self.loss_terms for name in ("ampd", "aitd", "gitd", "amip"))
        out_dim = loss.out_dim
        if ampd_tokens not in AMPD_TOKENS:
            raise ValueError(f"ampd_tokens must be one of {AMPD_TOKENS}, got {ampd_tokens!r}.")
        has_sa = encoder.semantic_attention is not None
        if aitd_head and not has_sa:
            raise ValueError("AITD distils the [CLS] token of the SA module: set aitd_weight 0 when use_semantic_attention is False.")
        if ampd_tokens == "sa" and not has_sa:
            raise ValueError("ampd_tokens='sa' needs the SA module (use_semantic_attention=True).")
        self.encoder = encoder
        self.ampd_tokens = ampd_tokens

        def head(in_dim: int, build: bool) -> DINOHead | None:
            if not build:
                return None
            return DINOHead(in_dim, out_dim, hidden_dim, bottleneck_dim, input_norm=head_input_norm, output_norm=head_output_norm)

        self.patch_head = head(encoder.sa_dim // 2 if ampd_tokens == "premerge" else encoder.sa_dim, ampd_head)
        self.cls_head = head(encoder.sa_dim, aitd_head)
        self.global_head = head(encoder.out_dim, gitd_head)
        self.reconstruction_head = (
            ReconstructionHead(encoder.out_dim, encoder.in_channels, encoder.min_input_multiple) if amip_head else None
        )
        if has_sa and not aitd_head and not (ampd_head and ampd_tokens == "sa"):
            # the SA module's final norm feeds only [CLS] (AITD) and the SA patch tokens: with neither
            # distilled it would get no gradient, which DDP with find_unused_parameters=False rejects
            encoder.semantic_attention.norm.requires_grad_(False)

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> EncoderOutput:
        """The encoder forward with what the heads need (the pre-merge tokens for ``ampd_tokens="premerge"``)."""
        return self.encoder(x, mask, return_premerge=self.patch_head is not None and self.ampd_tokens == "premerge")

    def patch_tokens(self, encoded: EncoderOutput, token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The AMPD head's input: the (B, N', C) tokens and the (B, N') mask on their grid.

        The student mask lives on the SA-stage grid (B, N); on the pre-merge grid each of its tokens
        covers 2x2x2 tokens, so the mask is upsampled to (B, 8N).
        """
        if self.ampd_tokens == "premerge":
            if encoded.premerge_tokens is None:
                raise ValueError("ampd_tokens='premerge' needs the encoder output of encode() (return_premerge=True).")
            fine_mask = upsample_token_mask(token_mask, encoded.grid_size, 2).flatten(1)
            return encoded.premerge_tokens, fine_mask
        return (encoded.tokens if self.ampd_tokens == "stage" else encoded.sa_tokens), token_mask

    def last_layers(self) -> list[nn.Parameter]:
        """Parameters of the DINO heads' last (prototype) layers, frozen during the first epoch(s)."""
        return [
            p for h in (self.patch_head, self.cls_head, self.global_head) if h is not None for p in h.last_layer.parameters()
        ]

    def project(self, encoded: EncoderOutput, token_mask: torch.Tensor | None, reconstruct: bool = True) -> HeadOutputs:
        """Apply the heads to an encoder output.

        Args:
            encoded: output of ``self.encoder``.
            token_mask: (B, N) student mask; the patch head runs on these tokens only (AMPD
                needs no others), or None to skip the patch head.
            reconstruct: run the AMIP head (the teacher never needs it).
        """
        out = HeadOutputs()
        out.image_embedding = encoded.cls if encoded.cls is not None else encoded.pooled
        out.token_features = encoded.tokens.flatten(0, 1)
        if self.patch_head is not None and token_mask is not None:
            tokens, head_mask = self.patch_tokens(encoded, token_mask)
            out.patch_logits = self.patch_head(tokens[head_mask])
            out.patch_image_index = head_mask.nonzero()[:, 0]
        if self.cls_head is not None:
            out.cls_logits = self.cls_head(encoded.cls)
        if self.global_head is not None:
            out.global_logits = self.global_head(encoded.pooled)
        if self.reconstruction_head is not None and reconstruct:
            out.reconstruction = self.reconstruction_head(encoded.hidden_states[-1])
        return out

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[EncoderOutput, HeadOutputs]:
        """Student step in one call (so DDP sees one forward): encode masked ``x`` (B, C, D, H, W), then the heads on ``mask`` (B, N).

        Returns:
            ``(EncoderOutput, HeadOutputs)``.
        """
        encoded = self.encode(x, mask)
        return encoded, self.project(encoded, mask)
