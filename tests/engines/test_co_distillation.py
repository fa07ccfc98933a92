import math

import pytest
import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents

from dagman_components.engines import (
    CoDistillationTrainer,
    CollapseMonitor,
    PretrainCheckpoint,
    ema_momentum,
    other_encoder,
    parameter_groups,
    select_encoder,
)
from dagman_components.losses import DAGMaNLoss
from dagman_components.masking import BlockMasking, RandomMasking, attention_guided_mask
from dagman_components.networks import DAGMaNPretrainModel, SASwinEncoder, read_encoder_file

ROI = 32  # smallest input the Swin accepts; the SA-stage grid is 2x2x2 = 8 tokens


def make_trainer(n_batches=2, max_epochs=1, masking="attention_high", use_sa=True, drop=0.7, handlers=(),
                 use_checkpoint=False, warmup_teacher_temp_epochs=2, **kwargs):
    torch.manual_seed(0)
    encoder = SASwinEncoder(feature_size=12, use_semantic_attention=use_sa, drop_path_rate=0.1, use_checkpoint=use_checkpoint)
    loss = DAGMaNLoss(out_dim=64, aitd_weight=0.1 if use_sa else 0.0, warmup_teacher_temp_epochs=warmup_teacher_temp_epochs)
    model = DAGMaNPretrainModel(encoder, loss, hidden_dim=32, bottleneck_dim=16)
    data = [{"view_1": torch.rand(2, 1, ROI, ROI, ROI), "view_2": torch.rand(2, 1, ROI, ROI, ROI)} for _ in range(n_batches)]
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-3)
    return CoDistillationTrainer(
        "cpu", max_epochs, data, model, optimizer, loss, masking=masking, teacher_drop_ratio=drop,
        handlers=list(handlers), **kwargs,
    )


def test_teacher_starts_as_a_frozen_copy_of_the_student():
    trainer = make_trainer()
    student = dict(trainer.network.named_parameters())
    for name, p in trainer.teacher.named_parameters():
        assert torch.equal(p, student[name]) and not p.requires_grad
    assert trainer.teacher.reconstruction_head is None and not trainer.teacher.training


def test_one_step_ema_arithmetic_and_no_gradient_in_the_teacher():
    trainer = make_trainer(n_batches=1)
    teacher_before = {n: p.detach().clone() for n, p in trainer.teacher.named_parameters()}
    trainer.run()
    student = dict(trainer.network.named_parameters())
    m = ema_momentum(0, 1)
    assert m == pytest.approx(0.996)
    changed = 0
    for name, p in trainer.teacher.named_parameters():
        expected = m * teacher_before[name] + (1 - m) * student[name].detach()
        assert torch.allclose(p, expected, atol=1e-6), name
        assert p.grad is None
        changed += not torch.equal(p, teacher_before[name])
    assert changed > 0


def _record_encoder_calls(trainer):
    calls = {"teacher": [], "student": []}
    trainer.teacher.encoder.register_forward_hook(
        lambda m, args, kwargs, out: calls["teacher"].append((args[1], kwargs.get("stop_after_sa", False), out.satt)),
        with_kwargs=True,
    )
    trainer.network.encoder.register_forward_hook(lambda m, args, out: calls["student"].append(args[1]))
    return calls


def test_teacher_sees_the_dropped_view_and_the_student_a_mask_from_the_clean_teacher():
    trainer = make_trainer(n_batches=1, hint_mode="top")
    calls = _record_encoder_calls(trainer)
    trainer.run()
    (teacher_mask, noisy_stop, noisy_satt), (clean_mask, clean_stop, clean_satt) = calls["teacher"]
    student_mask, = calls["student"]
    n_tokens = 8
    assert teacher_mask.shape == (4, n_tokens) and teacher_mask.sum(1).tolist() == [5] * 4  # floor(0.7 * 8)
    assert clean_mask is None and clean_stop and not noisy_stop
    expected = attention_guided_mask(clean_satt, 0.7, 0.1, hint_mode="top")
    assert torch.equal(student_mask, expected)
    assert not torch.allclose(clean_satt, noisy_satt)  # the dropout changes the map, so the source matters
    assert trainer.state.output["mask_ratio"] == pytest.approx(expected.float().mean().item())


def test_noisy_satt_source_masks_from_the_dropped_pass():
    trainer = make_trainer(n_batches=1, hint_mode="top", satt_source="noisy")
    calls = _record_encoder_calls(trainer)
    trainer.run()
    (teacher_mask, _, noisy_satt), = calls["teacher"]
    student_mask, = calls["student"]
    assert teacher_mask is not None
    assert torch.equal(student_mask, attention_guided_mask(noisy_satt, 0.7, 0.1, hint_mode="top"))


