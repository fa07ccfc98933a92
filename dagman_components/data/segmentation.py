"""
Data for supervised segmentation: label maps to class targets, a MONAI Label-safe ``Spacingd``, datalists.

- :py:class:`SegmentationTargetd`: turns a label map into class indices 0..C-1 (e.g. the phantom's nodule id 8
  -> class 1), and stops with an error naming the file when a label map does not fit the image or the classes.
- :py:class:`MetaSafeSpacingd`: MONAI's ``Spacingd`` without its crash on string ``image_*`` keys (MONAI Label's
  ``image_path``).
- :py:func:`case_folder_datalist` and :py:func:`segmentation_datalist`: image/label pairs from one folder per case
  (e.g. the STS collection's ``STS_001/CT_image.nii.gz`` + ``CT_mask.nii.gz``), a Decathlon JSON or the embedded
  phantoms, with every image and label header checked.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Spacingd

from .checks import file_name as _file_name
from .datalist import prepare_dataset, validate_images

__all__ = [
    "MetaSafeSpacingd",
    "SegmentationTargetd",
    "case_folder_datalist",
    "phantom_class_label",
    "segmentation_datalist",
]


class SegmentationTargetd(MapTransform):
    """
    Map the values of a label map to class indices 0..``num_classes``-1, checking the label against its image.

    With ``target_labels`` (e.g. ``[8]``, the phantom's nodule id), voxels whose value is ``target_labels[k]``
    become class ``k + 1`` and every other value becomes background 0, so one organ label map serves any
    target. With ``target_labels=None`` the label map must already hold class indices: a value outside
    0..``num_classes``-1 (or a non-integer one) is an error naming the file and the values. Either way a
    label off its image's grid (read before any resampling: another spatial shape, or the same shape with an
    affine that differs by more than ``affine_tolerance`` mm) is an error naming both files. Place it right
    after loading, before any spatial transform.

    Args:
        keys: label keys. Default "label".
        target_labels: label values of the classes 1, 2, ...; None keeps the values. Default None.
        num_classes: classes including background; must be ``len(target_labels) + 1`` when given. Default 2.
        image_key: the image the label must match in shape; None skips the check. Default "image".
        allow_missing_keys: don't raise if a key is missing. Default False.
        affine_tolerance: largest difference (mm) between the image's and the label's affine entries. Default 0.01.

    Output per key: a label of the same type, shape and metadata, float32 values in 0..``num_classes``-1.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        target_labels: Sequence[int] | None = None,
        num_classes: int = 2,
        image_key: str | None = "image",
        allow_missing_keys: bool = False,
        affine_tolerance: float = 0.01,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.affine_tolerance = affine_tolerance
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background and at least one class), got {num_classes}.")
        if target_labels is not None:
            target_labels = [int(v) for v in target_labels]
            if len(target_labels) + 1 != num_classes:
                raise ValueError(
                    f"target_labels {target_labels} define {len(target_labels) + 1} classes with background, "
                    f"but num_classes (the network's out_channels) is {num_classes}."
                )
        self.target_labels = target_labels
        self.num_classes = num_classes
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            self._check_grid(d, key)
            if self.target_labels is None:
                self._check_values(label, key)
                d[key] = label.float() if isinstance(label, torch.Tensor) else label.astype("float32")
                continue
            target = label * 0.0
            for class_index, value in enumerate(self.target_labels, start=1):
                target[label == value] = float(class_index)
            d[key] = target.float() if isinstance(target, torch.Tensor) else target.astype("float32")
        return d

    def _check_grid(self, d: Mapping[Hashable, Any], key: Hashable) -> None:
        if self.image_key is None or self.image_key not in d:
            return
        image, label = d[self.image_key], d[key]
        if tuple(image.shape[1:]) != tuple(label.shape[1:]):
            raise ValueError(
                f"label '{_file_name(label, key)}' has spatial shape {tuple(label.shape[1:])} but its image "
                f"'{_file_name(image, self.image_key)}' has {tuple(image.shape[1:])}: they must be on the same grid."
            )
        image_affine, label_affine = getattr(image, "affine", None), getattr(label, "affine", None)
        # same shape, other position or spacing: the label would be drawn on the wrong voxels
        if image_affine is not None and label_affine is not None:
            image_affine, label_affine = torch.as_tensor(image_affine).double(), torch.as_tensor(label_affine).double()
            if not torch.allclose(image_affine, label_affine, atol=self.affine_tolerance, rtol=0.0):
                raise ValueError(
                    f"label '{_file_name(label, key)}' is off its image's grid: same shape, but its affine (voxel to mm) "
                    f"differs from that of '{_file_name(image, self.image_key)}' by up to "
                    f"{float((image_affine - label_affine).abs().max()):.3g} mm (tolerance {self.affine_tolerance:g}). "
                    "Resample the label onto the image grid (e.g. with the image as reference) and save it again."
                )

    def _check_values(self, label: Any, key: Hashable) -> None:
        values = [int(v) if v == int(v) else v for v in torch.unique(torch.as_tensor(label)).tolist()]
        bad = [v for v in values if v != int(v) or not 0 <= v < self.num_classes]
        if bad:
            raise ValueError(
                f"label '{_file_name(label, key)}' has values {bad[:10]} outside the classes 0..{self.num_classes - 1} "
                f"(values present: {values[:20]}); set target_labels to the label values of the classes "
                f"(e.g. --target_labels [8] for the phantom's nodules) or out_channels to the number of classes."
            )


