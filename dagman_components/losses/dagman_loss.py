"""The DAGMaN/SMART pretraining objective: AMIP + 0.1 AMPD + 0.1 AITD + 0.1 GITD."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from dagman_components.losses.decorrelation import token_decorrelation_loss
from dagman_components.losses.distillation import DistillationCE, distribution_entropies

__all__ = ["DAGMaNLoss", "HeadOutputs", "koleo_loss", "masked_l1", "DISTILLATION_TERMS", "LOSS_TERMS"]

DISTILLATION_TERMS = ("ampd", "aitd", "gitd")
#: every term; each has a head in :class:`~dagman_components.networks.DAGMaNPretrainModel` exactly when its weight > 0
LOSS_TERMS = ("amip", *DISTILLATION_TERMS)


@dataclass
class HeadOutputs:
    """Head outputs of one network (student or teacher) on the stacked views [u; v] (2B samples).

    Attributes:
        patch_logits: (M, K) AMPD head on the M student-masked tokens, or None.
        patch_image_index: (M,) index in [0, 2B) of the image each masked token belongs to.
        cls_logits: (2B, K) AITD head on the [CLS] token, or None.
        global_logits: (2B, K) GITD head on the pooled last stage, or None.
        reconstruction: (2B, C, D, H, W) AMIP prediction (student only), or None.
        image_embedding: (2B, C) the image-level feature the KoLeo term spreads ([CLS] with SA, else
            the pooled last stage), or None.
        token_features: (2B * N, C) the SA-stage tokens of every view (before the SA blocks: the
            tokens downstream bundles and the frozen-feature probe read), or None.
    """

    patch_logits: torch.Tensor | None = None
    patch_image_index: torch.Tensor | None = None
    cls_logits: torch.Tensor | None = None
    global_logits: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    image_embedding: torch.Tensor | None = None
    token_features: torch.Tensor | None = None


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo regulariser (Sablayrolles et al. 2019; DINOv2): ``-mean_i log(min_j ||x_i - x_j||)`` of L2-normalised rows.

    Pushes each sample away from its nearest neighbour in the batch, so image features cannot all
    become the same vector. ``features``: (M, C), M >= 2; returns a scalar (float32).
    """
    x = F.normalize(features.float(), dim=-1, eps=eps)
    distances = torch.cdist(x, x)
    distances = distances + torch.eye(len(x), device=x.device, dtype=x.dtype) * 1e3  # exclude self-pairs
    return -torch.log(distances.min(dim=1).values + eps).mean()


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, voxel_mask: torch.Tensor) -> torch.Tensor:
    """AMIP: ``sum(|x - x_hat| * m) / (sum(m) + 1e-5)`` over masked voxels only (SMIT/SimMIM), per channel.

    Args:
        prediction, target: (B, C, D, H, W).
        voxel_mask: (B, 1, D, H, W), 1 = masked.
    """
    weight = voxel_mask.to(prediction.dtype)
    error = (prediction.float() - target.float()).abs() * weight
    return error.sum() / (weight.sum() * prediction.shape[1] + 1e-5)