def test_unknown_satt_source_is_rejected():
    with pytest.raises(ValueError, match="satt_source"):
        make_trainer(satt_source="dirty")


def test_clean_teacher_gets_no_mask():
    trainer = make_trainer(n_batches=1, drop=0.0)
    masks = []
    trainer.teacher.encoder.register_forward_hook(lambda m, args, out: masks.append(args[1]))
    trainer.run()
    assert masks == [None]


@pytest.mark.parametrize("masking,use_sa", [("random", False), ("block", False), ("attention_low", True)])
def test_baseline_masking_strategies_train(masking, use_sa):
    trainer = make_trainer(n_batches=1, masking=masking, use_sa=use_sa)
    trainer.run()
    out = trainer.state.output
    assert math.isfinite(out["loss"]) and out["aitd"] == (0.0 if not use_sa else out["aitd"])
    assert out["mask_ratio"] > 0


def test_attention_masking_without_sa_is_refused():
    with pytest.raises(ValueError, match="use_semantic_attention"):
        make_trainer(masking="attention_high", use_sa=False)


def test_the_trainer_takes_a_strategy_object_and_asks_it_whether_it_needs_satt():
    satts = []

    class Recording(RandomMasking):
        needs_satt = True

        def __call__(self, satt, batch, grid, generator=None, device=None):
            satts.append(satt)
            return super().__call__(satt, batch, grid, generator, device)

    trainer = make_trainer(n_batches=1, masking=Recording(mask_ratio=0.5), mask_ratio=0.9)
    assert trainer.masking.mask_ratio == 0.5  # the object's own options, not the trainer's
    trainer.run()
    assert satts[0].shape == (4, 8) and trainer.state.output["mask_ratio"] == 0.5
    with pytest.raises(ValueError, match="use_semantic_attention"):
        make_trainer(masking=Recording(), use_sa=False)
    assert isinstance(make_trainer(masking="block", use_sa=False).masking, BlockMasking)


def test_logged_values_cover_the_collapse_monitors_and_schedules():
    trainer = make_trainer(n_batches=2, max_epochs=2)
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(dict(e.state.output)))
    trainer.run()
    for key in ("loss", "amip", "ampd", "aitd", "gitd", "teacher_entropy_mean_aitd", "teacher_entropy_sample_aitd",
                "ema_momentum", "teacher_temp", "lr", "mask_ratio", "teacher_drop_ratio", "token_participation_ratio"):
        assert key in seen[0], key
    assert 1.0 <= seen[0]["token_participation_ratio"] <= 96  # 8F channels of the SA-stage tokens
    assert [round(s["teacher_temp"], 3) for s in seen] == [0.04, 0.04, 0.07, 0.07]
    assert seen[0]["ema_momentum"] == pytest.approx(0.996) and seen[-1]["ema_momentum"] > seen[0]["ema_momentum"]
    assert seen[0]["teacher_drop_ratio"] == pytest.approx(5 / 8)


def test_the_decorrelation_term_keeps_more_effective_channels_in_the_student_tokens():
    """The same short run with and without the term: with it, the SA-stage tokens end less redundant."""
    ratios = {}
    for weight in (0.0, 5.0):
        trainer = make_trainer(n_batches=3, max_epochs=3)
        trainer.loss_function.decorrelation_weight = weight
        trainer.run()
        assert ("decorrelation" in trainer.state.output) == (weight > 0)
        ratios[weight] = trainer.state.output["token_participation_ratio"]
    assert ratios[5.0] > 1.2 * ratios[0.0], ratios


def test_last_layer_is_frozen_in_the_first_epoch_only():
    trainer = make_trainer(n_batches=1, max_epochs=2)
    last = trainer.network.last_layers()
    before = [p.detach().clone() for p in last]
    snapshots = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: snapshots.append([p.detach().clone() for p in last]))
    trainer.run()
    assert all(torch.equal(a, b) for a, b in zip(before, snapshots[0]))
    assert any(not torch.equal(a, b) for a, b in zip(snapshots[0], snapshots[1]))


