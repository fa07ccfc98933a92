"""The released segmentation bundle in real MONAI Label 0.8.5: ``BundleInferTask``, then ``BundleTrainTask``, then
``BundleInferTask`` again with the trained model.

MONAI Label runs in its own venv (``.ci/monailabel-venv``; its python is ``$DAGMAN_MONAILABEL_PYTHON``, default
``/tmp/dagman-monailabel-venv/bin/python``) where this project is not installed, so the released folder must work
on its vendored ``dagman_components`` alone. The driver is ``tests/monai_label_driver.py``.

Data: three real soft-tissue-sarcoma CTs with expert tumour masks (``../shared/data/real/sts``), cropped to 128 mm
around the tumour, when that folder is there; otherwise phantom CTs cropped around a nodule (label {0, 1}), so
MONAI Label is exercised either way (``DAGMAN_MONAILABEL_DATA=phantom`` or ``=real`` forces one). The weights are seeded random ones (git keeps no checkpoints): the test is
about the release working in MONAI Label, not about accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from dagman_components.release import ZOO_NAMES, main

REPO = Path(__file__).resolve().parents[1]
REAL_STS = REPO.parent / "shared" / "data" / "real" / "sts"
STS_CASES = ("STS_019", "STS_008", "STS_002")  # the three smallest scans (about 150 mm a side)
DATA = os.environ.get("DAGMAN_MONAILABEL_DATA", "auto")  # auto: real when present, else phantom; or real / phantom
MONAILABEL_PYTHON = Path(os.environ.get("DAGMAN_MONAILABEL_PYTHON", "/tmp/dagman-monailabel-venv/bin/python"))
DRIVER = Path(__file__).with_name("monai_label_driver.py")
CROP_MM = 128.0  # 64 voxels at the bundle's 2 mm: one sliding window, one training crop


def _crop_around(image: nib.Nifti1Image, mask: np.ndarray, size_mm: float = CROP_MM):
    """Slices of a box of ``size_mm`` (clipped to the image) centred on the mask's centre of mass."""
    centre = np.argwhere(mask > 0).mean(axis=0)
    half = np.ceil(size_mm / 2 / np.asarray(image.header.get_zooms()[:3])).astype(int)
    lo = np.maximum(np.round(centre).astype(int) - half, 0)
    hi = np.minimum(lo + 2 * half, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _write_case(image: nib.Nifti1Image, mask: np.ndarray, name: str, images: Path, labels: Path) -> None:
    box = _crop_around(image, mask)
    crop = image.slicer[box]  # nibabel moves the affine's origin with the crop
    hu = np.asarray(crop.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(np.round(hu).astype(np.int16), crop.affine), images / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image((mask[box] > 0).astype(np.uint8), crop.affine), labels / f"{name}.nii.gz")


def _real_cases(root: Path) -> tuple[Path, Path, Path]:
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    for case in STS_CASES:
        image = nib.load(str(REAL_STS / case / "CT_image.nii.gz"))
        mask = np.asarray(nib.load(str(REAL_STS / case / "CT_mask.nii.gz")).dataobj)
        _write_case(image, mask, case, images, labels)
    assert all(np.asarray(nib.load(str(f)).dataobj).any() for f in labels.iterdir())
    return images, labels, REAL_STS / STS_CASES[0] / "CT_image.nii.gz"  # inference on a whole real scan


def _phantom_cases(root: Path) -> tuple[Path, Path, Path]:
    from dagman_components.data.phantom import PHANTOM_LABELS, make_phantom_volume, phantom_affine

    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    shape, spacing = (96, 96, 96), (2.0, 2.0, 2.0)
    for i in range(3):
        hu, organs, _ = make_phantom_volume(shape, spacing, rng=i, nodules_per_volume=2)
        image = nib.Nifti1Image(hu, phantom_affine(shape, spacing))
        if i == 0:
            nib.save(image, root / "phantom_whole.nii.gz")
        _write_case(image, (organs == PHANTOM_LABELS["nodule"]).astype(np.uint8), f"phantom_{i}", images, labels)
    assert all(np.asarray(nib.load(str(f)).dataobj).any() for f in labels.iterdir())
    return images, labels, root / "phantom_whole.nii.gz"


def _release(root: Path) -> Path:
    """``python -m dagman_components.release`` of the segmentation bundle on seeded weights, unzipped."""
    from dagman_components.networks import BUNDLE_ENCODER_ARGS, SASwinEncoder, SASwinUNETR, save_encoder

    weights = root / "weights"
    torch.manual_seed(0)
    encoder = save_encoder(SASwinEncoder(**BUNDLE_ENCODER_ARGS), weights / "pretrain" / "models" / "model.pt")
    (weights / "segmentation" / "models").mkdir(parents=True)
    network = SASwinUNETR(encoder=str(encoder), out_channels=2)
    torch.save(network.state_dict(), weights / "segmentation" / "models" / "model.pt")
    (archive,) = main(["--output_dir", str(root / "dist"), "--bundles", "segmentation", "--weights_from", str(weights)])
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(root / "model")
    return root / "model" / ZOO_NAMES["segmentation"]


@pytest.mark.slow
@pytest.mark.skipif(not MONAILABEL_PYTHON.is_file(),
                    reason=f"no MONAI Label venv at {MONAILABEL_PYTHON} (create it with .ci/monailabel-venv, "
                           "or set DAGMAN_MONAILABEL_PYTHON)")
def test_released_segmentation_bundle_in_monai_label(tmp_path):
    bundle = _release(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    real = DATA == "real" or (DATA == "auto" and (REAL_STS / STS_CASES[0]).is_dir())
    if real and not (REAL_STS / STS_CASES[0]).is_dir():
        pytest.skip(f"DAGMAN_MONAILABEL_DATA=real but {REAL_STS} is absent")
    images, labels, infer_image = (_real_cases if real else _phantom_cases)(data)
    out = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of this checkout on the path
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [str(MONAILABEL_PYTHON), str(DRIVER), "--bundle", str(bundle), "--infer_image", str(infer_image),
           "--studies", str(tmp_path / "studies"), "--images", str(images), "--labels", str(labels),
           "--max_epochs", "2", "--small_round", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    result = json.loads(out.read_text())
    print(json.dumps({"data": "real sts" if real else "phantom", **result}, indent=1))

    assert not result["dagman_components_installed"]
    assert Path(result["dagman_components_file"]).resolve().is_relative_to(bundle.resolve())  # the vendored copy
    assert result["infer_valid"] and result["infer_type"].lower().endswith("segmentation")
    assert result["labels"] == {"tumor": 1} and result["label_names"] == {"tumor": 1}
    assert result["label_shape_before"] == result["image_shape"] == result["label_shape_after"]
    assert set(result["label_values_before"]) <= {0, 1} and set(result["label_values_after"]) <= {0, 1}
    assert len(result["datalist"]) == 3
    assert result["infer_options"]["model_filename"] == ["model.pt"] == result["train_model_filenames"]

    # BundleTrainTask: MONAI Label's loader restores the released model, 2 epochs on the user's {0, 1} labels,
    # the last one validates (max_epochs 2 < val_interval 5) and saves models/model.pt
    log = proc.stdout + proc.stderr
    assert result["train_valid"]
    assert f"Restored all variables from {bundle / 'models' / 'model.pt'}" in log
    assert "Epoch[2] Complete" in log and "Epoch[3]" not in log
    assert "unable to generate class balanced samples" not in log  # the crops found the user's label 1
    dice = [float(line.split("val_mean_dice: ")[1].split()[0]) for line in log.splitlines()
            if "Metrics --" in line and "val_mean_dice: " in line]
    assert len(dice) == 1 and np.isfinite(dice[0]), log[-3000:]  # an empty validation target would give nan
    assert result["model_changed"] and result["model_keys_cpu"]
    assert result["reloaded"] and not result["key_mismatch"]
    assert result["labels_changed"]

    # two labelled images: MONAI Label's 80/20 split validates on none; the run still replaces models/model.pt
    assert result["small_round"]["labelled"] == 2
    assert "validate#dataset#data: []" in log and "no validation produced a key metric" in log
    assert result["small_round"]["model_changed"] and result["small_round"]["reloaded"]
