"""``CoDistillationTrainer``: one Ignite/MONAI trainer for DAGMaN, SMIT, "SA only" and "NT only".

One iteration (DAGMaN sec. 3, SMART sec. III):

1. stack the two views [u; v] (2B samples);
2. teacher forward on the patch-dropped views u^, v^ (no grad) -> distillation targets; the SATT
   that guides the student's mask comes from a clean teacher pass on u, v (``satt_source="clean"``,
   as AttMask) or from the same noisy pass (``"noisy"``);
3. student masks from that SATT (or random/block masks for the baselines);
4. teacher heads on those masked positions; student forward on the masked views u~, v~;
5. ``DAGMaNLoss`` -> backward -> (last-layer freeze) -> clip -> optimiser step;
6. handlers: EMA teacher update, teacher temperature, checkpoints, logging.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from torch.utils.data import DataLoader

from dagman_components.engines.handlers import (
    CollapseMonitor,
    EMATeacherUpdate,
    EpochSeed,
    FreezeLastLayer,
    TeacherTemperatureSchedule,
    unwrap,
)
from dagman_components.losses import DAGMaNLoss, participation_ratio
from dagman_components.masking import (
    MASKING_STRATEGIES,
    MaskingStrategy,
    build_masking,
    patch_dropout,
    token_mask_to_voxels,
)
from dagman_components.networks import DAGMaNPretrainModel
from dagman_components.options import as_bool, positive_int

__all__ = ["CoDistillationTrainer", "MASKING_STRATEGIES", "SATT_SOURCES", "make_teacher", "mean_pairwise_cosine", "parameter_groups"]

#: which teacher pass gives the SATT of the student's mask: ``"clean"`` (a no-grad pass on the undropped
#: views, so the mask follows the image) or ``"noisy"`` (the patch-dropped pass of the targets)
SATT_SOURCES = ("clean", "noisy")


def make_teacher(student: nn.Module) -> DAGMaNPretrainModel:
    """EMA teacher: a deep copy of the student (not a separate random init), frozen, in eval mode, without the AMIP head."""
    teacher = copy.deepcopy(unwrap(student))
    teacher.reconstruction_head = None
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def mean_pairwise_cosine(features: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between different rows of (M, C) ``features`` (1: every crop gives the same vector)."""
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    m = x.shape[0]
    if m < 2:
        return x.new_ones(())
    return ((x @ x.t()).sum() - m) / (m * (m - 1))