def test_non_finite_loss_stops_without_touching_the_checkpoint(tmp_path):
    def poison(engine):
        with torch.no_grad():
            engine.network.reconstruction_head.proj.bias.fill_(float("nan"))

    checkpoint = None

    def attach_checkpoint(trainer):
        nonlocal checkpoint
        checkpoint = PretrainCheckpoint(tmp_path, {"student": trainer.network}, trainer.network.encoder)
        checkpoint.attach(trainer)

    trainer = make_trainer(n_batches=1, max_epochs=3)
    attach_checkpoint(trainer)
    trainer.add_event_handler(Events.EPOCH_STARTED(once=2), poison)
    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 2") as err:
        trainer.run()
    assert "amip=nan" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_1.pt", "model.pt"]
    _, saved = read_encoder_file(tmp_path / "model.pt")
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())


def test_collapse_monitor_warns_on_uniform_and_one_hot_teachers(caplog):
    from types import SimpleNamespace

    from dagman_components.engines import CollapseMonitor

    monitor = CollapseMonitor({"aitd": 64, "gitd": 64})
    engine = SimpleNamespace(state=SimpleNamespace(epoch=3, output={
        "teacher_entropy_sample_aitd": math.log(64) * 0.999, "teacher_entropy_mean_aitd": math.log(64),
        "teacher_entropy_sample_gitd": 0.01, "teacher_entropy_mean_gitd": 0.01,
    }))
    with caplog.at_level("WARNING"):
        monitor.accumulate(engine)
        monitor.check(engine)
        monitor.accumulate(engine)
        monitor.check(engine)  # reported once only
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 5  # each kind once per term: no per-sample information + uniform / few prototypes + one-hot
    assert "AITD" in messages[0] and "same distribution" in messages[0]
    assert "AITD" in messages[1] and "uniform collapse" in messages[1]
    assert "GITD" in messages[2] and "same distribution" in messages[2]
    assert "GITD" in messages[3] and "few prototypes" in messages[3]
    assert "GITD" in messages[4] and "one-hot collapse" in messages[4]
    assert all("higher ema_momentum (0.9995)" not in m for m in messages)  # advice that made short runs worse
    healthy = CollapseMonitor({"aitd": 64})
    engine.state.output = {"teacher_entropy_sample_aitd": 2.0, "teacher_entropy_mean_aitd": 3.5}
    caplog.clear()
    healthy.accumulate(engine)
    healthy.check(engine)
    assert not caplog.records


@pytest.mark.parametrize("epoch, sample, mean, expected", [
    (5, 0.85, 0.9, ["uniform collapse"]),   # above the 0.8 ln K bound (the old 0.98 let it pass)
    (5, 0.75, 0.45, ["few prototypes"]),    # H(mean P_t) below 0.5 ln K
    (5, 0.75, 0.9, []),                     # inside both bounds
    (2, 0.95, 0.3, []),                     # during the teacher-temperature warm-up the bounds do not apply
])
def test_collapse_monitor_applies_the_entropy_bounds_after_the_warm_up(caplog, epoch, sample, mean, expected):
    from types import SimpleNamespace

    from dagman_components.engines import CollapseMonitor

    log_k = math.log(1024)
    monitor = CollapseMonitor({"aitd": 1024}, grace_epochs=2)
    engine = SimpleNamespace(state=SimpleNamespace(epoch=epoch, output={
        "teacher_entropy_sample_aitd": sample * log_k, "teacher_entropy_mean_aitd": mean * log_k,
        "teacher_mutual_information_aitd": 1.0,
    }))
    with caplog.at_level("WARNING"):
        monitor.accumulate(engine)
        monitor.check(engine)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == len(expected) and all(e in m for e, m in zip(expected, messages))


@pytest.mark.parametrize("max_epochs, grace", [(10, 2), (2, 1)])
def test_trainer_monitor_waits_for_the_teacher_temperature_warm_up(max_epochs, grace):
    # the loss's warm-up is 2 epochs; a 2-epoch run shortens it to 1 (at most half the run)
    trainer = make_trainer(max_epochs=max_epochs)
    monitor = next(h for h in trainer._event_handlers[Events.EPOCH_COMPLETED] if isinstance(getattr(h[0], "__self__", None), CollapseMonitor))
    assert monitor[0].__self__.grace_epochs == grace


def test_collapse_monitor_warns_when_every_sample_gets_the_same_distribution(caplog):
    from types import SimpleNamespace

    from dagman_components.engines import CollapseMonitor

    # the state of the papers' heads at init: H(mean P) = mean H(P) = 3.57, far from both entropy bounds
    monitor = CollapseMonitor({"ampd": 1024})
    engine = SimpleNamespace(state=SimpleNamespace(epoch=1, output={
        "teacher_entropy_sample_ampd": 3.57, "teacher_entropy_mean_ampd": 3.572,
        "teacher_mutual_information_ampd": 0.002,
    }))
    with caplog.at_level("WARNING"):
        monitor.accumulate(engine)
        monitor.check(engine)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "mutual information" in messages[0] and "0.002" in messages[0]
    assert monitor.history[0]["teacher_mutual_information_ampd"] == pytest.approx(0.002)


