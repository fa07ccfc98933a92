"""Random token masking (SMIT) and the noisy teacher's patch dropout, which draws its tokens the same way.

Registered as ``random``.
"""

from __future__ import annotations

import math

import torch

from .base import MaskingStrategy, register_masking
from .tokens import check_ratio, random_ranks, token_count

__all__ = ["RandomMasking", "patch_dropout", "random_mask"]


def random_mask(
    batch: int,
    n_tokens: int,
    mask_ratio: float = 0.7,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Exactly ``floor(mask_ratio * n_tokens)`` uniformly random tokens per sample (SMIT, ratio 0.7).

    Returns:
        (batch, n_tokens) bool, True = masked.
    """
    check_ratio("mask_ratio", mask_ratio)
    n_masked = token_count(mask_ratio, n_tokens)
    mask = torch.zeros(batch, n_tokens, dtype=torch.bool, device=device)
    if n_masked > 0:
        mask.scatter_(1, random_ranks(batch, n_tokens, generator, device)[:, :n_masked], True)
    return mask


def patch_dropout(
    batch: int,
    n_tokens: int,
    drop_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Noisy-teacher patch dropout: ``floor(drop_ratio * n_tokens)`` random tokens per sample.

    Swin needs the full grid, so "dropped" tokens are replaced by the teacher's mask token rather
    than removed **[choice]**. ``drop_ratio`` 0.7 is SMART's best (its Fig. 10); 0 gives a clean teacher.

    Returns:
        (batch, n_tokens) bool, True = dropped.
    """
    check_ratio("drop_ratio", drop_ratio)
    return random_mask(batch, n_tokens, drop_ratio, generator=generator, device=device)


class RandomMasking(MaskingStrategy):
    """:py:func:`random_mask` as a strategy: SMIT's uniform random tokens; the SATT is not used."""

    name = "random"

    def __call__(self, satt, batch, grid, generator=None, device=None):
        return random_mask(batch, math.prod(int(s) for s in grid), self.mask_ratio, generator, device)


register_masking("random", RandomMasking)
