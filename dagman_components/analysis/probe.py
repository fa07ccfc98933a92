"""
Frozen-feature evaluation of a pretrained encoder: a tumour-vs-tissue linear probe and an organ kNN.

Both read one feature vector per SA-stage token block (16^3 voxels at ``patch_size=2``,
``sa_stage=3``) of the frozen encoder and compare it, on the *same* blocks, with the same
architecture at random initialisation (``n_random_seeds`` seeds, mean +- std) and with four raw
intensity statistics per block. What counts is the comparison between these rows.

Data and preprocessing (as pretraining, :py:func:`~dagman_components.analysis.localization.localization_preprocessing`):
each CT and its mask are reoriented to RAS and resampled to ``spacing`` (2 mm; image bilinear, mask
nearest), the image is windowed ``hu_range`` (-1000..1000 HU) -> [0, 1]; then, like
:py:func:`~dagman_components.data.ct_preprocessing`, cropped to the body's bounding box (HU >
``body_hu`` plus 2 voxels) and zero-padded at the far end of each axis to a multiple of
``tile_size`` (64^3, the pretraining crop). The encoder sees one ``tile_size`` tile at a time
(eval mode, no gradients), only the tiles that hold a labelled block.

Tumour cases: ``sts/<case>/CT_image.nii.gz`` + ``CT_mask.nii.gz`` by default; ``chest/<name>_ct.nii.gz`` +
``<name>_lesion.nii.gz`` on request (``tumour_sources``), although neither real chest lesion fills
half of any 32 mm block at 2 mm, so the chest CTs add tissue blocks only.

Block labels (tumour probe): a block is *tumour* when at least ``tumour_fraction`` (0.5) of its
voxels are tumour, *tissue* when none is tumour and at least ``body_fraction`` (0.5) are inside the
body (HU > ``body_hu``, -500, measured before windowing); every other block (tumour border, air) is
left out. Organ kNN: a block is labelled by the organ that fills at least ``organ_fraction`` (0.5)
of it; organs with fewer than ``min_blocks_per_organ`` (5) blocks are left out.

Features (``feature``, one of :py:data:`PROBE_FEATURES`):

- ``"tokens"``: ``EncoderOutput.tokens``, the layer-normalised SA-stage tokens before the SA blocks
  (8F values at ``sa_stage=3``);
- ``"sa_tokens"``: the patch tokens after the SA blocks (8F; encoders with semantic attention only);
- ``"multiscale"`` **[choice]**: the five ``EncoderOutput.hidden_states`` (strides 2..32; with
  ``sa_inline`` the stride-16 map is the one after SA) brought to the token grid, finer maps
  average-pooled over each block and the stride-32 map trilinearly upsampled, concatenated
  (F + 2F + 4F + 8F + 16F = 31F values).

Scores:

- tumour probe: ``StandardScaler`` + ``LogisticRegression(class_weight="balanced", C)`` in
  ``n_folds`` (5) folds of ``StratifiedGroupKFold`` grouped by case (no case in both the training
  and the test part of a fold); ROC AUC and average precision of the pooled out-of-fold
  probabilities, and per fold;
- organ kNN: distance-weighted ``k`` (5) nearest neighbours, Euclidean on standardised features,
  stratified ``folds`` (5)-fold accuracy (:py:func:`~dagman_components.analysis.clustering.knn_accuracy`).
  Neighbouring blocks of one organ overlap in receptive field and look alike, and the folds are not
  grouped (one CT), so the absolute accuracies are optimistic; compare the rows.

Preprocessed blocks are cached in memory (keyed by the files, their modification times and the
settings): :py:func:`prepare_probe_data` runs once per data set and process, and
:py:func:`evaluate_encoder` only runs the encoder on the cached tiles.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, LoadImaged, SpatialCrop
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dagman_components.analysis.clustering import knn_accuracy, scale_features, write_json
from dagman_components.analysis.localization import image_label_datalist, localization_preprocessing
from dagman_components.networks.sa_swin import (
    BUNDLE_ENCODER_ARGS,
    RUNTIME_OPTIONS,
    SASwinEncoder,
    encoder_args_with_defaults,
    make_encoder,
)

__all__ = [
    "PROBE_FEATURES",
    "DEFAULT_ENCODER_KWARGS",
    "DEFAULT_PREPROCESSING",
    "TUMOUR_SOURCES",
    "ProbeBlocks",
    "ProbeData",
    "tumour_datalist",
    "check_same_grid",
    "label_tumour_blocks",
    "label_organ_blocks",
    "block_intensity_statistics",
    "prepare_tumour_blocks",
    "prepare_organ_blocks",
    "prepare_probe_data",
    "clear_probe_cache",
    "block_features",
    "grouped_folds",
    "linear_probe",
    "organ_knn",
    "evaluate_encoder",
    "probe_baselines",
    "encoder_kwargs_from_config",
    "preprocessing_from_config",
    "encoder_kwargs_from_encoder",
    "build_encoder",
    "format_probe_table",
    "run_probe",
]

logger = logging.getLogger(__name__)

#: per-block features of the frozen encoder (see the module docstring).
PROBE_FEATURES: tuple[str, ...] = ("tokens", "sa_tokens", "multiscale")

#: every architecture argument of the pretrain bundle's default encoder (``configs/train.yaml``'s ``encoder_def``:
#: :data:`~dagman_components.networks.BUNDLE_ENCODER_ARGS` over ``SASwinEncoder``'s defaults): the random-init
#: references' architecture, and that of a bare state dict when nothing else is given
DEFAULT_ENCODER_KWARGS: dict[str, Any] = encoder_args_with_defaults(**BUNDLE_ENCODER_ARGS)

#: name -> (image glob under the data folder, (image-name part, mask-name part)): the real data's layouts.
TUMOUR_SOURCES: dict[str, tuple[str, tuple[str, str]]] = {
    "sts": ("sts/*/CT_image.nii.gz", ("CT_image", "CT_mask")),
    "chest": ("chest/*_ct.nii.gz", ("_ct", "_lesion")),
}

#: organ CT + label map layout under the data folder: (image glob, (image-name part, label-name part)).
ORGAN_SOURCE: tuple[str, tuple[str, str]] = ("organs/*_ct.nii.gz", ("_ct", "_seg"))

#: train.yaml's preprocessing, used where no pretrain config says otherwise (:py:func:`preprocessing_from_config`)
DEFAULT_PREPROCESSING: dict[str, tuple[float, ...]] = {"spacing": (2.0, 2.0, 2.0), "hu_range": (-1000.0, 1000.0)}

#: the intensity baseline's statistics of the windowed [0, 1] intensities of each block.
INTENSITY_STATISTICS: tuple[str, ...] = ("mean", "std", "p10", "p90")

#: encoder arguments that leave the architecture and the weights alone: training regularisation and how the stages run
_NOT_ARCHITECTURE = RUNTIME_OPTIONS


# ---- data -------------------------------------------------------------------------------------


@dataclass
class ProbeBlocks:
    """Preprocessed tiles and labelled blocks of one data set (tumour or organ), computed once.

    Attributes:
        kind: ``"tumour"`` or ``"organ"``.
        tiles: (T, 1, t, t, t) float32 windowed tiles that hold at least one labelled block (CPU).
        block_tile: (M,) int64 tile of each labelled block.
        block_token: (M,) int64 position of the block in its tile's token grid (row-major, (t / b)^3).
        labels: (M,) int64 class: 1 tumour / 0 tissue, or the organ id.
        groups: (M,) int64 case index of each block (into ``cases``).
        intensity: (M, 4) float64 mean, std, 10th and 90th percentile of the block's windowed intensities.
        cases: case names (e.g. ``"sts/STS_001/CT_image.nii.gz"``).
        class_names: class -> name.
        tile_size: t, voxels per tile side (64).
        block_size: b, voxels per block side (16: the encoder's token stride).
        blocks_per_case: case name -> {class name: count}.
        settings: the preprocessing settings.
    """

    kind: str
    tiles: torch.Tensor
    block_tile: np.ndarray
    block_token: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    intensity: np.ndarray
    cases: list[str]
    class_names: dict[int, str]
    tile_size: int
    block_size: int
    blocks_per_case: dict[str, dict[str, int]]
    settings: dict[str, Any]
    _device_tiles: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_blocks(self) -> int:
        """M, the number of labelled blocks."""
        return int(len(self.labels))

    def class_counts(self) -> dict[str, int]:
        """Class name -> number of blocks."""
        values, counts = np.unique(self.labels, return_counts=True)
        return {self.class_names.get(int(v), str(int(v))): int(n) for v, n in zip(values, counts)}

    def tiles_on(self, device: torch.device | str) -> torch.Tensor:
        """The tiles on ``device``, copied there once and kept (the CPU tensor itself on CPU)."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.tiles
        key = str(device)
        if key not in self._device_tiles:
            self._device_tiles[key] = self.tiles.to(device)
        return self._device_tiles[key]

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: cases, blocks per class and per case, tiles, settings."""
        return {
            "cases": list(self.cases),
            "num_blocks": self.num_blocks,
            "blocks": self.class_counts(),
            "blocks_per_case": self.blocks_per_case,
            "num_tiles": int(self.tiles.shape[0]),
            "tile_size": self.tile_size,
            "block_size": self.block_size,
            "settings": self.settings,
        }


@dataclass
class ProbeData:
    """The tumour blocks and (optionally) the organ blocks a probe runs on.

    Attributes:
        tumour: the tumour/tissue blocks.
        organ: the organ blocks, or None (no organ data, or fewer than 2 organs with enough blocks).
        organ_reason: why ``organ`` is None, else None.
        data_dir: the data folder.
        key: cache key (files, modification times, settings).
    """

    tumour: ProbeBlocks
    organ: ProbeBlocks | None
    organ_reason: str | None
    data_dir: str
    key: tuple


def tumour_datalist(
    data_dir: str | os.PathLike,
    sources: Sequence[str] = ("sts",),
    image_glob: str | None = None,
    label_replace: Sequence[str] | None = None,
    datalist: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """(image, tumour mask) pairs under ``data_dir``.

    Args:
        data_dir: the data folder (e.g. ``../shared/data/real``).
        sources: names of :py:data:`TUMOUR_SOURCES` to collect (``("sts",)``; add ``"chest"``), or
            ``"*/CT_image.nii.gz"``-style globs are given through ``image_glob`` instead.
        image_glob, label_replace: a custom layout, e.g. ``"*_ct.nii.gz"`` and ``("_ct", "_lesion")``;
            overrides ``sources``.
        datalist: a Decathlon-style JSON of ``image``/``label`` pairs (relative to ``data_dir``); overrides both.

    Returns:
        ``[{"image", "label", "case"}, ...]`` with absolute paths.

    Raises:
        ValueError: ``data_dir`` is not a folder, an unknown source, or no (image, mask) pair found.
        FileNotFoundError: an image whose mask file is missing (names both).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data folder '{data_dir}' does not exist or is not a folder.")
    if datalist is not None:
        return image_label_datalist(data_dir, datalist=datalist)
    layouts: list[tuple[str, Sequence[str]]]
    if image_glob is not None:
        if label_replace is None:
            raise ValueError("image_glob needs label_replace=(image-name part, mask-name part).")
        layouts = [(image_glob, label_replace)]
    else:
        unknown = [s for s in sources if s not in TUMOUR_SOURCES]
        if unknown:
            raise ValueError(f"unknown tumour sources {unknown}; known: {sorted(TUMOUR_SOURCES)}.")
        layouts = [TUMOUR_SOURCES[s] for s in sources]
    items: list[dict[str, Any]] = []
    for pattern, replace in layouts:
        if not list(data_dir.glob(pattern)):
            continue
        items += image_label_datalist(data_dir, image_glob=pattern, label_replace=replace)
    if not items:
        wanted = ", ".join(f"'{p}' + mask ('{r[0]}' -> '{r[1]}')" for p, r in layouts)
        raise ValueError(f"data folder '{data_dir}' has no (image, mask) pair: looked for {wanted}.")
    return items


def _organ_items(data_dir: Path) -> list[dict[str, Any]]:
    pattern, replace = ORGAN_SOURCE
    if not list(data_dir.glob(pattern)):
        return []
    return image_label_datalist(data_dir, image_glob=pattern, label_replace=replace)


def check_same_grid(image: str | os.PathLike, label: str | os.PathLike, atol: float = 1e-3) -> None:
    """Raise ValueError, naming both files and shapes, when ``label`` is not on ``image``'s voxel grid.

    Reads only the NIfTI headers: the spatial shapes must be equal and the affines equal within ``atol`` (mm).
    """
    image_header, label_header = nib.load(str(image)), nib.load(str(label))
    image_shape, label_shape = tuple(image_header.shape[:3]), tuple(label_header.shape[:3])
    if image_shape != label_shape:
        raise ValueError(
            f"mask '{label}' has shape {label_shape} but its image '{image}' has shape {image_shape}: "
            "the mask must be on the image's voxel grid."
        )
    if not np.allclose(image_header.affine, label_header.affine, atol=atol):
        raise ValueError(
            f"mask '{label}' (shape {label_shape}) and its image '{image}' (shape {image_shape}) have different "
            f"affines:\n{np.round(label_header.affine, 3)}\nvs\n{np.round(image_header.affine, 3)}\n"
            "the mask must be on the image's voxel grid."
        )


def _blockwise(volume: torch.Tensor, block: int) -> torch.Tensor:
    """(X, Y, Z) with sizes multiples of ``block`` -> (gx, gy, gz, block^3) voxels of each block."""
    gx, gy, gz = (int(s) // block for s in volume.shape)
    v = volume.reshape(gx, block, gy, block, gz, block).permute(0, 2, 4, 1, 3, 5)
    return v.reshape(gx, gy, gz, block**3)


def _check_divisible(shape: Sequence[int], block: int) -> None:
    if len(shape) != 3 or any(int(s) % block for s in shape):
        raise ValueError(f"volume shape {tuple(shape)} must be 3D with sizes multiples of the block size {block}.")


def label_tumour_blocks(
    tumour: torch.Tensor,
    body: torch.Tensor,
    block_size: int = 16,
    tumour_fraction: float = 0.5,
    body_fraction: float = 0.5,
) -> torch.Tensor:
    """Class of each ``block_size``^3 block: 1 tumour, 0 tissue, -1 left out.

    Args:
        tumour: (X, Y, Z) boolean tumour mask, sizes multiples of ``block_size``.
        body: (X, Y, Z) boolean body mask (HU > -500), same shape.
        block_size: voxels per block side (16).
        tumour_fraction: tumour when at least this fraction of the block is tumour (0.5).
        body_fraction: tissue when no voxel is tumour and at least this fraction is body (0.5).

    Returns:
        (gx, gy, gz) int64.
    """
    if tumour.shape != body.shape:
        raise ValueError(f"tumour mask {tuple(tumour.shape)} and body mask {tuple(body.shape)} differ in shape.")
    _check_divisible(tumour.shape, block_size)
    t = _blockwise(tumour.float(), block_size).mean(-1)
    b = _blockwise(body.float(), block_size).mean(-1)
    labels = torch.full(t.shape, -1, dtype=torch.int64)
    labels[(t == 0) & (b >= body_fraction)] = 0
    labels[t >= tumour_fraction] = 1
    return labels


def label_organ_blocks(label_map: torch.Tensor, block_size: int = 16, organ_fraction: float = 0.5) -> torch.Tensor:
    """Organ id of each block whose most frequent organ fills at least ``organ_fraction`` of it, else -1.

    Args:
        label_map: (X, Y, Z) integer organ ids (0 = background, never a class), sizes multiples of ``block_size``.
        block_size: voxels per block side (16).
        organ_fraction: minimal fraction of the block's voxels (0.5).

    Returns:
        (gx, gy, gz) int64.
    """
    _check_divisible(label_map.shape, block_size)
    ids = _blockwise(label_map.round().long(), block_size)
    organs = [int(v) for v in torch.unique(ids) if int(v) > 0]
    result = torch.full(ids.shape[:3], -1, dtype=torch.int64)
    if not organs:
        return result
    fractions = torch.stack([(ids == v).float().mean(-1) for v in organs])  # (K, gx, gy, gz)
    best, index = fractions.max(0)
    chosen = torch.as_tensor(organs, dtype=torch.int64)[index]
    result[best >= organ_fraction] = chosen[best >= organ_fraction]
    return result


def block_intensity_statistics(image: torch.Tensor, block_size: int = 16) -> torch.Tensor:
    """(gx, gy, gz, 4) mean, std, 10th and 90th percentile of ``image`` (X, Y, Z) in each block."""
    _check_divisible(image.shape, block_size)
    voxels = _blockwise(image.float(), block_size)
    flat = voxels.reshape(-1, voxels.shape[-1]).numpy()
    p10, p90 = np.percentile(flat, [10.0, 90.0], axis=1)
    stats = np.stack([flat.mean(1), flat.std(1), p10, p90], axis=1)
    return torch.as_tensor(stats, dtype=torch.float64).reshape(*voxels.shape[:3], 4)


def _load_case(
    image: str,
    label: str,
    spacing: Sequence[float],
    hu_range: Sequence[float],
    label_offset: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Image and mask on one RAS grid at ``spacing``: ``image`` [0, 1], ``hu``, ``label``, each (1, X, Y, Z)."""
    shapes = tuple(nib.load(image).shape[:3]), tuple(nib.load(label).shape[:3])
    offset_used = label_offset is not None and shapes[0] != shapes[1]
    if offset_used:
        start = [int(o) for o in label_offset]  # type: ignore[union-attr]
        if any(s < 0 or s + n > m for s, n, m in zip(start, shapes[1], shapes[0])):
            raise ValueError(
                f"mask '{label}' (shape {shapes[1]}) does not fit inside its image '{image}' (shape {shapes[0]}) "
                f"at label_offset {tuple(start)}."
            )
    else:
        check_same_grid(image, label)
    chain = localization_preprocessing(spacing, hu_range)
    loader, rest = chain.transforms[0], Compose(chain.transforms[1:])
    if not isinstance(loader, LoadImaged):  # the chain's layout is what this function relies on
        raise RuntimeError("localization_preprocessing no longer starts with LoadImaged.")
    data = loader({"image": image, "label": label})
    if offset_used:
        # the label map covers a sub-block of the CT whose header does not say where: cut that block out
        data["image"] = SpatialCrop(roi_start=start, roi_end=[s + n for s, n in zip(start, shapes[1])])(data["image"])
        data["label"].affine = data["image"].affine.clone()
    return rest(data)


def _crop_pad(
    volumes: Sequence[torch.Tensor], body: torch.Tensor, tile_size: int, margin: int, crop: bool
) -> list[torch.Tensor]:
    """Crop (X, Y, Z) volumes to the body's bounding box (+ ``margin``) and pad at the far end to multiples of the tile."""
    if crop and bool(body.any()):
        coords = torch.nonzero(body)
        lo = (coords.min(0).values - margin).clamp(min=0)
        hi = torch.minimum(coords.max(0).values + 1 + margin, torch.as_tensor(body.shape))
        region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        volumes = [v[region] for v in volumes]
    out = []
    for v in volumes:
        pad = [(-int(s)) % tile_size for s in v.shape]
        # F.pad takes the last axis first; zero = the bottom of the window / no tumour / no body
        out.append(F.pad(v[None, None].float(), (0, pad[2], 0, pad[1], 0, pad[0]))[0, 0].to(v.dtype))
    return out


def _tiles_and_blocks(
    image: torch.Tensor, labels: torch.Tensor, tile_size: int, block_size: int
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Tiles holding a labelled block and, per labelled block, its tile, its token index and its (gx, gy, gz) index.

    Returns (tiles (T, 1, t, t, t), block_tile (M,), block_token (M,), block grid indices (M, 3) int64 tensor).
    """
    per = tile_size // block_size
    index = torch.nonzero(labels >= 0)  # (M, 3) block coordinates, row-major order
    if len(index) == 0:
        empty = np.zeros(0, np.int64)
        return torch.zeros(0, 1, tile_size, tile_size, tile_size), empty, empty, index
    tile_xyz = index // per
    local = index % per
    token = (local[:, 0] * per + local[:, 1]) * per + local[:, 2]
    unique, tile_of_block = torch.unique(tile_xyz, dim=0, return_inverse=True)
    tiles = torch.stack(
        [image[tuple(slice(int(c) * tile_size, (int(c) + 1) * tile_size) for c in corner)] for corner in unique]
    )[:, None]
    return tiles.contiguous(), tile_of_block.numpy().astype(np.int64), token.numpy().astype(np.int64), index


def _file_key(items: Sequence[Mapping[str, Any]]) -> tuple:
    key = []
    for item in items:
        for path in (item["image"], item["label"]):
            stat = os.stat(path)
            key.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(key)


def _assemble(
    kind: str,
    parts: Sequence[dict[str, Any]],
    class_names: dict[int, str],
    tile_size: int,
    block_size: int,
    settings: dict[str, Any],
) -> ProbeBlocks:
    """One :py:class:`ProbeBlocks` from the per-case parts (tiles and blocks re-indexed)."""
    tiles, block_tile, tokens, labels, groups, intensity, cases, per_case = [], [], [], [], [], [], [], {}
    offset = 0
    for case_index, part in enumerate(parts):
        tiles.append(part["tiles"])
        block_tile.append(part["block_tile"] + offset)
        offset += len(part["tiles"])
        tokens.append(part["block_token"])
        labels.append(part["labels"])
        groups.append(np.full(len(part["labels"]), case_index, dtype=np.int64))
        intensity.append(part["intensity"])
        cases.append(part["case"])
        values, counts = np.unique(part["labels"], return_counts=True)
        per_case[part["case"]] = {class_names.get(int(v), str(int(v))): int(n) for v, n in zip(values, counts)}
    return ProbeBlocks(
        kind=kind,
        tiles=torch.cat(tiles) if tiles else torch.zeros(0, 1, tile_size, tile_size, tile_size),
        block_tile=np.concatenate(block_tile) if block_tile else np.zeros(0, np.int64),
        block_token=np.concatenate(tokens) if tokens else np.zeros(0, np.int64),
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        groups=np.concatenate(groups) if groups else np.zeros(0, np.int64),
        intensity=np.concatenate(intensity) if intensity else np.zeros((0, 4)),
        cases=cases,
        class_names=class_names,
        tile_size=tile_size,
        block_size=block_size,
        blocks_per_case=per_case,
        settings=settings,
    )


def _check_tiling(tile_size: int, block_size: int) -> None:
    if tile_size <= 0 or block_size <= 0 or tile_size % block_size or tile_size % 32:
        raise ValueError(
            f"tile_size ({tile_size}) must be a multiple of 32 (the encoder's input multiple) and of the "
            f"block size ({block_size})."
        )


def prepare_tumour_blocks(
    items: Sequence[Mapping[str, Any]],
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    hu_range: Sequence[float] = (-1000.0, 1000.0),
    tile_size: int = 64,
    block_size: int = 16,
    body_hu: float = -500.0,
    tumour_fraction: float = 0.5,
    body_fraction: float = 0.5,
    label_values: Sequence[int] | None = None,
    crop_foreground: bool = True,
    margin: int = 2,
) -> ProbeBlocks:
    """Preprocess (image, tumour mask) pairs and label their blocks (see the module docstring).

    Args:
        items: ``{"image", "label"[, "case"]}`` file paths (:py:func:`tumour_datalist`).
        spacing: voxel size in mm ((2, 2, 2), pretraining).
        hu_range: HU window -> [0, 1] ((-1000, 1000), pretraining).
        tile_size: encoder input tile side in voxels (64, the pretraining crop; a multiple of 32).
        block_size: block side in voxels (16, the token stride at ``sa_stage=3``).
        body_hu: body = HU above this (-500).
        tumour_fraction, body_fraction: the labelling thresholds (0.5, 0.5), :py:func:`label_tumour_blocks`.
        label_values: mask values that are tumour; None: any non-zero.
        crop_foreground: crop to the body's bounding box first, as pretraining does (True).
        margin: voxels kept around that box (2).

    Raises:
        ValueError: no items, a mask off its image's grid (names both files), or no tumour block in any case.
    """
    _check_tiling(tile_size, block_size)
    if not items:
        raise ValueError("prepare_tumour_blocks got no cases.")
    settings = {"spacing": [float(s) for s in spacing], "hu_range": [float(h) for h in hu_range],
                "tile_size": int(tile_size), "block_size": int(block_size), "body_hu": float(body_hu),
                "tumour_fraction": float(tumour_fraction), "body_fraction": float(body_fraction),
                "label_values": None if label_values is None else [int(v) for v in label_values],
                "crop_foreground": bool(crop_foreground), "margin": int(margin)}
    parts = []
    for item in items:
        data = _load_case(str(item["image"]), str(item["label"]), spacing, hu_range)
        image, hu, mask = data["image"][0], data["hu"][0], data["label"][0]
        if label_values is None:
            tumour = mask > 0.5
        else:
            tumour = torch.isin(mask.round().long(), torch.as_tensor([int(v) for v in label_values]))
        body = hu > body_hu
        image, tumour, body = _crop_pad([image, tumour, body], body, tile_size, margin, crop_foreground)
        labels = label_tumour_blocks(tumour, body, block_size, tumour_fraction, body_fraction)
        tiles, block_tile, block_token, index = _tiles_and_blocks(image, labels, tile_size, block_size)
        stats = block_intensity_statistics(image, block_size)
        case = str(item.get("case", Path(item["image"]).name))
        part = {"case": case, "tiles": tiles, "block_tile": block_tile, "block_token": block_token,
                "labels": labels[tuple(index.T)].numpy() if len(index) else np.zeros(0, np.int64),
                "intensity": stats[tuple(index.T)].numpy() if len(index) else np.zeros((0, 4))}
        n_tumour = int((part["labels"] == 1).sum())
        logger.info(f"probe: {case}: {tuple(image.shape)} voxels, {n_tumour} tumour and "
                    f"{int((part['labels'] == 0).sum())} tissue blocks in {len(tiles)} tiles")
        if n_tumour == 0:
            logger.warning(f"probe: {case} has no block with >= {tumour_fraction:g} tumour (mask '{item['label']}', "
                           f"{int(tumour.sum())} tumour voxels at {settings['spacing']} mm): only its tissue blocks count")
        parts.append(part)
    blocks = _assemble("tumour", parts, {0: "tissue", 1: "tumour"}, tile_size, block_size, settings)
    counts = blocks.class_counts()
    if counts.get("tumour", 0) == 0:
        raise ValueError(
            f"no tumour block in any of the {len(items)} cases ({', '.join(blocks.cases[:5])}"
            f"{' ...' if len(items) > 5 else ''}): no {block_size}^3-voxel block is >= {tumour_fraction:g} tumour "
            "at this spacing. Check the masks (and label_values), or lower tumour_fraction."
        )
    if counts.get("tissue", 0) == 0:
        raise ValueError(f"no tissue block (tumour-free, >= {body_fraction:g} body with HU > {body_hu:g}) in any case.")
    return blocks


def prepare_organ_blocks(
    items: Sequence[Mapping[str, Any]],
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    hu_range: Sequence[float] = (-1000.0, 1000.0),
    tile_size: int = 64,
    block_size: int = 16,
    organ_fraction: float = 0.5,
    min_blocks_per_organ: int = 5,
    label_offset: Sequence[int] | None = (0, 0, 82),
    label_names: Mapping[int, str] | None = None,
    body_hu: float = -500.0,
    crop_foreground: bool = True,
    margin: int = 2,
) -> tuple[ProbeBlocks | None, str | None]:
    """Preprocess (CT, organ label map) pairs and label their blocks by organ.

    Args:
        items: ``{"image", "label"[, "case"]}`` file paths.
        spacing, hu_range, tile_size, block_size, body_hu, crop_foreground, margin: as :py:func:`prepare_tumour_blocks`.
        organ_fraction: see :py:func:`label_organ_blocks` (0.5).
        min_blocks_per_organ: organs with fewer blocks are left out (5).
        label_offset: voxel (x, y, z) of the CT where a label map *smaller* than the CT starts (its header
            does not say where); used only when the shapes differ. Default (0, 0, 82): the real
            ``organs/example_seg.nii.gz`` covers the last 30 of the CT's 112 slices.
        label_names: organ id -> name; None: TotalSegmentator's names.

    Returns:
        (blocks, None), or (None, reason) when fewer than 2 organs have ``min_blocks_per_organ`` blocks.
    """
    from dagman_components.data.organs import TOTALSEGMENTATOR_LABELS

    _check_tiling(tile_size, block_size)
    names = dict(TOTALSEGMENTATOR_LABELS if label_names is None else label_names)
    settings = {"spacing": [float(s) for s in spacing], "hu_range": [float(h) for h in hu_range],
                "tile_size": int(tile_size), "block_size": int(block_size), "organ_fraction": float(organ_fraction),
                "min_blocks_per_organ": int(min_blocks_per_organ), "body_hu": float(body_hu),
                "label_offset": None if label_offset is None else [int(o) for o in label_offset],
                "crop_foreground": bool(crop_foreground), "margin": int(margin)}
    volumes = []
    for item in items:
        data = _load_case(str(item["image"]), str(item["label"]), spacing, hu_range, label_offset)
        image, hu, ids = data["image"][0], data["hu"][0], data["label"][0].round().long()
        image, ids = _crop_pad([image, ids], hu > body_hu, tile_size, margin, crop_foreground)
        case = str(item.get("case", Path(item["image"]).name))
        volumes.append((case, image, label_organ_blocks(ids, block_size, organ_fraction)))
    all_labels = torch.cat([v[2].flatten() for v in volumes])
    organs, counts = torch.unique(all_labels[all_labels >= 0], return_counts=True)
    kept = [int(o) for o, n in zip(organs, counts) if int(n) >= min_blocks_per_organ]
    if len(kept) < 2:
        return None, (f"{len(kept)} organ(s) with >= {min_blocks_per_organ} blocks of {block_size}^3 voxels "
                      f"(>= {organ_fraction:g} one organ) in {[v[0] for v in volumes]}: kNN needs 2")
    parts = []
    for case, image, labels in volumes:
        labels = torch.where(torch.isin(labels, torch.as_tensor(kept)), labels, torch.full_like(labels, -1))
        tiles, block_tile, block_token, index = _tiles_and_blocks(image, labels, tile_size, block_size)
        if not len(index):
            continue
        stats = block_intensity_statistics(image, block_size)
        parts.append({"case": case, "tiles": tiles, "block_tile": block_tile, "block_token": block_token,
                      "labels": labels[tuple(index.T)].numpy(), "intensity": stats[tuple(index.T)].numpy()})
    class_names = {o: names.get(o, str(o)) for o in kept}
    blocks = _assemble("organ", parts, class_names, tile_size, block_size, settings)
    logger.info(f"probe: organ kNN on {blocks.num_blocks} blocks of {len(kept)} organs in {len(blocks.tiles)} tiles")
    return blocks, None


#: prepared data by cache key, kept for the process's lifetime (clear_probe_cache empties it)
_DATA_CACHE: dict[tuple, ProbeData] = {}
#: baseline results by (data key, architecture, options)
_BASELINE_CACHE: dict[tuple, dict[str, Any]] = {}


def clear_probe_cache() -> None:
    """Forget the cached preprocessed blocks and baseline results."""
    _DATA_CACHE.clear()
    _BASELINE_CACHE.clear()


def prepare_probe_data(
    data_dir: str | os.PathLike,
    tumour_sources: Sequence[str] = ("sts",),
    image_glob: str | None = None,
    label_replace: Sequence[str] | None = None,
    datalist: str | os.PathLike | None = None,
    label_values: Sequence[int] | None = None,
    organs: bool = True,
    max_cases: int | None = None,
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    hu_range: Sequence[float] = (-1000.0, 1000.0),
    tile_size: int = 64,
    block_size: int = 16,
    body_hu: float = -500.0,
    tumour_fraction: float = 0.5,
    body_fraction: float = 0.5,
    organ_fraction: float = 0.5,
    min_blocks_per_organ: int = 5,
    organ_label_offset: Sequence[int] | None = (0, 0, 82),
    use_cache: bool = True,
) -> ProbeData:
    """The tumour blocks (and organ blocks, when ``data_dir/organs/*_ct.nii.gz`` + ``*_seg.nii.gz`` exist), cached.

    Args:
        data_dir: the data folder (``../shared/data/real``: ``sts/<case>/CT_image.nii.gz`` + ``CT_mask.nii.gz``,
            ``chest/<name>_ct.nii.gz`` + ``<name>_lesion.nii.gz``, ``organs/example_ct.nii.gz`` + ``example_seg.nii.gz``).
        tumour_sources, image_glob, label_replace, datalist: which tumour cases, :py:func:`tumour_datalist`.
        label_values: tumour mask values; None: any non-zero.
        organs: also prepare the organ kNN data when present (True).
        max_cases: use only the first this many tumour cases (sorted by path); None: all.
        use_cache: reuse the blocks of an earlier call with the same files and settings (True).
        spacing, hu_range, tile_size, block_size, body_hu, tumour_fraction, body_fraction: see
            :py:func:`prepare_tumour_blocks`; organ_fraction, min_blocks_per_organ, organ_label_offset:
            see :py:func:`prepare_organ_blocks`.

    Returns:
        a :py:class:`ProbeData`.
    """
    data_dir = Path(data_dir)
    items = tumour_datalist(data_dir, tumour_sources, image_glob, label_replace, datalist)
    if max_cases is not None:
        items = items[: int(max_cases)]
    organ_items = _organ_items(data_dir) if organs else []
    spacing = [float(s) for s in spacing]
    hu_range = [float(h) for h in hu_range]
    common = dict(spacing=spacing, hu_range=hu_range, tile_size=int(tile_size), block_size=int(block_size),
                  body_hu=float(body_hu))
    options = dict(tumour_fraction=float(tumour_fraction), body_fraction=float(body_fraction),
                   label_values=None if label_values is None else tuple(int(v) for v in label_values),
                   organ_fraction=float(organ_fraction), min_blocks_per_organ=int(min_blocks_per_organ),
                   organ_label_offset=None if organ_label_offset is None else tuple(int(o) for o in organ_label_offset))
    key = (_file_key(items), _file_key(organ_items), json.dumps({**common, **options}, sort_keys=True))
    if use_cache and key in _DATA_CACHE:
        logger.info(f"probe: reusing the preprocessed blocks of '{data_dir}'")
        return _DATA_CACHE[key]
    start = time.perf_counter()
    tumour = prepare_tumour_blocks(items, tumour_fraction=tumour_fraction, body_fraction=body_fraction,
                                   label_values=label_values, **common)
    organ, reason = None, "no organ data" if organs else "organs=False"
    if organ_items:
        organ, reason = prepare_organ_blocks(organ_items, organ_fraction=organ_fraction,
                                             min_blocks_per_organ=min_blocks_per_organ,
                                             label_offset=organ_label_offset, **common)
    if reason is not None:
        logger.info(f"probe: no organ kNN ({reason})")
    data = ProbeData(tumour=tumour, organ=organ, organ_reason=reason, data_dir=str(data_dir), key=key)
    logger.info(f"probe: preprocessed {len(items)} tumour cases ({tumour.class_counts()}) "
                f"in {time.perf_counter() - start:.1f} s")
    if use_cache:
        _DATA_CACHE[key] = data
    return data


# ---- features and scores ----------------------------------------------------------------------


def _stage_features(out: Any, feature: str, grid: Sequence[int]) -> torch.Tensor:
    """(B, N, C) per-token features of one encoder output."""
    if feature == "tokens":
        return out.tokens
    if feature == "sa_tokens":
        return out.sa_tokens
    maps = []
    for h in out.hidden_states:
        if tuple(h.shape[2:]) == tuple(grid):
            maps.append(h)
        elif all(int(s) >= int(g) for s, g in zip(h.shape[2:], grid)):
            maps.append(F.adaptive_avg_pool3d(h, tuple(grid)))
        else:
            maps.append(F.interpolate(h, size=tuple(grid), mode="trilinear", align_corners=False))
    return torch.cat(maps, dim=1).flatten(2).transpose(1, 2)


@torch.no_grad()
def block_features(
    encoder: SASwinEncoder,
    blocks: ProbeBlocks,
    feature: str = "tokens",
    batch_size: int = 4,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """(M, C) float32 features of the labelled blocks from the frozen ``encoder``.

    The encoder runs on each cached tile (``batch_size`` tiles per forward) under ``torch.no_grad``,
    on ``device`` (None: the encoder's). The caller sets eval mode (:py:func:`evaluate_encoder` does).
    C is 8F for ``"tokens"``/``"sa_tokens"`` at ``sa_stage=3`` and 31F for ``"multiscale"``.

    Raises:
        ValueError: an unknown ``feature``, ``"sa_tokens"`` without SA, or an encoder whose token stride
            is not the blocks' size.
    """
    if feature not in PROBE_FEATURES:
        raise ValueError(f"feature must be one of {PROBE_FEATURES}, got '{feature}'.")
    if feature == "sa_tokens" and getattr(encoder, "semantic_attention", None) is None:
        raise ValueError("feature 'sa_tokens' needs an encoder with semantic attention; use 'tokens'.")
    stride = int(getattr(encoder, "token_stride", blocks.block_size))
    if stride != blocks.block_size:
        raise ValueError(f"the encoder's tokens cover {stride}^3 voxels, the prepared blocks {blocks.block_size}^3: "
                         "prepare the data with block_size = encoder.token_stride.")
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    tiles = blocks.tiles_on(device)
    grid = (blocks.tile_size // blocks.block_size,) * 3
    per_tile = []
    for start in range(0, len(tiles), max(1, int(batch_size))):
        out = encoder(tiles[start : start + batch_size], stop_after_sa=feature != "multiscale")
        per_tile.append(_stage_features(out, feature, grid).float().cpu())
    if not per_tile:
        return np.zeros((0, 0), dtype=np.float32)
    features = torch.cat(per_tile)  # (T, N, C)
    return features[torch.as_tensor(blocks.block_tile), torch.as_tensor(blocks.block_token)].numpy()


def grouped_folds(
    labels: np.ndarray, groups: np.ndarray, n_folds: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs of ``StratifiedGroupKFold(min(n_folds, cases), shuffle, seed)``: no group in both.

    Raises ValueError with fewer than 2 groups (cases).
    """
    labels, groups = np.asarray(labels).reshape(-1), np.asarray(groups).reshape(-1)
    n_groups = len(np.unique(groups))
    folds = min(int(n_folds), n_groups)
    if folds < 2:
        raise ValueError(f"grouped cross-validation needs at least 2 cases, got {n_groups}.")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(train, test) for train, test in splitter.split(np.zeros(len(labels)), labels, groups)]


def _metric(fn: Any, labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(fn(labels, scores)) if len(np.unique(labels)) == 2 else None


def linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    n_folds: int = 5,
    C: float = 0.1,
    max_iter: int = 5000,
    seed: int = 0,
    case_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Case-grouped cross-validated logistic-regression probe of binary ``labels``.

    Args:
        features: (M, C) features.
        labels: (M,) 0/1 (1 = tumour).
        groups: (M,) case of each row; a case is never in both parts of a fold (:py:func:`grouped_folds`).
        n_folds: folds (5), lowered to the number of cases.
        C: inverse L2 strength of ``LogisticRegression`` (0.1) **[choice]**, after ``StandardScaler``;
            ``class_weight="balanced"``, lbfgs, ``max_iter`` (5000).
        seed: the folds' shuffle seed.
        case_names: names of the group ids, for the per-fold case lists.

    Returns:
        ``{"auc", "ap", "prevalence", "num_blocks", "num_features", "folds", "per_fold": [{fold, auc, ap, num_test,
        num_tumour, test_cases, train_cases}], "C"}``; ``auc``/``ap`` of the pooled out-of-fold
        probabilities (``ap``'s chance level is ``prevalence``). A fold whose training part lacks a
        class predicts the training prevalence.
    """
    features = np.asarray(features, dtype=np.float64)
    labels, groups = np.asarray(labels).reshape(-1).astype(np.int64), np.asarray(groups).reshape(-1)
    if features.ndim != 2 or len(features) != len(labels) or len(labels) != len(groups):
        raise ValueError(f"features (M, C), labels (M,), groups (M,) expected, got {features.shape}, "
                         f"{labels.shape}, {groups.shape}.")
    if not np.isfinite(features).all():
        raise ValueError("probe features contain NaN or infinite values.")
    names = (lambda g: str(case_names[int(g)])) if case_names is not None else (lambda g: str(int(g)))
    scores = np.zeros(len(labels), dtype=np.float64)
    per_fold = []
    for k, (train, test) in enumerate(grouped_folds(labels, groups, n_folds, seed)):
        if len(np.unique(labels[train])) < 2:
            scores[test] = labels[train].mean()
            logger.warning(f"probe fold {k}: the training cases hold one class only; predicting its prevalence")
        else:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=max_iter))
            model.fit(features[train], labels[train])
            scores[test] = model.predict_proba(features[test])[:, 1]
        per_fold.append({
            "fold": k,
            "auc": _metric(roc_auc_score, labels[test], scores[test]),
            "ap": _metric(average_precision_score, labels[test], scores[test]),
            "num_test": int(len(test)),
            "num_tumour": int(labels[test].sum()),
            "test_cases": sorted({names(g) for g in groups[test]}),
            "train_cases": sorted({names(g) for g in groups[train]}),
        })
    return {
        "auc": _metric(roc_auc_score, labels, scores),
        "ap": _metric(average_precision_score, labels, scores),
        "prevalence": float(labels.mean()),
        "num_blocks": int(len(labels)),
        "num_features": int(features.shape[1]),
        "folds": len(per_fold),
        "C": float(C),
        "per_fold": per_fold,
    }


def organ_knn(features: np.ndarray, labels: np.ndarray, k: int = 5, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """kNN organ accuracy on standardised (M, C) ``features``: :py:func:`~dagman_components.analysis.clustering.knn_accuracy`.

    Euclidean, distance-weighted, stratified ``folds`` (5). Neighbouring blocks of one organ are
    correlated and the folds are not grouped, so the absolute accuracy is optimistic; compare rows.
    """
    return knn_accuracy(scale_features(np.asarray(features, dtype=np.float64), "standardize"), labels, k=k,
                        folds=folds, seed=seed)


def _scores(
    features_of: Any,
    data: ProbeData,
    n_folds: int,
    C: float,
    max_iter: int,
    knn_k: int,
    seed: int,
) -> dict[str, Any]:
    tumour = data.tumour
    result: dict[str, Any] = {"tumour": linear_probe(features_of(tumour), tumour.labels, tumour.groups, n_folds, C,
                                                     max_iter, seed, tumour.cases)}
    result["organ"] = None
    if data.organ is not None:
        result["organ"] = organ_knn(features_of(data.organ), data.organ.labels, k=knn_k, folds=n_folds, seed=seed)
    return result


def evaluate_encoder(
    encoder: SASwinEncoder,
    data: ProbeData,
    feature: str = "tokens",
    batch_size: int = 4,
    device: torch.device | str | None = None,
    n_folds: int = 5,
    C: float = 0.1,
    max_iter: int = 5000,
    knn_k: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Tumour probe and organ kNN of an in-memory ``encoder`` on prepared ``data`` (:py:func:`prepare_probe_data`).

    The encoder is put in eval mode for the evaluation and returned to its previous mode. Returns
    ``{"tumour": linear_probe result, "organ": knn result or None}``.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        return _scores(lambda b: block_features(encoder, b, feature, batch_size, device), data, n_folds, C,
                       max_iter, knn_k, seed)
    finally:
        encoder.train(was_training)


def _random_encoder(encoder_kwargs: Mapping[str, Any], seed: int) -> SASwinEncoder:
    """``torch.manual_seed(seed)`` then the encoder, without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return SASwinEncoder(**{**encoder_kwargs, "drop_path_rate": 0.0})


def _summary_line(scores: Mapping[str, Any]) -> str:
    organ = scores.get("organ")
    return (f"tumour AUC {_fmt(scores['tumour']['auc'])}, AP {_fmt(scores['tumour']['ap'])}, organ kNN "
            f"{_fmt(None if organ is None else organ['accuracy_mean'])}")


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    kept = [v for v in values if v is not None]
    return (float(np.mean(kept)), float(np.std(kept))) if kept else (None, None)


def probe_baselines(
    data: ProbeData,
    encoder_kwargs: Mapping[str, Any],
    n_random_seeds: int = 3,
    feature: str = "tokens",
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    n_folds: int = 5,
    C: float = 0.1,
    max_iter: int = 5000,
    knn_k: int = 5,
    seed: int = 0,
    use_cache: bool = True,
) -> dict[str, Any]:
    """The reference rows on the same blocks: random-init encoders and the intensity statistics (cached).

    Random init: for seed s in ``range(n_random_seeds)`` (3; 0 gives no random-init row, its values
    None), ``torch.manual_seed(s)`` then ``SASwinEncoder(**encoder_kwargs)``, the arguments taken
    over :py:data:`DEFAULT_ENCODER_KWARGS` (train.yaml's); the caller's RNG state is restored.
    Intensity: the four statistics of :py:data:`INTENSITY_STATISTICS` per block through the same
    probe / kNN. Results are cached per data, architecture and options (``use_cache``).

    Returns:
        ``{"random_init": {"seeds", "tumour_auc_mean", "tumour_auc_std", "tumour_ap_mean",
        "tumour_ap_std", "organ_knn_mean", "organ_knn_std", "per_seed": [{"seed", "tumour", "organ"}]},
        "intensity": {"tumour", "organ"}}``.
    """
    kwargs = _resolve_kwargs(encoder_kwargs, None)
    key = (data.key, json.dumps(kwargs, sort_keys=True, default=str), int(n_random_seeds), feature, int(n_folds),
           float(C), int(max_iter), int(knn_k), int(seed))
    if use_cache and key in _BASELINE_CACHE:
        return _BASELINE_CACHE[key]
    options = dict(n_folds=n_folds, C=C, max_iter=max_iter, knn_k=knn_k, seed=seed)
    per_seed = []
    for s in range(int(n_random_seeds)):
        encoder = _random_encoder(kwargs, s).to(device)
        per_seed.append({"seed": s, **evaluate_encoder(encoder, data, feature, batch_size, device, **options)})
        del encoder
        logger.info(f"probe: random init seed {s}: {_summary_line(per_seed[-1])}")
    random_init: dict[str, Any] = {"seeds": list(range(int(n_random_seeds)))}
    for name, get in (("tumour_auc", lambda r: r["tumour"]["auc"]), ("tumour_ap", lambda r: r["tumour"]["ap"]),
                      ("organ_knn", lambda r: None if r["organ"] is None else r["organ"]["accuracy_mean"])):
        random_init[f"{name}_mean"], random_init[f"{name}_std"] = _mean_std([get(r) for r in per_seed])
    random_init["per_seed"] = per_seed
    intensity = _scores(lambda b: b.intensity, data, **options)
    result = {"random_init": random_init, "intensity": {"statistics": list(INTENSITY_STATISTICS), **intensity}}
    if use_cache:
        _BASELINE_CACHE[key] = result
    return result


# ---- encoder construction ---------------------------------------------------------------------


def _encoder_parameter_names() -> set[str]:
    return set(inspect.signature(SASwinEncoder.__init__).parameters) - {"self"}


def encoder_kwargs_from_config(config_file: str | os.PathLike | Sequence[str | os.PathLike]) -> dict[str, Any]:
    """The ``encoder_def`` arguments of pretrain bundle config(s), resolved by ``monai.bundle.ConfigParser``.

    ``config_file`` is one path or a list layered in order (e.g. ``train.yaml`` then ``paper.yaml``).
    ``_target_`` and the arguments that do not change the architecture (``drop_path_rate``, ``use_checkpoint``,
    ``swin_forward``, ``compile_stages``, ``channels_last``) are dropped.

    Raises:
        ValueError: no ``encoder_def`` section, or arguments ``SASwinEncoder`` does not take.
    """
    from monai.bundle import ConfigParser

    files = [str(config_file)] if isinstance(config_file, (str, os.PathLike)) else [str(f) for f in config_file]
    parser = ConfigParser()
    parser.read_config(files)
    section = parser.get("encoder_def")
    if not isinstance(section, Mapping):
        raise ValueError(f"{files} have no 'encoder_def' section (the pretrain bundle's encoder).")
    kwargs = {}
    for key in section:
        if key.startswith("_") or key in _NOT_ARCHITECTURE:
            continue
        value = parser.get_parsed_content(f"encoder_def::{key}")
        kwargs[key] = list(value) if isinstance(value, tuple) else value
    unknown = sorted(set(kwargs) - _encoder_parameter_names())
    if unknown:
        raise ValueError(f"'encoder_def' of {files} has arguments SASwinEncoder does not take: {unknown}.")
    return kwargs


def preprocessing_from_config(config_file: str | os.PathLike | Sequence[str | os.PathLike]) -> dict[str, list[float]]:
    """``{"spacing", "hu_range"}`` of pretrain bundle config(s): the probe must window and resample as pretraining did.

    An encoder pretrained on a soft-tissue window (e.g. ``hu_range: [-175, 250]``) sees other inputs than
    one pretrained on -1000..1000 HU; probing it on the other window measures the mismatch, not the encoder.
    Keys the configs do not set keep train.yaml's defaults ((2, 2, 2) mm, (-1000, 1000) HU).
    """
    from monai.bundle import ConfigParser

    files = [str(config_file)] if isinstance(config_file, (str, os.PathLike)) else [str(f) for f in config_file]
    parser = ConfigParser()
    parser.read_config(files)
    result = {k: list(v) for k, v in DEFAULT_PREPROCESSING.items()}
    for key in result:
        if key in parser:
            value = parser.get_parsed_content(key)
            if len(value) != len(result[key]):
                raise ValueError(f"'{key}' of {files} must have {len(result[key])} values, got {value!r}.")
            result[key] = [float(v) for v in value]
    return result


def encoder_kwargs_from_encoder(encoder: SASwinEncoder) -> dict[str, Any]:
    """The architecture arguments a built ``encoder`` was constructed with (``SASwinEncoder.encoder_args``), for random-init references."""
    return dict(encoder.encoder_args)


def _resolve_kwargs(
    encoder_kwargs: Mapping[str, Any] | None, config_file: str | os.PathLike | Sequence[str] | None
) -> dict[str, Any]:
    kwargs = dict(DEFAULT_ENCODER_KWARGS)
    if config_file is not None:
        kwargs.update(encoder_kwargs_from_config(config_file))
    kwargs.update({k: v for k, v in (encoder_kwargs or {}).items() if v is not None})
    for key in _NOT_ARCHITECTURE:
        kwargs.pop(key, None)
    unknown = sorted(set(kwargs) - _encoder_parameter_names())
    if unknown:
        raise ValueError(
            f"unknown encoder arguments {unknown}; SASwinEncoder takes {sorted(_encoder_parameter_names())}."
        )
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}


def build_encoder(
    encoder_path: str | os.PathLike | None = None,
    encoder_kwargs: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike | Sequence[str] | None = None,
) -> tuple[SASwinEncoder, dict[str, Any]]:
    """An ``SASwinEncoder`` (eval mode, CPU) and its architecture arguments, optionally loaded from ``encoder_path``.

    An encoder file the pretrain bundle writes carries its architecture: it is built from the file, and any
    ``encoder_kwargs`` must agree with it. A bare state dict (older files) and a random initialisation
    (no ``encoder_path``) take :py:data:`DEFAULT_ENCODER_KWARGS` (train.yaml's), updated by the ``encoder_def``
    of ``config_file`` (:py:func:`encoder_kwargs_from_config`), updated by ``encoder_kwargs`` (None values ignored).

    Raises:
        FileNotFoundError: ``encoder_path`` does not exist.
        ValueError: ``encoder_path`` holds another architecture (the message names the file and the keys).
    """
    kwargs = _resolve_kwargs(encoder_kwargs, config_file)
    if encoder_path is None:
        encoder = SASwinEncoder(**kwargs)
    else:
        explicit = {k: v for k, v in (encoder_kwargs or {}).items() if v is not None and k not in _NOT_ARCHITECTURE}
        encoder = make_encoder(encoder_path, kwargs, **explicit)
        logger.info(f"probe: loaded encoder '{encoder_path}'")
    return encoder.eval(), dict(encoder.encoder_args)


# ---- report -----------------------------------------------------------------------------------


def _fmt(value: float | None, std: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if std is None else f"{value:.3f} +- {std:.3f}"


def format_probe_table(result: Mapping[str, Any]) -> str:
    """The short table of :py:func:`run_probe`'s result: rows encoder / random init / intensity."""
    enc, rnd, inten = result["encoder"], result["random_init"], result["intensity"]
    organ = lambda r: None if r is None else r["accuracy_mean"]  # noqa: E731
    rows = [
        ("encoder", _fmt(enc["tumour"]["auc"]), _fmt(enc["tumour"]["ap"]), _fmt(organ(enc["organ"]))),
        (f"random init ({len(rnd['seeds'])} seed{'' if len(rnd['seeds']) == 1 else 's'})",
         _fmt(rnd["tumour_auc_mean"], rnd["tumour_auc_std"]), _fmt(rnd["tumour_ap_mean"], rnd["tumour_ap_std"]),
         _fmt(rnd["organ_knn_mean"], rnd["organ_knn_std"])),
        ("intensity (4 statistics)", _fmt(inten["tumour"]["auc"]), _fmt(inten["tumour"]["ap"]),
         _fmt(organ(inten["organ"]))),
    ]
    blocks = result["data"]["tumour"]["blocks"]
    organ_data = result["data"]["organ"]
    header = (f"probe '{result['settings']['feature']}' features: {blocks.get('tumour', 0)} tumour / "
              f"{blocks.get('tissue', 0)} tissue blocks in {len(result['data']['tumour']['cases'])} cases "
              f"(AP chance {enc['tumour']['prevalence']:.3f}); organ kNN: "
              + (f"{organ_data['num_blocks']} blocks of {len(organ_data['blocks'])} organs" if organ_data else
                 f"none ({result['data']['organ_reason']})"))
    widths = [max(len(r[i]) for r in rows + [("", "tumour AUC", "tumour AP", "organ kNN")]) for i in range(4)]
    lines = [header, "  ".join(h.ljust(w) for h, w in zip(("", "tumour AUC", "tumour AP", "organ kNN"), widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def run_probe(
    encoder_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    encoder_kwargs: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike | Sequence[str] | None = None,
    output_dir: str | os.PathLike = "probe",
    feature: str = "tokens",
    tumour_sources: Sequence[str] = ("sts",),
    organs: bool = True,
    max_cases: int | None = None,
    spacing: Sequence[float] | None = None,
    hu_range: Sequence[float] | None = None,
    tile_size: int = 64,
    body_hu: float = -500.0,
    tumour_fraction: float = 0.5,
    body_fraction: float = 0.5,
    organ_fraction: float = 0.5,
    min_blocks_per_organ: int = 5,
    organ_label_offset: Sequence[int] | None = (0, 0, 82),
    n_folds: int = 5,
    C: float = 0.1,
    max_iter: int = 5000,
    knn_k: int = 5,
    n_random_seeds: int = 3,
    seed: int = 0,
    batch_size: int = 4,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Frozen-feature probe of the encoder in ``encoder_path``; writes ``output_dir/probe.json`` and logs a table.

    Args:
        encoder_path: an encoder state dict (``models/model.pt`` of the pretrain bundle).
        data_dir: the data folder (see :py:func:`prepare_probe_data`).
        encoder_kwargs: ``SASwinEncoder`` arguments over :py:data:`DEFAULT_ENCODER_KWARGS` (train.yaml's:
            ``feature_size`` 12, ``depths`` (2, 2, 8, 2), ``num_heads`` (4, 4, 8, 16), ...).
        config_file: pretrain config path(s) whose ``encoder_def`` gives the arguments (applied before
            ``encoder_kwargs``), e.g. ``["bundles/pretrain/configs/train.yaml", "my.yaml"]``.
        output_dir: where ``probe.json`` goes ("probe").
        feature: one of :py:data:`PROBE_FEATURES` ("tokens").
        tumour_sources, organs, max_cases, spacing, hu_range, tile_size, body_hu, tumour_fraction,
            body_fraction, organ_fraction, min_blocks_per_organ, organ_label_offset: the data
            (:py:func:`prepare_probe_data`; its blocks are cached across calls). ``spacing`` and
            ``hu_range`` None: ``config_file``'s (:py:func:`preprocessing_from_config`), else 2 mm and
            -1000..1000 HU (train.yaml's).
        n_folds, C, max_iter: the tumour probe (:py:func:`linear_probe`); knn_k: the organ kNN (5).
        n_random_seeds: random-init reference encoders (3).
        seed: seed of the folds.
        batch_size: tiles per encoder forward (4).
        device: where the encoders run (None: CUDA if available, else CPU).

    Returns:
        ``{"encoder": {"path", "kwargs", "tumour", "organ"}, "random_init", "intensity", "data":
        {"tumour": blocks summary, "organ": blocks summary or None, "organ_reason"}, "settings",
        "wall_time_s", "files"}`` (as written to ``probe.json``).
    """
    start = time.perf_counter()
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder, kwargs = build_encoder(encoder_path, encoder_kwargs, config_file)
    encoder = encoder.to(device)
    preprocessing = preprocessing_from_config(config_file) if config_file is not None else DEFAULT_PREPROCESSING
    spacing = spacing if spacing is not None else preprocessing["spacing"]
    hu_range = hu_range if hu_range is not None else preprocessing["hu_range"]
    data = prepare_probe_data(
        data_dir, tumour_sources=tumour_sources, organs=organs, max_cases=max_cases, spacing=spacing,
        hu_range=hu_range, tile_size=tile_size, block_size=encoder.token_stride, body_hu=body_hu,
        tumour_fraction=tumour_fraction, body_fraction=body_fraction, organ_fraction=organ_fraction,
        min_blocks_per_organ=min_blocks_per_organ, organ_label_offset=organ_label_offset,
    )
    options = dict(n_folds=n_folds, C=C, max_iter=max_iter, knn_k=knn_k, seed=seed)
    scores = evaluate_encoder(encoder, data, feature, batch_size, device, **options)
    logger.info(f"probe: encoder: {_summary_line(scores)} ({time.perf_counter() - start:.1f} s so far)")
    baselines = probe_baselines(data, kwargs, n_random_seeds, feature, batch_size, device, **options)
    output_dir = Path(output_dir)
    files = {"json": str(output_dir / "probe.json")}
    config_files = None
    if config_file is not None:
        config_files = [str(config_file)] if isinstance(config_file, (str, os.PathLike)) else [str(c) for c in config_file]
    result = {
        "encoder": {"path": str(encoder_path), "kwargs": kwargs, **scores},
        **baselines,
        "data": {"tumour": data.tumour.summary(), "organ": None if data.organ is None else data.organ.summary(),
                 "organ_reason": data.organ_reason, "data_dir": str(data_dir)},
        "settings": {"feature": feature, "config_file": config_files, "device": str(device), "batch_size": int(batch_size), "n_random_seeds": int(n_random_seeds),
                     "tumour_sources": list(tumour_sources), "max_cases": max_cases,
                     "spacing": [float(v) for v in spacing], "hu_range": [float(v) for v in hu_range],
                     "probe": {"model": "StandardScaler + LogisticRegression(class_weight='balanced')", "C": float(C),
                               "max_iter": int(max_iter), "cv": "StratifiedGroupKFold by case", "n_folds": int(n_folds),
                               "seed": int(seed)},
                     "knn": {"k": int(knn_k), "metric": "euclidean on standardised features", "weights": "distance",
                             "cv": "StratifiedKFold (blocks of one CT: optimistic)"}},
        "wall_time_s": round(time.perf_counter() - start, 2),
        "files": files,
    }
    write_json(result, files["json"])
    for line in format_probe_table(result).splitlines():
        logger.info(line)
    logger.info(f"probe: written to {files['json']} in {result['wall_time_s']:.1f} s")
    return result


def main(
    encoder_path: str,
    data_dir: str,
    output_dir: str = "probe",
    config_file: str | Sequence[str] | None = None,
    feature: str = "tokens",
    tumour_sources: Sequence[str] = ("sts",),
    organs: bool = True,
    max_cases: int | None = None,
    spacing: Sequence[float] | None = None,
    hu_range: Sequence[float] | None = None,
    tile_size: int = 64,
    n_folds: int = 5,
    C: float = 0.1,
    knn_k: int = 5,
    n_random_seeds: int = 3,
    seed: int = 0,
    batch_size: int = 4,
    device: str | None = None,
    **encoder_kwargs: Any,
) -> None:
    """Command line: ``python -m dagman_components.analysis.probe --encoder_path model.pt --data_dir DIR --output_dir OUT``.

    Any other ``--name value`` is an ``SASwinEncoder`` argument (``--feature_size 12 --depths "[2,2,8,2]"``),
    applied over ``--config_file`` (pretrain config(s)) over train.yaml's defaults. ``--hu_range`` and
    ``--spacing`` default to the config files' (pretraining's window). Prints the table.
    """
    unknown = sorted(set(encoder_kwargs) - _encoder_parameter_names())
    if unknown:
        raise ValueError(f"unknown options {unknown}: neither a probe option nor an SASwinEncoder argument "
                         f"({sorted(_encoder_parameter_names())}).")
    if isinstance(tumour_sources, str):
        tumour_sources = [tumour_sources]
    result = run_probe(encoder_path, data_dir, encoder_kwargs=encoder_kwargs, config_file=config_file,
                       output_dir=output_dir, feature=feature, tumour_sources=tumour_sources, organs=organs,
                       max_cases=max_cases, spacing=spacing, hu_range=hu_range, tile_size=tile_size,
                       n_folds=n_folds, C=C, knn_k=knn_k,
                       n_random_seeds=n_random_seeds, seed=seed, batch_size=batch_size, device=device)
    print(format_probe_table(result))
    print(f"written: {result['files']['json']} ({result['wall_time_s']:.1f} s)")


if __name__ == "__main__":
    import fire

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    fire.Fire(main)
