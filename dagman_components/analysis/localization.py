"""Zero-shot tumour localization with the pretrained SATT map (SMART Task 4), next to trivial baselines.

SMART thresholds the [CLS] attention (SATT) of the pretrained encoder at its 90th percentile and
reports the Dice with the tumour mask (0.62 +- 0.32). Each case is here:

1. loaded with its mask, reoriented to RAS, resampled to ``spacing`` (image bilinear, mask nearest),
   windowed like pretraining (``hu_range`` -> [0, 1]);
2. turned into one or more *views*: the whole volume (``input_mode="full"``), a centre crop/pad to
   ``roi_size`` (``"center"``), and optionally ``num_random_crops`` random off-centre crops of
   ``crop_size`` that keep at least ``min_tumour_fraction`` of the tumour;
3. zero-padded at the far end of each axis to a multiple of ``encoder.min_input_multiple`` (32)
   **[choice]**: the encoder sees the whole view in one forward (SATT is a global softmax, so
   sliding windows would give maps normalised per window), and the padding is excluded from scoring;
4. scored: every map (SATT upsampled to the input by ``EncoderOutput.attention_volume``, and the
   baselines) is thresholded at its ``percentile`` (90, paper) over the evaluation region, the
   view's real voxels that are inside the body (HU > ``body_hu``, -500 **[choice]**; None uses
   every real voxel); voxels at or above the threshold form the prediction, and its Dice with the
   tumour mask (``monai.metrics.compute_dice``) is the score, on the resampled grid.

Baselines (``../shared/data/real/README.md``: crops centred on their tumour make trivial maps score):
``center_gaussian`` (a Gaussian centred in the view, sigma ``gaussian_sigma_fraction`` of its size
per axis), ``soft_tissue`` (voxels with HU in ``soft_tissue_hu``, 0-100, smoothed by a Gaussian of
``soft_tissue_sigma_mm`` to break the ties of a binary map) and ``noise`` (uniform noise, seeded).
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice
from monai.transforms import (
    Compose,
    CopyItemsd,
    DivisiblePad,
    EnsureTyped,
    GaussianSmooth,
    LoadImaged,
    Orientationd,
    ResizeWithPadOrCrop,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPad,
)
from monai.utils import convert_to_tensor, ensure_tuple_rep

from dagman_components.networks.sa_swin import SASwinEncoder

__all__ = [
    "BASELINES",
    "image_label_datalist",
    "localization_preprocessing",
    "threshold_at_percentile",
    "dice_score",
    "center_gaussian_map",
    "soft_tissue_map",
    "noise_map",
    "random_tumour_crops",
    "localize_case",
    "zero_shot_localization",
    "run_zero_shot_localization",
]

logger = logging.getLogger(__name__)

#: the baseline maps scored next to the encoder's SATT on every view.
BASELINES: tuple[str, ...] = ("center_gaussian", "soft_tissue", "noise")


def image_label_datalist(
    dataset_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    image_glob: str | None = None,
    label_replace: Sequence[str] | None = None,
    data_list_key: str = "training",
) -> list[dict[str, Any]]:
    """Image + tumour-mask pairs, from a Decathlon-style JSON or by matching file names.

    Args:
        dataset_dir: base folder (of the JSON's relative paths, or of ``image_glob``).
        datalist: a JSON whose ``data_list_key`` entries have ``image`` and ``label``. Default None.
        image_glob: without ``datalist``: images matched under ``dataset_dir``, e.g.
            ``"*/CT_image.nii.gz"`` (STS) or ``"*_ct.nii.gz"`` (chest). Default None.
        label_replace: ``(old, new)``: the mask path is the image's file name with ``old`` replaced by
            ``new``, e.g. ``("CT_image", "CT_mask")`` or ``("_ct", "_lesion")``.
        data_list_key: JSON key of the list ("training").

    Returns:
        ``[{"image": path, "label": path, "case": name}, ...]`` with absolute paths.
    """
    from dagman_components.data import load_datalist

    if datalist is not None:
        items = load_datalist(dataset_dir=dataset_dir, datalist=datalist, data_list_key=data_list_key)
        for i, item in enumerate(items):
            if "label" not in item or not os.path.isfile(item["label"]):
                raise ValueError(f"entry {i} of '{datalist}' needs an existing 'label' (tumour mask), got {item!r:.200}.")
            item.setdefault("case", Path(item["image"]).name.split(".")[0])
        return items
    if image_glob is None or label_replace is None or len(label_replace) != 2:
        raise ValueError("image_label_datalist needs datalist, or image_glob with label_replace=(old, new).")
    images = sorted(glob.glob(os.path.join(str(dataset_dir), image_glob)))
    if not images:
        raise ValueError(f"no image matches '{image_glob}' under dataset_dir '{dataset_dir}'.")
    old, new = label_replace
    items = []
    for image in images:
        folder, name = os.path.split(image)
        if old not in name:
            raise ValueError(f"image '{image}': its file name has no '{old}' to replace by '{new}' for the mask.")
        label = os.path.join(folder, name.replace(old, new))
        if not os.path.isfile(label):
            raise FileNotFoundError(f"image '{image}': tumour mask '{label}' does not exist.")
        case = os.path.relpath(image, str(dataset_dir)).replace(os.sep, "/")
        items.append({"image": os.path.abspath(image), "label": os.path.abspath(label), "case": case})
    return items


def localization_preprocessing(
    spacing: Sequence[float] = (2.0, 2.0, 2.0), hu_range: Sequence[float] = (-1000.0, 1000.0)
) -> Compose:
    """Load image and mask, RAS, resample (bilinear / nearest), keep the HU copy ``"hu"``, window ``"image"`` to [0, 1].

    Output per key: float32 (1, X, Y, Z) tensors on one grid; ``hu`` in Hounsfield units.
    """
    keys = ["image", "label"]
    return Compose(
        [
            LoadImaged(keys, ensure_channel_first=True, image_only=True, dtype=np.float32),
            Orientationd(keys, axcodes="RAS", labels=None),
            Spacingd(keys, pixdim=spacing, mode=("bilinear", "nearest")),
            CopyItemsd("image", names="hu"),
            ScaleIntensityRanged("image", a_min=hu_range[0], a_max=hu_range[1], b_min=0.0, b_max=1.0, clip=True),
            EnsureTyped(keys + ["hu"], data_type="tensor", dtype=torch.float32, track_meta=False),
        ]
    )


def threshold_at_percentile(values: torch.Tensor, region: torch.Tensor, percentile: float = 90.0) -> torch.Tensor:
    """Voxels of ``region`` whose value is at or above the ``percentile`` of ``values`` over ``region``.

    Args:
        values: (X, Y, Z) map.
        region: (X, Y, Z) boolean evaluation region.
        percentile: in [0, 100] (90: SMART).
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}.")
    if values.shape != region.shape:
        raise ValueError(f"map shape {tuple(values.shape)} differs from region shape {tuple(region.shape)}.")
    if not bool(region.any()):
        return torch.zeros_like(region, dtype=torch.bool)
    # numpy: torch.quantile refuses inputs above 2**24 elements (a 512^2 x 64 volume)
    threshold = float(np.percentile(values[region].float().cpu().numpy(), percentile))
    return (values >= threshold) & region


