"""Token masks for masked image modeling on the SA-stage token grid.

All masks are boolean (B, N) tensors over the flattened (d, h, w) token grid with True = masked
(or, for the teacher, dropped). One token covers ``token_stride``^3 voxels (16^3 at stage 3).

- :func:`attention_guided_mask`: DAGMaN/SMART and AttMask: mask the top ``mask_ratio`` tokens by
  SATT, keeping ``hint_ratio`` of them visible as hints.
- :func:`random_mask`: SMIT (uniform random tokens).
- :func:`block_mask`: BEiT/iBOT blockwise masking, in 3D.
- :func:`patch_dropout`: the noisy teacher's input corruption (Liu et al., PatchDropout).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "attention_guided_mask",
    "block_mask",
    "patch_dropout",
    "random_mask",
    "upsample_token_mask",
    "token_mask_to_voxels",
]


def _check_ratio(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}.")


def _count(fraction: float, n_tokens: int) -> int:
    """``floor(fraction * n_tokens)``, robust to float error (0.1 * 0.7 * 300 is 20.999...)."""
    return math.floor(fraction * n_tokens + 1e-6)


def _random_ranks(batch: int, n_tokens: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """(batch, n_tokens) independent random permutations."""
    return torch.rand(batch, n_tokens, generator=generator, device=device).argsort(dim=1)


def attention_guided_mask(
    satt: torch.Tensor,
    mask_ratio: float = 0.7,
    hint_ratio: float = 0.1,
    mode: str = "high",
    hint_mode: str = "random",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mask the tokens ranked first by attention, leaving a few of the highest as hints.

    Tokens are ranked by ``satt`` (descending for ``mode="high"``, DAGMaN/AttMask; ascending for
    ``mode="low"``, MST). The first ``floor(mask_ratio * N)`` are masked; then
    ``floor(hint_ratio * mask_ratio * N)`` hints, drawn from the first ``floor(hint_ratio * N)`` of
    the ranking, are unmasked again (AttMask's ``attmask_hint``). Defaults r = 0.7, s = 0.1 (papers).

    Args:
        satt: (B, N) attention scores (any real values; only the ranking matters).
        mask_ratio: r, fraction of tokens selected for masking.
        hint_ratio: s, fraction of the masked tokens left visible, drawn from the top s*N tokens.
        mode: ``"high"`` or ``"low"``.
        hint_mode: ``"random"`` (uniform within the top tokens, AttMask) or ``"top"`` (the very first
            ones, deterministic) **[choice]**.
        generator: optional generator on ``satt.device`` for the hint draw.

    Returns:
        (B, N) bool, True = masked; exactly ``floor(r*N) - floor(s*r*N)`` True per row.
    """
    _check_ratio("mask_ratio", mask_ratio)
    _check_ratio("hint_ratio", hint_ratio)
    if satt.ndim != 2:
        raise ValueError(f"satt must be (B, N), got shape {tuple(satt.shape)}.")
    if mode not in ("high", "low"):
        raise ValueError(f"mode must be 'high' or 'low', got {mode!r}.")
    if hint_mode not in ("random", "top"):
        raise ValueError(f"hint_mode must be 'random' or 'top', got {hint_mode!r}.")
    batch, n_tokens = satt.shape
    n_masked = _count(mask_ratio, n_tokens)
    n_hints = _count(hint_ratio * mask_ratio, n_tokens)
    n_pool = _count(hint_ratio, n_tokens)
    order = torch.argsort(satt.float(), dim=1, descending=(mode == "high"), stable=True)
    mask = torch.zeros(batch, n_tokens, dtype=torch.bool, device=satt.device)
    mask.scatter_(1, order[:, :n_masked], True)
    if n_hints > 0:
        pool = order[:, :n_pool]
        if hint_mode == "random":
            pick = _random_ranks(batch, n_pool, generator, satt.device)[:, :n_hints]
            hints = pool.gather(1, pick)
        else:
            hints = pool[:, :n_hints]
        mask.scatter_(1, hints, False)
    return mask


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
    _check_ratio("mask_ratio", mask_ratio)
    n_masked = _count(mask_ratio, n_tokens)
    mask = torch.zeros(batch, n_tokens, dtype=torch.bool, device=device)
    if n_masked > 0:
        mask.scatter_(1, _random_ranks(batch, n_tokens, generator, device)[:, :n_masked], True)
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
    _check_ratio("drop_ratio", drop_ratio)
    return random_mask(batch, n_tokens, drop_ratio, generator=generator, device=device)


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
    _check_ratio("mask_ratio", mask_ratio)
    d, h, w = (int(s) for s in grid_size)
    n_tokens = d * h * w
    target = _count(mask_ratio, n_tokens)
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
