"""Tests of datalist reading (Decathlon JSON, folder scan) and of header validation."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dagman_components.data import DEFAULT_EXCLUDE, load_datalist, validate_images


def write_nifti(path: Path, shape: tuple[int, ...] = (8, 9, 10), dtype=np.int16) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype=dtype), np.eye(4)), path)
    return str(path)


@pytest.fixture
def ct_folder(tmp_path: Path) -> Path:
    """A folder laid out like ../shared/data/real: CTs with masks, segmentations and lesions beside them."""
    for rel in (
        "sts/STS_001/CT_image.nii.gz",
        "sts/STS_001/CT_mask.nii.gz",
        "chest/lung1_ct.nii.gz",
        "chest/lung1_lesion.nii.gz",
        "organs/example_ct.nii.gz",
        "organs/example_SEG.nii.gz",
        "labelsTr/case_000.nii.gz",
        "plain.nii",
        ".hidden_ct.nii.gz",
    ):
        write_nifti(tmp_path / rel)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_scan_keeps_only_images_sorted_and_absolute(ct_folder):
    items = load_datalist(dataset_dir=ct_folder)
    assert [Path(i["image"]).relative_to(ct_folder).as_posix() for i in items] == [
        "chest/lung1_ct.nii.gz",
        "organs/example_ct.nii.gz",
        "plain.nii",
        "sts/STS_001/CT_image.nii.gz",
    ]
    assert all(Path(i["image"]).is_absolute() and set(i) == {"image"} for i in items)
    assert load_datalist(dataset_dir=str(ct_folder)) == items  # deterministic


def test_folder_scan_exclusions_are_configurable(ct_folder):
    names = {Path(i["image"]).name for i in load_datalist(dataset_dir=ct_folder, exclude=())}
    assert {"CT_mask.nii.gz", "lung1_lesion.nii.gz", "example_SEG.nii.gz", "case_000.nii.gz"} <= names
    assert ".hidden_ct.nii.gz" not in names
    assert DEFAULT_EXCLUDE == ("mask", "seg", "label", "lesion")


def test_folder_errors_name_the_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_datalist(dataset_dir=missing)
    a_file = Path(write_nifti(tmp_path / "ct.nii.gz"))
    with pytest.raises(ValueError, match="not a directory") as error:
        load_datalist(dataset_dir=a_file)
    assert str(a_file) in str(error.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError) as error:
        load_datalist(dataset_dir=empty)
    assert str(empty) in str(error.value) and ".nii.gz" in str(error.value) and "mask" in str(error.value)
    only_masks = tmp_path / "masks"
    write_nifti(only_masks / "CT_mask.nii.gz")
    with pytest.raises(ValueError, match="1 NIfTI file"):
        load_datalist(dataset_dir=only_masks)
    with pytest.raises(ValueError, match="dataset_dir"):
        load_datalist()


def _write_datalist(folder: Path, content: dict) -> Path:
    path = folder / "dataset.json"
    path.write_text(json.dumps(content))
    return path


def test_json_datalist_resolves_relative_paths(tmp_path):
    write_nifti(tmp_path / "imagesTr/a.nii.gz")
    write_nifti(tmp_path / "labelsTr/a.nii.gz", dtype=np.uint8)
    path = _write_datalist(
        tmp_path,
        {"training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz", "nodules": [{"malignant": 1}]}],
         "test": ["imagesTr/a.nii.gz"]},
    )
    items = load_datalist(datalist=path)
    assert items == [
        {"image": str(tmp_path / "imagesTr/a.nii.gz"), "label": str(tmp_path / "labelsTr/a.nii.gz"),
         "nodules": [{"malignant": 1}]}
    ]
    assert load_datalist(datalist=path, data_list_key="test") == [{"image": str(tmp_path / "imagesTr/a.nii.gz")}]
    # an explicit dataset_dir is the base of the relative paths
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    moved_json = _write_datalist(moved, json.loads(path.read_text()))
    assert load_datalist(dataset_dir=tmp_path, datalist=moved_json)[0]["image"] == items[0]["image"]


def test_json_datalist_errors_name_file_key_and_entry(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_datalist(datalist=missing)
    invalid = tmp_path / "invalid.json"
    invalid.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON") as error:
        load_datalist(datalist=invalid)
    assert str(invalid) in str(error.value)
    write_nifti(tmp_path / "a.nii.gz")
    path = _write_datalist(tmp_path, {"name": "x", "validation": [{"image": "a.nii.gz"}]})
    with pytest.raises(ValueError, match="'training'") as error:
        load_datalist(datalist=path)
    assert "validation" in str(error.value) and str(path) in str(error.value)
    path = _write_datalist(tmp_path, {"training": [{"image": "a.nii.gz"}, {"image": "gone.nii.gz"}]})
    with pytest.raises(FileNotFoundError, match="entry 1") as error:
        load_datalist(datalist=path)
    assert str(tmp_path / "gone.nii.gz") in str(error.value)
    path = _write_datalist(tmp_path, {"training": [{"label": "a.nii.gz"}]})
    with pytest.raises(ValueError, match="entry 0"):
        load_datalist(datalist=path)


def test_validate_images_accepts_3d_and_4d_with_singleton_channel(tmp_path):
    items = [{"image": write_nifti(tmp_path / "a.nii.gz")},
             {"image": write_nifti(tmp_path / "b.nii", shape=(8, 9, 10, 1), dtype=np.float32)}]
    assert validate_images(items) == items


@pytest.mark.parametrize(
    "shape, expected",
    [((32, 32), "(32, 32)"), ((32, 32, 1), "(32, 32, 1)"), ((8, 8, 8, 3), "(8, 8, 8, 3)")],
)
def test_validate_images_rejects_non_volumes_naming_file_and_shape(tmp_path, shape, expected):
    path = write_nifti(tmp_path / "bad.nii.gz", shape=shape)
    with pytest.raises(ValueError) as error:
        validate_images([{"image": path}])
    assert path in str(error.value) and expected in str(error.value)


def test_validate_images_rejects_corrupt_file_naming_it(tmp_path):
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"this is not a gzipped nifti file" * 10)
    with pytest.raises(ValueError, match="unreadable or corrupt") as error:
        validate_images([{"image": str(corrupt)}])
    assert str(corrupt) in str(error.value)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(Path(write_nifti(tmp_path / "ok.nii.gz")).read_bytes()[:20])
    with pytest.raises(ValueError, match=re.escape(str(truncated))):
        validate_images([{"image": str(truncated)}])


def test_validate_images_skip_drops_and_warns(tmp_path, caplog):
    good = {"image": write_nifti(tmp_path / "good.nii.gz")}
    flat = {"image": write_nifti(tmp_path / "flat.nii.gz", shape=(16, 16))}
    corrupt_path = tmp_path / "corrupt.nii.gz"
    corrupt_path.write_bytes(b"\x00garbage")
    corrupt = {"image": str(corrupt_path)}
    with caplog.at_level(logging.WARNING, logger="dagman_components.data.datalist"):
        assert validate_images([flat, good, corrupt], on_error="skip") == [good]
    assert flat["image"] in caplog.text and str(corrupt_path) in caplog.text
    with pytest.raises(ValueError, match="no valid image left"):
        validate_images([flat, corrupt], on_error="skip")
    with pytest.raises(ValueError, match="on_error"):
        validate_images([good], on_error="ignore")
    with pytest.raises(ValueError, match="item 0 has no key 'image'"):
        validate_images([{"img": good["image"]}])
