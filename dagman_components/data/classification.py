"""
Image-level classification data: datalists with labels, the phantom tasks, and the MONAI transform chain.

- :py:func:`load_classification_datalist`: a Decathlon-like JSON (entries under a key, default ``"training"``)
  or a CSV (columns ``image``, ``label`` and any others), checked entry by entry.
- :py:func:`generate_nodule_dataset`: nodule-centred crops of the synthetic phantoms, labelled
  malignant/benign from the phantom's nodule records (stand-in for LIDC, papers' nodule task).
- :py:func:`generate_response_dataset`: one tumour-centred crop per phantom "patient" with a synthetic
  durable-clinical-benefit label (stand-in for the papers' immunotherapy cohort; see the function).
- :py:func:`prepare_classification_data`: what the bundles call: the phantom task by default, the user's
  datalist otherwise.
- :py:func:`classification_transforms`: deterministic CT preprocessing, a centred crop to the network's
  input size, optional flips/rotations, and the label as a (1,) float tensor.

The phantom module is imported on first use (as in ``dagman_components.data``), so that
``python -m dagman_components.data.phantom`` does not load it twice.

Crops are cut at the phantom's own voxel grid (2 mm by default); where a crop reaches past the volume's
border the missing part is filled with air (-1000 HU) and a warning names the files **[choice]** (a lung
nodule near the chest wall is still a valid case; cutting it away would bias the data towards central nodules).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.distributed as dist
from monai.transforms import (
    AsDiscreted,
    CenterSpatialCropd,
    Compose,
    CopyItemsd,
    EnsureTyped,
    Lambdad,
    RandFlipd,
    RandRotate90d,
    SelectItemsd,
    Transform,
)

from dagman_components.options import as_bool

from .transforms import ct_preprocessing

__all__ = [
    "NODULE_CLASSES",
    "NODULE_DATALIST",
    "RESPONSE_CLASSES",
    "RESPONSE_DATALIST",
    "classification_postprocessing",
    "classification_transforms",
    "crop_around",
    "generate_nodule_dataset",
    "generate_response_dataset",
    "label_vector",
    "load_classification_datalist",
    "positive_probability",
    "prepare_classification_data",
]

logger = logging.getLogger(__name__)

#: class names of the nodule task, index = label (papers: LIDC malignancy 1-3 benign, 4-5 malignant).
NODULE_CLASSES: tuple[str, str] = ("benign", "malignant")
#: class names of the response task, index = label: non-durable benefit (0), durable clinical benefit (1).
RESPONSE_CLASSES: tuple[str, str] = ("NDB", "DCB")
#: file names of the generated phantom datalists inside the phantom folder.
NODULE_DATALIST = "nodules.json"
RESPONSE_DATALIST = "response.csv"
#: HU written where a crop reaches past the volume (air, the bottom of the default HU window).
AIR_HU = -1000.0


# ---- reading and checking a datalist --------------------------------------------------------------------------


def _label_index(value: Any, class_names: Sequence[str]) -> int | None:
    """The class index of ``value``: an integer in range, or one of ``class_names``; None if neither."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if text in class_names:
            return list(class_names).index(text)
        try:
            value = float(text)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and float(value).is_integer() and 0 <= int(value) < len(class_names):
        return int(value)
    return None


def _read_entries(path: Path, data_list_key: str) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = {"image", "label"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"CSV datalist '{path}' lacks column(s) {sorted(missing)}; columns: {reader.fieldnames}.")
            entries = [dict(row) for row in reader]
    else:
        try:
            content = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"datalist '{path}' is neither a .csv file nor valid JSON: {e}") from e
        if not isinstance(content, dict) or data_list_key not in content:
            keys = sorted(content) if isinstance(content, dict) else type(content).__name__
            raise ValueError(f"datalist '{path}' has no key '{data_list_key}'; found: {keys}.")
        entries = content[data_list_key]
        if not isinstance(entries, list):
            raise ValueError(f"key '{data_list_key}' of datalist '{path}' must hold a list, got {type(entries).__name__}.")
    if not entries:
        raise ValueError(f"datalist '{path}' has no entries.")
    return entries


