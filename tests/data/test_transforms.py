"""Tests of the CT transform chains: shapes, intensities, padding, geometry, caching, real CT."""

from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import Compose, RandomizableTrait, Transform

from dagman_components.data import (
    ct_preprocessing,
    generate_phantom_dataset,
    load_datalist,
    pretrain_transforms,
    two_view_crops,
)

ROI = (32, 32, 32)
SPACING = (4.0, 4.0, 4.0)
REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"


def _first_uncached(compose: Compose) -> int | None:
    """Index where CacheDataset/PersistentDataset stop caching (their own criterion)."""
    return compose.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, affine), path)
    return str(path)


@pytest.fixture(scope="module")
def phantom_items(tmp_path_factory):
    # 48 voxels of 4 mm: a 192 mm field of view, resampled at 4 mm to stay small
    out = tmp_path_factory.mktemp("phantom")
    return load_datalist(datalist=generate_phantom_dataset(out, num_volumes=3, shape=(48, 48, 48), spacing=SPACING))


def test_batches_hold_two_views_in_unit_range(phantom_items):
    dataset = CacheDataset(phantom_items, pretrain_transforms(roi_size=ROI, spacing=SPACING), progress=False)
    batch = next(iter(DataLoader(dataset, batch_size=2, num_workers=0)))
    for key in ("view_1", "view_2"):
        view = batch[key]
        assert view.shape == (2, 1, *ROI) and view.dtype == torch.float32
        assert view.min() >= 0.0 and view.max() <= 1.0 and view.max() > 0.5
    assert "image" not in batch and not any("coord" in k for k in batch)


def test_transforms_pickle_and_run_in_worker_processes(phantom_items):
    transform = pretrain_transforms(roi_size=ROI, spacing=SPACING)
    pickle.loads(pickle.dumps(transform))
    loader = DataLoader(Dataset(phantom_items, transform), batch_size=3, num_workers=2)
    assert next(iter(loader))["view_2"].shape == (3, 1, *ROI)


def test_deterministic_prefix_is_cached_and_views_are_not(phantom_items):
    transform = pretrain_transforms(roi_size=ROI, spacing=SPACING)
    # the data checks are part of the cached prefix: they run once per image
    assert _first_uncached(transform) == len(ct_preprocessing(spacing=SPACING, roi_size=ROI, check_images=True))
    dataset = CacheDataset(phantom_items, transform, progress=False)
    cached = dataset._cache[0]
    assert isinstance(cached, dict) and "image" in cached
    # the copies into the view keys are made per iteration: caching them would triple the cache
    assert not {"view_1", "view_2"} & set(cached)
    assert all(s >= r for s, r in zip(cached["image"].shape[1:], ROI))


def test_views_are_independent_random_crops(phantom_items):
    transform = pretrain_transforms(roi_size=ROI, spacing=SPACING)
    cached = CacheDataset(phantom_items[:1], transform, progress=False)._cache[0]
    crops = Compose(transform.transforms[_first_uncached(transform):])
    crops.set_random_state(seed=0)
    samples = [crops(dict(cached)) for _ in range(4)]
    assert any(not torch.equal(s["view_1"], s["view_2"]) for s in samples)
    crops.set_random_state(seed=0)
    again = crops(dict(cached))
    assert torch.equal(again["view_1"], samples[0]["view_1"]) and torch.equal(again["view_2"], samples[0]["view_2"])


def test_small_volume_is_padded_and_warned_once(tmp_path, caplog):
    path = write_nifti(tmp_path / "small.nii.gz", np.full((10, 12, 8), 40, dtype=np.int16), np.diag([2.0, 2, 2, 1]))
    transform = Compose(ct_preprocessing(spacing=(2.0, 2.0, 2.0), roi_size=(16, 16, 16)))
    with caplog.at_level(logging.WARNING, logger="dagman_components.data.transforms"):
        first = transform({"image": path})["image"]
        transform({"image": path})
    assert first.shape == (1, 16, 16, 16)
    assert caplog.text.count(path) == 1 and "(10, 12, 8)" in caplog.text
    # the body keeps its windowed value, the padding is the bottom of the window
    assert torch.isclose(first[0, 8, 8, 8], torch.tensor(0.52)) and first[0, 0, 0, 0] == 0.0


def test_hu_window_maps_to_unit_range(tmp_path):
    hu = np.zeros((12, 12, 12), dtype=np.float32)
    hu[:4], hu[8:] = -3000.0, 3000.0
    path = write_nifti(tmp_path / "window.nii", hu, np.eye(4))
    out = Compose(ct_preprocessing(spacing=(1.0, 1.0, 1.0), roi_size=(4, 4, 4), crop_foreground=False))({"image": path})
    image = out["image"][0]
    assert image.dtype == torch.float32
    assert image[1, 6, 6] == 0.0 and image[10, 6, 6] == 1.0 and torch.isclose(image[6, 6, 6], torch.tensor(0.5))


