"""Dimensional-collapse monitor and the token decorrelation term (dagman_components.losses.decorrelation)."""

import pytest
import torch

from dagman_components.losses import (
    DAGMaNLoss,
    HeadOutputs,
    feature_correlation,
    participation_ratio,
    token_decorrelation_loss,
)


def _redundant(rows: int = 256, channels: int = 16, independent: int = 2, seed: int = 0) -> torch.Tensor:
    """(rows, channels) features that are mixtures of only ``independent`` sources plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    sources = torch.randn(rows, independent, generator=generator)
    mixing = torch.randn(independent, channels, generator=generator)
    return sources @ mixing + 0.01 * torch.randn(rows, channels, generator=generator)


def test_correlation_is_scale_free_and_survives_a_constant_channel():
    x = _redundant()
    x[:, 3] = 7.0
    scaled = x * torch.linspace(0.5, 10.0, x.shape[1])
    assert torch.allclose(feature_correlation(x), feature_correlation(scaled), atol=1e-3)
    correlation = feature_correlation(x)
    assert torch.isfinite(correlation).all() and correlation[3].abs().max() < 1e-3


def test_participation_ratio_counts_independent_channels():
    torch.manual_seed(0)
    assert participation_ratio(torch.randn(4096, 16)) > 14.0  # independent channels: about C
    assert participation_ratio(_redundant(independent=1)) < 1.1  # one source: 1
    assert 1.2 < participation_ratio(_redundant(independent=2)) < 2.1


def test_decorrelation_loss_bounds_and_relation_to_the_participation_ratio():
    torch.manual_seed(0)
    assert token_decorrelation_loss(torch.randn(4096, 16)) < 0.01
    assert token_decorrelation_loss(_redundant(independent=1)) > 0.95
    x, channels = _redundant(independent=3), 16
    expected = (channels / participation_ratio(x) - 1) / (channels - 1)
    assert torch.allclose(token_decorrelation_loss(x), expected, atol=1e-4)


def test_descending_the_loss_raises_the_participation_ratio():
    features = _redundant(independent=2).requires_grad_(True)
    before = participation_ratio(features.detach())
    optimizer = torch.optim.Adam([features], lr=0.05)
    for _ in range(50):
        optimizer.zero_grad()
        token_decorrelation_loss(features).backward()
        optimizer.step()
    assert participation_ratio(features.detach()) > 2 * before


def test_bad_shapes_name_the_shape():
    with pytest.raises(ValueError, match=r"\(M, C\).*\(16,\)"):
        feature_correlation(torch.randn(16))
    with pytest.raises(ValueError, match="M >= 2"):
        participation_ratio(torch.randn(1, 8))


def test_dagman_loss_adds_the_weighted_term_and_needs_the_tokens():
    torch.manual_seed(0)
    tokens = _redundant(rows=64)
    student = HeadOutputs(global_logits=torch.randn(4, 16), token_features=tokens)
    teacher = HeadOutputs(global_logits=torch.randn(4, 16))
    images = torch.zeros(4, 1, 2, 2, 2)
    kwargs = dict(out_dim=16, amip_weight=0.0, ampd_weight=0.0, aitd_weight=0.0)
    out = DAGMaNLoss(**kwargs, decorrelation_weight=0.5)(student, teacher, images, images)
    without = DAGMaNLoss(**kwargs)(student, teacher, images, images)
    assert "decorrelation" not in without
    assert torch.allclose(out["total"], without["total"] + 0.5 * token_decorrelation_loss(tokens), atol=1e-6)
    with pytest.raises(ValueError, match="token_features"):
        DAGMaNLoss(**kwargs, decorrelation_weight=0.5)(HeadOutputs(global_logits=torch.randn(4, 16)), teacher, images, images)
    with pytest.raises(ValueError, match="decorrelation_weight"):
        DAGMaNLoss(**kwargs, decorrelation_weight=-1.0)
