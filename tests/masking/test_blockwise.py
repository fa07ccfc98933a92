"""Blockwise masking in 3D (the ``block`` strategy)."""

import torch

from dagman_components.masking import BlockMasking, block_mask, build_masking


def test_block_mask_count_and_contiguity():
    mask = block_mask(6, (8, 8, 8), 0.7, generator=torch.Generator().manual_seed(0))
    assert mask.sum(dim=1).tolist() == [358] * 6
    # blocks: masked tokens have many masked neighbours, far more than random masking would give
    grid = mask.reshape(6, 8, 8, 8).float()
    neighbours = (grid[:, 1:] * grid[:, :-1]).sum() / grid[:, 1:].sum()
    assert neighbours > 0.75


def test_block_mask_follows_the_generator():
    def draw(seed):
        return block_mask(3, (2, 4, 6), 0.5, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


def test_block_strategy_draws_cuboids_on_the_grid():
    strategy = build_masking("block", mask_ratio=0.5, hint_ratio=0.1)
    assert isinstance(strategy, BlockMasking) and not strategy.needs_satt
    mask = strategy(None, 2, (2, 4, 6), generator=torch.Generator().manual_seed(1))
    assert torch.equal(mask, block_mask(2, (2, 4, 6), 0.5, generator=torch.Generator().manual_seed(1)))
    assert BlockMasking(min_block_tokens=4).min_block_tokens == 4
