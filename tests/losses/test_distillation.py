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


def test_teacher_temperature_warm_up_is_at_most_half_the_run():
    ce = DistillationCE(4, warmup_teacher_temp_epochs=4)
    # a 2-epoch run (MONAI Label's override) reaches tau_t in its second epoch instead of never
    assert [round(ce.set_epoch(e, max_epochs=2), 4) for e in range(2)] == [0.04, 0.07]
    assert ce.warmup_epochs(2) == 1 and ce.warmup_epochs(20) == 4 and ce.warmup_epochs() == 4
    # a run long enough keeps the configured schedule
    assert [round(ce.set_epoch(e, max_epochs=20), 4) for e in range(4)] == [0.04, 0.05, 0.06, 0.07]


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


def test_sinkhorn_knopp_targets_have_equal_prototype_mass_and_unit_rows():
    from dagman_components.losses.distillation import sinkhorn_knopp

    torch.manual_seed(0)
    logits = torch.randn(12, 6)
    q = sinkhorn_knopp(logits, temperature=0.1, iterations=50)
    assert torch.allclose(q.sum(dim=1), torch.ones(12), atol=1e-5)
    # every prototype gets the same share of the batch: M / K samples' worth
    assert torch.allclose(q.sum(dim=0), torch.full((6,), 12 / 6), atol=1e-3)
    # a plain softmax of the same logits does not: the test can tell the two apart
    assert not torch.allclose(F.softmax(logits / 0.1, -1).sum(0), torch.full((6,), 2.0), atol=1e-1)


def test_unknown_centering_is_rejected():
    with pytest.raises(ValueError, match="centering"):
        DistillationCE(8, centering="sinkhorn")


def test_dagman_loss_logs_the_mutual_information_of_each_head():
    from dagman_components.losses import DAGMaNLoss, HeadOutputs, koleo_loss

    torch.manual_seed(0)
    loss = DAGMaNLoss(out_dim=16, amip_weight=0.0, ampd_weight=0.0, koleo_weight=0.1)
    student = HeadOutputs(cls_logits=torch.randn(4, 16), global_logits=torch.randn(4, 16), image_embedding=torch.randn(4, 8))
    teacher = HeadOutputs(cls_logits=torch.randn(4, 16), global_logits=torch.randn(4, 16))
    out = loss(student, teacher, torch.zeros(4, 1, 2, 2, 2), torch.zeros(4, 1, 2, 2, 2))
    for term in ("aitd", "gitd"):
        expected = out[f"teacher_entropy_mean_{term}"] - out[f"teacher_entropy_sample_{term}"]
        assert torch.allclose(out[f"teacher_mutual_information_{term}"], expected)
    without = DAGMaNLoss(out_dim=16, amip_weight=0.0, ampd_weight=0.0)(student, teacher, torch.zeros(4, 1, 2, 2, 2),
                                                                       torch.zeros(4, 1, 2, 2, 2))
    assert torch.allclose(out["total"], without["total"] + 0.1 * koleo_loss(student.image_embedding), atol=1e-6)


def test_koleo_is_lower_for_spread_features():
    from dagman_components.losses import koleo_loss

    torch.manual_seed(0)
    spread = torch.eye(4)
    bunched = torch.ones(4, 4) + 0.01 * torch.randn(4, 4)
    assert koleo_loss(spread) < koleo_loss(bunched)
    features = bunched.clone().requires_grad_(True)
    koleo_loss(features).backward()
    assert features.grad.abs().sum() > 0


def test_batch_standardised_head_input_keeps_differences_between_near_identical_rows():
    from dagman_components.losses.heads import batch_standardize

    torch.manual_seed(0)
    rows = torch.randn(1, 16) * 10 + 0.1 * torch.randn(6, 16)
    standardised = batch_standardize(rows)
    assert torch.allclose(standardised.mean(0), torch.zeros(16), atol=1e-3)
    assert torch.allclose(standardised.std(0, unbiased=False), torch.ones(16), atol=1e-2)
    head = DINOHead(16, out_dim=32, hidden_dim=16, bottleneck_dim=8, input_norm="batch").eval()
    plain = DINOHead(16, out_dim=32, hidden_dim=16, bottleneck_dim=8)
    plain.load_state_dict(head.state_dict())
    plain.eval()
    cosine = lambda x: F.cosine_similarity(x[0:1], x[1:]).mean()  # noqa: E731
    # the plain head maps near-identical rows to one point; the batch-standardised head (in eval, as the teacher) does not
    assert cosine(plain(rows)) > 0.99 and cosine(head(rows)) < 0.9
    assert torch.equal(batch_standardize(rows[:1]), rows[:1])
    with pytest.raises(ValueError, match="input_norm"):
        DINOHead(16, input_norm="layer")


def test_batch_standardised_bottleneck_keeps_samples_apart_when_the_mlp_maps_them_to_one_point():
    torch.manual_seed(0)
    rows = torch.randn(8, 16)
    plain = DINOHead(16, out_dim=32, hidden_dim=16, bottleneck_dim=8, input_norm="batch").eval()
    with torch.no_grad():  # the small-batch collapse: a dominant bias, every sample at nearly one bottleneck point
        plain.mlp[-1].weight.mul_(1e-3)
        plain.mlp[-1].bias.fill_(1.0)
    head = DINOHead(16, out_dim=32, hidden_dim=16, bottleneck_dim=8, input_norm="batch", output_norm="batch").eval()
    head.load_state_dict(plain.state_dict())
    spread = lambda logits: (logits - logits.mean(0)).std().item()  # noqa: E731  what survives the centering
    assert spread(plain(rows)) < 1e-2 and spread(head(rows)) > 0.1
    with pytest.raises(ValueError, match="output_norm"):
        DINOHead(16, output_norm="layer")
