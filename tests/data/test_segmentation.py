"""Segmentation data helpers: label -> class targets, the MONAI Label-safe Spacingd, case-folder datalists."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged, Spacingd

from dagman_components.data import (
    MetaSafeSpacingd,
    SegmentationTargetd,
    case_folder_datalist,
    segmentation_datalist,
)

STS = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "sts"


def save_nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return str(path)


def labelled(values: np.ndarray, name: str = "case_label.nii.gz") -> MetaTensor:
    return MetaTensor(torch.as_tensor(values, dtype=torch.float32)[None], meta={"filename_or_obj": name})


def test_target_labels_become_consecutive_classes():
    label = labelled(np.array([[[0, 1, 8], [5, 8, 7]]]))
    out = SegmentationTargetd("label", target_labels=[8, 5], num_classes=3, image_key=None)({"label": label})["label"]
    np.testing.assert_array_equal(out[0].numpy(), [[[0, 0, 1], [2, 1, 0]]])
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "case_label.nii.gz"
    assert out.dtype == torch.float32


def test_values_outside_the_classes_name_the_file():
    label = labelled(np.array([[[0, 1, 8]]]), name="/data/phantom_003_label.nii.gz")
    with pytest.raises(ValueError, match=r"phantom_003_label.*\[8\].*outside the classes 0\.\.1"):
        SegmentationTargetd("label", target_labels=None, num_classes=2, image_key=None)({"label": label})
    # labels that already are class indices pass unchanged
    ok = SegmentationTargetd("label", num_classes=2, image_key=None)({"label": labelled(np.array([[[0, 1, 1]]]))})
    np.testing.assert_array_equal(ok["label"][0].numpy(), [[[0, 1, 1]]])


def test_shape_mismatch_and_class_count_are_errors():
    image = MetaTensor(torch.zeros(1, 4, 4, 4), meta={"filename_or_obj": "ct.nii.gz"})
    label = MetaTensor(torch.zeros(1, 4, 4, 3), meta={"filename_or_obj": "mask.nii.gz"})
    with pytest.raises(ValueError, match=r"mask\.nii\.gz.*\(4, 4, 3\).*ct\.nii\.gz.*\(4, 4, 4\)"):
        SegmentationTargetd("label", target_labels=[1])({"image": image, "label": label})
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationTargetd("label", target_labels=[1, 2], num_classes=2)


def test_meta_safe_spacing_keeps_string_image_keys(tmp_path):
    path = save_nifti(tmp_path / "ct.nii.gz", np.random.rand(8, 8, 8).astype(np.float32))
    # what MONAI Label's BundleInferTask hands over: the path twice, one of them under "image_path"
    data = LoadImaged("image", ensure_channel_first=True)({"image": path, "image_path": path})
    with pytest.raises(AttributeError, match="'str' object has no attribute 'update'"):
        Spacingd("image", pixdim=(2.0, 2.0, 2.0))(dict(data))  # MONAI 1.6.1's crash this class avoids
    spacing = MetaSafeSpacingd("image", pixdim=(2.0, 2.0, 2.0))
    out = spacing(dict(data))
    assert out["image_path"] == path
    assert tuple(out["image"].shape) == (1, 4, 4, 4)
    inverted = spacing.inverse(out)
    assert tuple(inverted["image"].shape) == (1, 8, 8, 8)


def test_case_folder_datalist(tmp_path):
    for case in ("STS_002", "STS_001"):
        save_nifti(tmp_path / case / "CT_image.nii.gz", np.zeros((4, 4, 4), np.float32))
        save_nifti(tmp_path / case / "CT_mask.nii.gz", np.zeros((4, 4, 4), np.uint8))
    (tmp_path / "notes").mkdir()  # a folder without an image is not a case
    items = case_folder_datalist(tmp_path)
    assert [Path(i["image"]).parent.name for i in items] == ["STS_001", "STS_002"]
    assert all(Path(i["label"]).is_file() and Path(i["label"]).name == "CT_mask.nii.gz" for i in items)
    assert segmentation_datalist(str(tmp_path), image_name="CT_image.nii.gz", label_name="CT_mask.nii.gz") == items

    (tmp_path / "STS_002" / "CT_mask.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"STS_002.*CT_mask\.nii\.gz"):
        case_folder_datalist(tmp_path)
    with pytest.raises(ValueError, match="no case folder"):
        case_folder_datalist(tmp_path, image_name="other.nii.gz")


def test_segmentation_datalist_checks_labels(tmp_path):
    image = save_nifti(tmp_path / "imagesTr" / "a.nii.gz", np.zeros((4, 4, 4), np.float32))
    (tmp_path / "dataset.json").write_text(
        '{"training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}]}'
    )
    with pytest.raises(ValueError, match=r"labelsTr/a\.nii\.gz.*does not exist"):
        segmentation_datalist(str(tmp_path), str(tmp_path / "dataset.json"))
    (tmp_path / "unlabelled.json").write_text('{"training": [{"image": "imagesTr/a.nii.gz"}]}')
    with pytest.raises(ValueError, match="no key 'label'"):
        segmentation_datalist(str(tmp_path), str(tmp_path / "unlabelled.json"))
    assert Path(image).is_file()


@pytest.mark.skipif(not STS.is_dir(), reason="real STS data not available")
def test_sts_collection_layout():
    items = segmentation_datalist(str(STS), image_name="CT_image.nii.gz", label_name="CT_mask.nii.gz")
    assert len(items) == 20
    label = LoadImaged("label", ensure_channel_first=True)(items[0])["label"]
    target = SegmentationTargetd("label", target_labels=None, num_classes=2, image_key=None)({"label": label})
    assert target["label"].sum() > 0


def test_phantom_class_label_is_written_once_and_renewed_with_its_source(tmp_path):
    import os

    import nibabel as nib
    import numpy as np

    from dagman_components.data import phantom_class_label

    organ = np.zeros((6, 6, 6), np.uint8)
    organ[1:3, 1:3, 1:3], organ[4, 4, 4] = 8, 5
    src = tmp_path / "labelsTr" / "a.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(organ, np.eye(4)), str(src))
    out = phantom_class_label(str(src), [8])
    assert out == str(tmp_path / "labelsTr_8" / "a.nii.gz")
    assert np.asarray(nib.load(out).dataobj).sum() == 8 and set(np.unique(nib.load(out).dataobj)) == {0, 1}
    assert phantom_class_label(str(src), [8]) == out
    nib.save(nib.Nifti1Image((organ == 5).astype(np.uint8) * 8, np.eye(4)), str(src))  # the phantom regenerated
    os.utime(src, (os.stat(out).st_mtime + 10,) * 2)
    assert np.asarray(nib.load(phantom_class_label(str(src), [8])).dataobj).sum() == 1
