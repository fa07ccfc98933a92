"""Attention-guided masking (DAGMaN/SMART, AttMask): mask the tokens the teacher's SATT ranks first.

Registered as ``attention_high`` (the most attended tokens, the papers' default) and ``attention_low``
(the least attended, as MST).
"""

from __future__ import annotations

from functools import partial

import torch

from .base import MaskingStrategy, register_masking
from .tokens import check_ratio, random_ranks, token_count

__all__ = ["AttentionGuidedMasking", "attention_guided_mask"]


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
    check_ratio("mask_ratio", mask_ratio)
    check_ratio("hint_ratio", hint_ratio)
    if satt.ndim != 2:
        raise ValueError(f"satt must be (B, N), got shape {tuple(satt.shape)}.")
    if mode not in ("high", "low"):
        raise ValueError(f"mode must be 'high' or 'low', got {mode!r}.")
    if hint_mode not in ("random", "top"):
        raise ValueError(f"hint_mode must be 'random' or 'top', got {hint_mode!r}.")
    batch, n_tokens = satt.shape
    n_masked = token_count(mask_ratio, n_tokens)
    n_hints = token_count(hint_ratio * mask_ratio, n_tokens)
    n_pool = token_count(hint_ratio, n_tokens)
    order = torch.argsort(satt.float(), dim=1, descending=(mode == "high"), stable=True)
    mask = torch.zeros(batch, n_tokens, dtype=torch.bool, device=satt.device)
    mask.scatter_(1, order[:, :n_masked], True)
    if n_hints > 0:
        pool = order[:, :n_pool]
        if hint_mode == "random":
            pick = random_ranks(batch, n_pool, generator, satt.device)[:, :n_hints]
            hints = pool.gather(1, pick)
        else:
            hints = pool[:, :n_hints]
        mask.scatter_(1, hints, False)
    return mask


class AttentionGuidedMasking(MaskingStrategy):
    """:py:func:`attention_guided_mask` of the teacher's SATT as a strategy (``needs_satt``).

    Args:
        mask_ratio: r (0.7). hint_ratio: s (0.1). mode: ``"high"`` or ``"low"``. hint_mode: ``"random"`` or ``"top"``.
    """

    needs_satt = True

    def __init__(self, mask_ratio: float = 0.7, hint_ratio: float = 0.1, mode: str = "high", hint_mode: str = "random") -> None:
        super().__init__(mask_ratio)
        check_ratio("hint_ratio", hint_ratio)
        if mode not in ("high", "low"):
            raise ValueError(f"mode must be 'high' or 'low', got {mode!r}.")
        if hint_mode not in ("random", "top"):
            raise ValueError(f"hint_mode must be 'random' or 'top', got {hint_mode!r}.")
        self.hint_ratio, self.mode, self.hint_mode = hint_ratio, mode, hint_mode

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"attention_{self.mode}"

    def __call__(self, satt, batch, grid, generator=None, device=None):
        if satt is None:
            raise ValueError(f"masking {self.name!r} needs the teacher's SATT, got None.")
        return attention_guided_mask(satt, self.mask_ratio, self.hint_ratio, self.mode, self.hint_mode, generator)


register_masking("attention_high", partial(AttentionGuidedMasking, mode="high"))
register_masking("attention_low", partial(AttentionGuidedMasking, mode="low"))
