"""The masking registry: names to strategies, and clear errors for anything else."""

import pytest
import torch

from dagman_components.masking import (
    MASKING_STRATEGIES,
    MaskingStrategy,
    RandomMasking,
    build_masking,
    register_masking,
)


def test_registered_names_in_order():
    assert tuple(MASKING_STRATEGIES) == ("attention_high", "attention_low", "random", "block")
    assert [build_masking(name).needs_satt for name in MASKING_STRATEGIES] == [True, True, False, False]


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(ValueError) as error:
        build_masking("attention_hgh")
    assert str(error.value) == ("masking must be one of ('attention_high', 'attention_low', 'random', 'block'), "
                                "got 'attention_hgh' (the bundle's --masking).")


def test_a_strategy_object_is_used_as_it_is_and_other_types_are_refused():
    strategy = RandomMasking(0.3)
    assert build_masking(strategy, mask_ratio=0.9) is strategy
    with pytest.raises(TypeError, match="strategy name or a MaskingStrategy, got int"):
        build_masking(3)
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        build_masking("random", mask_ratio=1.5)


def test_registering_a_name_twice_is_refused_and_a_new_strategy_is_built_by_name(monkeypatch):
    with pytest.raises(ValueError, match="'random' is registered already"):
        register_masking("random", RandomMasking)

    class EveryOther(MaskingStrategy):
        name = "every_other"

        def __call__(self, satt, batch, grid, generator=None, device=None):
            return (torch.arange(24) % 2 == 0).expand(batch, -1)

    monkeypatch.setitem(MASKING_STRATEGIES, "every_other", EveryOther)
    strategy = build_masking("every_other", mask_ratio=0.5, hint_ratio=0.1)
    assert strategy.mask_ratio == 0.5 and strategy(None, 2, (2, 3, 4)).sum() == 24