def dice_score(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Dice of two boolean (X, Y, Z) masks (``monai.metrics.compute_dice``); 1.0 when both are empty."""
    value = compute_dice(
        prediction[None, None].float(), target[None, None].float(), include_background=True, ignore_empty=False
    )
    return float(value.reshape(-1)[0])


def center_gaussian_map(shape: Sequence[int], sigma_fraction: float = 0.25) -> torch.Tensor:
    """(X, Y, Z) Gaussian centred in a volume of ``shape``, sigma ``sigma_fraction`` of the size per axis."""
    axes = [(torch.arange(int(s), dtype=torch.float32) - (int(s) - 1) / 2) / (sigma_fraction * int(s)) for s in shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.exp(-0.5 * sum(g**2 for g in grids))


def soft_tissue_map(
    hu: torch.Tensor,
    hu_range: Sequence[float] = (0.0, 100.0),
    sigma_mm: float = 4.0,
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
) -> torch.Tensor:
    """(X, Y, Z) soft-tissue prior: HU inside ``hu_range`` (0-100), Gaussian-smoothed by ``sigma_mm``."""
    tissue = ((hu >= hu_range[0]) & (hu <= hu_range[1])).float()
    if sigma_mm <= 0:
        return tissue
    sigma = [sigma_mm / float(s) for s in ensure_tuple_rep(spacing, 3)]
    return GaussianSmooth(sigma=sigma)(tissue[None])[0]


def noise_map(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """(X, Y, Z) uniform noise from a seeded generator."""
    return torch.rand(*(int(s) for s in shape), generator=torch.Generator().manual_seed(seed))


def random_tumour_crops(
    tumour: torch.Tensor,
    crop_size: Sequence[int],
    num_crops: int,
    min_tumour_fraction: float = 0.5,
    seed: int = 0,
) -> list[tuple[int, ...]]:
    """Start corners of ``num_crops`` crops, uniform among those keeping >= ``min_tumour_fraction`` of the tumour.

    Args:
        tumour: (X, Y, Z) boolean mask; the volume must be at least ``crop_size`` (pad before).
        crop_size: crop size per axis.
        num_crops: how many starts to draw (with replacement when fewer valid starts exist).
        min_tumour_fraction: fraction of the tumour's voxels a crop must contain (0.5).
        seed: the draw's seed.

    Returns:
        a list of ``(x, y, z)`` start indices; empty when the tumour is empty.
    """
    mask = tumour.cpu().numpy().astype(np.int64)
    crop = [int(c) for c in crop_size]
    if any(s < c for s, c in zip(mask.shape, crop)):
        raise ValueError(f"volume {mask.shape} is smaller than the crop {tuple(crop)}: pad it first.")
    total = int(mask.sum())
    if total == 0 or num_crops < 1:
        return []
    # inclusion-exclusion on a summed-volume table gives the tumour voxels inside every crop at once
    table = np.pad(mask, ((1, 0), (1, 0), (1, 0))).cumsum(0).cumsum(1).cumsum(2)
    cx, cy, cz = crop
    nx, ny, nz = (s - c + 1 for s, c in zip(mask.shape, crop))
    inside = np.zeros((nx, ny, nz), dtype=np.int64)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                sign = (-1) ** (3 - dx - dy - dz)
                inside += sign * table[dx * cx : dx * cx + nx, dy * cy : dy * cy + ny, dz * cz : dz * cz + nz]
    candidates = np.argwhere(inside >= min_tumour_fraction * total)
    if len(candidates) == 0:
        # a tumour larger than the crop: take the crops that keep the most of it
        candidates = np.argwhere(inside == inside.max())
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(candidates), size=num_crops, replace=len(candidates) < num_crops)
    return [tuple(int(v) for v in candidates[i]) for i in chosen]


def _crop(volume: torch.Tensor, start: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    return volume[tuple(slice(s, s + c) for s, c in zip(start, size))]


@torch.no_grad()
def _satt_map(encoder: SASwinEncoder, image: torch.Tensor) -> torch.Tensor:
    """(X, Y, Z) SATT of ``image`` (X, Y, Z), upsampled to the image grid."""
    device = next(encoder.parameters()).device
    out = encoder(image[None, None].to(device))
    return out.attention_volume(image.shape)[0, 0].cpu()


def _view_maps(
    encoder: SASwinEncoder | None,
    name: str,
    image: torch.Tensor,
    hu: torch.Tensor,
    spacing: Sequence[float],
    options: Mapping[str, Any],
    seed: int,
) -> dict[str, torch.Tensor]:
    """The maps to score on one view (unpadded grid); the encoder sees it padded to a multiple of 32."""
    maps = {
        "center_gaussian": center_gaussian_map(image.shape, options["gaussian_sigma_fraction"]),
        "soft_tissue": soft_tissue_map(hu, options["soft_tissue_hu"], options["soft_tissue_sigma_mm"], spacing),
        "noise": noise_map(image.shape, seed),
    }
    if encoder is not None:
        multiple = encoder.min_input_multiple
        padded = DivisiblePad(k=multiple, method="end")(image[None])[0]
        maps[name] = _satt_map(encoder, padded)[tuple(slice(0, s) for s in image.shape)]
    return maps


def localize_case(
    encoder: SASwinEncoder | None,
    case: Mapping[str, torch.Tensor],
    name: str = "encoder",
    percentile: float = 90.0,
    body_hu: float | None = -500.0,
    input_mode: str = "full",
    roi_size: Sequence[int] = (128, 128, 128),
    num_random_crops: int = 0,
    crop_size: Sequence[int] = (64, 64, 64),
    min_tumour_fraction: float = 0.5,
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    gaussian_sigma_fraction: float = 0.25,
    soft_tissue_hu: Sequence[float] = (0.0, 100.0),
    soft_tissue_sigma_mm: float = 4.0,
    seed: int = 0,
    keep_maps: bool = False,
) -> list[dict[str, Any]]:
    """Dice of SATT and of the baselines on every view of one preprocessed case.

    Args:
        encoder: the encoder, in eval mode; None scores only the baselines.
        case: ``image`` (1, X, Y, Z) in [0, 1], ``hu`` (1, X, Y, Z) HU, ``label`` (1, X, Y, Z) tumour mask
            (non-zero = tumour), on one grid (see :func:`localization_preprocessing`).
        name: key of the encoder's Dice in the results.
        percentile: threshold percentile (90, SMART).
        body_hu: evaluation region = voxels above this HU (-500) **[choice]**; None: all real voxels.
        input_mode: ``"full"`` the whole volume; ``"center"`` a centre crop/pad to ``roi_size``.
        roi_size: view size of ``"center"``.
        num_random_crops: random off-centre views of ``crop_size`` keeping >= ``min_tumour_fraction``
            of the tumour (0: none).
        crop_size, min_tumour_fraction: see :func:`random_tumour_crops`.
        spacing: voxel size (mm) of the preprocessed grid, for the soft-tissue smoothing.
        gaussian_sigma_fraction, soft_tissue_hu, soft_tissue_sigma_mm: baseline settings.
        seed: seed of the crops and of the noise map.
        keep_maps: also return the view's image, tumour, region and maps (for figures).

    Returns:
        one dict per view: ``view``, ``shape``, ``start`` (crop corner or None), ``tumour_voxels``,
        ``region_voxels``, ``dice`` ``{method: value}``, and with ``keep_maps`` a ``maps`` entry.
    """
    image, hu = case["image"][0].float(), case["hu"][0].float()
    tumour = case["label"][0] > 0
    valid = torch.ones_like(tumour)
    options = dict(
        gaussian_sigma_fraction=gaussian_sigma_fraction,
        soft_tissue_hu=soft_tissue_hu,
        soft_tissue_sigma_mm=soft_tissue_sigma_mm,
    )
    views: list[tuple[str, tuple[int, ...] | None, tuple[torch.Tensor, ...]]] = []
    if input_mode == "full":
        views.append(("full", None, (image, hu, tumour, valid)))
    elif input_mode == "center":
        resize = ResizeWithPadOrCrop(roi_size)
        # padding is air, never tumour, never evaluated
        image_c, hu_c, tumour_c, valid_c = (
            convert_to_tensor(resize(v[None].float(), value=fill)[0], track_meta=False) for v, fill in zip((image, hu, tumour, valid), (0.0, -1000.0, 0, 0))
        )
        views.append(("center", None, (image_c, hu_c, tumour_c > 0, valid_c > 0)))
    else:
        raise ValueError(f"input_mode must be 'full' or 'center', got '{input_mode}'.")
    if num_random_crops > 0:
        pad = SpatialPad(crop_size, method="symmetric")
        padded = [convert_to_tensor(pad(v[None].float(), value=f)[0], track_meta=False) for v, f in zip((image, hu, tumour, valid), (0.0, -1000.0, 0, 0))]
        padded[2], padded[3] = padded[2] > 0, padded[3] > 0
        for k, start in enumerate(random_tumour_crops(padded[2], crop_size, num_random_crops, min_tumour_fraction, seed)):
            views.append((f"crop_{k}", start, tuple(_crop(v, start, crop_size) for v in padded)))
    results = []
    for k, (view, start, (v_image, v_hu, v_tumour, v_valid)) in enumerate(views):
        region = v_valid if body_hu is None else v_valid & (v_hu > body_hu)
        maps = _view_maps(encoder, name, v_image, v_hu, spacing, options, seed + k)
        dice = {method: dice_score(threshold_at_percentile(m, region, percentile), v_tumour) for method, m in maps.items()}
        entry: dict[str, Any] = {
            "view": view,
            "shape": list(v_image.shape),
            "start": None if start is None else list(start),
            "tumour_voxels": int(v_tumour.sum()),
            "region_voxels": int(region.sum()),
            "dice": dice,
        }
        if keep_maps:
            entry["maps"] = {"image": v_image, "tumour": v_tumour, "region": region, **maps}
        results.append(entry)
    return results


def _summary(cases: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean, std and count of every method's Dice, per view kind (``full``/``center`` and ``random_crop``)."""
    groups: dict[str, dict[str, list[float]]] = {}
    for entry in cases:
        kind = "random_crop" if entry["view"].startswith("crop_") else entry["view"]
        for method, value in entry["dice"].items():
            groups.setdefault(kind, {}).setdefault(method, []).append(value)
    return {
        kind: {m: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)} for m, v in methods.items()}
        for kind, methods in groups.items()
    }