class DAGMaNLoss(nn.Module):
    """Weighted sum of the four pretraining losses; each term with weight 0 is skipped.

    The weights are the single switch of a term: ``DAGMaNPretrainModel(encoder, loss)`` builds a term's head
    exactly when its weight is > 0.

    - AMIP: masked-voxel L1 of the student's reconstruction of its own view.
    - AMPD: teacher(u^) vs student(u~) patch-token CE on student-masked tokens, same view; per
      image ``sum(m*CE)/max(sum(m),1)``, then the batch mean (iBOT).
    - AITD: teacher [CLS] of one view vs student [CLS] of the other view.
    - GITD: teacher vs student pooled last stage, cross-view.

    Args:
        out_dim: prototypes K of every distillation head (8192).
        amip_weight, ampd_weight, aitd_weight, gitd_weight: 1.0, 0.1, 0.1, 0.1 (papers, grid-searched).
        student_temp, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, center_momentum:
            see :class:`DistillationCE` (0.1, 0.04, 0.07, 30, 0.9).
        centering: teacher target normalisation of every head, ``"center"`` (papers) or
            ``"sinkhorn_knopp"`` (iBOT/DINOv2) **[choice]**.
        koleo_weight: weight of the KoLeo term on the student's image embedding (0 = off, the papers;
            DINOv2 uses 0.1) **[choice]**.
        decorrelation_weight: weight of :func:`~dagman_components.losses.decorrelation.token_decorrelation_loss`
            on the student's SA-stage tokens, against dimensional collapse (0 = off, the papers) **[choice]**.
    """

    def __init__(
        self,
        out_dim: int = 8192,
        amip_weight: float = 1.0,
        ampd_weight: float = 0.1,
        aitd_weight: float = 0.1,
        gitd_weight: float = 0.1,
        student_temp: float = 0.1,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: int = 30,
        center_momentum: float = 0.9,
        centering: str = "center",
        koleo_weight: float = 0.0,
        decorrelation_weight: float = 0.0,
    ) -> None:
        super().__init__()
        for name, weight in (("koleo_weight", koleo_weight), ("decorrelation_weight", decorrelation_weight)):
            if weight < 0:
                raise ValueError(f"{name} must be >= 0, got {weight}.")
        self.koleo_weight = koleo_weight
        self.decorrelation_weight = decorrelation_weight
        self.out_dim = int(out_dim)
        self.weights = {"amip": amip_weight, "ampd": ampd_weight, "aitd": aitd_weight, "gitd": gitd_weight}
        for name, weight in self.weights.items():
            if weight < 0:
                raise ValueError(f"{name}_weight must be >= 0, got {weight}.")
        if not any(self.weights.values()):
            raise ValueError("all loss weights are 0: nothing to train.")
        self.distillation = nn.ModuleDict(
            {
                name: DistillationCE(
                    out_dim,
                    student_temp,
                    warmup_teacher_temp,
                    teacher_temp,
                    warmup_teacher_temp_epochs,
                    center_momentum,
                    centering=centering,
                )
                for name in DISTILLATION_TERMS
                if self.weights[name] > 0
            }
        )

    def active(self, name: str) -> bool:
        """Whether term ``name`` ("amip", "ampd", "aitd", "gitd") contributes to the total."""
        return self.weights[name] > 0

    def check_model(self, model: nn.Module) -> None:
        """Raise a ValueError unless ``model`` (a ``DAGMaNPretrainModel``) has the heads of exactly this loss's terms.

        A model built from another loss (``DAGMaNPretrainModel(encoder, other_loss)``) would fail deep inside
        :meth:`forward`; this names the terms and the weights instead.
        """
        terms = getattr(model, "loss_terms", None)
        active = tuple(name for name in LOSS_TERMS if self.active(name))
        if terms is not None and tuple(terms) != active:
            weights = ", ".join(f"{name}_weight={self.weights[name]}" for name in LOSS_TERMS)
            raise ValueError(
                f"the network has the heads of {list(terms)} but the loss trains {list(active)} ({weights}): "
                "build the network from this loss, DAGMaNPretrainModel(encoder, loss), so each head exists "
                "exactly when its weight > 0."
            )
        heads = [getattr(model, name, None) for name in ("patch_head", "cls_head", "global_head")]
        widths = {int(h.last_layer.weight.shape[0]) for h in heads if h is not None}
        if widths and widths != {self.out_dim}:
            raise ValueError(f"the network's DINO heads have {sorted(widths)} prototypes but the loss out_dim={self.out_dim}.")

    @property
    def teacher_temp(self) -> float:
        """Current tau_t (shared by all heads)."""
        return next(iter(self.distillation.values())).teacher_temp if self.distillation else float("nan")

    def set_epoch(self, epoch: int, max_epochs: int | None = None) -> float:
        """Move every head's tau_t to 0-based ``epoch`` of the warm-up schedule of a ``max_epochs`` run; returns it."""
        temps = [ce.set_epoch(epoch, max_epochs) for ce in self.distillation.values()]
        return temps[0] if temps else float("nan")

    def forward(
        self,
        student: HeadOutputs,
        teacher: HeadOutputs,
        images: torch.Tensor,
        voxel_mask: torch.Tensor,
        num_views: int = 2,
    ) -> dict[str, torch.Tensor]:
        """Compute every term on the stacked views.

        Args:
            student, teacher: head outputs on the 2B stacked samples ([u; v]).
            images: (2B, C, D, H, W) the clean views (AMIP target).
            voxel_mask: (2B, 1, D, H, W) the student's mask at voxel resolution.
            num_views: views stacked along the batch (2): cross-view terms pair sample i of view a
                with sample i of the next view.

        Returns:
            ``total`` (with grad), ``amip``, ``ampd``, ``aitd``, ``gitd`` (detached, 0 when off)
            (``koleo`` and ``decorrelation`` too when on) and the collapse monitors ``teacher_entropy_mean_<term>`` =
            H(mean P_t), ``teacher_entropy_sample_<term>`` = mean H(P_t) and
            ``teacher_mutual_information_<term>`` = their difference (0: no per-sample information).
        """
        zero = images.new_zeros((), dtype=torch.float32)
        terms: dict[str, torch.Tensor] = {name: zero for name in self.weights}
        monitors: dict[str, torch.Tensor] = {}
        if self.active("amip"):
            terms["amip"] = masked_l1(student.reconstruction, images, voxel_mask)
        pending_centers: list[tuple[DistillationCE, torch.Tensor]] = []

        def distill(name: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
            ce = self.distillation[name]
            probs = ce.teacher_probabilities(teacher_logits)
            entropy_of_mean, mean_entropy = (t.detach() for t in distribution_entropies(probs))
            monitors[f"teacher_entropy_mean_{name}"] = entropy_of_mean
            monitors[f"teacher_entropy_sample_{name}"] = mean_entropy
            monitors[f"teacher_mutual_information_{name}"] = entropy_of_mean - mean_entropy
            pending_centers.append((ce, teacher_logits))
            return ce(student_logits, probs)

        if self.active("ampd"):
            per_token = distill("ampd", student.patch_logits, teacher.patch_logits)
            n_images = images.shape[0]
            index = student.patch_image_index
            per_image = zero.new_zeros(n_images).index_add(0, index, per_token)
            counts = zero.new_zeros(n_images).index_add(0, index, torch.ones_like(per_token))
            terms["ampd"] = (per_image / counts.clamp_min(1.0)).mean()
        batch = images.shape[0] // num_views
        for name, s_logits, t_logits in (
            ("aitd", student.cls_logits, teacher.cls_logits),
            ("gitd", student.global_logits, teacher.global_logits),
        ):
            if self.active(name):
                # student view a learns from the teacher's other view: roll the teacher by one view
                terms[name] = distill(name, s_logits, t_logits.roll(batch, dims=0)).mean()
        total = sum(self.weights[name] * terms[name] for name in self.weights if self.active(name))
        if self.koleo_weight > 0:
            if student.image_embedding is None:
                raise ValueError("koleo_weight > 0 needs the student's image_embedding in its HeadOutputs.")
            terms["koleo"] = koleo_loss(student.image_embedding)
            total = total + self.koleo_weight * terms["koleo"]
        if self.decorrelation_weight > 0:
            if student.token_features is None:
                raise ValueError("decorrelation_weight > 0 needs the student's token_features in its HeadOutputs.")
            terms["decorrelation"] = token_decorrelation_loss(student.token_features)
            total = total + self.decorrelation_weight * terms["decorrelation"]
        # centers move after the loss, as in DINO, so this step's targets used the previous center
        for ce, teacher_logits in pending_centers:
            ce.update_center(teacher_logits)
        out = {"total": total}
        out.update({name: value.detach() for name, value in terms.items()})
        out.update(monitors)
        return out