def test_bf16_autocast_and_gradient_checkpointing_train_50_iterations_without_nans():
    # the trainer raises FloatingPointError on a non-finite loss before the optimiser step
    trainer = make_trainer(n_batches=10, max_epochs=5, amp=True, amp_dtype="bfloat16", use_checkpoint=True)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    trainer.run()
    assert len(losses) == 50 and all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(p).all() for p in trainer.network.parameters())


def test_checkpoint_interval_and_final_save(tmp_path):
    trainer = make_trainer(n_batches=1, max_epochs=3)
    checkpoint = PretrainCheckpoint(tmp_path, {"student": trainer.network}, trainer.network.encoder, save_interval=2)
    checkpoint.attach(trainer)
    trainer.run()
    # every 2nd epoch, plus the end of training; the newest two are kept
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_2.pt", "checkpoint_3.pt"]
    state = torch.load(tmp_path / "checkpoint_3.pt", weights_only=False)
    assert state["trainer"]["iteration"] == 3 and set(state) >= {"student", "trainer", "checkpointer"}


def test_model_pt_is_the_chosen_side_and_snapshots_keep_both(tmp_path):
    trainer = make_trainer(n_batches=1, max_epochs=2)
    student, teacher = trainer.network, trainer.teacher
    checkpoint = PretrainCheckpoint(tmp_path, {"student": student}, select_encoder(student, teacher, "teacher"),
                                    encoder_snapshot_interval=2, snapshot_encoders=other_encoder(student, teacher, "teacher"))
    checkpoint.attach(trainer)
    trainer.run()
    assert {p.name for p in tmp_path.glob("*_epoch*.pt")} == {"model_epoch0.pt", "model_epoch2.pt",
                                                              "student_epoch0.pt", "student_epoch2.pt"}
    def load(name):
        return read_encoder_file(tmp_path / name)[1]

    model = load("model.pt")
    # the files describe themselves: weights, the encoder's architecture and the package version
    assert torch.load(tmp_path / "model.pt")["encoder_args"] == teacher.encoder.encoder_args
    # model.pt is the EMA teacher's encoder, which differs from the trained student's
    assert all(torch.equal(model[k], v) for k, v in teacher.encoder.state_dict().items())
    assert torch.equal(load("student_epoch2.pt")["swinViT.patch_embed.proj.weight"],
                       student.encoder.swinViT.patch_embed.proj.weight)
    assert not torch.equal(model["swinViT.patch_embed.proj.weight"], student.encoder.swinViT.patch_embed.proj.weight)
    # at epoch 0 both sides are the same init
    init_model, init_student = load("model_epoch0.pt"), load("student_epoch0.pt")
    assert all(torch.equal(init_model[k], init_student[k]) for k in init_model)
    with pytest.raises(ValueError, match="model_encoder"):
        select_encoder(student, teacher, "ema")


