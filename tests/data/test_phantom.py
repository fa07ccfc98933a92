"""Tests of the synthetic CT phantom: determinism, anatomy in HU, nodules, datalist, generate-once."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from dagman_components.data import PHANTOM_LABELS, generate_phantom_dataset, make_phantom_volume
from dagman_components.data.phantom import phantom_affine

# 64 voxels of 3 mm: the default 192 mm field of view, where nodules fit, at a third of the voxels
SHAPE, SPACING = (64, 64, 64), (3.0, 3.0, 3.0)


def _component(mask: np.ndarray, seed: tuple[int, ...]) -> np.ndarray:
    """The 26-connected component of ``mask`` containing ``seed`` (geodesic dilation by a 3x3x3 box)."""
    region = np.zeros_like(mask)
    region[seed] = True
    while True:
        grown = region
        for axis in range(3):  # separable box dilation: each pass grows along one axis
            grown = grown.copy()
            src, dst = np.moveaxis(grown.copy(), axis, 0), np.moveaxis(grown, axis, 0)
            dst[1:] |= src[:-1]
            dst[:-1] |= src[1:]
        grown &= mask
        if np.array_equal(grown, region):
            return region
        region = grown


@pytest.fixture(scope="module")
def volumes():
    return [make_phantom_volume(SHAPE, SPACING, np.random.default_rng(seed), 4) for seed in range(4)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    return generate_phantom_dataset(out, num_volumes=3, shape=SHAPE, spacing=SPACING, seed=7)


def test_same_seed_gives_identical_volumes_and_different_seed_does_not():
    hu_a, label_a, nodules_a = make_phantom_volume(SHAPE, SPACING, np.random.default_rng(3), 4)
    hu_b, label_b, nodules_b = make_phantom_volume(SHAPE, SPACING, np.random.default_rng(3), 4)
    hu_c, label_c, _ = make_phantom_volume(SHAPE, SPACING, np.random.default_rng(4), 4)
    assert hu_a.dtype == np.int16 and label_a.dtype == np.uint8
    assert hu_a.shape == label_a.shape == SHAPE
    np.testing.assert_array_equal(hu_a, hu_b)
    np.testing.assert_array_equal(label_a, label_b)
    assert nodules_a == nodules_b
    assert not np.array_equal(hu_a, hu_c)
    assert not np.array_equal(label_a, label_c)


def test_same_seed_gives_byte_identical_files(tmp_path):
    first = generate_phantom_dataset(tmp_path / "a", num_volumes=2, shape=SHAPE, spacing=SPACING, seed=1)
    second = generate_phantom_dataset(tmp_path / "b", num_volumes=2, shape=SHAPE, spacing=SPACING, seed=1)
    other = generate_phantom_dataset(tmp_path / "c", num_volumes=2, shape=SHAPE, spacing=SPACING, seed=2)
    for rel in ("dataset.json", "imagesTr/phantom_001.nii.gz", "labelsTr/phantom_001.nii.gz"):
        assert (first.parent / rel).read_bytes() == (second.parent / rel).read_bytes(), rel
    assert (first.parent / "imagesTr/phantom_001.nii.gz").read_bytes() != (
        other.parent / "imagesTr/phantom_001.nii.gz"
    ).read_bytes()


def test_tissues_have_ct_intensities(volumes):
    for hu, label, _ in volumes:
        assert set(np.unique(label)) == set(PHANTOM_LABELS.values())
        mean = {name: float(hu[label == idx].mean()) for name, idx in PHANTOM_LABELS.items()}
        assert mean["background"] < -900
        assert mean["lung"] < -600
        assert mean["bone"] > 300
        assert -150 < mean["body"] < 100
        for organ in ("heart", "liver", "spleen", "kidney"):
            assert -60 < mean[organ] < 120, (organ, mean[organ])
        assert hu.min() >= -1024 and hu.max() <= 3071


def test_nodules_are_inside_lungs_apart_and_malignant_ones_larger_and_spiculated(volumes):
    spacing = np.asarray(SPACING)
    extent_ratio = {0: [], 1: []}
    radius = {0: [], 1: []}
    for _, label, nodules in volumes:
        assert len(nodules) == 4
        assert sorted(n["malignant"] for n in nodules) == [0, 0, 1, 1]
        nodule_mask = label == PHANTOM_LABELS["nodule"]
        assert sum(n["num_voxels"] for n in nodules) == nodule_mask.sum()
        centers = np.asarray([n["center_voxel"] for n in nodules])
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1)
        for i, n in enumerate(nodules):
            c = np.asarray(n["center_voxel"])
            assert label[tuple(c)] == PHANTOM_LABELS["nodule"]
            # the ball of the nodule's radius holds only lung and nodule: the nodule lies inside the lung
            ball = np.linalg.norm((grid - c) * spacing, axis=-1) <= n["radius_mm"]
            assert set(np.unique(label[ball])) <= {PHANTOM_LABELS["lung"], PHANTOM_LABELS["nodule"]}
            np.testing.assert_allclose(n["center_mm"], phantom_affine(SHAPE, SPACING)[:3] @ [*c, 1.0], atol=1e-3)
            own = _component(nodule_mask, tuple(c))
            # connected and apart from the others: its component is exactly its own voxels
            assert own.sum() == n["num_voxels"]
            reach_mm = np.linalg.norm((grid[own] - c) * spacing, axis=-1).max()
            extent_ratio[n["malignant"]].append(reach_mm / n["radius_mm"])
            radius[n["malignant"]].append(n["radius_mm"])
            for j in range(i):
                gap = np.linalg.norm((c - centers[j]) * spacing)
                assert gap > 0.8 * (n["radius_mm"] + nodules[j]["radius_mm"])
    assert max(radius[0]) < min(radius[1])
    # spicules reach well beyond the nominal radius; smooth benign nodules do not
    assert np.mean(extent_ratio[1]) > 1.4 > 1.3 > max(extent_ratio[0])


def test_datalist_is_decathlon_style_and_resolves(dataset):
    content = json.loads(dataset.read_text())
    assert content["numTraining"] == len(content["training"]) == 3
    assert content["labels"] == {str(v): k for k, v in PHANTOM_LABELS.items()}
    assert content["modality"] == {"0": "CT"} and content["seed"] == 7 and content["spacing"] == list(SPACING)
    items = load_decathlon_datalist(dataset, is_segmentation=True, data_list_key="training")
    for item, entry in zip(items, content["training"]):
        assert not Path(entry["image"]).is_absolute()
        image, label = nib.load(item["image"]), nib.load(item["label"])
        assert image.shape == label.shape == SHAPE
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        np.testing.assert_allclose(image.affine, phantom_affine(SHAPE, SPACING))
        assert len(item["nodules"]) == 4


def test_generates_once_unless_overwrite(tmp_path, caplog):
    path = generate_phantom_dataset(tmp_path, num_volumes=1, shape=SHAPE, spacing=SPACING)
    image = tmp_path / "imagesTr/phantom_000.nii.gz"
    stamps = path.stat().st_mtime_ns, image.stat().st_mtime_ns
    assert generate_phantom_dataset(tmp_path, num_volumes=1, shape=SHAPE, spacing=SPACING) == path
    assert (path.stat().st_mtime_ns, image.stat().st_mtime_ns) == stamps
    with caplog.at_level(logging.WARNING):
        generate_phantom_dataset(tmp_path, num_volumes=2, shape=SHAPE, spacing=SPACING)
    assert "numTraining" in caplog.text and str(path) in caplog.text
    assert not (tmp_path / "imagesTr/phantom_001.nii.gz").exists()
    generate_phantom_dataset(tmp_path, num_volumes=2, shape=SHAPE, spacing=SPACING, overwrite=True)
    assert json.loads(path.read_text())["numTraining"] == 2


def test_incomplete_dataset_is_regenerated(tmp_path):
    path = generate_phantom_dataset(tmp_path, num_volumes=1, shape=SHAPE, spacing=SPACING)
    path.unlink()  # as if interrupted before the datalist, written last, was written
    assert generate_phantom_dataset(tmp_path, num_volumes=1, shape=SHAPE, spacing=SPACING).is_file()
    assert not list(tmp_path.rglob(".tmp-*"))


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="could not place"):
        make_phantom_volume((32, 32, 32), (2.0, 2.0, 2.0), np.random.default_rng(0), 4)
    with pytest.raises(ValueError, match=r"shape=\(64, 64\)"):
        make_phantom_volume((64, 64), SPACING, np.random.default_rng(0), 4)
    with pytest.raises(ValueError, match="spacing"):
        make_phantom_volume(SHAPE, (3.0, 0.0, 3.0), np.random.default_rng(0), 4)


def test_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dagman_components.data.phantom", "--output_dir", str(tmp_path),
         "--num_volumes", "1", "--shape", "[48,48,48]", "--spacing", "[4.0,4.0,4.0]", "--nodules_per_volume", "2"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2],
    )
    assert result.stdout.strip() == str(tmp_path / "dataset.json")
    assert json.loads((tmp_path / "dataset.json").read_text())["shape"] == [48, 48, 48]