class MetaSafeSpacingd(Spacingd):
    """
    ``monai.transforms.Spacingd`` that leaves non-dict values of keys named ``<key>_*`` alone.

    MONAI 1.6.1's ``Spacingd`` calls ``.update(meta)`` on every item whose key starts with ``"<key>_"`` (meant
    for legacy ``image_meta_dict`` dicts). MONAI Label's ``BundleInferTask`` puts ``image_path`` (a str) into
    the data, so the plain transform raises ``AttributeError: 'str' object has no attribute 'update'`` on NIfTI
    input. This subclass sets such items aside during the call and puts them back unchanged, so the path
    reaches MONAI Label's writer. Same arguments, output and ``inverse`` as ``Spacingd``.
    """

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {
            k: d.pop(k)
            for k in list(d)
            if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], Mapping)
        }
        out = super().__call__(d, lazy=lazy)
        out.update(aside)
        return out


def case_folder_datalist(
    dataset_dir: str | os.PathLike, image_name: str = "CT_image.nii.gz", label_name: str = "CT_mask.nii.gz"
) -> list[dict[str, str]]:
    """
    Image/label pairs from a folder with one subfolder per case, e.g. the STS collection::

        sts/STS_001/CT_image.nii.gz   sts/STS_001/CT_mask.nii.gz
        sts/STS_002/CT_image.nii.gz   ...

    Subfolders (sorted by name) holding ``image_name`` become ``{"image": ..., "label": ...}`` with absolute
    paths; one holding the image but not ``label_name`` is an error naming it.

    Args:
        dataset_dir: the folder of case folders.
        image_name: the image file name in each case folder. Default "CT_image.nii.gz".
        label_name: the label file name in each case folder. Default "CT_mask.nii.gz".

    Raises:
        FileNotFoundError: ``dataset_dir`` missing, or a case without its label file.
        ValueError: no case folder holds ``image_name``.
    """
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset_dir '{root}' does not exist or is not a directory.")
    items = []
    for case in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        image, label = case / image_name, case / label_name
        if not image.is_file():
            continue
        if not label.is_file():
            raise FileNotFoundError(f"case folder '{case}' has '{image_name}' but no label '{label_name}'.")
        items.append({"image": str(image.resolve()), "label": str(label.resolve())})
    if not items:
        raise ValueError(f"no case folder under '{root}' holds an image named '{image_name}'.")
    return items


def segmentation_datalist(
    dataset_dir: str,
    datalist: str | None = None,
    image_name: str | None = None,
    label_name: str | None = None,
    on_error: str = "raise",
    phantom_target_labels: Sequence[int] | None = None,
    **prepare_kwargs: Any,
) -> list[dict[str, Any]]:
    """
    The image/label items of a segmentation bundle, every image and label header checked.

    With ``image_name`` and ``label_name``, ``dataset_dir`` is a folder of case folders
    (:py:func:`case_folder_datalist`). Otherwise the items come from
    :py:func:`~dagman_components.data.datalist.prepare_dataset` (embedded phantoms, a Decathlon JSON ``datalist``,
    or a folder scan) with ``prepare_kwargs`` passed on, and each item must have a ``"label"``. On the
    embedded phantoms, ``phantom_target_labels`` (e.g. ``[8]``, the nodule id) turns each organ label map into
    a class-index label file (:py:func:`phantom_class_label`), so the phantoms follow the same label
    convention as the user's data (labels hold classes 0..C-1).

    Raises:
        ValueError: an item without a label; an unreadable, corrupt or 2D image or label (the file is named).
        FileNotFoundError: a missing folder or file.
    """
    if image_name is not None and label_name is not None:
        items = validate_images(case_folder_datalist(dataset_dir, image_name, label_name), on_error=on_error)
    else:
        items = prepare_dataset(dataset_dir, datalist, on_error=on_error, **prepare_kwargs)
        phantom_dir = prepare_kwargs.get("phantom_dir")
        is_phantom = (
            phantom_dir is not None and datalist is None and Path(dataset_dir).resolve() == Path(phantom_dir).resolve()
        )
        if is_phantom and phantom_target_labels is not None:
            items = [dict(item, label=phantom_class_label(item["label"], phantom_target_labels)) for item in items]
    return validate_images(items, key="label", on_error=on_error)


def phantom_class_label(label_path: str, target_labels: Sequence[int]) -> str:
    """
    A class-index label file (0 background, ``k + 1`` where the organ label map is ``target_labels[k]``) for a
    phantom organ label map, written next to it (``labelsTr_<ids>/``) and reused while it is newer than the organ label map.

    The embedded phantoms store organ ids (nodule 8, liver 5, ...); the bundle itself takes labels that already
    hold class indices (a user's {0, 1} mask: 1 is foreground), so its own phantom run trains on these files.
    """
    import nibabel as nib
    import numpy as np

    ids = [int(v) for v in target_labels]
    src = Path(label_path)
    out = src.parent.parent / f"{src.parent.name}_{'_'.join(str(v) for v in ids)}" / src.name
    if out.is_file() and out.stat().st_mtime >= src.stat().st_mtime:  # a regenerated phantom is converted again
        return str(out)
    img = nib.load(str(src))
    values = np.asarray(img.dataobj)
    target = np.zeros(values.shape, dtype=np.uint8)
    for class_index, value in enumerate(ids, start=1):
        target[values == value] = class_index
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.nii.gz")
    nib.save(nib.Nifti1Image(target, img.affine, img.header), str(tmp))
    os.replace(tmp, out)  # atomic: DDP ranks may write the same file
    return str(out)
