"""
MONAI dictionary-transform chains for CT pretraining: deterministic preprocessing, then two random views.

The deterministic steps come first and contain no random or plain-callable transform, so
``monai.data.CacheDataset``/``PersistentDataset`` cache their output and only the view cropping runs per
iteration. Every transform is picklable (no lambdas), as multiprocess ``DataLoader`` workers and
``PersistentDataset`` require.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import (
    Compose,
    CopyItemsd,
    CropForegroundd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandomizableTrait,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    ScaleIntensityRanged,
    SelectItemsd,
    Spacingd,
    SpatialPadd,
    Transform,
)
from monai.utils import ensure_tuple, ensure_tuple_rep

from dagman_components.options import optional

from .checks import CheckedLoadImaged, CheckForegroundd, CheckIntensityd, file_name

__all__ = [
    "above_threshold",
    "WarnIfSmallerd",
    "PerIterationCopyItemsd",
    "ct_preprocessing",
    "two_view_crops",
    "VIEW_AUGMENTATIONS",
    "view_appearance_augmentations",
    "pretrain_transforms",
]

#: ``pretrain_transforms(view_augmentation=...)``: ``"none"`` (the papers: views differ only by their crop) or
#: ``"appearance"`` (:py:func:`view_appearance_augmentations`) **[choice]**
VIEW_AUGMENTATIONS: tuple[str, ...] = ("none", "appearance")

logger = logging.getLogger(__name__)


def above_threshold(x: NdarrayOrTensor, threshold: float = 0.0) -> NdarrayOrTensor:
    """
    Foreground selector for ``CropForegroundd``: ``x > threshold``.

    A module-level function (bound with ``functools.partial``) rather than a lambda, so that the transform
    chain pickles.
    """
    return x > threshold


class WarnIfSmallerd(MapTransform):
    """
    Log a warning, once per file and process, when an image is smaller than ``spatial_size`` in some dim.

    Placed before ``SpatialPadd``: the padding happens regardless, the warning says that a training crop of
    this image will be partly padding. Reads the file name from the MetaTensor's ``filename_or_obj``. Does
    not change the data.

    Args:
        keys: keys of the images to check.
        spatial_size: the size below which to warn, e.g. the crop's ``roi_size``.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(self, keys: KeysCollection, spatial_size: Sequence[int] | int, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = spatial_size
        self._warned: set[str] = set()

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        for key in self.key_iterator(data):
            spatial_shape = tuple(int(s) for s in data[key].shape[1:])
            wanted = ensure_tuple_rep(self.spatial_size, len(spatial_shape))
            if all(s >= w for s, w in zip(spatial_shape, wanted)):
                continue
            name = file_name(data[key], key)
            if name not in self._warned:
                self._warned.add(name)
                logger.warning(
                    f"image '{name}' has spatial shape {spatial_shape} after resampling and foreground cropping, "
                    f"smaller than the crop size {wanted}: it is zero-padded (0 = the bottom of the HU window)."
                )
        return data


class PerIterationCopyItemsd(CopyItemsd, RandomizableTrait):
    """
    ``monai.transforms.CopyItemsd`` that ``CacheDataset``/``PersistentDataset`` do not cache.

    Caching datasets store everything up to the first random transform; a plain ``CopyItemsd`` there would
    store the copies too, multiplying the cache's memory (or disk) by the number of copies. The
    ``RandomizableTrait`` marker moves the copy after the cache: the copies are made per iteration.
    """


