"""
Checks of the image data itself, run as deterministic transforms, so they are cached with the preprocessing.

The header check of :py:func:`~dagman_components.data.validate_images` cannot see a truncated pixel stream,
NaN voxels, an empty (air-only) volume or an MR image. These transforms look at the loaded array once, while
``CacheDataset`` fills its cache (no second pass over the data), and raise a
:py:class:`~dagman_components.errors.BadImageError` naming the file and the reason:

- :py:class:`CheckedLoadImaged`: ``LoadImaged`` whose read errors (truncated or corrupt file) name the file;
- :py:class:`CheckIntensityd`: non-finite voxels, a constant volume, and (``intensity_check="ct"``) values
  that do not look like CT in Hounsfield units (no air, or too many voxels above dense bone);
- :py:class:`CheckForegroundd`: nothing, a constant, or a tiny box left after foreground cropping.

:py:class:`CheckedCacheDataset` applies ``on_bad_image``: ``"raise"`` stops at the first bad image,
``"skip"`` drops it with a warning naming the file and the reason and reports how many it dropped.
"""

from __future__ import annotations

import gzip
import logging
import math
import zlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import CacheDataset, MetaTensor
from monai.transforms import LoadImaged, MapTransform
from monai.utils import ensure_tuple_rep
from nibabel.filebasedimages import ImageFileError

from dagman_components.errors import BadImageError, error_chain

__all__ = [
    "INTENSITY_CHECKS",
    "ON_BAD_IMAGE",
    "CheckForegroundd",
    "CheckIntensityd",
    "CheckedCacheDataset",
    "CheckedLoadImaged",
    "check_on_bad_image",
    "file_name",
]

logger = logging.getLogger(__name__)

#: values of ``intensity_check``: ``"ct"`` requires Hounsfield units; ``"none"`` lets MR or pre-normalised data through
INTENSITY_CHECKS = ("ct", "none")
#: values of ``on_bad_image``
ON_BAD_IMAGE = ("raise", "skip")

# what a corrupt or truncated (gzipped) NIfTI raises when its pixel data is read
READ_ERRORS = (ImageFileError, OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile)


