"""Self-distillation cross-entropy with centering, sharpening and a teacher temperature schedule (DINO, SMIT)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DistillationCE", "teacher_temperature", "distribution_entropies"]


def teacher_temperature(epoch: int, warmup_temp: float = 0.04, final_temp: float = 0.07, warmup_epochs: int = 30) -> float:
    """Teacher temperature at 0-based ``epoch``: linear ``warmup_temp -> final_temp`` over ``warmup_epochs``, then constant (DINO)."""
    if epoch >= warmup_epochs:
        return final_temp
    if warmup_epochs == 1:
        return warmup_temp
    return warmup_temp + (final_temp - warmup_temp) * epoch / (warmup_epochs - 1)


def distribution_entropies(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Collapse monitors for (M, K) probabilities: H(mean P) and mean_i H(P_i), in nats.

    H(mean P) -> 0 means every sample maps to one prototype (one-hot collapse); a per-sample
    entropy near ln K means uniform outputs (uniform collapse).
    """
    eps = 1e-12
    mean = probs.mean(dim=0)
    entropy_of_mean = -(mean * (mean + eps).log()).sum()
    mean_entropy = -(probs * (probs + eps).log()).sum(dim=-1).mean()
    return entropy_of_mean, mean_entropy


class DistillationCE(nn.Module):
    """``CE = sum_k -softmax((t - c) / tau_t) * log_softmax(s / tau_s)`` with an EMA center per head.

    Args:
        out_dim: prototypes K of the head this loss follows.
        student_temp: tau_s (0.1, papers via SMIT/DINO).
        warmup_teacher_temp: tau_t at epoch 0 (0.04).
        teacher_temp: tau_t after warm-up (0.07).
        warmup_teacher_temp_epochs: warm-up length in epochs (30).
        center_momentum: ``c <- m c + (1 - m) mean(t)`` (0.9), all-reduced under DDP.

    The current tau_t is ``self.teacher_temp``; :meth:`set_epoch` moves it along the schedule
    (the trainer's temperature handler calls it at every epoch start).
    """

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: int = 30,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.final_teacher_temp = teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.center_momentum = center_momentum
        self.teacher_temp = warmup_teacher_temp
        self.register_buffer("center", torch.zeros(1, out_dim))

    def set_epoch(self, epoch: int) -> float:
        """Set tau_t for 0-based ``epoch`` and return it."""
        self.teacher_temp = teacher_temperature(
            epoch, self.warmup_teacher_temp, self.final_teacher_temp, self.warmup_teacher_temp_epochs
        )
        return self.teacher_temp

    def teacher_probabilities(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """(M, K) teacher logits -> centred, sharpened probabilities (float32, no grad)."""
        return F.softmax((teacher_logits.detach().float() - self.center) / self.teacher_temp, dim=-1)

    def forward(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        """Per-row cross-entropy (M,) between ``teacher_probs`` (M, K) and the student's (M, K) logits."""
        student_log_probs = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        return -(teacher_probs * student_log_probs).sum(dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """EMA update of the center with the mean teacher logit of this step, over all ranks."""
        stats = torch.cat([teacher_logits.float().sum(dim=0), teacher_logits.new_full((1,), teacher_logits.shape[0]).float()])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        count = stats[-1].clamp_min(1.0)
        batch_center = (stats[:-1] / count).unsqueeze(0)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)
