import math

import pytest
import torch
import torch.nn.functional as F

from dagman_components.losses import DINOHead, DistillationCE, distribution_entropies, teacher_temperature


def test_cross_entropy_matches_the_formula():
    torch.manual_seed(0)
    ce = DistillationCE(16, student_temp=0.1)
    ce.center.copy_(torch.randn(1, 16))
    ce.teacher_temp = 0.05
    s, t = torch.randn(4, 16), torch.randn(4, 16)
    probs = ce.teacher_probabilities(t)
    expected = -(F.softmax((t - ce.center) / 0.05, -1) * F.log_softmax(s / 0.1, -1)).sum(-1)
    assert torch.allclose(ce(s, probs), expected, atol=1e-6)
    assert not probs.requires_grad


def test_center_update_is_an_ema_of_the_batch_mean():
    ce = DistillationCE(3, center_momentum=0.9)
    ce.center.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    teacher = torch.tensor([[0.0, 0.0, 0.0], [2.0, 4.0, 6.0]])
    ce.update_center(teacher)
    assert torch.allclose(ce.center, torch.tensor([[0.9 + 0.1, 1.8 + 0.2, 2.7 + 0.3]]))


def test_centering_is_what_the_teacher_distribution_subtracts():
    ce = DistillationCE(2)
    ce.teacher_temp = 1.0
    ce.center.copy_(torch.tensor([[1.0, 0.0]]))
    probs = ce.teacher_probabilities(torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(probs, torch.tensor([[0.5, 0.5]]))


def test_teacher_temperature_schedule():
    assert teacher_temperature(0) == pytest.approx(0.04)
    assert teacher_temperature(29) == pytest.approx(0.07)
    assert teacher_temperature(500) == pytest.approx(0.07)
    assert teacher_temperature(14) == pytest.approx(0.04 + 0.03 * 14 / 29)
    ce = DistillationCE(4, warmup_teacher_temp_epochs=3)
    assert [round(ce.set_epoch(e), 4) for e in range(4)] == [0.04, 0.055, 0.07, 0.07]


def test_entropy_monitors_detect_both_collapses():
    k = 64
    uniform = torch.full((8, k), 1.0 / k)
    h_mean, h_sample = distribution_entropies(uniform)
    assert h_sample == pytest.approx(math.log(k), rel=1e-4)  # uniform collapse: per-sample entropy at ln K
    one_hot = F.one_hot(torch.zeros(8, dtype=torch.long), k).float()
    h_mean, h_sample = distribution_entropies(one_hot)
    assert h_mean == pytest.approx(0.0, abs=1e-6)  # one-hot collapse: H(mean P) at 0


def test_dino_head_shapes_normalisation_and_frozen_gain():
    head = DINOHead(32, out_dim=100, hidden_dim=64, bottleneck_dim=16)
    out = head(torch.randn(5, 32))
    assert out.shape == (5, 100) and out.dtype == torch.float32
    gain = head.last_layer.parametrizations.weight.original0
    assert not gain.requires_grad and torch.all(gain == 1)
    # with gain 1 every prototype has unit norm, so logits are cosines in [-1, 1]
    assert out.abs().max() <= 1.0 + 1e-5
