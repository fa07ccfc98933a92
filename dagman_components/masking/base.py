"""What a masking strategy is, and the registry that turns a config's name into one.

A strategy decides which of the student's tokens are masked in one step. The trainer
(:py:class:`~dagman_components.engines.CoDistillationTrainer`) is given a strategy object, or a name that
:py:func:`build_masking` looks up here; it asks ``needs_satt`` whether to compute the teacher's SATT for it.
A new strategy is one module in this package that subclasses :py:class:`MaskingStrategy` and calls
:py:func:`register_masking`, one import line in ``masking/__init__.py`` and one test.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch

from .tokens import check_ratio

__all__ = ["MASKING_STRATEGIES", "MaskingStrategy", "build_masking", "register_masking"]


class MaskingStrategy(ABC):
    """Chooses the student's masked tokens: ``strategy(satt, batch, grid)`` -> (batch, N) bool, True = masked.

    Attributes:
        name: the registry name (``--masking`` of the pretrain bundle).
        needs_satt: True if the mask is computed from the teacher's SATT (then the encoder needs its SA module
            and the trainer computes the SATT for it); False if ``satt`` is ignored and may be None.
        mask_ratio: fraction of the N tokens chosen for masking (0.7 in the papers).
    """

    name: ClassVar[str] = ""
    needs_satt: ClassVar[bool] = False

    def __init__(self, mask_ratio: float = 0.7) -> None:
        check_ratio("mask_ratio", mask_ratio)
        self.mask_ratio = mask_ratio

    @abstractmethod
    def __call__(
        self,
        satt: torch.Tensor | None,
        batch: int,
        grid: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """(batch, prod(grid)) bool mask; ``satt`` is the teacher's (batch, N) SATT, or None if not ``needs_satt``."""

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({options})"


#: name -> factory of every registered strategy, in registration order (``tuple(MASKING_STRATEGIES)``: the names)
MASKING_STRATEGIES: dict[str, Callable[..., MaskingStrategy]] = {}


def register_masking(name: str, factory: Callable[..., MaskingStrategy]) -> Callable[..., MaskingStrategy]:
    """Register ``factory`` (a :py:class:`MaskingStrategy` subclass or a partial of one) under ``name``.

    Raises:
        ValueError: ``name`` is registered already.
    """
    if name in MASKING_STRATEGIES:
        raise ValueError(f"masking strategy {name!r} is registered already ({MASKING_STRATEGIES[name]}).")
    MASKING_STRATEGIES[name] = factory
    return factory


def build_masking(masking: str | MaskingStrategy, **options: object) -> MaskingStrategy:
    """The strategy ``masking`` names, built with the ``options`` its factory takes; a strategy object as it is.

    The trainer passes all of its masking options (``mask_ratio``, ``hint_ratio``, ``hint_mode``); a strategy
    gets only those its constructor has (random masking has no hints), so one config serves every strategy.

    Raises:
        ValueError: an unregistered name (the message lists the registered ones).
        TypeError: neither a name nor a :py:class:`MaskingStrategy`.
    """
    if isinstance(masking, MaskingStrategy):
        return masking
    if not isinstance(masking, str):
        raise TypeError(f"masking must be a strategy name or a MaskingStrategy, got {type(masking).__name__}.")
    if masking not in MASKING_STRATEGIES:
        raise ValueError(f"masking must be one of {tuple(MASKING_STRATEGIES)}, got {masking!r} (the bundle's --masking).")
    factory = MASKING_STRATEGIES[masking]
    accepted = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in options.items() if k in accepted})
