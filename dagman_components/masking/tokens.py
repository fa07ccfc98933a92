"""The token grid that every mask lives on: counts, random orders, and upsampling a token mask to voxels.

All masks are boolean (B, N) tensors over the flattened (d, h, w) token grid with True = masked (or, for the
teacher, dropped). One token covers ``token_stride``^3 voxels (16^3 at stage 3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["check_ratio", "random_ranks", "token_count", "token_mask_to_voxels", "upsample_token_mask"]


def check_ratio(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}.")


def token_count(fraction: float, n_tokens: int) -> int:
    """``floor(fraction * n_tokens)``, robust to float error (0.1 * 0.7 * 300 is 20.999...)."""
    return math.floor(fraction * n_tokens + 1e-6)


def random_ranks(batch: int, n_tokens: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """(batch, n_tokens) independent random permutations."""
    return torch.rand(batch, n_tokens, generator=generator, device=device).argsort(dim=1)


def upsample_token_mask(mask: torch.Tensor, grid_size: Sequence[int], factor: int) -> torch.Tensor:
    """Nearest upsampling of a flat token mask to a finer grid.

    Args:
        mask: (B, N) token mask, N = d*h*w.
        grid_size: (d, h, w).
        factor: integer upsampling factor per axis (token stride / patch size for the patch grid).

    Returns:
        (B, d*factor, h*factor, w*factor), same dtype as ``mask``.
    """
    d, h, w = (int(s) for s in grid_size)
    grid = mask.reshape(mask.shape[0], d, h, w)
    if factor == 1:
        return grid
    return grid.repeat_interleave(factor, 1).repeat_interleave(factor, 2).repeat_interleave(factor, 3)


def token_mask_to_voxels(mask: torch.Tensor, grid_size: Sequence[int], token_stride: int) -> torch.Tensor:
    """(B, N) token mask -> (B, 1, D, H, W) voxel mask with D = d * ``token_stride`` (the AMIP weight)."""
    return upsample_token_mask(mask, grid_size, token_stride).unsqueeze(1)