def load_classification_datalist(
    datalist: str | os.PathLike,
    base_dir: str | os.PathLike | None = None,
    data_list_key: str = "training",
    class_names: Sequence[str] = NODULE_CLASSES,
) -> list[dict[str, Any]]:
    """
    Read and check a classification datalist: entries ``{"image": path, "label": class, ...}``.

    Formats, chosen by the file suffix:

    - ``.csv``: a header row with at least ``image`` and ``label``; every other column (``patient_id``, ...)
      is kept as a string.
    - anything else: JSON, Decathlon-like: ``{"training": [{"image": "crops/a.nii.gz", "label": 1,
      "patient_id": "P1"}, ...]}``; the list is read from ``data_list_key``; other keys of an entry pass through.

    A label is a class index (``0``, ``"1"``, ``1.0``) or a class name from ``class_names`` (e.g. ``"DCB"``);
    it is returned as the int index. Relative image paths are resolved against ``base_dir`` (default: the
    datalist's folder), as ``monai.data.load_decathlon_datalist`` does.

    Args:
        datalist: the JSON or CSV file.
        base_dir: folder of relative image paths. Default None: the datalist's folder.
        data_list_key: JSON key of the entry list. Default "training". Unused for CSV.
        class_names: names of the classes, index = label. Default :py:data:`NODULE_CLASSES` (benign, malignant).

    Returns:
        the entries, each with an absolute ``image`` path and an int ``label``.

    Raises:
        FileNotFoundError: the datalist or an entry's image file is missing (named).
        ValueError: unreadable file, missing key/column, an entry without ``image``/``label``, or a label that
            is not one of the classes (the message names the file, the entry and the value).
    """
    path = Path(datalist).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"classification datalist '{path}' does not exist or is not a file.")
    base = Path(base_dir).expanduser() if base_dir is not None else path.parent
    entries = _read_entries(path, data_list_key)
    allowed = f"indices 0..{len(class_names) - 1} or names {list(class_names)}"
    items = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("image") or entry.get("label") in (None, ""):
            raise ValueError(f"entry {i} of datalist '{path}' needs non-empty 'image' and 'label', got {entry!r:.160}.")
        label = _label_index(entry["label"], class_names)
        if label is None:
            raise ValueError(
                f"entry {i} of datalist '{path}' (image '{entry['image']}'): label {entry['label']!r} is not one of "
                f"the classes ({allowed})."
            )
        items.append({**entry, "label": label})
    for i, item in enumerate(items):
        # the Decathlon rule (monai.data.load_decathlon_datalist): relative to base_dir, absolute kept
        item["image"] = os.path.normpath(base / str(item["image"]))
        if not os.path.isfile(item["image"]):
            raise FileNotFoundError(
                f"entry {i} of datalist '{path}': image file '{item['image']}' does not exist "
                f"(relative paths are resolved against '{base}')."
            )
    return items


# ---- phantom tasks --------------------------------------------------------------------------------------------


def crop_around(
    array: np.ndarray, affine: np.ndarray, center: Sequence[int], size: Sequence[int], fill: float = AIR_HU
) -> tuple[np.ndarray, np.ndarray, int]:
    """A ``size`` box of ``array`` with voxel ``center`` at index ``size // 2``, and its affine.

    Returns ``(crop, crop_affine, padded_voxels)``: the part of the box outside ``array`` is filled with
    ``fill`` and counted; ``crop_affine`` maps the crop's voxels to the same world positions as ``affine``
    maps the source's, so the crop overlays the source volume.
    """
    shape = np.asarray(array.shape[:3])
    start = np.asarray(center, dtype=int) - np.asarray(size, dtype=int) // 2
    stop = start + np.asarray(size, dtype=int)
    low, high = np.maximum(start, 0), np.minimum(stop, shape)
    inside = array[tuple(slice(lo, hi) for lo, hi in zip(low, high))]
    crop = np.pad(inside, list(zip(low - start, stop - high)), mode="constant", constant_values=fill)
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return crop, crop_affine, int(crop.size - inside.size)


def _phantom_volumes(output_dir: Path, parameters: dict[str, Any]) -> dict[str, Any]:
    """The phantom volumes' datalist content (generated, or regenerated if made with other parameters)."""
    from .phantom import generate_phantom_dataset

    volumes_json = output_dir / "dataset.json"
    existing = json.loads(volumes_json.read_text()) if volumes_json.is_file() else {}
    same = all(existing.get(k) == v for k, v in
               {"seed": parameters["seed"], "shape": list(parameters["shape"]), "spacing": list(parameters["spacing"]),
                "numTraining": parameters["num_volumes"], "nodules_per_volume": parameters["nodules_per_volume"]}.items())
    path = generate_phantom_dataset(
        output_dir,
        num_volumes=parameters["num_volumes"],
        shape=parameters["shape"],
        spacing=parameters["spacing"],
        seed=parameters["seed"],
        nodules_per_volume=parameters["nodules_per_volume"],
        overwrite=bool(existing) and not same,
    )
    return json.loads(path.read_text())


