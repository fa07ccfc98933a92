"""Random token masking (the ``random`` strategy, SMIT) and the noisy teacher's patch dropout."""

import pytest
import torch

from dagman_components.masking import RandomMasking, build_masking, patch_dropout, random_mask


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.7, 0.9])
def test_patch_dropout_ratio_is_exact_per_sample(ratio):
    dropped = patch_dropout(5, 512, ratio, generator=torch.Generator().manual_seed(0))
    assert dropped.dtype == torch.bool and dropped.shape == (5, 512)
    assert dropped.sum(dim=1).tolist() == [int(ratio * 512 + 1e-6)] * 5
    if 0 < ratio < 1:
        assert not torch.equal(dropped[0], dropped[1])  # random per sample


def test_random_mask_is_uniform_over_tokens():
    mask = random_mask(4000, 16, 0.5, generator=torch.Generator().manual_seed(0))
    frequency = mask.float().mean(dim=0)
    assert torch.allclose(frequency, torch.full((16,), 0.5), atol=0.04)


def test_random_strategy_ignores_satt_and_the_hint_options():
    strategy = build_masking("random", mask_ratio=0.5, hint_ratio=0.3, hint_mode="top")
    assert isinstance(strategy, RandomMasking) and not strategy.needs_satt and vars(strategy) == {"mask_ratio": 0.5}
    mask = strategy(None, 3, (2, 4, 8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, random_mask(3, 64, 0.5, torch.Generator().manual_seed(0)))