def test_orientation_and_spacing_make_inputs_agree(tmp_path):
    rng = np.random.default_rng(0)
    ras = rng.uniform(-1000, 1000, size=(30, 20, 10)).astype(np.float32)
    ras_affine = np.diag([1.0, 1.0, 2.0, 1.0])
    # the same physical image stored LPS (flipped x and y), as most DICOM-derived NIfTI files are
    lps_affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    lps_affine[:2, 3] = [29.0, 19.0]
    ras_path = write_nifti(tmp_path / "ras.nii.gz", ras, ras_affine)
    lps_path = write_nifti(tmp_path / "lps.nii.gz", np.ascontiguousarray(ras[::-1, ::-1]), lps_affine)
    transform = Compose(ct_preprocessing(spacing=(2.0, 2.0, 2.0), roi_size=(4, 4, 4), crop_foreground=False))
    a, b = transform({"image": ras_path})["image"], transform({"image": lps_path})["image"]
    assert a.shape == b.shape and a.shape[1:] == (16, 10, 10)  # MONAI keeps the extent: (30 - 1) / 2 + 1 -> 16
    torch.testing.assert_close(a.pixdim, torch.tensor([2.0, 2.0, 2.0], dtype=a.pixdim.dtype))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.affine, b.affine)


def test_foreground_crop_removes_air(phantom_items):
    item = {"image": phantom_items[0]["image"]}
    full = Compose(ct_preprocessing(spacing=SPACING, roi_size=(8, 8, 8), crop_foreground=False))(dict(item))["image"]
    cropped = Compose(ct_preprocessing(spacing=SPACING, roi_size=(8, 8, 8)))(dict(item))["image"]
    assert full.shape[1:] == (48, 48, 48)
    # the body ellipse is narrowest front to back (y)
    assert cropped.shape[2] < 48 and cropped.numel() < full.numel()
    # air (0 after the window) is mostly gone
    assert (cropped == 0).float().mean() < (full == 0).float().mean()


def test_two_view_crops_rejects_bad_keys():
    with pytest.raises(ValueError, match="view_keys"):
        two_view_crops(ROI, view_keys=("image", "view_2"))
    with pytest.raises(ValueError, match="hu_range"):
        ct_preprocessing(hu_range=(1000.0, -1000.0))


def test_real_ct_through_pretraining_chain():
    if not REAL_DATA.is_dir():
        pytest.skip(f"real CT folder {REAL_DATA} absent (it lives outside the project)")
    items = load_datalist(dataset_dir=REAL_DATA)
    names = [Path(i["image"]).name.lower() for i in items]
    assert not any(word in n for n in names for word in ("mask", "seg", "lesion"))
    example = [i for i in items if i["image"].endswith("organs/example_ct.nii.gz")]
    assert len(example) == 1
    out = pretrain_transforms(roi_size=(64, 64, 64))(example[0])
    for key in ("view_1", "view_2"):
        assert out[key].shape == (1, 64, 64, 64) and out[key].dtype == torch.float32
        assert 0.0 <= out[key].min() and out[key].max() <= 1.0


def _crop_origin(volume: torch.Tensor, view: torch.Tensor) -> tuple[int, int, int]:
    """Where ``view`` (1, r, r, r) lies in ``volume`` (1, D, H, W) whose voxels hold their own linear index."""
    index = int(view[0, 0, 0, 0])
    d, h, w = volume.shape[1:]
    return index // (h * w), (index // w) % h, index % w


@pytest.mark.parametrize("region", [None, "null", (12, 12, 12)])  # "null": --view_region_size null on the CLI
def test_views_inside_one_region_overlap(region):
    shape, roi = (40, 40, 40), (8, 8, 8)
    volume = torch.arange(math.prod(shape), dtype=torch.float64).reshape(1, *shape)
    crops = Compose(two_view_crops(roi, view_region_size=region))
    crops.set_random_state(seed=0)
    spans = []
    for _ in range(50):
        out = crops({"image": volume.clone()})
        a, b = _crop_origin(volume, out["view_1"]), _crop_origin(volume, out["view_2"])
        spans.append(max(abs(x - y) for x, y in zip(a, b)))
    if region in (None, "null"):
        assert max(spans) > 12 - 8  # anywhere in the volume: some pairs lie further apart than a region allows
    else:
        assert max(spans) <= 12 - 8  # both views inside one 12^3 region: offsets differ by at most 4 per axis


def test_view_region_must_hold_a_view():
    with pytest.raises(ValueError, match="view_region_size"):
        two_view_crops((8, 8, 8), view_region_size=(6, 12, 12))
    with pytest.raises(ValueError, match="view_region_size must be null or 3 whole numbers"):
        two_view_crops((8, 8, 8), view_region_size="[72,72,72")


def test_appearance_augmentation_changes_each_view_independently():
    from dagman_components.data.transforms import view_appearance_augmentations

    volume = {"image": torch.full((1, 24, 24, 24), 0.5)}
    plain = Compose(two_view_crops((16, 16, 16)))
    augmented = Compose(two_view_crops((16, 16, 16)) + view_appearance_augmentations())
    augmented.set_random_state(0)
    out = plain(volume)
    assert torch.equal(out["view_1"], out["view_2"])  # a constant volume: only appearance can tell the views apart
    differences = []
    for _ in range(8):
        out = augmented(volume)
        assert out["view_1"].shape == (1, 16, 16, 16)
        differences.append(float((out["view_1"] - out["view_2"]).abs().mean()))
    assert sum(d > 1e-3 for d in differences) >= 6, differences


def test_unknown_view_augmentation_is_rejected():
    with pytest.raises(ValueError, match="view_augmentation"):
        pretrain_transforms(view_augmentation="color_jitter")