def _already_generated(path: Path, parameters: dict[str, Any], read: Callable[[Path], dict]) -> bool:
    try:
        return path.is_file() and read(path) == parameters
    except (OSError, ValueError):
        return False


def _save_crop(source: Path, center: Sequence[int], size: Sequence[int], target: Path) -> int:
    """Write the crop of ``source`` around ``center`` to ``target``; return how many voxels were filled with air."""
    from .phantom import _save_nifti_atomically

    image = nib.load(str(source))
    crop, affine, padded = crop_around(np.asarray(image.dataobj), image.affine, center, size)
    target.parent.mkdir(parents=True, exist_ok=True)
    _save_nifti_atomically(crop.astype(np.int16), affine, target)
    return padded


def _warn_about_padding(padded: dict[str, int], size: Sequence[int]) -> None:
    padded = {name: n for name, n in padded.items() if n}
    if padded:
        listed = ", ".join(f"'{name}' ({n} voxels)" for name, n in list(padded.items())[:5])
        more = f" and {len(padded) - 5} more" if len(padded) > 5 else ""
        logger.warning(
            f"{len(padded)} crop(s) of {tuple(size)} voxels reach past their phantom volume; the missing part is "
            f"air ({AIR_HU} HU): {listed}{more}."
        )


def _generation_parameters(num_volumes, shape, spacing, seed, nodules_per_volume, crop_size, **extra) -> dict:
    return {"num_volumes": int(num_volumes), "shape": [int(s) for s in shape], "spacing": [float(s) for s in spacing],
            "seed": int(seed), "nodules_per_volume": int(nodules_per_volume),
            "crop_size": [int(s) for s in crop_size], **extra}


def generate_nodule_dataset(
    output_dir: str | os.PathLike,
    num_volumes: int = 12,
    shape: Sequence[int] = (112, 112, 96),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    seed: int = 0,
    nodules_per_volume: int = 4,
    crop_size: Sequence[int] = (32, 32, 32),
) -> Path:
    """
    The phantom nodule task: one nodule-centred crop per phantom nodule, labelled benign (0) / malignant (1).

    Phantom volumes come from :py:func:`generate_phantom_dataset` (written to ``output_dir`` once). Every nodule
    record gives a crop of ``crop_size`` voxels at the phantom's spacing (default 32^3 at 2 mm = 64 mm, enough
    for the largest spiculated nodule) centred on ``center_voxel``, saved as int16 HU NIfTI under
    ``nodulesTr/``. Benign phantom nodules are 3-6 mm and smooth, malignant ones 7-12 mm, lobulated and
    spiculated: the task is learnable but, unlike LIDC, size alone separates the classes.

    The datalist ``output_dir/nodules.json`` holds under ``"training"`` one entry per nodule:
    ``{"image", "label", "patient_id" (the phantom volume, for grouped cross-validation), "radius_mm",
    "center_mm"}``, plus the generation parameters; it is reused as long as they match.

    Returns:
        the path of the datalist.
    """
    output_dir = Path(output_dir)
    datalist_path = output_dir / NODULE_DATALIST
    parameters = _generation_parameters(num_volumes, shape, spacing, seed, nodules_per_volume, crop_size)
    if _already_generated(datalist_path, parameters, lambda p: json.loads(p.read_text()).get("parameters")):
        return datalist_path
    volumes = _phantom_volumes(output_dir, parameters)
    entries, padded = [], {}
    for volume in volumes["training"]:
        patient = Path(volume["image"]).name.split(".")[0]
        for n, nodule in enumerate(volume["nodules"]):
            relative = f"nodulesTr/{patient}_nodule_{n}.nii.gz"
            padded[relative] = _save_crop(output_dir / volume["image"], nodule["center_voxel"], crop_size,
                                          output_dir / relative)
            entries.append({"image": relative, "label": int(nodule["malignant"]), "patient_id": patient,
                            "radius_mm": nodule["radius_mm"], "center_mm": nodule["center_mm"]})
    content = {
        "name": "dagman-phantom-nodules",
        "description": "Nodule-centred crops of synthetic CT phantoms, label 1 = malignant (7-12 mm, spiculated), "
        "0 = benign (3-6 mm, smooth). Synthetic: not LIDC.",
        "labels": dict(enumerate(NODULE_CLASSES)),
        "parameters": parameters,
        "training": entries,
    }
    _warn_about_padding(padded, crop_size)
    from .phantom import _write_json_atomically

    _write_json_atomically(content, datalist_path)
    return datalist_path


