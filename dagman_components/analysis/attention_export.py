"""Export the SATT map (and optionally the per-head maps) of any CT as a NIfTI aligned with the input file.

The image is preprocessed as in pretraining (RAS, ``spacing``, HU window to [0, 1]) and zero-padded
to a multiple of the encoder's ``min_input_multiple`` (32) **[choice]**: one forward over the whole
volume, since SATT is one softmax over all tokens. SATT is upsampled to the encoder input
(``EncoderOutput.attention_volume``), and MONAI's ``Invertd`` undoes the padding, the resampling
(trilinear) and the reorientation, so ``SaveImaged`` writes a map with the original file's shape and
affine: it overlays the CT in any viewer.

Use from Python (:func:`export_attention`) or from a bundle config (``configs/export_attention.yaml``:
:func:`attention_export_preprocessing`, :class:`AttentionMapNetwork` in a ``SupervisedEvaluator``,
:func:`attention_export_postprocessing`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from monai.transforms import (
    Compose,
    DivisiblePadd,
    EnsureTyped,
    Invertd,
    LoadImaged,
    Orientationd,
    SaveImaged,
    ScaleIntensityRanged,
    Spacingd,
)

from dagman_components.networks.sa_swin import SASwinEncoder

__all__ = [
    "AttentionMapNetwork",
    "attention_export_preprocessing",
    "attention_export_postprocessing",
    "export_attention",
]


class AttentionMapNetwork(nn.Module):
    """The encoder's SATT as a dense map: ``x`` (B, 1, D, H, W) -> (B, 1 or heads, D, H, W).

    Args:
        encoder: an :class:`SASwinEncoder` with semantic attention.
        per_head: False: the head-averaged SATT (one channel); True: one channel per SA head.

    Values are the [CLS] attention of each SA-stage token (a distribution over tokens, summing to 1
    over the token grid), trilinearly upsampled; the map is not rescaled.
    """

    def __init__(self, encoder: SASwinEncoder, per_head: bool = False) -> None:
        super().__init__()
        if getattr(encoder, "semantic_attention", None) is None:
            raise ValueError("AttentionMapNetwork needs an encoder with semantic attention (use_semantic_attention=True).")
        self.encoder = encoder
        self.per_head = per_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).attention_volume(x.shape[2:], per_head=self.per_head)


def attention_export_preprocessing(
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    hu_range: Sequence[float] = (-1000.0, 1000.0),
    multiple: int = 32,
    image_key: str = "image",
) -> Compose:
    """Invertible preprocessing: load, RAS, resample, HU window to [0, 1], pad to a multiple of ``multiple``.

    Args:
        spacing: voxel size in mm (2.0: the papers' and pretraining's).
        hu_range: HU window mapped to [0, 1] (pretraining's (-1000, 1000)).
        multiple: ``encoder.min_input_multiple`` (32 with patch size 2).
        image_key: key of the image path.
    """
    return Compose(
        [
            LoadImaged(image_key, ensure_channel_first=True, image_only=True, dtype=np.float32),
            Orientationd(image_key, axcodes="RAS", labels=None),
            Spacingd(image_key, pixdim=spacing, mode="bilinear"),
            ScaleIntensityRanged(image_key, a_min=hu_range[0], a_max=hu_range[1], b_min=0.0, b_max=1.0, clip=True),
            DivisiblePadd(image_key, k=multiple),
            EnsureTyped(image_key, dtype=torch.float32),
        ]
    )


def attention_export_postprocessing(
    preprocessing: Compose,
    output_dir: str | os.PathLike,
    output_postfix: str = "satt",
    image_key: str = "image",
    pred_key: str = "pred",
) -> Compose:
    """Undo ``preprocessing`` on ``pred`` (``Invertd``, trilinear) and save it beside the input's name.

    Writes ``<output_dir>/<input name>_<output_postfix>.nii.gz`` in float32, with the input file's
    shape and affine (a multi-channel map is saved as (X, Y, Z, C)).
    """
    return Compose(
        [
            Invertd(pred_key, transform=preprocessing, orig_keys=image_key, nearest_interp=False, to_tensor=True),
            SaveImaged(
                pred_key,
                output_dir=str(output_dir),
                output_postfix=output_postfix,
                output_dtype=np.float32,
                resample=False,
                separate_folder=False,
                print_log=False,
            ),
        ]
    )


@torch.no_grad()
def export_attention(
    encoder: SASwinEncoder,
    image: str | os.PathLike,
    output_dir: str | os.PathLike,
    per_head: bool = False,
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    hu_range: Sequence[float] = (-1000.0, 1000.0),
    output_postfix: str | None = None,
) -> Path:
    """Write the SATT map of the NIfTI file ``image`` into ``output_dir``, aligned with it; returns the path.

    Args:
        encoder: a (pretrained) :class:`SASwinEncoder`; put in eval mode here.
        image: path of a CT in HU.
        output_dir: output folder.
        per_head: also a channel per SA head instead of the head average.
        spacing, hu_range: preprocessing, as in pretraining.
        output_postfix: file name postfix; default "satt" ("satt_heads" with ``per_head``).
    """
    encoder.eval()
    postfix = output_postfix or ("satt_heads" if per_head else "satt")
    preprocessing = attention_export_preprocessing(spacing, hu_range, encoder.min_input_multiple)
    postprocessing = attention_export_postprocessing(preprocessing, output_dir, postfix)
    data = preprocessing({"image": str(image)})
    device = next(encoder.parameters()).device
    network = AttentionMapNetwork(encoder, per_head=per_head)
    data["pred"] = network(data["image"][None].to(device))[0].cpu()
    saved = postprocessing(data)["pred"]
    return Path(saved.meta["saved_to"]) if "saved_to" in saved.meta else _expected_path(image, output_dir, postfix)


def _expected_path(image: str | os.PathLike, output_dir: str | os.PathLike, postfix: str) -> Path:
    name = Path(image).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return Path(output_dir) / f"{name}_{postfix}.nii.gz"
