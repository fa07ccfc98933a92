import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from dagman_components.analysis.localization import (
    center_gaussian_map,
    dice_score,
    image_label_datalist,
    localization_preprocessing,
    localize_case,
    noise_map,
    random_tumour_crops,
    run_zero_shot_localization,
    soft_tissue_map,
    threshold_at_percentile,
    zero_shot_localization,
)
from dagman_components.networks import SASwinEncoder

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"


def synthetic_case(shape=(20, 20, 10)):
    """Body of fat (-100 HU) in air, a soft-tissue (50 HU) tumour box that is exactly 10 % of the body."""
    hu = torch.full(shape, -1000.0)
    hu[:, :, :] = -100.0
    hu[:, :, -2:] = -1000.0  # air above the body: outside the evaluation region
    tumour = torch.zeros(shape, dtype=torch.bool)
    tumour[2:10, 2:10, 0:5] = True  # 320 voxels = 10 % of the 20 x 20 x 8 body
    hu[tumour] = 50.0
    image = ((hu + 1000) / 2000).clamp(0, 1)
    return {"image": image[None], "hu": hu[None], "label": tumour[None].float()}


def test_threshold_keeps_top_fraction_of_the_region():
    values = torch.arange(1000, dtype=torch.float32).reshape(10, 10, 10)
    everywhere = torch.ones(10, 10, 10, dtype=torch.bool)
    assert int(threshold_at_percentile(values, everywhere, 90).sum()) == 100
    assert int(threshold_at_percentile(values, everywhere, 50).sum()) == 500
    half = torch.zeros_like(everywhere)
    half[:5] = True  # values 0..499
    prediction = threshold_at_percentile(values, half, 90)
    assert int(prediction.sum()) == 50 and bool(prediction[5:].any()) is False
    assert float(values[prediction].min()) >= 449
    with pytest.raises(ValueError, match="percentile"):
        threshold_at_percentile(values, everywhere, 120)


def test_dice_known_values():
    a = torch.zeros(4, 4, 4, dtype=torch.bool)
    b = torch.zeros_like(a)
    a[0, 0, :2] = True
    b[0, 0, 1:3] = True
    assert dice_score(a, b) == pytest.approx(0.5)
    assert dice_score(a, a) == pytest.approx(1.0)
    assert dice_score(a, torch.zeros_like(a)) == pytest.approx(0.0)


def test_baselines_on_a_case_with_a_known_answer():
    case = synthetic_case()
    results = localize_case(None, case, soft_tissue_sigma_mm=0.0, body_hu=-500.0)
    (full,) = results
    assert full["region_voxels"] == 20 * 20 * 8 and full["tumour_voxels"] == 320
    # the tumour is exactly the soft tissue and exactly the top 10 % of the body: the HU prior finds it
    assert full["dice"]["soft_tissue"] == pytest.approx(1.0)
    assert full["dice"]["noise"] < 0.3
    # without the body restriction the air layer joins the region and the threshold moves
    assert localize_case(None, case, soft_tissue_sigma_mm=0.0, body_hu=None)[0]["region_voxels"] == 20 * 20 * 10


def test_baseline_maps():
    gaussian = center_gaussian_map((9, 11, 7))
    assert tuple(gaussian.shape) == (9, 11, 7) and float(gaussian[4, 5, 3]) == pytest.approx(1.0)
    assert float(gaussian.max()) == pytest.approx(1.0) and float(gaussian[0, 0, 0]) < 0.01
    hu = torch.tensor([-500.0, 0.0, 50.0, 100.0, 101.0]).reshape(5, 1, 1)
    assert soft_tissue_map(hu, sigma_mm=0).flatten().tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert torch.equal(noise_map((3, 4, 5), seed=1), noise_map((3, 4, 5), seed=1))
    assert not torch.equal(noise_map((3, 4, 5), seed=1), noise_map((3, 4, 5), seed=2))


def test_random_crops_keep_half_of_the_tumour_and_move_off_centre():
    tumour = torch.zeros(40, 40, 40, dtype=torch.bool)
    tumour[15:25, 15:25, 15:25] = True
    starts = random_tumour_crops(tumour, (16, 16, 16), num_crops=20, min_tumour_fraction=0.5, seed=0)
    assert len(starts) == 20 and len(set(starts)) > 5
    for x, y, z in starts:
        kept = int(tumour[x : x + 16, y : y + 16, z : z + 16].sum())
        assert kept >= 0.5 * int(tumour.sum())
    assert random_tumour_crops(tumour, (16, 16, 16), 20, 0.5, seed=0) == starts
    with pytest.raises(ValueError, match="smaller than the crop"):
        random_tumour_crops(tumour, (48, 16, 16), 1)


