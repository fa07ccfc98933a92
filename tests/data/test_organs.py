"""Organ data: OrganMNIST3D .npz layout, NIfTI + CSV lists, organ crops from label maps, and their errors."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dagman_components.data import (
    ORGANMNIST3D_LABELS,
    TOTALSEGMENTATOR_LABELS,
    crop_organs,
    label_map_pairs,
    load_organ_csv,
    load_organmnist3d,
    organ_transforms,
    prepare_organ_data,
)

REAL_ORGANS = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "organs"


def write_npz(path, sizes=(5, 2, 3), side=28, drop=None):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, side, side, side), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 11).reshape(n, 1).astype(np.uint8)
    if drop:
        del arrays[drop]
    np.savez_compressed(path, **arrays)
    return path


def test_organmnist3d_layout(tmp_path):
    path = write_npz(tmp_path / "organmnist3d.npz")
    items = load_organmnist3d(path)
    assert len(items) == 10 and [i["split"] for i in items].count("val") == 2
    assert items[1]["image"].shape == (1, 28, 28, 28) and items[1]["image"].dtype == np.uint8
    assert items[1]["label"] == 1 and items[1]["organ"] == ORGANMNIST3D_LABELS[1] == "kidney-right"
    assert len(ORGANMNIST3D_LABELS) == 11
    assert [i["split"] for i in load_organmnist3d(path, splits=["test"])] == ["test"] * 3
    sample = organ_transforms(image_size=32, intensity_range=(0, 255), from_arrays=True)(items[1])
    assert tuple(sample["image"].shape) == (1, 32, 32, 32)
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0


def test_organmnist3d_errors_name_file_and_key(tmp_path):
    path = write_npz(tmp_path / "broken.npz", drop="val_labels")
    with pytest.raises(ValueError, match=r"broken\.npz.*val_labels.*keys present"):
        load_organmnist3d(path)
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        load_organmnist3d(tmp_path / "nothere.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match=r"text\.npz"):
        load_organmnist3d(tmp_path / "text.npz")
    with pytest.raises(ValueError, match="splits"):
        load_organmnist3d(path, splits=["training"])


def write_nifti(path, array, spacing=2.0, origin=(0.0, 0.0, 0.0)):
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def test_csv_with_names_and_with_ids(tmp_path):
    for name in ("a", "b", "c"):
        write_nifti(tmp_path / f"{name}.nii.gz", np.zeros((8, 8, 8), dtype=np.int16))
    (tmp_path / "names.csv").write_text("image,label\na.nii.gz,spleen\nb.nii.gz,liver\nc.nii.gz,spleen\n")
    items, names = load_organ_csv(tmp_path / "names.csv")
    assert names == {0: "liver", 1: "spleen"}
    assert [i["label"] for i in items] == [1, 0, 1] and items[0]["image"] == str(tmp_path / "a.nii.gz")
    (tmp_path / "ids.csv").write_text("image,label\na.nii.gz,5\nb.nii.gz,1\n")
    items, names = load_organ_csv(tmp_path / "ids.csv", label_names=TOTALSEGMENTATOR_LABELS)
    assert names == {1: "spleen", 5: "liver"} and [i["organ"] for i in items] == ["liver", "spleen"]
    sample = organ_transforms(image_size=32)(items[0])
    assert tuple(sample["image"].shape) == (1, 32, 32, 32)


def test_csv_errors(tmp_path):
    (tmp_path / "cols.csv").write_text("path,organ\nx.nii.gz,liver\n")
    with pytest.raises(ValueError, match=r"cols\.csv.*\['image', 'label'\]"):
        load_organ_csv(tmp_path / "cols.csv")
    (tmp_path / "missing.csv").write_text("image,label\nx.nii.gz,liver\n")
    with pytest.raises(FileNotFoundError, match=r"line 2.*x\.nii\.gz"):
        load_organ_csv(tmp_path / "missing.csv")


def two_organ_ct(tmp_path, shape=(40, 40, 40)):
    """A 2 mm CT with a 'liver' box (id 5, 60 HU) and a 'spleen' box (id 1, 40 HU) in -1000 HU air."""
    hu = np.full(shape, -1000, dtype=np.int16)
    label = np.zeros(shape, dtype=np.uint8)
    hu[4:20, 4:20, 4:20], label[4:20, 4:20, 4:20] = 60, 5
    hu[24:36, 24:36, 24:36], label[24:36, 24:36, 24:36] = 40, 1
    write_nifti(tmp_path / "ct.nii.gz", hu)
    write_nifti(tmp_path / "seg.nii.gz", label)
    return label_map_pairs(tmp_path, image_file="ct.nii.gz", label_file="seg.nii.gz")


def test_crops_from_a_label_map(tmp_path):
    pairs = two_organ_ct(tmp_path)
    datalist = crop_organs(pairs, tmp_path / "crops", label_names=TOTALSEGMENTATOR_LABELS, crop_size=16,
                           crops_per_organ=3, jitter_mm=6.0, seed=1)
    content = json.loads(datalist.read_text())
    assert content["labels"] == {"0": "spleen", "1": "liver"}
    entries = content["training"]
    assert len(entries) == 6 and [e["organ"] for e in entries] == ["spleen"] * 3 + ["liver"] * 3
    for entry in entries:
        crop = nib.load(datalist.parent / entry["image"])
        assert crop.shape == (16, 16, 16)
        centre = np.asarray(entry["center_voxel"])
        low, high = (24, 36) if entry["organ"] == "spleen" else (4, 20)
        assert ((centre >= low) & (centre < high)).all()  # centres stay inside the organ
        # the crop's affine places it where it was cut: its centre voxel holds the organ's HU
        assert crop.get_fdata()[8, 8, 8] == (40 if entry["organ"] == "spleen" else 60)
        np.testing.assert_allclose(crop.affine[:3, 3], 2.0 * (centre - 8))
    # first crop of each organ: its most interior voxel
    assert entries[0]["center_voxel"] in ([29, 29, 29], [30, 30, 30])
    assert len({tuple(e["center_voxel"]) for e in entries}) > 2  # seeded jitter moves the others
    mtime = datalist.stat().st_mtime_ns
    again = crop_organs(pairs, tmp_path / "crops", label_names=TOTALSEGMENTATOR_LABELS, crop_size=16,
                        crops_per_organ=3, jitter_mm=6.0, seed=1)
    assert again.stat().st_mtime_ns == mtime  # written once, reused
    grouped = crop_organs(pairs, tmp_path / "grouped", label_names=TOTALSEGMENTATOR_LABELS, crop_size=16,
                          crops_per_organ=1, organ_groups={"abdominal organ": ["liver", "spl*"]})
    assert json.loads(grouped.read_text())["labels"] == {"0": "abdominal organ"}
    only_liver = crop_organs(pairs, tmp_path / "liver", organs=["5"], crop_size=16, crops_per_organ=1)
    assert [e["organ"] for e in json.loads(only_liver.read_text())["training"]] == ["5"]


def test_label_map_off_the_grid(tmp_path):
    two_organ_ct(tmp_path)
    small = np.zeros((40, 40, 10), dtype=np.uint8)
    small[10:20, 10:20, 2:8] = 5
    write_nifti(tmp_path / "small_seg.nii.gz", small)
    pairs = label_map_pairs(tmp_path, image_file="ct.nii.gz", label_file="small_seg.nii.gz")
    with pytest.raises(ValueError, match=r"small_seg\.nii\.gz.*\(40, 40, 10\).*ct\.nii\.gz.*label_offset"):
        crop_organs(pairs, tmp_path / "crops", crop_size=16)
    datalist = crop_organs(pairs, tmp_path / "crops", crop_size=16, crops_per_organ=1, label_offset=[0, 0, 30])
    entry = json.loads(datalist.read_text())["training"][0]
    assert entry["center_voxel"][2] in (4, 5)  # in the label map's frame
    write_nifti(tmp_path / "shifted.nii.gz", small, origin=(10.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="different affines|shape"):
        crop_organs(label_map_pairs(tmp_path, image_file="small_seg.nii.gz", label_file="shifted.nii.gz"),
                    tmp_path / "x", crop_size=16)
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        label_map_pairs(tmp_path, image_file="ct.nii.gz", label_file="nope.nii.gz")
    with pytest.raises(ValueError, match="no organ"):
        crop_organs(label_map_pairs(tmp_path, image_file="ct.nii.gz", label_file="seg.nii.gz"), tmp_path / "y",
                    organs=["heart"], crop_size=16)
    with pytest.raises(ValueError, match="source must be"):
        prepare_organ_data("dicom", tmp_path)


@pytest.mark.skipif(not REAL_ORGANS.is_dir(), reason="real organ CT not available (../shared/data/real/organs)")
def test_real_ct_organ_crops(tmp_path):
    # the label map covers the CT's last 30 slices although its header places it at the first ones
    data = prepare_organ_data("label_map", REAL_ORGANS, crops_dir=tmp_path, image_file="example_ct.nii.gz",
                              label_file="example_seg.nii.gz", label_names="totalsegmentator",
                              organs=["liver", "lung_lower_lobe_left", "vertebrae_L1"], crops_per_organ=2,
                              label_offset=[0, 0, 82])
    assert sorted(data.class_names.values()) == ["liver", "lung_lower_lobe_left", "vertebrae_L1"]
    centre_hu = {}
    for item in data.items:
        crop = nib.load(item["image"]).get_fdata()
        centre_hu.setdefault(item["organ"], []).append(crop[15:17, 15:17, 15:17].mean())
    assert 0 < np.mean(centre_hu["liver"]) < 150  # soft tissue
    assert np.mean(centre_hu["lung_lower_lobe_left"]) < -500  # aerated lung
    # cancellous bone of the vertebral body: denser than the liver
    assert np.mean(centre_hu["vertebrae_L1"]) > np.mean(centre_hu["liver"]) + 20