def _show_slice(ax: Any, volume: torch.Tensor, tumour: torch.Tensor, z: int, **kwargs: Any) -> None:
    """Axial slice ``z`` of an (X, Y, Z) RAS volume with the tumour contour: x to the right, y up."""
    ax.imshow(np.rot90(volume[:, :, z].float().numpy()), **kwargs)
    ax.contour(np.rot90(tumour[:, :, z].float().numpy()), levels=[0.5], colors="lime", linewidths=1)
    ax.set_axis_off()


def _plot_overlays(figures: Sequence[tuple[str, Mapping[str, torch.Tensor], Mapping[str, float]]], name: str,
                   percentile: float, path: Path) -> None:
    """One row per view: CT + tumour, the encoder's map and each baseline's thresholded map, axial slice at the tumour."""
    from matplotlib.figure import Figure  # no pyplot: headless and no global state

    methods = [m for m in (name, *BASELINES) if m in figures[0][1]]
    fig = Figure(figsize=(3.0 * (len(methods) + 1), 3.0 * len(figures)), constrained_layout=True)
    axes = np.atleast_2d(fig.subplots(len(figures), len(methods) + 1, squeeze=False))
    for row, (title, maps, dice) in zip(axes, figures):
        tumour = maps["tumour"]
        z = int(torch.nonzero(tumour)[:, 2].float().mean().round()) if tumour.any() else tumour.shape[2] // 2
        _show_slice(row[0], maps["image"], tumour, z, cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"{title}\nCT (tumour in green)", fontsize=8)
        for ax, method in zip(row[1:], methods):
            prediction = threshold_at_percentile(maps[method], maps["region"], percentile)
            _show_slice(ax, maps["image"], tumour, z, cmap="gray", vmin=0, vmax=1)
            ax.imshow(np.rot90(maps[method][:, :, z].float().numpy()), cmap="jet", alpha=0.35)
            ax.contour(np.rot90(prediction[:, :, z].float().numpy()), levels=[0.5], colors="red", linewidths=1)
            ax.set_title(f"{method}\nDice {dice[method]:.2f} (p{percentile:g} in red)", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def zero_shot_localization(
    encoder: SASwinEncoder | None,
    items: Sequence[Mapping[str, Any]],
    name: str = "encoder",
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    hu_range: Sequence[float] = (-1000.0, 1000.0),
    label_values: Sequence[int] | None = None,
    num_overlays: int = 0,
    overlay_path: str | Path | None = None,
    seed: int = 0,
    **view_options: Any,
) -> dict[str, Any]:
    """Zero-shot localization Dice of ``encoder``'s SATT and of the baselines over ``items``.

    Args:
        encoder: a (pretrained) :class:`SASwinEncoder` with semantic attention; None: baselines only.
        items: ``{"image", "label"[, "case"]}`` file paths (see :func:`image_label_datalist`).
        name: the encoder's key in the results ("encoder").
        spacing: resampling in mm ((2, 2, 2): the papers').
        hu_range: intensity window of pretraining ((-1000, 1000): this project's pretraining default).
        label_values: label ids that are tumour (e.g. ``[8]`` for the phantoms' nodules); None: any non-zero.
        num_overlays: views drawn in ``overlay_path`` (the first ones).
        overlay_path: PNG of the overlays.
        seed: base seed of the random crops and noise (case k uses ``seed + k``).
        view_options: passed to :func:`localize_case` (``percentile``, ``body_hu``, ``input_mode``,
            ``roi_size``, ``num_random_crops``, ``crop_size``, ``min_tumour_fraction``, baseline settings).

    Returns:
        ``{"settings", "cases": [per view: case, image, label, view, dice, ...], "summary": {view kind:
        {method: {mean, std, n}}}}``.
    """
    if encoder is not None:
        if encoder.semantic_attention is None:
            raise ValueError("zero-shot localization needs an encoder with semantic attention (SATT).")
        encoder.eval()
    if not items:
        raise ValueError("zero_shot_localization got no cases.")
    preprocessing = localization_preprocessing(spacing, hu_range)
    cases, figures = [], []
    for k, item in enumerate(items):
        for key in ("image", "label"):
            if key not in item:
                raise ValueError(f"case {k} has no '{key}' (keys: {sorted(item)}).")
        data = preprocessing({"image": item["image"], "label": item["label"]})
        if label_values is not None:
            data["label"] = torch.isin(data["label"].round().long(), torch.as_tensor(list(label_values))).float()
        if not bool((data["label"] > 0).any()):
            logger.warning(f"case '{item['label']}' has no tumour voxel after resampling: skipped.")
            continue
        case_name = str(item.get("case", Path(item["image"]).name))
        keep = len(figures) < num_overlays
        for entry in localize_case(encoder, data, name=name, spacing=spacing, seed=seed + k, keep_maps=keep,
                                   **view_options):
            maps = entry.pop("maps", None)
            if maps is not None and len(figures) < num_overlays:
                figures.append((f"{case_name} [{entry['view']}]", maps, entry["dice"]))
            cases.append({"case": case_name, "image": str(item["image"]), "label": str(item["label"]), **entry})
            logger.info(f"{case_name} [{entry['view']}]: " + ", ".join(f"{m} {v:.3f}" for m, v in entry["dice"].items()))
    if not cases:
        raise ValueError("no case with a tumour voxel: check label_values and the masks.")
    if figures and overlay_path is not None:
        _plot_overlays(figures, name, float(view_options.get("percentile", 90.0)), Path(overlay_path))
    settings = {"name": name, "spacing": list(spacing), "hu_range": list(hu_range), "label_values": label_values,
                "seed": seed, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in view_options.items()}}
    return {"settings": settings, "cases": cases, "summary": _summary(cases)}


def run_zero_shot_localization(
    encoder: SASwinEncoder | None,
    items: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    num_overlays: int = 4,
    **kwargs: Any,
) -> dict[str, Any]:
    """Bundle entry point: :func:`zero_shot_localization`, then ``localization.json`` and ``localization.png`` in ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    result = zero_shot_localization(encoder, items, num_overlays=num_overlays,
                                    overlay_path=output_dir / "localization.png", **kwargs)
    (output_dir / "localization.json").write_text(json.dumps(result, indent=2) + "\n")
    for kind, methods in result["summary"].items():
        logger.info(f"{kind}: " + ", ".join(f"{m} {s['mean']:.3f} +- {s['std']:.3f} (n={s['n']})"
                                            for m, s in methods.items()))
    return result
