"""What the papers' method fixes, checked on a non-cubic token grid with asymmetric masks.

Each test here fails for one one-line method bug that the rest of the suite let through: the EMA
index, the teacher's mode, where SATT comes from, which view a cross-view loss pairs, the token-grid
axes, and which tokens/voxels AMPD and AMIP see.
"""

import pytest
import torch
from ignite.engine import Events

from dagman_components.engines import CoDistillationTrainer, ema_momentum, parameter_groups
from dagman_components.losses import DAGMaNLoss, HeadOutputs
from dagman_components.masking import token_mask_to_voxels, upsample_token_mask
from dagman_components.networks import DAGMaNPretrainModel, SASwinEncoder

SHAPE = (32, 64, 96)  # SA-stage grid (2, 4, 6): every axis has its own length
GRID = (2, 4, 6)


def tiny_encoder(**kwargs):
    torch.manual_seed(0)
    return SASwinEncoder(feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), drop_path_rate=0.1, **kwargs)


def tiny_trainer(n_batches=1, max_epochs=1, **kwargs):
    encoder = tiny_encoder()
    loss = DAGMaNLoss(out_dim=32, warmup_teacher_temp_epochs=1)
    model = DAGMaNPretrainModel(encoder, loss, hidden_dim=16, bottleneck_dim=8, head_input_norm="batch")
    g = torch.Generator().manual_seed(0)
    data = [{k: torch.rand(2, 1, *SHAPE, generator=g) for k in ("view_1", "view_2")} for _ in range(n_batches)]
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-3)
    return CoDistillationTrainer("cpu", max_epochs, data, model, optimizer, loss, **kwargs)


def test_ema_momentum_follows_the_global_iteration_not_the_iteration_within_the_epoch():
    trainer = tiny_trainer(n_batches=2, max_epochs=2)
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output["ema_momentum"]))
    trainer.run()
    assert seen == pytest.approx([ema_momentum(i, 4) for i in range(4)])
    assert seen[2] != pytest.approx(seen[0])  # a per-epoch index would repeat the first epoch's values


def test_the_teacher_runs_in_eval_mode_in_every_pass():
    trainer = tiny_trainer(n_batches=2)
    modes = []
    trainer.teacher.encoder.register_forward_pre_hook(
        lambda module, args: modes.append(any(m.training for m in module.modules()))
    )
    trainer.run()
    assert modes and not any(modes)


def test_satt_is_the_cls_row_of_the_last_sa_block_without_the_cls_column():
    encoder = tiny_encoder(sa_depth=2).eval()
    with torch.no_grad():
        out = encoder(torch.rand(2, 1, *SHAPE))
    last = encoder.semantic_attention.blocks[-1].attention  # (B, heads, N+1, N+1)
    first = encoder.semantic_attention.blocks[0].attention
    expected = last[:, :, 0, 1:] / last[:, :, 0, 1:].sum(-1, keepdim=True)
    assert out.satt.shape == (2, 48)
    assert torch.allclose(out.head_attention, expected, atol=1e-6)
    assert not torch.allclose(out.head_attention, first[:, :, 0, 1:] / first[:, :, 0, 1:].sum(-1, keepdim=True), atol=1e-4)
    with_cls_column = last[:, :, 0, :-1] / last[:, :, 0, :-1].sum(-1, keepdim=True)
    assert not torch.allclose(out.head_attention, with_cls_column, atol=1e-4)


def test_gitd_pairs_each_student_view_with_the_teachers_other_view():
    k, b = 16, 2
    loss = DAGMaNLoss(out_dim=k, amip_weight=0, ampd_weight=0, aitd_weight=0, warmup_teacher_temp=0.1, student_temp=0.1)
    u, v = torch.randn(b, k), torch.randn(b, k) * 5
    student = HeadOutputs(global_logits=torch.cat([u, v]))
    zeros = torch.zeros(2 * b, 1, 2, 2, 2)
    paired = loss(student, HeadOutputs(global_logits=torch.cat([v, u])), zeros, zeros)
    loss.distillation["gitd"].center.zero_()
    same_view = loss(student, HeadOutputs(global_logits=torch.cat([u, v])), zeros, zeros)
    assert paired["gitd"] < same_view["gitd"]


def test_a_masked_token_replaces_exactly_its_own_block_on_a_non_cubic_grid():
    encoder = tiny_encoder().eval()
    with torch.no_grad():
        encoder.mask_token.fill_(3.0)
        x = torch.rand(1, 1, *SHAPE)
        mask = torch.zeros(1, 48, dtype=torch.bool)
        z, y, w = 1, 2, 5
        mask[0, (z * GRID[1] + y) * GRID[2] + w] = True
        changed = (encoder(x, mask).hidden_states[0] - encoder(x).hidden_states[0]).abs().sum(1)[0] > 0
    expected = torch.zeros_like(changed)  # x0 grid at stride 2: a token is 8 patches per axis
    expected[8 * z : 8 * z + 8, 8 * y : 8 * y + 8, 8 * w : 8 * w + 8] = True
    assert torch.equal(changed, expected)
    voxels = token_mask_to_voxels(mask, GRID, 16)[0, 0]
    assert voxels[16 * z : 16 * z + 16, 16 * y : 16 * y + 16, 16 * w : 16 * w + 16].all() and voxels.sum() == 16**3


def test_ampd_and_amip_see_the_masked_tokens_and_the_teacher_the_same_positions():
    trainer = tiny_trainer()
    student, teacher = trainer.network, trainer.teacher
    record = {}
    student.encoder.register_forward_hook(lambda m, args, out: record.update(mask=args[1], student_out=out))
    student.patch_head.register_forward_pre_hook(lambda m, args: record.update(student_rows=args[0]))
    teacher.patch_head.register_forward_pre_hook(lambda m, args: record.update(teacher_rows=args[0]))
    teacher_outputs = []
    teacher.encoder.register_forward_hook(lambda m, args, out: teacher_outputs.append(out))
    trainer.loss_function.register_forward_pre_hook(
        lambda m, args: record.update(student_heads=args[0], teacher_heads=args[1], voxel_mask=args[3])
    )
    trainer.run()
    mask = record["mask"]
    assert mask.any() and (~mask).any()
    fine = upsample_token_mask(mask, GRID, 2).flatten(1)
    # AMPD rows: the student's own pre-merge tokens at its masked positions, and the teacher's (noisy pass) at the same ones
    assert torch.allclose(record["student_rows"], record["student_out"].premerge_tokens[fine])
    noisy = teacher_outputs[0]
    assert torch.allclose(record["teacher_rows"], noisy.premerge_tokens[fine])
    s, t = record["student_heads"], record["teacher_heads"]
    assert torch.equal(s.patch_image_index, t.patch_image_index)
    # AMIP: the loss weights exactly the masked voxels
    assert torch.equal(record["voxel_mask"], token_mask_to_voxels(mask, GRID, 16))
