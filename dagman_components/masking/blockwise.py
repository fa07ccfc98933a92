"""Blockwise masking (BEiT/iBOT) in 3D: random cuboids of tokens. Registered as ``block``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .base import MaskingStrategy, register_masking
from .tokens import check_ratio, token_count

__all__ = ["BlockMasking", "block_mask"]


def block_mask(
    batch: int,
    grid_size: Sequence[int],
    mask_ratio: float = 0.7,
    min_block_tokens: int = 2,
    max_aspect: float = 3.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Blockwise masking (BEiT/iBOT) extended to 3D: random cuboids until ``floor(mask_ratio*N)`` are masked.

    Each cuboid has a random volume in [``min_block_tokens``, remaining] and a random aspect ratio
    in [1/``max_aspect``, ``max_aspect``] per axis; the last block is trimmed at random so that
    exactly ``floor(mask_ratio * N)`` tokens are masked.

    Args:
        generator: draws every block (a CUDA generator seeds a CPU one); None uses the global RNG.

    Returns:
        (batch, N) bool, True = masked, N = prod(grid_size).
    """
    check_ratio("mask_ratio", mask_ratio)
    d, h, w = (int(s) for s in grid_size)
    n_tokens = d * h * w
    target = token_count(mask_ratio, n_tokens)
    masks = torch.zeros(batch, d, h, w, dtype=torch.bool)
    if generator is not None and generator.device.type != "cpu":
        # the cuboids are drawn on the CPU: seed a CPU generator from the caller's, so the masks stay reproducible
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        generator = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    for b in range(batch):
        sample = masks[b]
        count = 0
        for _ in range(100 * max(target, 1)):
            if count >= target:
                break
            volume = uniform(min(min_block_tokens, target - count), target - count)
            log_aspect = [uniform(-math.log(max_aspect), math.log(max_aspect)) for _ in range(2)]
            side = volume ** (1 / 3)
            sizes = [side * math.exp(log_aspect[0] / 2), side * math.exp(log_aspect[1] / 2)]
            sizes.append(volume / (sizes[0] * sizes[1]))
            bd, bh, bw = (max(1, min(round(s), lim)) for s, lim in zip(sizes, (d, h, w)))
            z0, y0, x0 = (int(torch.randint(0, lim - s + 1, (), generator=generator)) for s, lim in zip((bd, bh, bw), (d, h, w)))
            block = torch.zeros_like(sample)
            block[z0 : z0 + bd, y0 : y0 + bh, x0 : x0 + bw] = True
            new = (block & ~sample).flatten().nonzero().squeeze(1)
            if len(new) > target - count:
                new = new[torch.randperm(len(new), generator=generator)[: target - count]]
            sample.view(-1)[new] = True
            count += len(new)
    return masks.reshape(batch, n_tokens).to(device)


class BlockMasking(MaskingStrategy):
    """:py:func:`block_mask` as a strategy; the SATT is not used."""

    name = "block"

    def __init__(self, mask_ratio: float = 0.7, min_block_tokens: int = 2, max_aspect: float = 3.0) -> None:
        super().__init__(mask_ratio)
        self.min_block_tokens, self.max_aspect = min_block_tokens, max_aspect

    def __call__(self, satt, batch, grid, generator=None, device=None):
        return block_mask(batch, grid, self.mask_ratio, self.min_block_tokens, self.max_aspect, generator, device)


register_masking("block", BlockMasking)
