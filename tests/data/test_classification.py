"""Classification datalists (JSON/CSV), the phantom nodule and response tasks, and the transform chain."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Invertd

from dagman_components.data import (
    RESPONSE_CLASSES,
    classification_postprocessing,
    classification_transforms,
    generate_nodule_dataset,
    generate_response_dataset,
    load_classification_datalist,
    prepare_classification_data,
)
from dagman_components.data.classification import crop_around


@pytest.fixture(scope="module")
def phantom_tasks(tmp_path_factory):
    """Both phantom tasks generated from the same three phantom volumes."""
    root = tmp_path_factory.mktemp("phantom")
    nodules = generate_nodule_dataset(root, num_volumes=3)
    response = generate_response_dataset(root, num_volumes=3, crop_size=(48, 48, 48))
    return root, nodules, response


def write_image(path, shape=(8, 8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype=np.int16), np.eye(4)), path)
    return path


def test_json_datalist_resolves_paths_and_class_names(tmp_path):
    write_image(tmp_path / "crops" / "a.nii.gz")
    write_image(tmp_path / "crops" / "b.nii.gz")
    datalist = tmp_path / "lists" / "nodules.json"
    datalist.parent.mkdir()
    datalist.write_text(json.dumps({"training": [
        {"image": "crops/a.nii.gz", "label": 1, "patient_id": "P1"},
        {"image": "crops/b.nii.gz", "label": "benign", "patient_id": "P2"},
    ]}))
    items = load_classification_datalist(datalist, base_dir=tmp_path)
    assert [item["label"] for item in items] == [1, 0]
    assert items[0]["image"] == str(tmp_path / "crops" / "a.nii.gz") and items[0]["patient_id"] == "P1"


def test_csv_datalist_with_named_labels(tmp_path):
    write_image(tmp_path / "x.nii.gz")
    write_image(tmp_path / "y.nii.gz")
    datalist = tmp_path / "response.csv"
    datalist.write_text("image,label,patient_id\nx.nii.gz,DCB,p1\ny.nii.gz,0,p2\n")
    items = load_classification_datalist(datalist, class_names=RESPONSE_CLASSES)
    assert [(item["label"], item["patient_id"]) for item in items] == [(1, "p1"), (0, "p2")]


@pytest.mark.parametrize("label", [2, "-1", "maybe", 0.5])
def test_label_outside_the_classes_names_file_entry_and_value(tmp_path, label):
    write_image(tmp_path / "a.nii.gz")
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"training": [{"image": "a.nii.gz", "label": 0}, {"image": "a.nii.gz", "label": label}]}))
    with pytest.raises(ValueError, match="entry 1 of datalist") as error:
        load_classification_datalist(datalist)
    assert str(datalist) in str(error.value) and repr(label) in str(error.value)


def test_missing_image_and_bad_files_are_named(tmp_path):
    datalist = tmp_path / "list.csv"
    datalist.write_text("image,label\nmissing.nii.gz,1\n")
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        load_classification_datalist(datalist)
    no_label = tmp_path / "nolabel.csv"
    no_label.write_text("image,outcome\na.nii.gz,1\n")
    with pytest.raises(ValueError, match="lacks column.*label"):
        load_classification_datalist(no_label)
    wrong_key = tmp_path / "list.json"
    wrong_key.write_text(json.dumps({"validation": []}))
    with pytest.raises(ValueError, match="no key 'training'"):
        load_classification_datalist(wrong_key)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_classification_datalist(tmp_path / "none.json")


def test_crop_around_keeps_world_positions_and_fills_outside_with_air():
    array = np.arange(10 * 12 * 14, dtype=np.float32).reshape(10, 12, 14)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-5.0, 3.0, 7.0]
    crop, crop_affine, padded = crop_around(array, affine, center=(5, 6, 7), size=(4, 4, 4))
    np.testing.assert_array_equal(crop, array[3:7, 4:8, 5:9])
    assert padded == 0
    crop, crop_affine, padded = crop_around(array, affine, center=(1, 6, 12), size=(6, 4, 6))
    assert crop.shape == (6, 4, 6) and padded == 2 * 4 * 6 + 4 * 4 * 1 + 0
    np.testing.assert_array_equal(crop[:2], -1000.0)
    np.testing.assert_array_equal(crop[2:, :, :5], array[0:4, 4:8, 9:14])
    # voxel (i, j, k) of the crop is voxel (i - 2, j + 4, k + 9) of the source, at the same world position
    np.testing.assert_allclose(crop_affine @ [2, 0, 0, 1], affine @ [0, 4, 9, 1])


def test_nodule_task_crops_are_centred_on_labelled_nodules(phantom_tasks):
    root, nodules_json, _ = phantom_tasks
    content = json.loads(nodules_json.read_text())
    volumes = json.loads((root / "dataset.json").read_text())["training"]
    records = [n for volume in volumes for n in volume["nodules"]]
    entries = content["training"]
    assert len(entries) == len(records) == 12
    assert [e["label"] for e in entries] == [n["malignant"] for n in records]
    assert {e["patient_id"] for e in entries} == {"phantom_000", "phantom_001", "phantom_002"}
    for entry, record in zip(entries, records):
        image = nib.load(str(root / entry["image"]))
        assert image.shape == (32, 32, 32)
        np.testing.assert_allclose(image.affine @ [16, 16, 16, 1], [*record["center_mm"], 1], atol=1e-3)
        assert image.get_fdata()[16, 16, 16] > -400  # nodule tissue (~45 HU), not lung (-850 HU)


def test_response_task_labels_the_smallest_target_tumours_dcb(phantom_tasks):
    root, _, response_csv = phantom_tasks
    rows = list(csv.DictReader(response_csv.open()))
    assert len(rows) == 3 and [r["label"] for r in rows].count("DCB") == 1  # round(0.41 * 3)
    radii = {r["label"]: [] for r in rows}
    for r in rows:
        radii[r["label"]].append(float(r["target_radius_mm"]))
    assert max(radii["DCB"]) < min(radii["NDB"])
    volumes = json.loads((root / "dataset.json").read_text())["training"]
    for row, volume in zip(rows, volumes):
        largest = max(n["radius_mm"] for n in volume["nodules"] if n["malignant"])
        assert float(row["target_radius_mm"]) == largest
        assert nib.load(str(root / row["image"])).shape == (48, 48, 48)
    mtime = response_csv.stat().st_mtime_ns
    assert generate_response_dataset(root, num_volumes=3, crop_size=(48, 48, 48)) == response_csv
    assert response_csv.stat().st_mtime_ns == mtime  # reused, not regenerated


def test_prepare_uses_the_phantom_task_only_in_the_phantom_folder(phantom_tasks, tmp_path):
    root, _, _ = phantom_tasks
    items = prepare_classification_data(root, None, phantom_dir=root, phantom_task="response",
                                        phantom_options={"num_volumes": 3, "crop_size": (48, 48, 48)},
                                        class_names=RESPONSE_CLASSES)
    assert sorted(item["label"] for item in items) == [0, 0, 1]
    with pytest.raises(ValueError, match="--datalist"):
        prepare_classification_data(tmp_path, None, phantom_dir=root)


def test_transforms_give_network_input_and_label_vector(phantom_tasks):
    root, nodules_json, _ = phantom_tasks
    item = load_classification_datalist(nodules_json)[0]
    item["extra"] = [1, 2, 3]  # datalist columns beyond image/label never reach the collate
    out = classification_transforms(roi_size=(32, 32, 32))(item)
    assert set(out) == {"image", "label"}
    assert out["image"].shape == (1, 32, 32, 32) and out["image"].dtype == torch.float32
    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0
    assert out["label"].shape == (1,) and out["label"].item() == item["label"]
    augmented = classification_transforms(roi_size=(32, 32, 32), augment=True)({"image": item["image"]})
    assert set(augmented) == {"image"} and augmented["image"].shape == (1, 32, 32, 32)


def test_a_map_on_the_network_grid_inverts_onto_the_input_grid(phantom_tasks):
    root, _, response_csv = phantom_tasks
    item = load_classification_datalist(response_csv, class_names=RESPONSE_CLASSES)[0]
    transform = classification_transforms(roi_size=(32, 64, 32), spacing=(3.0, 2.0, 2.0))
    out = transform(item)
    out["attention"] = torch.ones_like(out["image"])
    inverted = Invertd("attention", transform=transform, orig_keys="image", nearest_interp=False)(out)["attention"]
    source = nib.load(item["image"])
    assert tuple(inverted.shape[1:]) == source.shape
    np.testing.assert_allclose(inverted.affine.numpy(), source.affine, atol=1e-4)


@pytest.mark.parametrize("logits, probability", [([0.0], 0.5), ([2.0], 0.8808), ([1.0, 1.0], 0.5), ([0.0, 2.0], 0.8808)])
def test_postprocessing_gives_positive_probability_and_prediction(logits, probability):
    out = classification_postprocessing(threshold=0.6)({"pred": torch.tensor(logits), "label": torch.tensor([1.0])})
    assert out["pred"].shape == (1,) and out["pred"].item() == pytest.approx(probability, abs=1e-4)
    assert out["pred_label"].item() == float(probability >= 0.6)
