"""Pretraining losses and their heads: DINO head, distillation cross-entropy, and the DAGMaN objective."""

from dagman_components.losses.dagman_loss import (
    DISTILLATION_TERMS,
    LOSS_TERMS,
    DAGMaNLoss,
    HeadOutputs,
    koleo_loss,
    masked_l1,
)
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
    "koleo_loss",
    "masked_l1",
    "teacher_temperature",
]
