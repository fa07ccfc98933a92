"""
Labelled organ volumes for the organ-clustering analysis (DAGMaN Task 4 / SMART Task 1).

Three sources, each turned into a list of dicts that a ``monai.data.Dataset`` takes with
:py:func:`organ_transforms`; every item has ``image`` (a file path or a (1, D, H, W) array), ``label``
(the integer class index) and ``organ`` (the class name):

- OrganMNIST3D in its published ``.npz`` layout (:py:func:`load_organmnist3d`), read from a local file:
  nothing is downloaded and ``medmnist`` is not needed;
- a CSV of NIfTI organ volumes with an organ name or id per row (:py:func:`load_organ_csv`);
- fixed-size cubes cropped around the organs of CT label maps (:py:func:`crop_organs`): the synthetic
  phantoms' organs, or any CT with an organ label map such as a TotalSegmentator output. The crops
  are written once as NIfTI with a Decathlon-style datalist.

:py:func:`prepare_organ_data` picks one of them from a bundle config.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    Resized,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialCrop,
    Transform,
)
from monai.utils import ensure_tuple_rep
from scipy import ndimage

from .datalist import load_datalist

__all__ = [
    "ORGANMNIST3D_LABELS",
    "TOTALSEGMENTATOR_LABELS",
    "OrganData",
    "crop_organs",
    "label_map_pairs",
    "load_organ_csv",
    "load_organmnist3d",
    "organ_transforms",
    "prepare_organ_data",
]

logger = logging.getLogger(__name__)

#: OrganMNIST3D class ids and names, as in medmnist's ``INFO["organmnist3d"]["label"]`` (Yang et al., MedMNIST v2).
ORGANMNIST3D_LABELS: dict[int, str] = {
    0: "liver",
    1: "kidney-right",
    2: "kidney-left",
    3: "femur-right",
    4: "femur-left",
    5: "bladder",
    6: "heart",
    7: "lung-right",
    8: "lung-left",
    9: "spleen",
    10: "pancreas",
}

_TOTALSEGMENTATOR_NAMES = (
    "spleen kidney_right kidney_left gallbladder liver stomach pancreas adrenal_gland_right adrenal_gland_left "
    "lung_upper_lobe_left lung_lower_lobe_left lung_upper_lobe_right lung_middle_lobe_right lung_lower_lobe_right "
    "esophagus trachea thyroid_gland small_bowel duodenum colon urinary_bladder prostate kidney_cyst_left "
    "kidney_cyst_right sacrum vertebrae_S1 vertebrae_L5 vertebrae_L4 vertebrae_L3 vertebrae_L2 vertebrae_L1 "
    "vertebrae_T12 vertebrae_T11 vertebrae_T10 vertebrae_T9 vertebrae_T8 vertebrae_T7 vertebrae_T6 vertebrae_T5 "
    "vertebrae_T4 vertebrae_T3 vertebrae_T2 vertebrae_T1 vertebrae_C7 vertebrae_C6 vertebrae_C5 vertebrae_C4 "
    "vertebrae_C3 vertebrae_C2 vertebrae_C1 heart aorta pulmonary_vein brachiocephalic_trunk subclavian_artery_right "
    "subclavian_artery_left common_carotid_artery_right common_carotid_artery_left brachiocephalic_vein_left "
    "brachiocephalic_vein_right atrial_appendage_left superior_vena_cava inferior_vena_cava "
    "portal_vein_and_splenic_vein iliac_artery_left iliac_artery_right iliac_vena_left iliac_vena_right humerus_left "
    "humerus_right scapula_left scapula_right clavicula_left clavicula_right femur_left femur_right hip_left "
    "hip_right spinal_cord gluteus_maximus_left gluteus_maximus_right gluteus_medius_left gluteus_medius_right "
    "gluteus_minimus_left gluteus_minimus_right autochthon_left autochthon_right iliopsoas_left iliopsoas_right "
    "brain skull rib_left_1 rib_left_2 rib_left_3 rib_left_4 rib_left_5 rib_left_6 rib_left_7 rib_left_8 rib_left_9 "
    "rib_left_10 rib_left_11 rib_left_12 rib_right_1 rib_right_2 rib_right_3 rib_right_4 rib_right_5 rib_right_6 "
    "rib_right_7 rib_right_8 rib_right_9 rib_right_10 rib_right_11 rib_right_12 sternum costal_cartilages"
).split()
#: TotalSegmentator v2 ``total`` task: label-map id -> structure name (``totalsegmentator.map_to_binary.class_map``).
TOTALSEGMENTATOR_LABELS: dict[int, str] = dict(enumerate(_TOTALSEGMENTATOR_NAMES, start=1))

_SPLITS = ("train", "val", "test")


@dataclass
class OrganData:
    """Items of an organ dataset and what the analysis needs to know about them.

    Attributes:
        items: dicts with ``image`` (path or (1, D, H, W) array), ``label`` (class index), ``organ`` (name).
        class_names: class index -> organ name.
        from_arrays: True when ``image`` holds arrays (OrganMNIST3D), False for NIfTI paths.
        source: where the items come from (a file or folder), for the report.
    """

    items: list[dict[str, Any]]
    class_names: dict[int, str]
    from_arrays: bool
    source: str


# ---- OrganMNIST3D ------------------------------------------------------------------------------


def load_organmnist3d(
    path: str | os.PathLike, splits: Sequence[str] = _SPLITS, label_names: Mapping[int, str] = ORGANMNIST3D_LABELS
) -> list[dict[str, Any]]:
    """
    Items of OrganMNIST3D from its published ``.npz`` file (``organmnist3d.npz``, or ``organmnist3d_64.npz``).

    The file holds ``<split>_images`` (N, S, S, S) uint8 (S = 28 in the original release) and
    ``<split>_labels`` (N, 1) integer class ids, for the splits ``train``, ``val`` and ``test``
    (971 / 161 / 610 volumes; the papers' 1,743 volumes are all three).

    Args:
        path: the ``.npz`` file.
        splits: which splits to read, in order. Default all three.
        label_names: class id -> name. Default :py:data:`ORGANMNIST3D_LABELS` (medmnist's names).

    Returns:
        dicts with ``image`` (1, S, S, S) uint8 array, ``label`` (int), ``organ`` (name), ``split``, ``index``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unknown split; the file is not an ``.npz`` archive; a key is missing (the message names
            the file, the missing key and the keys present); wrong array shapes; an unknown class id.
    """
    path = Path(path).expanduser()
    unknown = [s for s in splits if s not in _SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits must be a non-empty subset of {_SPLITS}, got {tuple(splits)}.")
    if not path.is_file():
        raise FileNotFoundError(f"OrganMNIST3D file '{path}' does not exist (expected medmnist's organmnist3d.npz).")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"'{path}' is not a readable .npz archive ({type(e).__name__}: {e}).") from e
    items: list[dict[str, Any]] = []
    with archive:
        for split in splits:
            image_key, label_key = f"{split}_images", f"{split}_labels"
            missing = [k for k in (image_key, label_key) if k not in archive.files]
            if missing:
                raise ValueError(
                    f"'{path}' has no key(s) {missing}; keys present: {sorted(archive.files)} "
                    "(expected medmnist's layout: train_images, train_labels, val_*, test_*)."
                )
            images, labels = archive[image_key], archive[label_key]
            if images.ndim != 4 or labels.reshape(len(labels), -1).shape != (len(images), 1):
                raise ValueError(
                    f"'{path}': '{image_key}' must be (N, D, H, W) and '{label_key}' (N, 1), got "
                    f"{images.shape} and {labels.shape}."
                )
            for index, (image, label) in enumerate(zip(images, labels.reshape(-1))):
                label = int(label)
                if label not in label_names:
                    raise ValueError(f"'{path}': '{label_key}'[{index}] = {label} is not a known class id "
                                     f"{sorted(label_names)}.")
                items.append({"image": image[None], "label": label, "organ": label_names[label], "split": split,
                              "index": index})
    logger.info(f"{len(items)} OrganMNIST3D volumes from '{path}' (splits {tuple(splits)})")
    return items


# ---- CSV of NIfTI organ volumes ----------------------------------------------------------------


def load_organ_csv(
    csv_path: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    label_names: Mapping[int, str] | None = None,
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """
    Items of a CSV with the columns ``image`` (a NIfTI path) and ``label`` (an organ name or an integer id).

    Relative image paths are resolved against ``dataset_dir`` (default: the CSV's folder). When every label
    is an integer it is the class index and ``label_names`` (optional) names it; otherwise the labels are
    organ names and the class indices follow their sorted order.

    Returns:
        (items, class_names): dicts with absolute ``image``, ``label`` (int), ``organ``; class index -> name.

    Raises:
        FileNotFoundError: the CSV or an image file is missing (the message names the row).
        ValueError: missing columns, an empty CSV or an empty cell.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise FileNotFoundError(f"organ CSV '{csv_path}' does not exist.")
    base = Path(dataset_dir).expanduser() if dataset_dir is not None else csv_path.parent
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("image", "label") if c not in columns]
        if missing:
            raise ValueError(f"organ CSV '{csv_path}' lacks column(s) {missing}; columns present: {columns}.")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise ValueError(f"organ CSV '{csv_path}' has no rows.")
    for line, row in enumerate(rows, start=2):
        if not row["image"] or not row["label"]:
            raise ValueError(f"organ CSV '{csv_path}', line {line}: empty 'image' or 'label' ({row}).")
    numeric = all(row["label"].lstrip("-").isdigit() for row in rows)
    if numeric:
        ids = sorted({int(row["label"]) for row in rows})
        class_names = {i: (label_names or {}).get(i, str(i)) for i in ids}
        labels = [int(row["label"]) for row in rows]
    else:
        names = sorted({row["label"] for row in rows})
        class_names = dict(enumerate(names))
        index = {name: i for i, name in class_names.items()}
        labels = [index[row["label"]] for row in rows]
    items = []
    for line, (row, label) in enumerate(zip(rows, labels), start=2):
        image = (base / row["image"]).resolve()
        if not image.is_file():
            raise FileNotFoundError(f"organ CSV '{csv_path}', line {line}: image file '{image}' does not exist "
                                    f"(relative paths are resolved against '{base}').")
        items.append({"image": str(image), "label": label, "organ": class_names[label]})
    return items, class_names


# ---- organ crops from CT label maps ------------------------------------------------------------


def label_map_pairs(
    dataset_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    image_file: str | None = None,
    label_file: str | None = None,
    data_list_key: str = "training",
) -> list[dict[str, str]]:
    """
    (CT, organ label map) pairs: the ``image``/``label`` entries of a Decathlon-style ``datalist``, or the
    single pair ``image_file`` + ``label_file`` (relative to ``dataset_dir``).

    Raises:
        ValueError: neither a datalist nor both file names given; a datalist entry without ``label``.
        FileNotFoundError: a missing file.
    """
    if datalist is not None:
        items = load_datalist(dataset_dir=dataset_dir, datalist=datalist, data_list_key=data_list_key)
        for i, item in enumerate(items):
            if "label" not in item:
                raise ValueError(f"entry {i} of '{data_list_key}' in '{datalist}' has no 'label' (organ label map).")
        return [{"image": item["image"], "label": item["label"]} for item in items]
    if image_file is None or label_file is None:
        raise ValueError("organ crops need a datalist of image/label pairs, or both image_file and label_file.")
    pair = {"image": str(Path(dataset_dir, image_file)), "label": str(Path(dataset_dir, label_file))}
    for key, path in pair.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{key} file '{path}' does not exist.")
    return [pair]


def _class_of(name: str, groups: Mapping[str, Sequence[str]] | None) -> str | None:
    """The class an organ belongs to: itself without groups, else the first group with a matching pattern."""
    if not groups:
        return name
    for group, patterns in groups.items():
        if any(fnmatch.fnmatchcase(name, p) for p in ([patterns] if isinstance(patterns, str) else patterns)):
            return group
    return None


def _resampled_pair(pair: Mapping[str, str], spacing: Sequence[float], label_offset: Sequence[int] | None):
    """The CT and its label map on one RAS grid at ``spacing``: ((X, Y, Z) HU, (X, Y, Z) ids, (4, 4) affine)."""
    data = LoadImaged(("image", "label"), ensure_channel_first=True, image_only=True)(dict(pair))
    image, label = data["image"], data["label"]
    if label_offset is not None:
        # the label map covers a sub-block of the CT whose header does not say where: cut that block out
        start = [int(o) for o in label_offset]
        image = SpatialCrop(roi_start=start, roi_end=[s + n for s, n in zip(start, label.shape[1:])])(image)
        label.affine = image.affine.clone()
    if image.shape[1:] != label.shape[1:]:
        raise ValueError(
            f"label map '{pair['label']}' has shape {tuple(label.shape[1:])} but CT '{pair['image']}' has "
            f"{tuple(image.shape[1:])}: they must share one voxel grid (set label_offset to the voxel where a "
            "smaller label map starts inside the CT)."
        )
    if not torch.allclose(image.affine.double(), label.affine.double(), atol=1e-3):
        raise ValueError(f"label map '{pair['label']}' and CT '{pair['image']}' have different affines: they must "
                         "share one voxel grid.")
    data = {"image": image, "label": label}
    data = Orientationd(("image", "label"), axcodes="RAS", labels=None)(data)
    data = Spacingd(("image", "label"), pixdim=spacing, mode=("bilinear", "nearest"))(data)
    affine = data["image"].affine.double().numpy()
    return data["image"][0].numpy(), np.rint(data["label"][0].numpy()).astype(np.int64), affine


def _crop_centers(mask: np.ndarray, count: int, jitter: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` voxel centres inside ``mask``: its most interior voxel, then jittered copies snapped into it.

    The most interior voxel (maximum of the distance to the organ's surface) lies inside the organ even
    when the organ is not convex or has two parts (two lungs or kidneys under one id), where the centroid
    may fall outside it.
    """
    coords = np.argwhere(mask)
    lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
    # padded by one background voxel so the bounding box border counts as the organ's surface
    depth = ndimage.distance_transform_edt(np.pad(mask[tuple(slice(a, b) for a, b in zip(lo, hi))], 1))
    core = np.asarray(np.unravel_index(np.argmax(depth), depth.shape)) - 1 + lo
    centers = [core]
    for _ in range(count - 1):
        wanted = core + rng.uniform(-jitter, jitter)
        centers.append(coords[np.argmin(((coords - wanted) ** 2).sum(axis=1))])
    return centers


def crop_organs(
    pairs: Sequence[Mapping[str, str]],
    output_dir: str | os.PathLike,
    label_names: Mapping[int, str] | None = None,
    organs: Sequence[str] | None = None,
    organ_groups: Mapping[str, Sequence[str]] | None = None,
    crop_size: Sequence[int] | int = 32,
    crops_per_organ: int = 4,
    jitter_mm: float = 10.0,
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    min_organ_voxels: int = 64,
    label_offset: Sequence[int] | None = None,
    background_hu: float = -1024.0,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """
    Crop fixed-size CT cubes centred in each organ of label maps, once, and write them with a datalist.

    Each CT and its label map are put on one RAS grid at ``spacing`` (bilinear / nearest). For every organ
    with at least ``min_organ_voxels`` voxels there, ``crops_per_organ`` cubes of ``crop_size`` voxels are
    cut: the first centred on the organ's most interior voxel, the others on that point moved by a seeded
    uniform offset of up to ``jitter_mm`` per axis and snapped to the nearest organ voxel. Cubes reaching
    past the volume are filled with ``background_hu``.

    Output under ``output_dir``: ``crops/<case>_<organ>_<k>.nii.gz`` (int16 HU, affine of the crop's place
    in the CT) and ``datalist.json`` (Decathlon style, written last: its presence means the crops are
    complete) with ``labels`` (class index -> name), the parameters, and per crop ``image`` (relative),
    ``label`` (class index), ``organ``, ``label_ids``, ``source``, ``center_voxel`` and
    ``organ_fraction`` (share of the cube's voxels inside the organ). An existing datalist written with
    the same parameters is reused; otherwise the crops are written again.

    Args:
        pairs: dicts with ``image`` (CT, HU) and ``label`` (organ label map) paths, e.g. from
            :py:func:`label_map_pairs`.
        output_dir: where to write.
        label_names: label id -> organ name (e.g. :py:data:`TOTALSEGMENTATOR_LABELS`); ids without a name
            are called by their number. Default None: all by number.
        organs: organ names (or ids as strings) to keep, fnmatch patterns allowed. Default None: all ids > 0.
        organ_groups: class name -> fnmatch patterns of organ names merged into that class (e.g.
            ``{"lung": ["lung_*"]}``); organs matching no group are dropped. Default None: one class per organ.
        crop_size: cube size in voxels at ``spacing``. Default 32 (64 mm at 2 mm).
        crops_per_organ: cubes per organ and CT. Default 4.
        jitter_mm: largest offset of a jittered centre per axis, in mm. Default 10.0.
        spacing: voxel size of the crops in mm. Default (2.0, 2.0, 2.0) (papers' pretraining spacing).
        min_organ_voxels: organs with fewer voxels (at ``spacing``) are skipped. Default 64.
        label_offset: voxel (x, y, z) of the CT where a label map smaller than the CT starts, when its
            header does not place it. Default None: image and label map share one grid.
        background_hu: HU outside the CT. Default -1024.0 (air).
        seed: seed of the jitter. Default 0.
        overwrite: write again even if an identical datalist exists. Default False.

    Returns:
        the path of ``output_dir/datalist.json``.

    Raises:
        ValueError: no pairs; a label map off the CT's grid (the message names both files); no organ left.
    """
    if not pairs:
        raise ValueError("crop_organs needs at least one (image, label) pair.")
    size = np.asarray(ensure_tuple_rep(int(crop_size) if np.isscalar(crop_size) else crop_size, 3), dtype=int)
    spacing = [float(s) for s in ensure_tuple_rep(spacing, 3)]
    output_dir = Path(output_dir)
    datalist_path = output_dir / "datalist.json"
    parameters = {
        "pairs": [{"image": str(p["image"]), "label": str(p["label"])} for p in pairs],
        "organs": None if organs is None else [str(o) for o in organs],
        "organ_groups": None if organ_groups is None else {k: list(v) for k, v in organ_groups.items()},
        "crop_size": size.tolist(),
        "crops_per_organ": int(crops_per_organ),
        "jitter_mm": float(jitter_mm),
        "spacing": spacing,
        "min_organ_voxels": int(min_organ_voxels),
        "label_offset": None if label_offset is None else [int(o) for o in label_offset],
        "background_hu": float(background_hu),
        "seed": int(seed),
    }
    if datalist_path.is_file() and not overwrite:
        try:
            if json.loads(datalist_path.read_text()).get("parameters") == parameters:
                logger.info(f"reusing the organ crops of '{datalist_path}'")
                return datalist_path
        except ValueError:
            pass
        logger.info(f"'{datalist_path}' was written with other parameters: cropping again")
    (output_dir / "crops").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(seed))
    jitter = float(jitter_mm) / np.asarray(spacing)
    half = size // 2
    entries, class_index = [], {}
    if organ_groups:
        class_index = {name: i for i, name in enumerate(organ_groups)}
    for pair in pairs:
        hu, ids, affine = _resampled_pair(pair, spacing, label_offset)
        case = Path(pair["image"]).name.split(".")[0]
        # padding by half a cube on every side makes each cube a plain slice of the padded volume
        padded = np.pad(hu, [(h, s - h) for h, s in zip(half, size)], constant_values=background_hu)
        padded_ids = np.pad(ids, [(h, s - h) for h, s in zip(half, size)], constant_values=0)
        present, counts = np.unique(ids[ids > 0], return_counts=True)
        for label_id, count in zip(present.tolist(), counts.tolist()):
            name = (label_names or {}).get(label_id, str(label_id))
            if organs is not None and not any(fnmatch.fnmatchcase(name, str(o)) or str(label_id) == str(o)
                                              for o in organs):
                continue
            cls = _class_of(name, organ_groups)
            if cls is None:
                continue
            if count < min_organ_voxels:
                logger.info(f"{case}: skipping '{name}' ({count} voxels < min_organ_voxels={min_organ_voxels})")
                continue
            class_index.setdefault(cls, len(class_index))
            for k, center in enumerate(_crop_centers(ids == label_id, int(crops_per_organ), jitter, rng)):
                start = center - half  # in the unpadded volume; + half in the padded one
                block = tuple(slice(int(c), int(c) + int(s)) for c, s in zip(center, size))
                cube = np.rint(padded[block]).astype(np.int16)
                crop_affine = affine.copy()
                crop_affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
                relative = f"crops/{case}_{name}_{k}.nii.gz"
                image = nib.Nifti1Image(cube, crop_affine)
                image.set_qform(crop_affine, code=1)
                image.set_sform(crop_affine, code=1)
                nib.save(image, output_dir / relative)
                entries.append({
                    "image": relative, "label": class_index[cls], "organ": cls, "label_ids": [int(label_id)],
                    "structure": name, "source": str(pair["image"]), "center_voxel": [int(c) for c in center],
                    "organ_fraction": round(float((padded_ids[block] == label_id).mean()), 4),
                })
    if not entries:
        raise ValueError(f"no organ of {[str(p['label']) for p in pairs]} passed the selection (organs={organs}, "
                         f"organ_groups={organ_groups}, min_organ_voxels={min_organ_voxels}).")
    used = {e["label"] for e in entries}
    datalist = {
        "name": "organ-crops",
        "description": "CT cubes centred in organs of label maps, written by dagman_components.data.crop_organs.",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(i): name for name, i in class_index.items() if i in used},
        "parameters": parameters,
        "numTraining": len(entries),
        "training": entries,
    }
    datalist_path.write_text(json.dumps(datalist, indent=2))
    logger.info(f"{len(entries)} organ crops of {len(used)} classes written to '{output_dir}'")
    return datalist_path


def _read_crops(datalist_path: Path) -> tuple[list[dict[str, Any]], dict[int, str]]:
    items = load_datalist(dataset_dir=datalist_path.parent, datalist=datalist_path)
    labels = json.loads(datalist_path.read_text())["labels"]
    return items, {int(k): v for k, v in labels.items()}


# ---- transforms and the bundle's entry point ---------------------------------------------------


def organ_transforms(
    image_size: Sequence[int] | int = 64,
    intensity_range: Sequence[float] = (-1000.0, 1000.0),
    from_arrays: bool = False,
    spacing: Sequence[float] | None = None,
    fit: str = "resize",
) -> Compose:
    """
    Deterministic MONAI chain from an organ item to the encoder input (1, *image_size) in [0, 1].

    NIfTI items: ``LoadImaged`` (channel first, float32) -> ``Orientationd("RAS")`` -> ``Spacingd(spacing)``
    when ``spacing`` is given. Array items (OrganMNIST3D) start as they are. Then
    ``ScaleIntensityRanged(intensity_range -> [0, 1], clip)`` and ``Resized(image_size, trilinear)``
    (``fit="resize"``: the whole volume, as MedMNIST resized each organ's box) or
    ``ResizeWithPadOrCropd(image_size)`` (``fit="pad_crop"``: keeps the physical scale), then ``EnsureTyped``.

    Args:
        image_size: encoder input size; every size a multiple of the encoder's ``min_input_multiple`` (32).
            Default 64.
        intensity_range: the input values mapped to [0, 1]: an HU window for CT, (0, 255) for OrganMNIST3D.
            Default (-1000.0, 1000.0).
        from_arrays: items hold (1, D, H, W) arrays instead of paths. Default False.
        spacing: resample NIfTI items to this voxel size in mm. Default None: keep their grid.
        fit: "resize" (default) or "pad_crop".
    """
    if fit not in ("resize", "pad_crop"):
        raise ValueError(f"fit must be 'resize' or 'pad_crop', got '{fit}'.")
    low, high = (float(v) for v in intensity_range)
    if not high > low:
        raise ValueError(f"intensity_range must be (low, high) with low < high, got {tuple(intensity_range)}.")
    keys = ("image",)
    transforms: list[Transform] = []
    if from_arrays:
        transforms.append(EnsureTyped(keys, data_type="tensor", dtype=torch.float32, track_meta=False))
    else:
        transforms += [
            LoadImaged(keys, ensure_channel_first=True, image_only=True, dtype=np.float32),
            Orientationd(keys, axcodes="RAS", labels=None),
        ]
        if spacing is not None:
            transforms.append(Spacingd(keys, pixdim=spacing, mode="bilinear"))
    transforms.append(ScaleIntensityRanged(keys, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True))
    size = ensure_tuple_rep(image_size, 3)
    if fit == "resize":
        transforms.append(Resized(keys, spatial_size=size, mode="trilinear", anti_aliasing=False))
    else:
        transforms.append(ResizeWithPadOrCropd(keys, spatial_size=size))
    transforms.append(EnsureTyped(keys, data_type="tensor", dtype=torch.float32))
    return Compose(transforms)


_LABEL_NAME_TABLES = {"totalsegmentator": TOTALSEGMENTATOR_LABELS, "organmnist3d": ORGANMNIST3D_LABELS}


def _label_names(label_names: str | Mapping[int, str] | None) -> dict[int, str] | None:
    if label_names is None or isinstance(label_names, Mapping):
        return None if label_names is None else {int(k): v for k, v in label_names.items()}
    if label_names == "phantom":
        from .phantom import PHANTOM_LABELS

        return {v: k for k, v in PHANTOM_LABELS.items()}
    if label_names not in _LABEL_NAME_TABLES:
        raise ValueError(f"label_names must be a dict, None, 'phantom' or one of {sorted(_LABEL_NAME_TABLES)}, "
                         f"got '{label_names}'.")
    return dict(_LABEL_NAME_TABLES[label_names])


def prepare_organ_data(
    source: str,
    dataset_dir: str | os.PathLike,
    crops_dir: str | os.PathLike | None = None,
    npz_file: str = "organmnist3d.npz",
    splits: Sequence[str] = _SPLITS,
    csv_file: str = "organs.csv",
    datalist: str | os.PathLike | None = None,
    image_file: str | None = None,
    label_file: str | None = None,
    label_names: str | Mapping[int, str] | None = None,
    phantom_volumes: int = 4,
    phantom_shape: Sequence[int] = (112, 112, 96),
    seed: int = 0,
    **crop_args: Any,
) -> OrganData:
    """
    The organ items of one source, for the organ-clustering bundle.

    - ``"phantom"``: synthetic phantoms are generated in ``dataset_dir`` once
      (:py:func:`~dagman_components.data.generate_phantom_dataset`), then cropped like ``"label_map"``.
    - ``"label_map"``: :py:func:`crop_organs` of :py:func:`label_map_pairs` (``datalist`` or
      ``image_file`` + ``label_file`` under ``dataset_dir``), written once into ``crops_dir``.
    - ``"organmnist3d"``: :py:func:`load_organmnist3d` of ``dataset_dir/npz_file``.
    - ``"csv"``: :py:func:`load_organ_csv` of ``dataset_dir/csv_file``.

    Args:
        source: one of the above.
        dataset_dir: the folder of the source's files.
        crops_dir: where organ crops are written ("phantom", "label_map").
        npz_file, splits: OrganMNIST3D file name in ``dataset_dir`` and splits to read.
        csv_file: CSV file name in ``dataset_dir``.
        datalist, image_file, label_file: the CT / label-map pairs ("label_map").
        label_names: label id -> organ name: a dict, "totalsegmentator", "organmnist3d", "phantom" or None
            (ids by number; "phantom" is used for the phantoms regardless).
        phantom_volumes, phantom_shape: the generated phantoms ("phantom"). Default 4 volumes of 112 x 112 x 96.
        seed: seed of the phantoms and of the crop jitter.
        crop_args: passed to :py:func:`crop_organs` (``organs``, ``organ_groups``, ``crop_size``, ...).
    """
    names = _label_names(label_names)
    if source == "organmnist3d":
        path = Path(dataset_dir, npz_file)
        items = load_organmnist3d(path, splits=splits, label_names=names or ORGANMNIST3D_LABELS)
        class_names = names or ORGANMNIST3D_LABELS
        used = {item["label"] for item in items}
        return OrganData(items, {i: n for i, n in class_names.items() if i in used}, True, str(path))
    if source == "csv":
        path = Path(dataset_dir, csv_file)
        items, class_names = load_organ_csv(path, dataset_dir=dataset_dir, label_names=names)
        return OrganData(items, class_names, False, str(path))
    if source not in ("phantom", "label_map"):
        raise ValueError(f"source must be 'phantom', 'label_map', 'organmnist3d' or 'csv', got '{source}'.")
    if crops_dir is None:
        raise ValueError(f"source '{source}' writes organ crops: crops_dir is needed.")
    if source == "phantom":
        from .phantom import generate_phantom_dataset

        datalist = generate_phantom_dataset(dataset_dir, num_volumes=phantom_volumes, shape=tuple(phantom_shape),
                                            seed=seed)
        names = _label_names("phantom")
    pairs = label_map_pairs(dataset_dir, datalist=datalist, image_file=image_file, label_file=label_file)
    crops = crop_organs(pairs, crops_dir, label_names=names, seed=seed, **crop_args)
    items, class_names = _read_crops(crops)
    return OrganData(items, class_names, False, str(crops))
