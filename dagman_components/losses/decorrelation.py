"""Dimensional collapse of token features: its monitor (participation ratio) and a decorrelation term.

Every study-budget pretraining measured on real CT (docs/results/study.md, sixth session) leaves the
SA-stage tokens using fewer dimensions than at random init: the participation ratio of their
correlation matrix falls from 4.4-7.8 (random init, 96 channels) to 2.1-2.9, whatever the method
(DAGMaN or SMIT) and whether the distillation heads collapse. That is *dimensional* collapse (Jing
et al. 2022, "Understanding dimensional collapse in contrastive self-supervised learning"): the
features do not become constant, they become redundant. The term here is the redundancy-reduction
part of Barlow Twins / VICReg's covariance term, applied within the student's own tokens.
"""

from __future__ import annotations

import torch

__all__ = ["feature_correlation", "participation_ratio", "token_decorrelation_loss"]


def feature_correlation(features: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(C, C) correlation matrix of the channels of ``features`` (M, C) over its M rows, in float32.

    Channels are standardised over the rows (``eps`` added to the variance), so a constant channel
    gives a zero row and column instead of NaN.
    """
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (M, C) with M >= 2 rows, got shape {tuple(features.shape)}.")
    x = features.float()
    x = x - x.mean(dim=0, keepdim=True)
    x = x / torch.sqrt(x.pow(2).mean(dim=0, keepdim=True) + eps)
    return x.t() @ x / x.shape[0]


def participation_ratio(features: torch.Tensor) -> torch.Tensor:
    """Effective number of channels of ``features`` (M, C): ``(sum l)^2 / sum l^2`` over the eigenvalues l
    of their correlation matrix, i.e. ``trace(R)^2 / ||R||_F^2`` (no eigen-decomposition).

    C when the channels are uncorrelated, 1 when they all move together. Scalar, float32, no gradient needed.
    """
    correlation = feature_correlation(features)
    return torch.diagonal(correlation).sum().pow(2) / correlation.pow(2).sum().clamp_min(1e-12)


def token_decorrelation_loss(features: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal correlation of the channels of ``features`` (M, C), in [0, 1].

    0 when the channels are uncorrelated over the rows, 1 when they are all the same channel; for
    standardised channels it equals ``(C / participation_ratio - 1) / (C - 1)``. Scalar, float32.
    """
    correlation = feature_correlation(features)
    channels = correlation.shape[0]
    if channels < 2:
        return correlation.new_zeros(())
    off_diagonal = correlation.pow(2).sum() - torch.diagonal(correlation).pow(2).sum()
    return off_diagonal / (channels * (channels - 1))
