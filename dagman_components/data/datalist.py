"""
Datalists of CT volumes: read a Decathlon-style JSON or scan a folder, and check the images' headers.

A datalist is a list of dicts with at least an ``"image"`` key holding an absolute file path, the input
that ``monai.data.Dataset``/``CacheDataset`` and :py:func:`dagman_components.data.pretrain_transforms`
expect. Errors name the file, key or entry at fault, so a bad dataset fails before a training run starts.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import torch.distributed as dist
from monai.data import load_decathlon_datalist

from dagman_components.errors import BadImageError

from .checks import READ_ERRORS, check_on_bad_image
from .phantom import generate_phantom_dataset

__all__ = ["NIFTI_SUFFIXES", "DEFAULT_EXCLUDE", "load_datalist", "prepare_dataset", "validate_images"]

logger = logging.getLogger(__name__)

#: file name endings taken as NIfTI images when scanning a folder (matched case-insensitively).
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
#: substrings (case-insensitive) that mark a NIfTI file as an annotation, not an image, when scanning a
#: folder: masks, segmentations, label maps and lesion masks stored next to the CTs.
DEFAULT_EXCLUDE: tuple[str, ...] = ("mask", "seg", "label", "lesion")


def _scan_folder(dataset_dir: Path, exclude: Sequence[str]) -> list[dict[str, str]]:
    exclude_lower = [e.lower() for e in exclude]
    found, excluded = [], 0
    for root, dirs, files in os.walk(dataset_dir):
        # hidden entries are tool debris (temp files, macOS "._x.nii.gz" resource forks), never images
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(NIFTI_SUFFIXES):
                continue
            path = Path(root) / name
            # folder names count too, so "labelsTr/x.nii.gz" is excluded like "x_label.nii.gz"
            relative = path.relative_to(dataset_dir).as_posix().lower()
            if any(e in relative for e in exclude_lower):
                excluded += 1
                continue
            found.append(path)
    if not found:
        raise ValueError(
            f"no NIfTI image found under dataset_dir '{dataset_dir}' (suffixes {NIFTI_SUFFIXES}, searched "
            f"recursively; {excluded} NIfTI file(s) skipped because their path relative to dataset_dir contains "
            f"one of the excluded substrings {tuple(exclude)})."
        )
    return [{"image": os.path.abspath(p)} for p in sorted(found, key=lambda p: p.relative_to(dataset_dir).as_posix())]


def _read_datalist(datalist: Path, data_list_key: str, base_dir: Path) -> list[dict[str, Any]]:
    if not datalist.is_file():
        raise FileNotFoundError(f"datalist JSON '{datalist}' does not exist or is not a file.")
    # parsed here first only to turn MONAI's generic errors into ones that name the file and the keys
    try:
        content = json.loads(datalist.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"datalist '{datalist}' is not valid JSON: {e}") from e
    if not isinstance(content, dict):
        raise ValueError(f"datalist '{datalist}' must hold a JSON object, got a {type(content).__name__}.")
    if data_list_key not in content:
        raise ValueError(
            f"datalist '{datalist}' has no key '{data_list_key}'; keys present: {sorted(content)}."
        )
    entries = content[data_list_key]
    if not isinstance(entries, list) or not entries:
        raise ValueError(
            f"key '{data_list_key}' of datalist '{datalist}' must be a non-empty list, got {entries!r:.80}."
        )
    # MONAI accepts bare paths only under "test" (Decathlon's test list); everything else must be dicts
    bare_paths_allowed = data_list_key == "test" and all(isinstance(e, str) for e in entries)
    for i, entry in enumerate(entries):
        if not bare_paths_allowed and not (isinstance(entry, dict) and "image" in entry):
            raise ValueError(
                f"entry {i} of '{data_list_key}' in datalist '{datalist}' must be a dict with an 'image' key, "
                f"got {entry!r:.120}."
            )
    items = load_decathlon_datalist(datalist, is_segmentation=True, data_list_key=data_list_key, base_dir=base_dir)
    for i, item in enumerate(items):
        images = item["image"] if isinstance(item["image"], list) else [item["image"]]
        for image in images:
            if not os.path.isfile(image):
                raise FileNotFoundError(
                    f"entry {i} of '{data_list_key}' in datalist '{datalist}': image file '{image}' does not exist "
                    f"(relative paths are resolved against '{base_dir}')."
                )
    return items


def load_datalist(
    dataset_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    data_list_key: str = "training",
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
) -> list[dict[str, Any]]:
    """
    Build the list of image dicts of a dataset, from a Decathlon-style JSON or from a folder scan.

    With ``datalist``, entries are read by ``monai.data.load_decathlon_datalist(datalist,
    is_segmentation=True, data_list_key=data_list_key, base_dir=dataset_dir or the JSON's folder)``: ``image``
    and ``label`` paths become absolute, other keys (e.g. the phantom's ``nodules``) pass through. Entries are
    dicts with an ``image`` key (bare paths only under ``"test"``, as in Decathlon). Every image file must exist.

    Without ``datalist``, ``dataset_dir`` is scanned recursively, in sorted (deterministic) order, for files
    ending in :py:data:`NIFTI_SUFFIXES`; hidden files/folders are ignored, and so is any file whose path
    relative to ``dataset_dir`` contains one of ``exclude`` (case-insensitive), so masks and label maps
    stored beside the CTs (``CT_mask.nii.gz``, ``lung1_lesion.nii.gz``, ``labelsTr/...``) are left out.

    Args:
        dataset_dir: folder of the images; with ``datalist``, the base of its relative paths. Default None.
        datalist: path of a Decathlon-style JSON. Default None: scan ``dataset_dir``.
        data_list_key: the JSON key of the list to read. Default "training" (Decathlon).
        exclude: substrings excluding scanned files. Default :py:data:`DEFAULT_EXCLUDE`. Unused with ``datalist``.

    Returns:
        a list of dicts, each with an absolute ``"image"`` path, e.g. ``[{"image": "/data/ct_001.nii.gz"}]``.

    Raises:
        ValueError: neither argument given; ``dataset_dir`` not a folder; invalid JSON, missing key or bad entry;
            no image found by the scan.
        FileNotFoundError: ``dataset_dir`` or ``datalist`` missing; an entry's image file missing.
    """
    if dataset_dir is None and datalist is None:
        raise ValueError("load_datalist needs dataset_dir (a folder of NIfTI images) or datalist (a JSON file).")
    if dataset_dir is not None:
        dataset_dir = Path(dataset_dir).expanduser()
        if not dataset_dir.exists():
            raise FileNotFoundError(f"dataset_dir '{dataset_dir}' does not exist.")
        if not dataset_dir.is_dir():
            raise ValueError(f"dataset_dir '{dataset_dir}' is not a directory.")
    if datalist is not None:
        datalist = Path(datalist).expanduser()
        base_dir = dataset_dir if dataset_dir is not None else datalist.parent
        return _read_datalist(datalist, data_list_key, base_dir)
    return _scan_folder(dataset_dir, exclude)


def validate_images(
    items: list[dict[str, Any]],
    key: str = "image",
    min_spatial_dims: int = 3,
    on_error: str = "raise",
) -> list[dict[str, Any]]:
    """
    Check that every image of a datalist is a readable NIfTI with a true 3D grid, from its header only.

    Only the header is read (``nibabel.load(path).shape``: no pixel data), so a file whose header is intact
    but whose pixel data is truncated passes here and fails at loading time. Accepted shapes: ``min_spatial_dims``
    spatial sizes all > 1, then only singleton dims (e.g. (X, Y, Z) or (X, Y, Z, 1)). Rejected: unreadable
    or corrupt files, 2D images, a singleton spatial dim (e.g. (512, 512, 1)), a non-singleton 4th dim
    (time series or multi-channel).

    Args:
        items: datalist dicts, e.g. from :py:func:`load_datalist`.
        key: the key of the image path in each dict. Default "image".
        min_spatial_dims: number of leading dims that must be spatial (> 1). Default 3.
        on_error: ``"raise"`` (default) raises at the first bad image; ``"skip"`` logs a warning naming the file
            and drops it, and raises only if no image is left.

    Returns:
        the kept items (the same dict objects), in order.

    Raises:
        BadImageError: a bad image (a ValueError; the message names the file and the shape or the reading error).
        ValueError: an item without ``key``; nothing left with ``on_error="skip"``; an unknown ``on_error``.
    """
    check_on_bad_image(on_error, 'on_error')
    kept: list[dict[str, Any]] = []
    problems: list[BadImageError] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or key not in item:
            keys = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise ValueError(f"datalist item {i} has no key '{key}' (keys: {keys}).")
        paths = item[key] if isinstance(item[key], (list, tuple)) else [item[key]]
        problem = next(filter(None, (_image_problem(str(path), min_spatial_dims) for path in paths)), None)
        if problem is None:
            kept.append(item)
            continue
        if on_error == "raise":
            raise problem
        logger.warning(f"skipping datalist item {i}: {problem}")
        problems.append(problem)
    if not kept:
        raise ValueError(f"no valid image left among {len(items)} datalist item(s); first problem: {problems[0]}")
    if problems:
        logger.warning(f"on_bad_image: skip dropped {len(problems)} of {len(items)} '{key}' files (header check).")
    return kept


def _image_problem(path: str, min_spatial_dims: int) -> BadImageError | None:
    """An error naming the file and what is wrong with it, or None if its header looks like a 3D image."""
    try:
        shape = tuple(int(s) for s in nib.load(path).shape)
    except FileNotFoundError:
        return BadImageError(path, "does not exist.")
    except READ_ERRORS as e:
        return BadImageError(path, f"is unreadable or corrupt ({type(e).__name__}: {e}).")
    spatial, extra = shape[:min_spatial_dims], shape[min_spatial_dims:]
    if len(spatial) < min_spatial_dims or min(spatial) <= 1:
        return BadImageError(
            path,
            f"has shape {shape}: expected {min_spatial_dims} spatial dims, each larger than 1 "
            "(a 2D image or a single slice cannot be resampled and cropped as a 3D volume).",
        )
    if any(s != 1 for s in extra):
        return BadImageError(
            path,
            f"has shape {shape}: expected {min_spatial_dims} spatial dims and only singleton dims "
            "after them (a time series or multi-channel image is not a single CT volume).",
        )
    return None


def _is_rank_zero() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def prepare_dataset(
    dataset_dir: str,
    datalist: str | None = None,
    phantom_dir: str | None = None,
    phantom_volumes: int = 8,
    phantom_shape: Sequence[int] = (112, 112, 96),
    seed: int = 0,
    data_list_key: str = "training",
    on_error: str = "raise",
) -> list[dict]:
    """The training items of a bundle: the embedded phantom set, or the user's data.

    When ``dataset_dir`` is the bundle's default ``phantom_dir`` and no ``datalist`` is given, the
    synthetic phantom dataset is generated there once (rank 0 under DDP, the others wait) and its
    datalist is used. Otherwise ``dataset_dir`` is a folder of NIfTI files or, with ``datalist``,
    the base folder of a Decathlon-style JSON; a missing/empty folder or a corrupt/2D image is
    an error naming it (``on_error="skip"`` logs a warning and drops bad images instead).
    """
    is_default = phantom_dir is not None and datalist is None and Path(dataset_dir).resolve() == Path(phantom_dir).resolve()
    if is_default:
        if _is_rank_zero():
            datalist = str(
                generate_phantom_dataset(phantom_dir, num_volumes=phantom_volumes, shape=tuple(phantom_shape), seed=seed)
            )
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        datalist = str(Path(phantom_dir) / "dataset.json")
        logger.info(f"training on the embedded phantom dataset {datalist}")
    items = load_datalist(dataset_dir=dataset_dir, datalist=datalist, data_list_key=data_list_key)
    items = validate_images(items, on_error=on_error)
    logger.info(f"{len(items)} training volumes from {datalist or dataset_dir}")
    return items