def ct_preprocessing(
    keys: Sequence[str] = ("image",),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    hu_range: Sequence[float] = (-1000.0, 1000.0),
    roi_size: Sequence[int] = (64, 64, 64),
    crop_foreground: bool = True,
    foreground_hu: float = -500.0,
    margin: int = 2,
    check_images: bool = False,
    intensity_check: str = "ct",
) -> list[Transform]:
    """
    Deterministic CT preprocessing: load, RAS, resample, HU window to [0, 1], crop to the body, pad.

    Steps (docs/design.md, section 3, after SMIT and MONAI's SwinUNETR pretraining): ``LoadImaged`` (channel first,
    float32) -> ``Orientationd("RAS")`` -> ``Spacingd(spacing, bilinear)`` -> ``ScaleIntensityRanged``
    (``hu_range`` to [0, 1], clipped) -> ``CropForegroundd`` (bounding box of voxels above ``foreground_hu``,
    plus ``margin``) -> ``SpatialPadd(roi_size)`` (so any crop of ``roi_size`` fits; a warning names each
    file that needed it) -> ``EnsureTyped`` (float32 ``MetaTensor``).

    Args:
        keys: image keys; the first one drives the foreground crop. Default ("image",).
        spacing: output voxel size in mm. Default (2.0, 2.0, 2.0) (papers).
        hu_range: HU window mapped to [0, 1]. Default (-1000.0, 1000.0): keeps lung (air to bone);
            SMIT used (-175.0, 250.0) (docs/design.md, section 3, a choice).
        roi_size: minimal output spatial size, the crop size of the views. Default (64, 64, 64).
        crop_foreground: crop to the body's bounding box. Default True.
        foreground_hu: HU above which a voxel is foreground (not air): -500 lies between air (-1000, plus
            noise) and fat (-100). If below ``hu_range[0]``, everything above the window's bottom is
            foreground. Default -500.0.
        margin: voxels kept around the foreground box. Default 2.
        check_images: check the data as it is loaded and cropped (:py:mod:`dagman_components.data.checks`): a
            truncated file, non-finite or constant voxels, nothing or a tiny box left after the foreground crop
            raise a ``BadImageError`` naming the file (``CheckedCacheDataset`` can skip them). Default False.
        intensity_check: with ``check_images``, ``"ct"`` also rejects data that does not look like CT in HU (no
            air; MR, pre-normalised); ``"none"`` lets it through. Default "ct".

    Returns:
        the list of transforms, for ``monai.transforms.Compose``. Output per key: float32 ``MetaTensor``
        (1, X, Y, Z) in [0, 1], each spatial size >= ``roi_size``.
    """
    keys = list(ensure_tuple(keys))
    if not keys:
        raise ValueError("ct_preprocessing needs at least one image key.")
    a_min, a_max = (float(v) for v in hu_range)
    if not a_max > a_min:
        raise ValueError(f"hu_range must be (low, high) with low < high, got {tuple(hu_range)}.")
    load = CheckedLoadImaged if check_images else LoadImaged
    transforms: list[Transform] = [load(keys, ensure_channel_first=True, image_only=True, dtype=np.float32)]
    if check_images:  # on the values as stored: resampling would spread NaN and blur the HU statistics
        transforms.append(CheckIntensityd(keys, intensity_check=intensity_check))
    transforms += [
        # labels=None: read the axes from the MetaTensor's space (MONAI's coming default; silences its warning)
        Orientationd(keys, axcodes="RAS", labels=None),
        Spacingd(keys, pixdim=spacing, mode="bilinear"),
        ScaleIntensityRanged(keys, a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True),
    ]
    if crop_foreground:
        threshold = float(np.clip((foreground_hu - a_min) / (a_max - a_min), 0.0, 1.0))
        transforms.append(
            CropForegroundd(
                keys,
                source_key=keys[0],
                select_fn=functools.partial(above_threshold, threshold=threshold),
                margin=margin,
                allow_smaller=True,
                # no box-coordinate keys: batches should carry only images and their metadata
                start_coord_key=None,
                end_coord_key=None,
            )
        )
        if check_images:  # before padding hides an empty or tiny result
            transforms.append(CheckForegroundd(keys, roi_size=roi_size))
    transforms += [
        WarnIfSmallerd(keys, spatial_size=roi_size),
        SpatialPadd(keys, spatial_size=roi_size),
        EnsureTyped(keys, data_type="tensor", dtype=torch.float32),
    ]
    return transforms


def two_view_crops(
    roi_size: Sequence[int],
    view_keys: Sequence[str] = ("view_1", "view_2"),
    source_key: str = "image",
    view_region_size: Sequence[int] | None = None,
) -> list[Transform]:
    """
    Two (or more) independent random crops of one volume: the views of self-distillation.

    ``source_key`` is copied into each of ``view_keys`` (per iteration, see :py:class:`PerIterationCopyItemsd`),
    each view gets its own ``RandSpatialCropd(roi_size, random_size=False)``, and only the views are kept
    (``SelectItemsd``), so datalist extras of any shape (label paths, nodule records) never reach the collate. The views are independent uniform crops: they may or may not overlap
    (docs/design.md, section 3, a choice; SMIT took two sub-crops of one larger crop).

    With ``view_region_size``, one random region of that size is cropped first and every view is drawn
    inside it, so two views overlap by at least ``2 * roi_size - view_region_size`` voxels per axis
    (SMIT's two sub-crops of one larger crop; DINO's views are of one image).

    Args:
        roi_size: spatial size of each view; the source must be at least this large (``ct_preprocessing`` pads).
        view_keys: output keys. Default ("view_1", "view_2").
        source_key: key of the preprocessed volume. Default "image".
        view_region_size: spatial size of the shared region, at least ``roi_size`` per axis; None (default):
            the views are drawn from the whole volume.

    Returns:
        the list of transforms. Output per view key: (1, *roi_size).
    """
    view_keys = list(ensure_tuple(view_keys))
    if not view_keys or source_key in view_keys or len(set(view_keys)) != len(view_keys):
        raise ValueError(
            f"view_keys must be distinct keys other than source_key '{source_key}', got {tuple(view_keys)}."
        )
    transforms: list[Transform] = []
    view_region_size = optional(view_region_size)  # "null" from the command line
    if view_region_size is not None:
        try:
            region = [int(r) for r in ensure_tuple(view_region_size)]
        except (TypeError, ValueError):
            raise ValueError(f"view_region_size must be null or 3 whole numbers (e.g. [72, 72, 72]), got {view_region_size!r}.") from None
        if len(region) != len(ensure_tuple(roi_size)) or any(r < int(v) for r, v in zip(region, ensure_tuple(roi_size))):
            raise ValueError(f"view_region_size must be at least roi_size {tuple(roi_size)} on every axis, got {tuple(region)}.")
        transforms.append(RandSpatialCropd(source_key, roi_size=region, random_size=False))
    transforms.append(PerIterationCopyItemsd(source_key, times=len(view_keys), names=view_keys))
    # one transform per view, so each view draws its own crop position
    transforms += [RandSpatialCropd(view_key, roi_size=roi_size, random_size=False) for view_key in view_keys]
    transforms.append(SelectItemsd(view_keys))
    return transforms


