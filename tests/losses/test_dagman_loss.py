import pytest
import torch

from dagman_components.losses import DAGMaNLoss, HeadOutputs, masked_l1


def heads(n_images=4, k=32, n_masked_per_image=3, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    index = torch.arange(n_images).repeat_interleave(n_masked_per_image)
    make = lambda *s: torch.randn(*s, generator=g).requires_grad_(grad)
    return HeadOutputs(
        patch_logits=make(len(index), k), patch_image_index=index, cls_logits=make(n_images, k),
        global_logits=make(n_images, k), reconstruction=make(n_images, 1, 8, 8, 8),
    )


def test_amip_counts_only_masked_voxels():
    target = torch.zeros(1, 1, 4, 4, 4)
    prediction = torch.zeros(1, 1, 4, 4, 4)
    mask = torch.zeros(1, 1, 4, 4, 4)
    mask[..., :2] = 1
    prediction[..., 2:] = 100.0  # error outside the mask must not count
    assert masked_l1(prediction, target, mask) == pytest.approx(0.0)
    prediction[..., :2] = 0.5
    assert masked_l1(prediction, target, mask) == pytest.approx(0.5, rel=1e-5)


def test_total_is_the_weighted_sum_and_zero_weight_switches_a_term_off():
    images = torch.rand(4, 1, 8, 8, 8)
    mask = (torch.rand(4, 1, 8, 8, 8) > 0.5).float()
    full = DAGMaNLoss(out_dim=32)(heads(), heads(seed=1), images, mask)
    expected = full["amip"] + 0.1 * (full["ampd"] + full["aitd"] + full["gitd"])
    assert torch.allclose(full["total"], expected)
    for term in ("amip", "ampd", "aitd", "gitd"):
        loss = DAGMaNLoss(out_dim=32, **{f"{term}_weight": 0.0})
        out = loss(heads(), heads(seed=1), images, mask)
        assert out[term] == 0
        assert term not in loss.distillation
        others = [t for t in ("amip", "ampd", "aitd", "gitd") if t != term]
        assert all(out[t] > 0 for t in others)
        assert f"teacher_entropy_mean_{term}" not in out or term == "amip"


def test_zero_weight_terms_need_no_head_output():
    images = torch.rand(4, 1, 8, 8, 8)
    only_amip = DAGMaNLoss(out_dim=32, ampd_weight=0, aitd_weight=0, gitd_weight=0)
    out = only_amip(HeadOutputs(reconstruction=torch.rand(4, 1, 8, 8, 8)), HeadOutputs(), images, torch.ones(4, 1, 8, 8, 8))
    assert out["total"] > 0
    with pytest.raises(ValueError, match="all loss weights are 0"):
        DAGMaNLoss(amip_weight=0, ampd_weight=0, aitd_weight=0, gitd_weight=0)


def test_cross_view_pairing_for_image_token_losses():
    """AITD pairs student view u with teacher view v: identical logits across views give the minimum."""
    k, b = 16, 2
    loss = DAGMaNLoss(out_dim=k, amip_weight=0, ampd_weight=0, gitd_weight=0, warmup_teacher_temp=0.1, student_temp=0.1)
    u, v = torch.randn(b, k), torch.randn(b, k) * 5
    student = HeadOutputs(cls_logits=torch.cat([u, v]))
    paired = loss(student, HeadOutputs(cls_logits=torch.cat([v, u])), torch.zeros(2 * b, 1, 2, 2, 2), torch.zeros(2 * b, 1, 2, 2, 2))
    loss.distillation["aitd"].center.zero_()
    unpaired = loss(student, HeadOutputs(cls_logits=torch.cat([u, v])), torch.zeros(2 * b, 1, 2, 2, 2), torch.zeros(2 * b, 1, 2, 2, 2))
    assert paired["aitd"] < unpaired["aitd"]


def test_ampd_is_a_per_image_mean_over_masked_tokens():
    k = 8
    loss = DAGMaNLoss(out_dim=k, amip_weight=0, aitd_weight=0, gitd_weight=0)
    index = torch.tensor([0, 0, 0, 1])  # image 0 has three masked tokens, image 1 one
    student = HeadOutputs(patch_logits=torch.randn(4, k), patch_image_index=index)
    teacher = HeadOutputs(patch_logits=torch.randn(4, k), patch_image_index=index)
    ce = loss.distillation["ampd"]
    per_token = ce(student.patch_logits, ce.teacher_probabilities(teacher.patch_logits))
    expected = (per_token[:3].mean() + per_token[3]) / 2
    out = loss(student, teacher, torch.zeros(2, 1, 2, 2, 2), torch.zeros(2, 1, 2, 2, 2))
    assert torch.allclose(out["ampd"], expected)


def test_centers_update_after_the_loss():
    loss = DAGMaNLoss(out_dim=32)
    teacher = heads(seed=1)
    loss(heads(), teacher, torch.rand(4, 1, 8, 8, 8), torch.ones(4, 1, 8, 8, 8))
    assert torch.allclose(loss.distillation["gitd"].center, 0.1 * teacher.global_logits.mean(0, keepdim=True))


def test_gradient_reaches_only_the_student():
    student, teacher = heads(grad=True), heads(seed=1, grad=True)
    out = DAGMaNLoss(out_dim=32)(student, teacher, torch.rand(4, 1, 8, 8, 8), torch.ones(4, 1, 8, 8, 8))
    out["total"].backward()
    assert student.cls_logits.grad is not None and student.patch_logits.grad is not None
    assert teacher.cls_logits.grad is None and teacher.patch_logits.grad is None and teacher.global_logits.grad is None
