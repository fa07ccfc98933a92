"""The pretraining dataset with a choice of where the deterministic preprocessing is cached.

At the papers' scale (10,412 CTs at 2 mm) ``CacheDataset`` with ``cache_rate: 1.0`` holds every
preprocessed volume in RAM (hundreds of GB). ``cache: disk`` writes each volume once to ``cache_dir``
(MONAI ``PersistentDataset``) and reads it back per iteration, so the process's memory does not grow
with the dataset; ``cache: none`` preprocesses every volume at every iteration (MONAI ``Dataset``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from monai.data import Dataset, PersistentDataset
from monai.data.utils import pickle_hashing

from dagman_components.data.checks import CheckedCacheDataset, check_on_bad_image

__all__ = ["CACHE_MODES", "pretrain_dataset"]

#: where the deterministic transforms' output lives between iterations
CACHE_MODES = ("memory", "disk", "none")


def pretrain_dataset(
    data: Sequence[dict],
    transform: Callable,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    cache_rate: float = 1.0,
    cache_workers: int = 2,
    progress: bool = True,
    on_bad_image: str = "raise",
) -> Dataset:
    """A MONAI dataset over ``data`` whose deterministic transforms are cached per ``cache``.

    Args:
        data: the datalist (``{"image": path}`` entries).
        transform: the chain, deterministic transforms first (``pretrain_transforms``).
        cache: ``"memory"`` (``CacheDataset``: RAM grows with the dataset), ``"disk"``
            (``PersistentDataset`` under ``cache_dir``: RAM independent of the dataset size) or ``"none"``.
        cache_dir: folder of the disk cache (required for ``"disk"``). The file names hash the datalist
            entry and the cached transforms (``hash_transform=pickle_hashing``), so a changed ``spacing`` or
            ``roi_size`` writes new files instead of reading stale ones.
        cache_rate: fraction of the volumes cached in memory (``"memory"`` only).
        cache_workers: threads that fill the memory cache (``"memory"`` only).
        progress: show the memory cache's progress bar.
        on_bad_image: ``"raise"`` or ``"skip"`` (:py:class:`~dagman_components.data.checks.CheckedCacheDataset`,
            which drops bad images while it fills the memory cache). The data checks in ``transform`` run
            with every cache; ``"skip"`` needs ``cache: memory`` (the other caches would meet a bad image
            mid-training), and asking for it with another cache is an error.
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}.")
    on_bad_image = check_on_bad_image(on_bad_image)
    if cache == "memory":
        return CheckedCacheDataset(data, transform, on_bad_image=on_bad_image, cache_rate=cache_rate,
                                   num_workers=cache_workers, progress=progress)
    if on_bad_image == "skip":
        raise ValueError(f"on_bad_image: skip needs cache: memory (got cache: {cache}); check the images with "
                         "cache: memory once, or use on_bad_image: raise.")
    if cache == "none":
        return Dataset(data, transform)
    if cache_dir is None:
        raise ValueError("cache: disk needs a cache_dir.")
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return PersistentDataset(data, transform, cache_dir=cache_dir, hash_transform=pickle_hashing)