def view_appearance_augmentations(view_keys: Sequence[str] = ("view_1", "view_2")) -> list[Transform]:
    """
    Independent appearance changes of each view, on the windowed [0, 1] intensities (DINO/SimCLR's colour
    jitter and blur, for CT).

    Two crops of one scan share its scanner's noise texture, reconstruction kernel, contrast phase and
    HU calibration; with nothing but the crop to tell the views apart, matching them can be solved by
    those per-scan statistics (SimCLR's colour-histogram shortcut, Chen et al. 2020). Each view here
    draws its own, per iteration:

    - intensity scale ``x * (1 + f)``, f ~ U(-0.1, 0.1), probability 0.8;
    - intensity shift ``x + o``, o ~ U(-0.1, 0.1) (about +-40 HU in the soft-tissue window), probability 0.8;
    - Gaussian smoothing, sigma ~ U(0.5, 1.5) voxels per axis (a softer kernel), probability 0.5;
    - Gaussian noise, std ~ U(0, 0.05) (up to about 20 HU), probability 0.5.

    The student and the teacher see the same augmented view (its mask and patch dropout differ), so
    AMPD and AMIP are unchanged in kind; only the cross-view targets (AITD, GITD) gain the invariance.

    Args:
        view_keys: the view keys of :py:func:`two_view_crops`. Default ("view_1", "view_2").

    Returns:
        the list of transforms, one of each kind per view (so the views draw independently).
    """
    transforms: list[Transform] = []
    for key in ensure_tuple(view_keys):
        transforms += [
            RandScaleIntensityd(key, factors=0.1, prob=0.8),
            RandShiftIntensityd(key, offsets=0.1, prob=0.8),
            RandGaussianSmoothd(key, sigma_x=(0.5, 1.5), sigma_y=(0.5, 1.5), sigma_z=(0.5, 1.5), prob=0.5),
            RandGaussianNoised(key, mean=0.0, std=0.05, prob=0.5, sample_std=True),
        ]
    return transforms


def pretrain_transforms(
    roi_size: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    hu_range: Sequence[float] = (-1000.0, 1000.0),
    view_keys: Sequence[str] = ("view_1", "view_2"),
    check_images: bool = True,
    intensity_check: str = "ct",
    view_region_size: Sequence[int] | None = None,
    view_augmentation: str = "none",
) -> Compose:
    """
    The pretraining chain: :py:func:`ct_preprocessing` (cacheable), :py:func:`two_view_crops`, then with
    ``view_augmentation="appearance"`` :py:func:`view_appearance_augmentations`.

    Over ``CacheDataset(load_datalist(...), pretrain_transforms(...))`` a ``DataLoader`` yields batches with
    ``batch["view_1"]`` and ``batch["view_2"]`` of shape (B, 1, *roi_size), float32 in [0, 1].

    Args:
        roi_size: view size in voxels. Default (64, 64, 64); the papers use (128, 128, 128).
        spacing: voxel size in mm. Default (2.0, 2.0, 2.0) (papers).
        hu_range: HU window mapped to [0, 1]. Default (-1000.0, 1000.0).
        view_keys: output keys of the views. Default ("view_1", "view_2").
        check_images: check every image's data while it is cached (see :py:func:`ct_preprocessing`). Default True.
        intensity_check: ``"ct"`` (default) or ``"none"`` (MR or pre-normalised data).
        view_region_size: draw both views inside one random region of this size (see :py:func:`two_view_crops`);
            None (default): anywhere in the volume.
        view_augmentation: one of :data:`VIEW_AUGMENTATIONS`; ``"none"`` (default, the papers).

    Returns:
        a ``monai.transforms.Compose`` taking ``{"image": path, ...}``.

    Raises:
        ValueError: an unknown ``view_augmentation``.
    """
    if view_augmentation not in VIEW_AUGMENTATIONS:
        raise ValueError(f"view_augmentation must be one of {VIEW_AUGMENTATIONS}, got {view_augmentation!r}.")
    augmentations = view_appearance_augmentations(view_keys) if view_augmentation == "appearance" else []
    return Compose(
        ct_preprocessing(
            keys=("image",),
            spacing=spacing,
            hu_range=hu_range,
            roi_size=roi_size,
            check_images=check_images,
            intensity_check=intensity_check,
        )
        + two_view_crops(roi_size, view_keys=view_keys, source_key="image", view_region_size=view_region_size)
        + augmentations
    )