def parameter_groups(
    model: nn.Module, weight_decay: float, lr: float | None = None, encoder_lr_scale: float = 1.0
) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only, none on biases, norms, gains and tokens (DINO).

    With ``encoder_lr_scale`` != 1 (and ``lr``), the parameters under ``model.encoder`` get
    ``lr * encoder_lr_scale`` and the heads ``lr`` **[choice]**: a short run at a small batch overwrites the
    encoder's random features within tens of AdamW steps (docs/results/study.md), while the freshly
    initialised heads need the full rate. Empty groups are left out, so with the default scale the
    groups are (decay, no decay) as before.
    """
    if encoder_lr_scale != 1.0 and lr is None:
        raise ValueError("parameter_groups: encoder_lr_scale needs the base lr.")
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in unwrap(model).named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim <= 1 or name.endswith("_token"))
        # one group per decay setting when the rates agree (the optimiser state of older checkpoints keeps loading)
        groups.setdefault((decay, encoder_lr_scale != 1.0 and name.startswith("encoder.")), []).append(p)
    result = []
    for (decay, in_encoder), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
        group: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decay else 0.0}
        if lr is not None:
            group["lr"] = lr * (encoder_lr_scale if in_encoder else 1.0)
        result.append(group)
    return result


class CoDistillationTrainer(Trainer):
    """Student/EMA-teacher co-distillation with attention-guided masking and a noisy teacher.

    The four methods of the papers' ablation are four argument sets of this class:

    ============  ===================  =====================  ====================
    method        ``masking``          SA in the encoder      ``teacher_drop_ratio``
    ============  ===================  =====================  ====================
    SMIT          ``random``           no (aitd_weight 0)     0
    SA only       ``attention_high``   yes                    0
    NT only       ``random``           no (aitd_weight 0)     0.7
    DAGMaN        ``attention_high``   yes                    0.7
    ============  ===================  =====================  ====================

    Args:
        device: torch device.
        max_epochs: epochs to train.
        train_data_loader: yields dicts with the two views under ``view_keys``, each (B, C, D, H, W).
        network: the student ``DAGMaNPretrainModel`` (optionally DDP-wrapped).
        optimizer: optimiser over the student's parameters.
        loss_function: ``DAGMaNLoss``.
        teacher: EMA teacher; None makes one with :func:`make_teacher`.
        masking: a :py:class:`~dagman_components.masking.MaskingStrategy`, or the name of a registered one
            (``MASKING_STRATEGIES``: ``attention_high``, the papers', ``attention_low``, ``random``, ``block``),
            built with ``mask_ratio``, ``hint_ratio`` and ``hint_mode`` (each strategy takes those it uses).
        mask_ratio: r (0.7). hint_ratio: s (0.1). hint_mode: ``random`` or ``top``. Used only when ``masking`` is a
            name; a strategy object carries its own.
        teacher_drop_ratio: patch dropout on the teacher's input (0.7, SMART Fig. 10; 0 = clean teacher).
        satt_source: ``"clean"`` (default) or ``"noisy"`` **[choice]**: the SATT of the student's mask from
            an extra no-grad teacher pass on the undropped views (AttMask takes it from a clean teacher;
            SMART's figures show masks on tumours) or from the patch-dropped pass, whose SATT ranks the
            dropped tokens first and so follows the dropout, not the image. Without dropout the two are
            one pass.
        ema_momentum: base EMA momentum (0.996, cosine to 1 on the global iteration).
        warmup_teacher_temp_epochs etc. live in ``loss_function``; its schedule is applied per epoch.
        freeze_last_layer_epochs: epochs with the heads' prototype layers frozen (1).
        clip_grad_norm: max gradient norm, None/0 disables (3.0, DINO/iBOT) **[choice]**.
        amp: autocast the forward passes. amp_dtype: ``"bfloat16"`` (CPU and recent GPUs) or ``"float16"`` (GPU, with a GradScaler).
        view_keys: batch keys of the two views.
        epoch_length, non_blocking, handlers: as in ``monai.engines.Trainer``.
        generator: optional ``torch.Generator`` on ``device`` for the masks (tests, reproducibility).
        seed: if given, every epoch starts by seeding torch, numpy, ``random`` and the data's random transforms
            from (seed, epoch) (:class:`~dagman_components.engines.EpochSeed`), so a run resumed from a checkpoint
            trains as the uninterrupted run. Default None (the random streams run on across epochs).

    Raises:
        ValueError: an unknown ``masking`` (the message lists the registered ones), a strategy that needs SATT with
            an encoder without the SA module, an unknown ``satt_source`` or ``amp_dtype``; ``max_epochs`` not a positive
            whole number; a ``network`` whose heads are not those of ``loss_function``'s terms (see
            :meth:`DAGMaNLoss.check_model`).
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: DAGMaNLoss,
        teacher: nn.Module | None = None,
        masking: str | MaskingStrategy = "attention_high",
        mask_ratio: float = 0.7,
        hint_ratio: float = 0.1,
        hint_mode: str = "random",
        teacher_drop_ratio: float = 0.7,
        satt_source: str = "clean",
        ema_momentum: float = 0.996,
        freeze_last_layer_epochs: int = 1,
        clip_grad_norm: float | None = 3.0,
        amp: bool = False,
        amp_dtype: str = "bfloat16",
        view_keys: Sequence[str] = ("view_1", "view_2"),
        epoch_length: int | None = None,
        non_blocking: bool = False,
        handlers: Sequence | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        max_epochs = positive_int(max_epochs, "max_epochs (the bundle's num_epochs)")
        masking = build_masking(masking, mask_ratio=mask_ratio, hint_ratio=hint_ratio, hint_mode=hint_mode)
        student = unwrap(network)
        if masking.needs_satt and student.encoder.semantic_attention is None:
            raise ValueError(f"masking={masking.name!r} needs SATT: build the encoder with use_semantic_attention=True.")
        if satt_source not in SATT_SOURCES:
            raise ValueError(f"satt_source must be one of {SATT_SOURCES}, got {satt_source!r}.")
        if amp_dtype not in ("bfloat16", "float16"):
            raise ValueError(f"amp_dtype must be 'bfloat16' or 'float16', got {amp_dtype!r}.")
        if len(view_keys) != 2:
            raise ValueError(f"co-distillation needs two views, got view_keys={view_keys}.")
        if isinstance(loss_function, DAGMaNLoss):
            loss_function.check_model(student)  # heads and loss terms from one source, or a clear error now
        amp = as_bool(amp, "amp")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            amp=amp,
            decollate=False,
        )
        self.network = network
        self.teacher = make_teacher(network) if teacher is None else teacher
        self.teacher.to(self.state.device)
        self.optimizer = optimizer
        self.loss_function = loss_function.to(self.state.device)
        self.masking = masking
        self.teacher_drop_ratio = teacher_drop_ratio
        self.satt_source = satt_source
        self.clip_grad_norm = clip_grad_norm or None
        self.amp_dtype = torch.bfloat16 if amp_dtype == "bfloat16" else torch.float16
        self.view_keys = tuple(view_keys)
        self.generator = generator
        self.ema = EMATeacherUpdate(network, self.teacher, base_momentum=ema_momentum)
        # schedule handlers first, so logging handlers attached later see this step's values; the epoch seed
        # before anything that draws random numbers in an epoch
        for handler in (
            *(() if seed is None else (EpochSeed(seed),)),
            self.ema,
            TeacherTemperatureSchedule(self.loss_function),
            FreezeLastLayer(student.last_layers(), freeze_last_layer_epochs),
            CollapseMonitor(
                {name: ce.center.shape[1] for name, ce in self.loss_function.distillation.items()},
                # the entropy bounds apply once the teacher temperature has warmed up
                grace_epochs=max((ce.warmup_epochs(max_epochs) for ce in self.loss_function.distillation.values()), default=0),
            ),
            *(handlers or ()),
        ):
            handler.attach(self)

    def make_grad_scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16 autocast on CUDA; None otherwise (bf16 and fp32 need none)."""
        use_scaler = self.amp and self.amp_dtype == torch.float16 and self.state.device.type == "cuda"
        return torch.amp.GradScaler("cuda") if use_scaler else None

    def run(self) -> None:  # type: ignore[override]
        """Train; a run restored from a checkpoint continues from its epoch/iteration."""
        self.scaler = self.make_grad_scaler()
        super(Trainer, self).run()

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.state.device.type, dtype=self.amp_dtype, enabled=self.amp)

    def _views(self, batchdata: dict[str, Any]) -> torch.Tensor:
        """(2B, C, D, H, W): the two views stacked, so each network runs one batched forward."""
        missing = [k for k in self.view_keys if k not in batchdata]
        if missing:
            raise KeyError(f"batch has no {missing}; keys present: {sorted(batchdata)}. Use pretrain_transforms for the data.")
        views = []
        for key in self.view_keys:
            view = batchdata[key]
            view = view.as_tensor() if hasattr(view, "as_tensor") else view
            views.append(view.to(self.state.device, non_blocking=self.non_blocking))
        return torch.cat(views, dim=0)

    def _student_mask(self, teacher_satt: torch.Tensor | None, batch: int, grid: tuple[int, int, int]) -> torch.Tensor:
        return self.masking(teacher_satt, batch, grid, generator=self.generator, device=self.state.device)

    def _iteration(self, engine: CoDistillationTrainer, batchdata: dict[str, Any]) -> dict[str, float]:
        images = engine._views(batchdata)
        student, teacher = engine.network, engine.teacher
        encoder = unwrap(student).encoder
        grid = encoder.grid_size(images.shape[2:])
        batch, n_tokens = images.shape[0], math.prod(grid)

        with torch.no_grad(), engine._autocast():
            dropped = patch_dropout(batch, n_tokens, engine.teacher_drop_ratio, engine.generator, images.device)
            noisy = engine.teacher_drop_ratio > 0
            teacher_encoded = teacher.encode(images, dropped if noisy else None)
            satt = teacher_encoded.satt
            if noisy and engine.satt_source == "clean" and engine.masking.needs_satt:
                satt = teacher.encoder(images, None, stop_after_sa=True).satt
            student_mask = engine._student_mask(satt, batch, grid)
            teacher_heads = teacher.project(teacher_encoded, student_mask, reconstruct=False)

        student.train()
        with engine._autocast():
            _, student_heads = student(images, student_mask)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            voxel_mask = token_mask_to_voxels(student_mask, grid, encoder.token_stride)
            losses = engine.loss_function(student_heads, teacher_heads, images, voxel_mask)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        # one host sync per step: every logged scalar at once, and the non-finite check
        logged = {"loss": losses["total"].detach(), **{k: v for k, v in losses.items() if k != "total"}}
        logged["mask_ratio"] = student_mask.float().mean()
        logged["embedding_cosine"] = mean_pairwise_cosine(student_heads.image_embedding.detach())
        # dimensional-collapse monitor: effective channels of the student's SA-stage tokens (losses.decorrelation)
        logged["token_participation_ratio"] = participation_ratio(student_heads.token_features.detach())
        logged["teacher_drop_ratio"] = dropped.float().mean()
        output = dict(zip(logged, torch.stack([v.float() for v in logged.values()]).tolist()))
        if not math.isfinite(output["loss"]):
            terms = ", ".join(f"{k}={output[k]:.4g}" for k in ("amip", "ampd", "aitd", "gitd"))
            raise FloatingPointError(
                f"non-finite loss at epoch {engine.state.epoch}, iteration {engine.state.iteration}: "
                f"total={output['loss']} ({terms}); training stopped before the optimiser step, "
                "the last saved checkpoint and model.pt are untouched. Try a lower lr, amp off, or clip_grad_norm."
            )

        engine.optimizer.zero_grad(set_to_none=True)
        if engine.scaler is not None:
            engine.scaler.scale(losses["total"]).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.unscale_(engine.optimizer)
        else:
            losses["total"].backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if engine.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(student.parameters(), engine.clip_grad_norm)
        if engine.scaler is not None:
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)

        output.update(
            ema_momentum=engine.ema.momentum_at(engine),
            teacher_temp=engine.loss_function.teacher_temp,
            lr=engine.optimizer.param_groups[0]["lr"],
        )
        return output