def generate_response_dataset(
    output_dir: str | os.PathLike,
    num_volumes: int = 24,
    shape: Sequence[int] = (112, 112, 96),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    seed: int = 0,
    nodules_per_volume: int = 4,
    crop_size: Sequence[int] = (64, 64, 64),
    dcb_fraction: float = 0.41,
) -> Path:
    """
    The phantom response task: one tumour-centred crop per phantom "patient" with a SYNTHETIC DCB/NDB label.

    No treatment-response data exist for the phantoms; the label encodes a documented image property so the
    pipeline has something learnable: each phantom volume is a patient, its largest malignant nodule is the
    target tumour, and the ``dcb_fraction`` of patients with the smallest target tumour radius are labelled
    durable clinical benefit (``DCB``), the rest non-durable benefit (``NDB``); ties are broken by the volume
    order. The default 0.41 matches the papers' DCB:NDB = 82:118. A crop of ``crop_size`` voxels (default 64^3 at
    2 mm = 128 mm: tumour and surrounding lung) is centred on the target tumour.

    The datalist ``output_dir/response.csv`` has columns ``image, label (DCB/NDB), patient_id,
    target_radius_mm``; it is reused while ``response_parameters.json`` matches the arguments.

    Returns:
        the path of the CSV datalist.
    """
    if not 0.0 < dcb_fraction < 1.0:
        raise ValueError(f"dcb_fraction must be in (0, 1), got {dcb_fraction}.")
    if int(num_volumes) < 2:
        raise ValueError(f"the response task needs at least 2 phantom patients (one per class), got {num_volumes}.")
    output_dir = Path(output_dir)
    datalist_path = output_dir / RESPONSE_DATALIST
    parameters_path = output_dir / "response_parameters.json"
    parameters = _generation_parameters(num_volumes, shape, spacing, seed, nodules_per_volume, crop_size,
                                        dcb_fraction=float(dcb_fraction))
    if datalist_path.is_file() and _already_generated(parameters_path, parameters, lambda p: json.loads(p.read_text())):
        return datalist_path
    volumes = _phantom_volumes(output_dir, parameters)
    rows, padded = [], {}
    for volume in volumes["training"]:
        patient = Path(volume["image"]).name.split(".")[0]
        malignant = [n for n in volume["nodules"] if n["malignant"]]
        if not malignant:
            raise ValueError(f"phantom '{volume['image']}' has no malignant nodule to serve as the target tumour.")
        target = max(malignant, key=lambda n: n["radius_mm"])
        relative = f"responseTr/{patient}_target.nii.gz"
        padded[relative] = _save_crop(output_dir / volume["image"], target["center_voxel"], crop_size,
                                      output_dir / relative)
        rows.append({"image": relative, "patient_id": patient, "target_radius_mm": target["radius_mm"]})
    _warn_about_padding(padded, crop_size)
    num_dcb = min(max(1, int(round(dcb_fraction * len(rows)))), len(rows) - 1)
    by_size = sorted(range(len(rows)), key=lambda i: rows[i]["target_radius_mm"])
    for rank, i in enumerate(by_size):
        rows[i]["label"] = RESPONSE_CLASSES[1] if rank < num_dcb else RESPONSE_CLASSES[0]
    tmp = output_dir / f".{RESPONSE_DATALIST}.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label", "patient_id", "target_radius_mm"])
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(datalist_path)
    from .phantom import _write_json_atomically

    _write_json_atomically(parameters, parameters_path)
    return datalist_path


PHANTOM_TASKS: dict[str, tuple[Callable[..., Path], str]] = {
    "nodule": (generate_nodule_dataset, NODULE_DATALIST),
    "response": (generate_response_dataset, RESPONSE_DATALIST),
}


