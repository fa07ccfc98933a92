"""Pretraining losses and their heads: DINO head, distillation cross-entropy, the DAGMaN objective and its regularisers."""

from dagman_components.losses.dagman_loss import (
    DISTILLATION_TERMS,
    LOSS_TERMS,
    DAGMaNLoss,
    HeadOutputs,
    koleo_loss,
    masked_l1,
)
from dagman_components.losses.decorrelation import feature_correlation, participation_ratio, token_decorrelation_loss
from dagman_components.losses.distillation import DistillationCE, distribution_entropies, teacher_temperature
from dagman_components.losses.heads import DINOHead, ReconstructionHead

__all__ = [
    "DAGMaNLoss",
    "DINOHead",
    "DISTILLATION_TERMS",
    "LOSS_TERMS",
    "DistillationCE",
    "HeadOutputs",
    "ReconstructionHead",
    "distribution_entropies",
    "feature_correlation",
    "koleo_loss",
    "masked_l1",
    "participation_ratio",
    "teacher_temperature",
    "token_decorrelation_loss",
]
