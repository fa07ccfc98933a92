"""Self-distillation cross-entropy with centering, sharpening and a teacher temperature schedule (DINO, SMIT)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CENTERING_MODES", "DistillationCE", "sinkhorn_knopp", "teacher_temperature", "distribution_entropies"]

#: how teacher logits become targets: ``"center"`` (DINO/SMIT: subtract an EMA center, then a
#: sharpened softmax) or ``"sinkhorn_knopp"`` (iBOT/DINOv2: equipartition of the batch over the prototypes)
CENTERING_MODES: tuple[str, ...] = ("center", "sinkhorn_knopp")


def teacher_temperature(epoch: int, warmup_temp: float = 0.04, final_temp: float = 0.07, warmup_epochs: int = 30) -> float:
    """Teacher temperature at 0-based ``epoch``: linear ``warmup_temp -> final_temp`` over ``warmup_epochs``, then constant (DINO)."""
    if epoch >= warmup_epochs:
        return final_temp
    if warmup_epochs == 1:
        return warmup_temp
    return warmup_temp + (final_temp - warmup_temp) * epoch / (warmup_epochs - 1)


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """Teacher targets by Sinkhorn-Knopp equipartition (SwAV, iBOT/DINOv2's ``sinkhorn_knopp_teacher``).

    Alternately normalises ``exp(logits / temperature)`` so every prototype gets the same mass over the
    batch and every sample a distribution: samples that are nearly alike still get different targets,
    which the EMA center cannot give a batch of a few crops. Under DDP the sums run over all ranks.

    Args:
        logits: (M, K) teacher logits.
        temperature: tau_t.
        iterations: normalisation rounds (3, DINOv2).

    Returns:
        (M, K) float32, each row sums to 1.
    """
    scores = logits.detach().float() / temperature
    q = torch.exp(scores - scores.max()).t()  # (K, M); the global max keeps exp finite and cancels out
    distributed = dist.is_available() and dist.is_initialized()
    n_samples = torch.tensor(float(q.shape[1]), device=q.device)
    if distributed:
        dist.all_reduce(n_samples)
    n_prototypes = q.shape[0]

    def total(x: torch.Tensor) -> torch.Tensor:
        if distributed:
            dist.all_reduce(x)
        return x

    q /= total(q.sum())
    for _ in range(iterations):
        q /= total(q.sum(dim=1, keepdim=True)).clamp_min(1e-30)
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True).clamp_min(1e-30)
        q /= n_samples
    return (q * n_samples).t()


def distribution_entropies(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Collapse monitors for (M, K) probabilities: H(mean P) and mean_i H(P_i), in nats.

    H(mean P) -> 0 means every sample maps to one prototype (one-hot collapse); a per-sample
    entropy near ln K means uniform outputs (uniform collapse). Their difference
    H(mean P) - mean H(P) is the mutual information between sample and prototype: near 0, every
    sample gets the same distribution (the targets carry no per-sample information), whatever
    either entropy is.
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
        centering: ``"center"`` (DINO/SMIT, the papers') or ``"sinkhorn_knopp"`` (iBOT/DINOv2) **[choice]**,
            see :data:`CENTERING_MODES`; with Sinkhorn-Knopp the center is still tracked (a monitor) but not used.
        sinkhorn_iterations: Sinkhorn-Knopp rounds (3).

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
        centering: str = "center",
        sinkhorn_iterations: int = 3,
    ) -> None:
        super().__init__()
        if centering not in CENTERING_MODES:
            raise ValueError(f"centering must be one of {CENTERING_MODES}, got {centering!r}.")
        self.centering = centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.student_temp = student_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.final_teacher_temp = teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.center_momentum = center_momentum
        self.teacher_temp = warmup_teacher_temp
        self.register_buffer("center", torch.zeros(1, out_dim))

    def warmup_epochs(self, max_epochs: int | None = None) -> int:
        """The temperature warm-up's length: ``warmup_teacher_temp_epochs``, at most half of a ``max_epochs`` run.

        A run shorter than twice the warm-up (a 2-epoch MONAI Label run of a 4-epoch warm-up) would otherwise
        never reach tau_t; the learning-rate warm-up of the bundles is capped the same way.
        """
        if max_epochs is None:
            return int(self.warmup_teacher_temp_epochs)
        return min(int(self.warmup_teacher_temp_epochs), max(1, int(max_epochs) // 2))

    def set_epoch(self, epoch: int, max_epochs: int | None = None) -> float:
        """Set tau_t for 0-based ``epoch`` of a ``max_epochs`` run (None: no cap, see :meth:`warmup_epochs`); returns it."""
        self.teacher_temp = teacher_temperature(
            epoch, self.warmup_teacher_temp, self.final_teacher_temp, self.warmup_epochs(max_epochs)
        )
        return self.teacher_temp

    def teacher_probabilities(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """(M, K) teacher logits -> centred (or Sinkhorn-Knopp), sharpened probabilities (float32, no grad)."""
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_logits, self.teacher_temp, self.sinkhorn_iterations)
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