def prepare_classification_data(
    dataset_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    phantom_dir: str | os.PathLike | None = None,
    phantom_task: str = "nodule",
    phantom_options: dict[str, Any] | None = None,
    class_names: Sequence[str] = NODULE_CLASSES,
    data_list_key: str = "training",
) -> list[dict[str, Any]]:
    """
    The labelled cases of a classification bundle: the phantom task by default, else the user's datalist.

    When ``datalist`` is None and ``dataset_dir`` is ``phantom_dir``, the phantom task ``phantom_task``
    (``"nodule"``: :py:func:`generate_nodule_dataset`; ``"response"``: :py:func:`generate_response_dataset`,
    with ``phantom_options`` as keyword arguments) is generated there once (rank 0 under DDP, the others
    wait) and read. Otherwise ``datalist`` (JSON or CSV, relative paths under ``dataset_dir``) is read with
    :py:func:`load_classification_datalist`.
    """
    if datalist is None:
        if phantom_dir is None or Path(dataset_dir).resolve() != Path(phantom_dir).resolve():
            raise ValueError(
                f"dataset_dir '{dataset_dir}' is not the embedded phantom folder: give --datalist, a JSON "
                "('training' entries with image/label) or a CSV (columns image,label) of your cases."
            )
        if phantom_task not in PHANTOM_TASKS:
            raise ValueError(f"phantom_task must be one of {sorted(PHANTOM_TASKS)}, got {phantom_task!r}.")
        generate, name = PHANTOM_TASKS[phantom_task]
        distributed = dist.is_available() and dist.is_initialized()
        if not distributed or dist.get_rank() == 0:
            generate(phantom_dir, **(phantom_options or {}))
        if distributed:
            dist.barrier()
        datalist = Path(phantom_dir) / name
        logger.info(f"using the embedded synthetic phantom {phantom_task} task {datalist}")
    items = load_classification_datalist(datalist, base_dir=dataset_dir, data_list_key=data_list_key,
                                         class_names=class_names)
    counts = np.bincount([item["label"] for item in items], minlength=len(class_names))
    logger.info(f"{len(items)} cases from {datalist}: " + ", ".join(f"{n} {c}" for c, n in zip(class_names, counts)))
    return items


# ---- transforms -----------------------------------------------------------------------------------------------


def label_vector(label: Any) -> torch.Tensor:
    """A class label as a float32 tensor of shape (1,), the per-case shape of the metrics' ``y``."""
    return torch.as_tensor(label, dtype=torch.float32).reshape(1)


def classification_transforms(
    roi_size: Sequence[int] = (32, 32, 32),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    hu_range: Sequence[float] = (-1000.0, 1000.0),
    augment: bool = False,
    image_key: str = "image",
    label_key: str = "label",
) -> Compose:
    """
    Preprocessing of lesion-centred CT crops for :class:`~dagman_components.networks.SAClassifier`.

    :py:func:`ct_preprocessing` (load, RAS, resample to ``spacing``, HU window to [0, 1], pad to at least
    ``roi_size``; no foreground crop: a crop is all foreground) -> ``CenterSpatialCropd(roi_size)`` (the
    lesion stays centred) -> with ``augment``: random flips along each axis and 90-degree rotations in the
    axial plane (each p = 0.5) **[choice]**: the papers do not list their augmentations; a nodule's malignancy
    does not depend on its orientation -> the label (if present) as a float32 (1,) tensor -> only ``image``
    and ``label`` are kept (other datalist columns never reach the collate).

    Every spatial transform is invertible (``monai.transforms.Invertd``), so a map on the network's grid
    (e.g. the SATT attention) can be put back on the input image's grid.

    Returns:
        a ``Compose`` mapping ``{"image": path, "label": int}`` to ``{"image": (1, *roi_size) float32 in [0, 1],
        "label": (1,) float32}``.
    """
    transforms: list[Transform] = ct_preprocessing(
        keys=(image_key,), spacing=spacing, hu_range=hu_range, roi_size=roi_size, crop_foreground=False
    )
    transforms.append(CenterSpatialCropd(image_key, roi_size=roi_size))
    if as_bool(augment, "augment"):
        transforms += [RandFlipd(image_key, prob=0.5, spatial_axis=axis) for axis in range(3)]
        transforms.append(RandRotate90d(image_key, prob=0.5, spatial_axes=(0, 1)))
    transforms += [
        Lambdad(label_key, func=label_vector, allow_missing_keys=True),
        SelectItemsd([image_key, label_key], allow_missing_keys=True),
        EnsureTyped(image_key, data_type="tensor", dtype=torch.float32),
    ]
    return Compose(transforms)


def positive_probability(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid of one logit, or softmax of several taking the last class: (C,) logits -> (1,) probability."""
    if logits.shape[0] == 1:
        return torch.sigmoid(logits.float())
    return torch.softmax(logits.float(), dim=0)[-1:]


def classification_postprocessing(
    pred_key: str = "pred", predicted_key: str = "pred_label", threshold: float = 0.5
) -> Compose:
    """Per-case post-processing: logits -> positive-class probability (1,) in ``pred_key``, and the 0/1
    prediction at ``threshold`` in ``predicted_key`` (for sensitivity / specificity)."""
    return Compose([
        Lambdad(pred_key, func=positive_probability),
        CopyItemsd(pred_key, names=predicted_key),
        AsDiscreted(predicted_key, threshold=threshold),
    ])

