"""``SAClassifier``: the semantic-attention Swin encoder with an image-level classification head.

Downstream protocol of the papers (DAGMaN sec. 4, SMART sec. V-B/C): the pretrained encoder is either
fine-tuned with its head ("finetune") or frozen with one linear layer on top ("linear_probe"), and
the head reads the [CLS] token of the SA module (SMART sec. VI: [CLS] beat average pooling of stage 4,
AUC 0.895 vs 0.780 on LIDC). ``forward`` returns logits only, so MONAI's ``verify_net_in_out`` and
``ckpt_export`` see a plain tensor-to-tensor network; :meth:`SAClassifier.predict_with_attention`
adds the SATT map for explanation, and :class:`AttentionInferer` lets a MONAI evaluator use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.inferers import Inferer

from dagman_components.networks.sa_swin import EncoderOutput, SASwinEncoder, make_encoder

__all__ = ["AttentionInferer", "BinaryClassificationLoss", "SAClassifier", "save_cpu_state_dict"]

FEATURES = ("cls", "pooled")
MODES = ("finetune", "linear_probe")


class SAClassifier(nn.Module):
    """SA-Swin encoder + a head on the [CLS] token or on the average-pooled last stage.

    Args:
        encoder: the encoder: an :class:`SASwinEncoder`; a path to an encoder file the pretrain bundle writes
            (``bundles/pretrain/models/model.pt``: weights and architecture, loaded strictly; a missing file or
            weights that do not fit are errors naming the file); a mapping of ``SASwinEncoder`` arguments, or None
            for its defaults (the papers'), from scratch. See :func:`make_encoder`.
        num_classes: output logits: 1 (binary, sigmoid; default) or the number of classes (softmax), e.g. 2.
        feature: ``"cls"`` (default, papers: the SA module's [CLS] token, 8F channels at ``sa_stage=3``)
            or ``"pooled"`` (average-pooled last Swin stage, 16F channels; the SMIT-style baseline).
        mode: ``"finetune"`` (default): every weight trains; head = LayerNorm -> Dropout -> Linear
            **[choice]**: the papers do not describe their fine-tuning head; the LayerNorm with its own
            affine lets the head rescale features that left pretraining at another scale.
            ``"linear_probe"``: the encoder is frozen (``requires_grad=False``) and stays in eval mode
            (no drop path, as when it was the EMA teacher) even under ``.train()``; head = one ``nn.Linear``
            (papers: "linear probing with one projection head").
        head_dropout: dropout before the fine-tuning head's Linear. Default 0.0. Unused by the linear probe.
        encoder_args: the architecture of a bare state dict at ``encoder`` (older files); a self-describing
            file ignores them.
        drop_path_rate, use_checkpoint: the encoder's training options (None: ``SASwinEncoder``'s, 0.0 and False).

    Input (B, in_channels, H, W, D) with sizes multiples of ``min_input_multiple`` (32); output (B, num_classes).
    """

    def __init__(
        self,
        encoder: SASwinEncoder | str | Path | Mapping[str, Any] | None = None,
        num_classes: int = 1,
        feature: str = "cls",
        mode: str = "finetune",
        head_dropout: float = 0.0,
        encoder_args: Mapping[str, Any] | None = None,
        drop_path_rate: float | None = None,
        use_checkpoint: bool | None = None,
    ) -> None:
        super().__init__()
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}.")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1 (1 logit for a binary task), got {num_classes}.")
        self.num_classes = int(num_classes)
        self.feature = feature
        self.mode = mode
        self.encoder = make_encoder(encoder, encoder_args, drop_path_rate=drop_path_rate, use_checkpoint=use_checkpoint)
        if feature == "cls" and self.encoder.semantic_attention is None:
            raise ValueError(
                "feature='cls' needs the semantic attention module (use_semantic_attention=True); "
                "an encoder without it (SMIT) has no [CLS] token: use feature='pooled'."
            )
        in_features = self.encoder.sa_dim if feature == "cls" else self.encoder.out_dim
        if mode == "linear_probe":
            self.head: nn.Module = nn.Linear(in_features, self.num_classes)
            self.encoder.requires_grad_(False)
            self.encoder.eval()
        else:
            self.head = nn.Sequential(
                nn.LayerNorm(in_features), nn.Dropout(head_dropout), nn.Linear(in_features, self.num_classes)
            )

    @property
    def min_input_multiple(self) -> int:
        """Every spatial size of the input must be a multiple of this (32 with ``patch_size=2``)."""
        return self.encoder.min_input_multiple

    def train(self, mode: bool = True) -> SAClassifier:
        """As ``nn.Module.train``, but a linear probe's frozen encoder always stays in eval mode."""
        super().train(mode)
        if self.mode == "linear_probe":
            self.encoder.eval()
        return self

    def _features(self, encoded: EncoderOutput) -> torch.Tensor:
        return encoded.cls if self.feature == "cls" else encoded.pooled  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of images ``x`` (B, in_channels, H, W, D)."""
        return self.head(self._features(self.encoder(x)))

    def predict_with_attention(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits and the SATT map of one forward pass.

        Returns:
            ``{"logits": (B, num_classes), "attention": (B, 1, H, W, D)}``: the head-averaged [CLS]
            attention of the last SA block, upsampled to the input grid
            (:meth:`EncoderOutput.attention_volume`), so it overlays the input voxel for voxel.

        Raises:
            ValueError: the encoder has no semantic attention module (no SATT).
        """
        encoded = self.encoder(x)
        logits = self.head(self._features(encoded))
        return {"logits": logits, "attention": encoded.attention_volume(x.shape[2:])}


class AttentionInferer(Inferer):
    """MONAI inferer that runs :meth:`SAClassifier.predict_with_attention` (a DDP wrapper is unwrapped).

    The evaluator's ``pred`` becomes ``{"logits": (B, C), "attention": (B, 1, H, W, D)}``; a
    ``FlattenSubKeysd(keys="pred")`` post-transform moves both to the top level of each decollated item.
    """

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        model = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
        if not hasattr(model, "predict_with_attention"):
            raise TypeError(f"AttentionInferer needs a network with predict_with_attention, got {type(model).__name__}.")
        return model.predict_with_attention(inputs)


class BinaryClassificationLoss(nn.Module):
    """Loss for a binary task whose label is (B, 1) in {0, 1}, for one logit or two.

    One logit (B, 1): ``BCEWithLogitsLoss`` (``pos_weight`` weighs the positive class, e.g. n_neg / n_pos
    for LIDC's 2054:540). Two logits (B, 2): ``cross_entropy`` on the class index (``pos_weight`` becomes
    the class weight of class 1).
    """

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        self.pos_weight = None if pos_weight is None else float(pos_weight)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, 1) or (B, 2); ``label`` (B, 1) or (B,) with values 0/1."""
        target = label.reshape(logits.shape[0], -1)[:, :1].to(logits.dtype)
        if logits.shape[1] == 1:
            weight = None if self.pos_weight is None else logits.new_tensor([self.pos_weight])
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
        if logits.shape[1] != 2:
            raise ValueError(f"BinaryClassificationLoss expects 1 or 2 logits per case, got shape {tuple(logits.shape)}.")
        weight = None if self.pos_weight is None else logits.new_tensor([1.0, self.pos_weight])
        return F.cross_entropy(logits, target[:, 0].long(), weight=weight)


def save_cpu_state_dict(path: str | Path) -> Path:
    """Rewrite the checkpoint at ``path`` with every tensor on the CPU, so it loads on a CPU-only machine.

    ``CheckpointSaver`` stores tensors where they were (a GPU); calling this after training makes
    ``models/model.pt`` a CPU state dict as the model zoo expects. A missing file is an error naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: did the run save a best model (a validation round)?")
    state = torch.load(path, map_location="cpu", weights_only=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path
