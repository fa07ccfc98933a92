"""Attention-guided masking: the function and the ``attention_high`` / ``attention_low`` strategies."""

import pytest
import torch

from dagman_components.masking import AttentionGuidedMasking, attention_guided_mask, build_masking


def ranked_satt(batch: int = 3, n_tokens: int = 100) -> torch.Tensor:
    """SATT whose ranking is known: token i of row b has attention rank (i + 7 b) mod N (0 = highest)."""
    ranks = (torch.arange(n_tokens)[None] + 7 * torch.arange(batch)[:, None]) % n_tokens
    return torch.softmax(-ranks.float() / 10, dim=1)


def test_attention_mask_without_hints_masks_exactly_the_top_tokens():
    satt = ranked_satt()
    mask = attention_guided_mask(satt, mask_ratio=0.7, hint_ratio=0.0)
    top = satt.argsort(dim=1, descending=True)[:, :70]
    expected = torch.zeros_like(mask).scatter_(1, top, True)
    assert torch.equal(mask, expected)


def test_attention_mask_low_mode_masks_the_least_attended():
    satt = ranked_satt()
    mask = attention_guided_mask(satt, mask_ratio=0.3, hint_ratio=0.0, mode="low")
    bottom = satt.argsort(dim=1)[:, :30]
    assert torch.equal(mask, torch.zeros_like(mask).scatter_(1, bottom, True))


@pytest.mark.parametrize("n_tokens,expected", [(64, 44 - 4), (100, 70 - 7), (300, 210 - 21), (512, 358 - 35)])
def test_attention_mask_count_with_hints(n_tokens, expected):
    satt = ranked_satt(4, n_tokens)
    mask = attention_guided_mask(satt, mask_ratio=0.7, hint_ratio=0.1)
    assert mask.sum(dim=1).tolist() == [expected] * 4


def test_hints_come_only_from_the_top_tokens_and_everything_else_follows_the_ranking():
    n_tokens = 200
    satt = ranked_satt(8, n_tokens)
    order = satt.argsort(dim=1, descending=True)
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        mask = attention_guided_mask(satt, 0.7, 0.1, hint_mode="random", generator=generator)
        ranked_mask = mask.gather(1, order)  # position k = token of rank k
        top_pool, n_masked = 20, 140
        # unmasked tokens among the top r*N are hints, and they all lie in the top s*N
        assert not (~ranked_mask[:, top_pool:n_masked]).any()
        assert (~ranked_mask[:, :top_pool]).sum(dim=1).tolist() == [14] * 8
        assert not ranked_mask[:, n_masked:].any()


def test_random_hints_vary_with_the_generator_and_top_hints_do_not():
    satt = ranked_satt(2, 300)
    a = attention_guided_mask(satt, generator=torch.Generator().manual_seed(0))
    b = attention_guided_mask(satt, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)
    top = attention_guided_mask(satt, hint_mode="top")
    order = satt.argsort(dim=1, descending=True)
    assert not top.gather(1, order)[:, :21].any()  # floor(0.1*0.7*300) = 21 top tokens stay visible


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="mask_ratio"):
        attention_guided_mask(ranked_satt(), mask_ratio=1.5)
    with pytest.raises(ValueError, match="mode"):
        attention_guided_mask(ranked_satt(), mode="middle")
    with pytest.raises(ValueError, match="satt"):
        attention_guided_mask(torch.rand(10))


@pytest.mark.parametrize("name,mode", [("attention_high", "high"), ("attention_low", "low")])
def test_attention_strategies_mask_from_the_teachers_satt(name, mode):
    strategy = build_masking(name, mask_ratio=0.5, hint_ratio=0.2, hint_mode="top")
    assert isinstance(strategy, AttentionGuidedMasking) and strategy.needs_satt and strategy.name == name
    satt = ranked_satt(2, 64)
    generator = torch.Generator().manual_seed(3)
    expected = attention_guided_mask(satt, 0.5, 0.2, mode, "top", torch.Generator().manual_seed(3))
    assert torch.equal(strategy(satt, 2, (4, 4, 4), generator=generator), expected)
    with pytest.raises(ValueError, match=f"{name}' needs the teacher's SATT"):
        strategy(None, 2, (4, 4, 4))
    with pytest.raises(ValueError, match="hint_mode"):
        AttentionGuidedMasking(hint_mode="bottom")
