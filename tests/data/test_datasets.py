"""The pretraining dataset's cache modes: where the deterministic preprocessing lives between iterations."""

from __future__ import annotations

import pytest
import torch
from monai.data import Dataset, PersistentDataset

from dagman_components.data import (
    CACHE_MODES,
    CheckedCacheDataset,
    generate_phantom_dataset,
    load_datalist,
    pretrain_dataset,
    pretrain_transforms,
)

ROI = (32, 32, 32)
SPACING = (4.0, 4.0, 4.0)


@pytest.fixture(scope="module")
def phantom_items(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    return load_datalist(datalist=generate_phantom_dataset(out, num_volumes=2, shape=(48, 48, 48), spacing=SPACING))


def transform(roi=ROI):
    return pretrain_transforms(roi_size=roi, spacing=SPACING)


@pytest.mark.parametrize("cache,kind", [("memory", CheckedCacheDataset), ("disk", PersistentDataset), ("none", Dataset)])
def test_each_mode_is_its_monai_dataset_and_yields_the_views(phantom_items, tmp_path, cache, kind):
    dataset = pretrain_dataset(phantom_items, transform(), cache=cache, cache_dir=tmp_path / "cache", progress=False)
    assert type(dataset) is kind
    sample = dataset[0]
    assert sample["view_1"].shape == (1, *ROI) and sample["view_2"].shape == (1, *ROI)
    assert set(CACHE_MODES) == {"memory", "disk", "none"}


@pytest.mark.parametrize("cache", ["disk", "none"])
def test_skipping_bad_images_needs_the_memory_cache(phantom_items, tmp_path, cache):
    with pytest.raises(ValueError, match="on_bad_image: skip needs cache: memory"):
        pretrain_dataset(phantom_items, transform(), cache=cache, cache_dir=tmp_path / "c", on_bad_image="skip")


def test_disk_cache_holds_the_preprocessed_volume_once_per_image(phantom_items, tmp_path):
    dataset = pretrain_dataset(phantom_items, transform(), cache="disk", cache_dir=tmp_path / "cache")
    for _ in range(2):  # the second pass reads what the first wrote
        for i in range(len(dataset)):
            dataset[i]
    files = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(files) == len(phantom_items)
    cached = torch.load(files[0], weights_only=False)
    assert cached["image"].shape[0] == 1 and min(cached["image"].shape[1:]) >= ROI[0]  # the whole volume, not a crop
    # another crop size changes the cached transforms' hash: new files, never a stale volume
    other = pretrain_dataset(phantom_items, transform((48, 48, 48)), cache="disk", cache_dir=tmp_path / "cache")
    other[0]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == len(phantom_items) + 1


def test_bad_modes_are_refused(phantom_items):
    with pytest.raises(ValueError, match="cache must be one of"):
        pretrain_dataset(phantom_items, transform(), cache="ram")
    with pytest.raises(ValueError, match="cache_dir"):
        pretrain_dataset(phantom_items, transform(), cache="disk")