def test_views_and_the_encoder_entry():
    torch.manual_seed(0)
    encoder = SASwinEncoder(feature_size=12, depths=(2, 2, 2, 2)).eval()
    case = synthetic_case((40, 36, 20))
    results = localize_case(encoder, case, name="satt", input_mode="center", roi_size=(32, 32, 32),
                            num_random_crops=2, crop_size=(32, 32, 32), min_tumour_fraction=0.5, seed=3)
    assert [r["view"] for r in results] == ["center", "crop_0", "crop_1"]
    for r in results:
        assert r["shape"] == [32, 32, 32]
        assert set(r["dice"]) == {"satt", "center_gaussian", "soft_tissue", "noise"}
        assert all(0.0 <= v <= 1.0 for v in r["dice"].values())
    assert results[1]["start"] is not None and results[1]["tumour_voxels"] >= 160
    with pytest.raises(ValueError, match="input_mode"):
        localize_case(None, case, input_mode="sliding")


def write_case(folder: Path, name: str, shape=(50, 44, 30), label_value=1):
    """A non-RAS, 1.5 x 1.5 x 3 mm CT with a 60 HU ball (the tumour) inside a -50 HU body."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-1.5, -1.5, 3.0, 1.0])
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array(shape)[:, None, None, None] * np.array([0.4, 0.5, 0.5])[:, None, None, None]
    radius_mm = np.sqrt((((grid - centre) * np.array([1.5, 1.5, 3.0])[:, None, None, None]) ** 2).sum(0))
    hu = np.where(radius_mm < 40, -50, -1000).astype(np.int16)
    hu[radius_mm < 10] = 60
    label = (radius_mm < 10).astype(np.uint8) * label_value
    nib.save(nib.Nifti1Image(hu, affine), folder / f"{name}_ct.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / f"{name}_lesion.nii.gz")


def test_datalist_by_name_and_end_to_end(tmp_path):
    write_case(tmp_path / "data", "a")
    write_case(tmp_path / "data", "b", label_value=8)
    items = image_label_datalist(tmp_path / "data", image_glob="*_ct.nii.gz", label_replace=("_ct", "_lesion"))
    assert [i["case"] for i in items] == ["a_ct.nii.gz", "b_ct.nii.gz"]
    assert items[0]["label"].endswith("a_lesion.nii.gz")
    torch.manual_seed(0)
    encoder = SASwinEncoder(feature_size=12, depths=(2, 2, 2, 2))
    result = run_zero_shot_localization(encoder, items, tmp_path / "out", num_overlays=2, name="enc",
                                        label_values=[8], num_random_crops=1, crop_size=(32, 32, 32))
    # only b has label 8
    assert {c["case"] for c in result["cases"]} == {"b_ct.nii.gz"}
    assert result["summary"]["full"]["enc"]["n"] == 1 and result["summary"]["random_crop"]["noise"]["n"] == 1
    full = result["cases"][0]
    resampled = localization_preprocessing()({"image": items[1]["image"], "label": items[1]["label"]})["image"]
    assert full["shape"] == list(resampled.shape[1:])  # scored on the 2 mm grid, without the encoder's padding
    assert any(s % 32 for s in full["shape"])
    assert full["dice"]["center_gaussian"] > full["dice"]["noise"]
    saved = json.loads((tmp_path / "out" / "localization.json").read_text())
    assert saved["settings"]["label_values"] == [8] and saved["settings"]["num_random_crops"] == 1
    assert (tmp_path / "out" / "localization.png").stat().st_size > 10_000


def test_datalist_errors(tmp_path):
    write_case(tmp_path, "a")
    (tmp_path / "a_lesion.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="a_lesion.nii.gz"):
        image_label_datalist(tmp_path, image_glob="*_ct.nii.gz", label_replace=("_ct", "_lesion"))
    with pytest.raises(ValueError, match="no image matches"):
        image_label_datalist(tmp_path, image_glob="*.nrrd", label_replace=("_ct", "_lesion"))
    with pytest.raises(ValueError, match="no case"):
        zero_shot_localization(None, [{"image": str(tmp_path / "a_ct.nii.gz"), "label": str(tmp_path / "a_ct.nii.gz")}],
                               label_values=[3])


@pytest.mark.skipif(not (REAL / "sts" / "STS_001").is_dir(), reason="real data (../shared/data/real) absent")
def test_real_sarcoma_centre_prior_beats_noise():
    items = image_label_datalist(REAL / "sts", image_glob="STS_001/CT_image.nii.gz", label_replace=("CT_image", "CT_mask"))
    result = zero_shot_localization(None, items)
    dice = result["cases"][0]["dice"]
    # README of the real data: the crops are centred on their tumour, so the centre prior scores well
    assert dice["center_gaussian"] > 0.4 > dice["noise"]