def _blob_batches(n_batches, batch=2, seed=0):
    """Crops with structure: a bright ball of random size, place and contrast on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.arange(ROI, dtype=torch.float32)
    zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")

    def crop():
        centre = torch.rand(3, generator=g) * ROI
        radius = 3 + 8 * float(torch.rand((), generator=g))
        inside = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) < radius**2
        background = 0.2 * float(torch.rand((), generator=g))
        return (background + 0.7 * inside.float() * float(torch.rand((), generator=g)) + 0.05 * torch.rand(ROI, ROI, ROI, generator=g))[None]

    return [{key: torch.stack([crop() for _ in range(batch)]) for key in ("view_1", "view_2")} for _ in range(n_batches)]


def _variant_trainer(head_input_norm="batch", use_sa=True, weights=None, ampd_tokens="premerge", n_batches=1, max_epochs=1,
                     batch=2, **kwargs):
    weights = {"ampd_weight": 0.1, "aitd_weight": 0.1 if use_sa else 0.0, "gitd_weight": 0.1, **(weights or {})}
    torch.manual_seed(0)
    encoder = SASwinEncoder(feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), use_semantic_attention=use_sa,
                            drop_path_rate=0.1)
    loss = DAGMaNLoss(out_dim=64, warmup_teacher_temp_epochs=1, teacher_temp=0.04, **weights)
    model = DAGMaNPretrainModel(encoder, loss, hidden_dim=32, bottleneck_dim=16, ampd_tokens=ampd_tokens,
                                head_input_norm=head_input_norm)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-3)
    return CoDistillationTrainer("cpu", max_epochs, _blob_batches(n_batches, batch), model, optimizer, loss,
                                 masking="attention_high" if use_sa else "random", freeze_last_layer_epochs=0, **kwargs)


@pytest.mark.parametrize(
    "use_sa, weights, ampd_tokens",
    [
        (False, {}, "premerge"),  # SMIT / NT only
        (True, {}, "premerge"),  # DAGMaN / SA only
        (True, {"aitd_weight": 0.0}, "stage"),  # the case a DDP run with find_unused_parameters=False rejected
        (True, {"aitd_weight": 0.0}, "premerge"),
        (True, {"ampd_weight": 0.0}, "premerge"),
        (True, {"gitd_weight": 0.0}, "sa"),
        (True, {"amip_weight": 0.0}, "stage"),
    ],
)
def test_every_trainable_parameter_gets_a_gradient_in_every_variant(use_sa, weights, ampd_tokens):
    trainer = _variant_trainer(use_sa=use_sa, weights=weights, ampd_tokens=ampd_tokens)
    without_grad = []

    def check(engine):
        without_grad.extend(n for n, p in engine.network.named_parameters() if p.requires_grad and p.grad is None)

    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, check)
    trainer.run()
    assert without_grad == []


def test_a_short_run_gives_each_sample_its_own_distillation_target():
    """With the batch-standardised heads the teacher's targets differ between samples; without, they do not."""
    information = {}
    for norm in ("batch", "none"):
        trainer = _variant_trainer(head_input_norm=norm, n_batches=3, max_epochs=3, batch=4)
        trainer.run()
        information[norm] = {t: trainer.state.output[f"teacher_mutual_information_{t}"] for t in ("ampd", "aitd", "gitd")}
        if norm == "batch":
            for term in ("ampd", "aitd", "gitd"):
                assert trainer.state.output[f"teacher_entropy_sample_{term}"] <= 0.8 * math.log(64), term
            for term in ("aitd", "gitd"):
                # (AMPD's toy patch head, bottleneck 16 at tau 0.04, uses few prototypes: its bound is I below)
                assert trainer.state.output[f"teacher_entropy_mean_{term}"] >= 0.5 * math.log(64), term
            assert information["batch"]["ampd"] > 0.5, information
    for term in ("aitd", "gitd"):  # 8 samples a step: I <= ln 8 = 2.08
        assert information["batch"][term] > 0.5, information
    # the [CLS] of an untrained SA module is the same vector for every crop: the plain head gives one target to all
    assert information["none"]["aitd"] < 0.1 * information["batch"]["aitd"], information


def test_parameter_groups_scale_the_encoder_lr_and_keep_two_groups_by_default():
    encoder = SASwinEncoder(feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
    model = DAGMaNPretrainModel(encoder, DAGMaNLoss(out_dim=16), hidden_dim=8, bottleneck_dim=8)
    names = {id(p): n for n, p in model.named_parameters()}
    default = parameter_groups(model, 0.05)
    assert [g["weight_decay"] for g in default] == [0.05, 0.0] and all("lr" not in g for g in default)
    groups = parameter_groups(model, 0.05, lr=8e-4, encoder_lr_scale=0.125)
    assert len(groups) == 4
    seen = 0
    for group in groups:
        in_encoder = {names[id(p)].startswith("encoder.") for p in group["params"]}
        assert len(in_encoder) == 1  # a group is all encoder or all heads
        assert group["lr"] == pytest.approx(1e-4 if in_encoder.pop() else 8e-4)
        seen += len(group["params"])
    assert seen == sum(1 for p in model.parameters() if p.requires_grad)
    # the scheduler scales every group's own rate
    optimizer = torch.optim.AdamW(groups, lr=8e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([5e-5, 4e-4])
    del scheduler
    with pytest.raises(ValueError, match="needs the base lr"):
        parameter_groups(model, 0.05, encoder_lr_scale=0.5)


def test_a_run_shorter_than_twice_the_warm_up_reaches_the_teacher_temperature():
    # warm-up 4 epochs, run 2 epochs: the schedule is capped at 1 epoch, so the second epoch trains at tau_t
    # (uncapped it would still be at 0.05)
    trainer = make_trainer(n_batches=1, max_epochs=2, warmup_teacher_temp_epochs=4)
    temperatures = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: temperatures.append(round(e.loss_function.teacher_temp, 4)))
    trainer.run()
    assert temperatures == [0.04, 0.07]