def _one_of(value: str, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
    return value


def check_on_bad_image(value: str, name: str = "on_bad_image") -> str:
    """``value`` if it is one of :py:data:`ON_BAD_IMAGE`, else a ValueError naming the argument ``name``."""
    return _one_of(value, ON_BAD_IMAGE, name)


def file_name(tensor: Any, key: Hashable) -> str:
    """The file a loaded image came from (its MetaTensor's ``filename_or_obj``), else ``<key 'image'>``."""
    meta = getattr(tensor, "meta", {})
    return str(meta.get("filename_or_obj", f"<key '{key}'>"))


class _FileNamingLoader:
    """Calls a ``monai.transforms.LoadImage`` and turns its read errors into a :py:class:`BadImageError` naming the file.

    MONAI reads the header when it picks the reader, the pixels later (``reader.get_data``), so a truncated
    ``.nii.gz`` fails with nibabel's bare ``EOFError``; this wrapper adds the file name.
    """

    def __init__(self, loader: Callable) -> None:
        self.loader = loader

    def __call__(self, filename: Any, reader: Any = None) -> Any:
        try:
            return self.loader(filename, reader)
        except READ_ERRORS as e:
            raise BadImageError(
                str(filename),
                f"cannot be read: truncated or corrupt ({type(e).__name__}: {e}). Re-export or re-download it, or "
                "remove it from the dataset (on_bad_image: skip drops such files).",
            ) from e

    def __getattr__(self, name: str) -> Any:
        # LoadImaged reads e.g. `image_only` and calls `register` on its loader
        if name == "loader":  # not set yet while unpickling
            raise AttributeError(name)
        return getattr(self.loader, name)


class CheckedLoadImaged(LoadImaged):
    """
    ``monai.transforms.LoadImaged`` whose read errors name the file (a :py:class:`BadImageError`).

    Same arguments and output as ``LoadImaged``.
    """

    def __init__(self, keys: KeysCollection, *args: Any, **kwargs: Any) -> None:
        super().__init__(keys, *args, **kwargs)
        self._loader = _FileNamingLoader(self._loader)


def _plain_tensor(x: Any) -> torch.Tensor:
    # a MetaTensor would track metadata through every reduction of the checks
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


class _ImageCheckd(MapTransform):
    """Calls ``check(image, file name)`` on the image of every key; the data passes through unchanged."""

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        for key in self.key_iterator(data):
            self.check(_plain_tensor(data[key]), file_name(data[key], key))
        return data

    def check(self, x: torch.Tensor, name: str) -> None:
        """Raise a :py:class:`BadImageError` naming ``name`` if the (C, X, Y, Z) image ``x`` is bad."""
        raise NotImplementedError


def _air_and_dense_fractions(x: torch.Tensor, air_hu: float, dense_hu: float) -> tuple[float, float]:
    n = max(x.numel(), 1)
    return int(torch.count_nonzero(x < air_hu)) / n, int(torch.count_nonzero(x > dense_hu)) / n


class CheckIntensityd(_ImageCheckd):
    """
    Reject a loaded image with non-finite voxels, constant values, or (``intensity_check="ct"``) non-CT values.

    Place right after loading, before resampling spreads NaN or interpolates the values. CT in Hounsfield
    units has air (about -1000 HU) around or inside the body: at least ``min_air_fraction`` of the voxels
    must lie below ``air_hu``, and at most ``max_dense_fraction`` above ``dense_hu`` (denser than cortical
    bone). An MR image (e.g. 0..4000) or a pre-normalised one (0..1) has no voxel below -500 and fails;
    ``intensity_check="none"`` lets such data through (then set the bundle's ``hu_range`` to its range).
    The thresholds hold for every CT of ``../shared/data/real`` (air fractions 0.21-0.73, no voxel above 3071).

    Args:
        keys: keys of the loaded images, each (C, X, Y, Z).
        intensity_check: ``"ct"`` (default) or ``"none"`` (only the finite and constant checks).
        min_air_fraction: smallest fraction of voxels below ``air_hu``. Default 0.01.
        air_hu: HU below which a voxel is air. Default -500.
        max_dense_fraction: largest fraction of voxels above ``dense_hu``. Default 0.01.
        dense_hu: HU above which a voxel is denser than bone. Default 3100 (12-bit CT saturates at 3071).
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        BadImageError: non-finite, constant or (``"ct"``) non-CT values, naming the file; otherwise the data
            passes through unchanged.
    """

    def __init__(
        self,
        keys: KeysCollection,
        intensity_check: str = "ct",
        min_air_fraction: float = 0.01,
        air_hu: float = -500.0,
        max_dense_fraction: float = 0.01,
        dense_hu: float = 3100.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.intensity_check = _one_of(intensity_check, INTENSITY_CHECKS, "intensity_check")
        self.min_air_fraction = min_air_fraction
        self.air_hu = air_hu
        self.max_dense_fraction = max_dense_fraction
        self.dense_hu = dense_hu

    def check(self, x: torch.Tensor, name: str) -> None:
        non_finite = x.numel() - int(torch.count_nonzero(torch.isfinite(x)))
        if non_finite:
            raise BadImageError(
                name,
                f"has {non_finite} non-finite voxels (NaN or inf) of {x.numel()}: fix or remove the file; "
                "training on it gives a non-finite loss.",
            )
        low, high = (float(v) for v in torch.aminmax(x))
        if low == high:
            raise BadImageError(name, f"is constant (every voxel is {low:g}): there is nothing to learn from it.")
        if self.intensity_check == "none":
            return
        air, dense = _air_and_dense_fractions(x, self.air_hu, self.dense_hu)
        if air < self.min_air_fraction or dense > self.max_dense_fraction:
            raise BadImageError(
                name,
                f"does not look like CT in Hounsfield units: values {low:g}..{high:g}, {100 * air:.2f} % of voxels "
                f"below {self.air_hu:g} HU (air; at least {100 * self.min_air_fraction:g} % expected), "
                f"{100 * dense:.2f} % above {self.dense_hu:g} HU (at most {100 * self.max_dense_fraction:g} % "
                "expected). For MR or pre-normalised data set intensity_check: none (and hu_range to its "
                "intensity window); otherwise remove the file.",
            )


class CheckForegroundd(_ImageCheckd):
    """
    Reject an image with nothing, a constant, or a tiny box left after ``CropForegroundd``.

    Place right after the foreground crop, before padding hides an empty result: an air-only volume crops
    to shape (0, 0, 0) and would be padded into a crop of zeros. An image smaller than ``min_fraction`` of
    ``roi_size`` along an axis would train on crops that are mostly padding.

    Args:
        keys: keys of the cropped images, each (C, X, Y, Z).
        roi_size: the training crop size (voxels).
        min_fraction: the smallest size per axis, as a fraction of ``roi_size``. Default 0.25.
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        BadImageError: an empty, tiny or constant crop, naming the file; otherwise the data passes through unchanged.
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int] | int,
        min_fraction: float = 0.25,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.roi_size = roi_size
        self.min_fraction = min_fraction

    def check(self, x: torch.Tensor, name: str) -> None:
        shape = tuple(int(s) for s in x.shape[1:])
        if min(shape, default=0) == 0:
            raise BadImageError(
                name,
                f"is empty after foreground cropping (shape {shape}): no voxel above the foreground "
                "threshold (air only, or values outside hu_range). Remove the file, or check hu_range.",
            )
        crop = tuple(int(r) for r in ensure_tuple_rep(self.roi_size, len(shape)))
        smallest = tuple(max(1, math.ceil(self.min_fraction * r)) for r in crop)
        if any(s < m for s, m in zip(shape, smallest)):
            raise BadImageError(
                name,
                f"is tiny after resampling and foreground cropping: shape {shape}, less than {smallest} "
                f"({self.min_fraction:g} of the crop size {crop}); "
                "its crops would be mostly padding. Remove the file or use a smaller roi_size.",
            )
        low, high = (float(v) for v in torch.aminmax(x))
        if low == high:
            raise BadImageError(
                name,
                f"is constant ({low:g}) after windowing to hu_range and foreground cropping: "
                "check hu_range against the image's values.",
            )


def _bad_image(exc: BaseException) -> BadImageError | None:
    return next((e for e in error_chain(exc) if isinstance(e, BadImageError)), None)


class CheckedCacheDataset(CacheDataset):
    """
    ``monai.data.CacheDataset`` that drops bad images while it fills its cache (``on_bad_image="skip"``).

    The deterministic part of ``transform`` (with :py:class:`CheckedLoadImaged`, :py:class:`CheckIntensityd`,
    :py:class:`CheckForegroundd`) runs once per item to fill the cache, as in ``CacheDataset``. An item whose
    transforms raise a :py:class:`BadImageError` is, with ``"raise"``, the end of the run (the error names the
    file); with ``"skip"``, dropped with a warning naming the file and the reason, and the number dropped is
    logged. Items beyond the cache (``cache_rate`` < 1) are checked the same way when the dataset is built
    with ``"skip"`` (their preprocessing runs once more at every access, as in ``CacheDataset``).

    Args:
        data, transform, and the other ``CacheDataset`` arguments except ``hash_as_key`` and ``runtime_cache``
            (both need every item cached by position).
        on_bad_image: ``"raise"`` (default) or ``"skip"``.

    Attributes:
        dropped: ``(file, reason)`` of each dropped item.

    Raises:
        BadImageError: ``"raise"`` and a bad image (wrapped by MONAI's ``Compose``).
        ValueError: ``"skip"`` and every image bad; an unknown ``on_bad_image``; ``hash_as_key`` or ``runtime_cache``.
    """

    def __init__(self, data: Sequence, transform: Any = None, on_bad_image: str = "raise", **kwargs: Any) -> None:
        self.on_bad_image = check_on_bad_image(on_bad_image)
        for key in ("hash_as_key", "runtime_cache"):
            if kwargs.get(key):
                raise ValueError(f"CheckedCacheDataset does not support {key}; use CacheDataset.")
        self.dropped: list[tuple[str, str]] = []
        super().__init__(data, transform, **kwargs)

    def _load_cache_item(self, idx: int) -> Any:
        try:
            return super()._load_cache_item(idx)
        except Exception as e:
            bad = _bad_image(e)
            if bad is None or self.on_bad_image == "raise":
                raise
            logger.warning(f"on_bad_image: skip drops image '{bad.filename}': {bad.reason}")
            return bad

    def set_data(self, data: Sequence) -> None:
        """Set the items and fill the cache as ``CacheDataset.set_data``, then drop the bad ones."""
        self.dropped = []
        super().set_data(data)
        cached = list(self._cache)
        checked = cached
        if self.on_bad_image == "skip":  # the uncached rest, so that none fails later, mid-training
            checked = cached + [self._load_cache_item(i) for i in range(self.cache_num, len(self.data))]
        bad = [i for i, item in enumerate(checked) if isinstance(item, BadImageError)]
        if not bad:
            return
        self.dropped = [(checked[i].filename, checked[i].reason) for i in bad]
        keep = sorted(set(range(len(self.data))) - set(bad))
        if not keep:
            raise ValueError(
                f"every one of the {len(self.data)} images is bad (on_bad_image: skip dropped them all); "
                f"first: {self.dropped[0][0]} {self.dropped[0][1]}"
            )
        self.data = [self.data[i] for i in keep]
        self._cache = [cached[i] for i in keep if i < len(cached)]
        self.cache_num = len(self._cache)
        logger.warning(
            f"on_bad_image: skip dropped {len(bad)} of {len(bad) + len(keep)} images, training on {len(keep)}: "
            + "; ".join(f"{name} ({reason.split(':')[0]})" for name, reason in self.dropped)
        )
