import pytest
import torch

from dagman_components.masking import (
    attention_guided_mask,
    block_mask,
    patch_dropout,
    random_mask,
    token_mask_to_voxels,
    upsample_token_mask,
)


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


def test_block_mask_count_and_contiguity():
    mask = block_mask(6, (8, 8, 8), 0.7, generator=torch.Generator().manual_seed(0))
    assert mask.sum(dim=1).tolist() == [358] * 6
    # blocks: masked tokens have many masked neighbours, far more than random masking would give
    grid = mask.reshape(6, 8, 8, 8).float()
    neighbours = (grid[:, 1:] * grid[:, :-1]).sum() / grid[:, 1:].sum()
    assert neighbours > 0.75


def test_upsampling_to_patches_and_voxels():
    mask = torch.tensor([[True, False, False, False, False, False, False, True]])
    up = upsample_token_mask(mask, (2, 2, 2), 3)
    assert up.shape == (1, 6, 6, 6)
    assert up[0, :3, :3, :3].all() and up[0, 3:, 3:, 3:].all() and up.sum() == 2 * 27
    voxels = token_mask_to_voxels(mask, (2, 2, 2), 16)
    assert voxels.shape == (1, 1, 32, 32, 32) and voxels.sum() == 2 * 16**3


def test_block_mask_follows_the_generator():
    def draw(seed):
        return block_mask(3, (2, 4, 6), 0.5, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
