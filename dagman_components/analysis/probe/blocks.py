"""Probe data: the labelled 16^3-voxel blocks of the tumour CTs and the organ CT, preprocessed as pretraining and cached.

See the package docstring (:py:mod:`dagman_components.analysis.probe`) for the block labels and the preprocessing."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, LoadImaged, SpatialCrop

from dagman_components.analysis.localization import image_label_datalist, localization_preprocessing

__all__ = ["ProbeBlocks", "ProbeData", "tumour_datalist", "check_same_grid", "label_tumour_blocks", "label_organ_blocks", "block_intensity_statistics", "prepare_tumour_blocks", "prepare_organ_blocks", "prepare_probe_data", "block_location", "TUMOUR_SOURCES", "ORGAN_SOURCE", "DEFAULT_PREPROCESSING", "INTENSITY_STATISTICS", "LOCATION_FEATURES", "TILINGS", "DEFAULT_TILING", "PER_BLOCK_POSITION"]

logger = logging.getLogger(__name__)

#: name -> (image glob under the data folder, (image-name part, mask-name part)): the real data's layouts.
TUMOUR_SOURCES: dict[str, tuple[str, tuple[str, str]]] = {
    "sts": ("sts/*/CT_image.nii.gz", ("CT_image", "CT_mask")),
    "chest": ("chest/*_ct.nii.gz", ("_ct", "_lesion")),
}

#: organ CT + label map layout under the data folder: (image glob, (image-name part, label-name part)).
ORGAN_SOURCE: tuple[str, tuple[str, str]] = ("organs/*_ct.nii.gz", ("_ct", "_seg"))

#: train.yaml's preprocessing, used where no pretrain config says otherwise (:py:func:`preprocessing_from_config`)
DEFAULT_PREPROCESSING: dict[str, tuple[float, ...]] = {"spacing": (2.0, 2.0, 2.0), "hu_range": (-1000.0, 1000.0)}

#: the intensity baseline's statistics of the windowed [0, 1] intensities of each block.
INTENSITY_STATISTICS: tuple[str, ...] = ("mean", "std", "p10", "p90")

#: where a block lies in its case's cropped volume: |offset| of its centre from the volume's centre along x, y, z
#: (fractions of the extent, 0..0.5) and the Euclidean norm of the three. Tumour-centred crops (``sts/``) make this
#: alone a strong tumour predictor (AUC 0.963 on ``sts/``, docs/results/study.md, twelfth session).
LOCATION_FEATURES: tuple[str, ...] = ("abs_dx", "abs_dy", "abs_dz", "radius")

#: how the encoder inputs are cut around the labelled blocks. ``"grid"``: the padded volume cut into
#: ``tile_size`` tiles on a fixed grid, each tile read once for all its blocks; a block then lies at one
#: of (t / b)^3 positions of its tile, and that position, which features carry, predicts tumour blocks
#: of tumour-centred crops (a one-hot of it alone: AUC 0.76 on ``sts/``). ``"per_block"``: every block
#: gets its own tile with the block at :py:data:`PER_BLOCK_POSITION` (zero padding past the volume), so
#: the position says nothing and no two blocks share a tile; 17 times more encoder work on ``sts/``
#: (2350 tiles against 139).
TILINGS: tuple[str, ...] = ("grid", "per_block")

#: **[choice]** ``"per_block"``: with ``"grid"`` tiles every pretrained encoder of the study beat its random
#: init on the tumour probe by 0.018-0.036 AUC; with ``"per_block"`` tiles the same encoders and inits score
#: 0.92-0.95 and the gain is gone (docs/results/study.md, twelfth session). The grid gain was the position.
DEFAULT_TILING: str = "per_block"

#: ``"per_block"`` tiling: the block's index along each axis among the t / b blocks of its tile (1: one
#: block of context before it and t / b - 2 after, at ``tile_size`` 64, ``block_size`` 16).
PER_BLOCK_POSITION: int = 1


@dataclass
class ProbeBlocks:
    """Preprocessed tiles and labelled blocks of one data set (tumour or organ), computed once.

    Attributes:
        kind: ``"tumour"`` or ``"organ"``.
        tiles: (T, 1, t, t, t) float32 windowed tiles that hold at least one labelled block (CPU); with
            ``"per_block"`` tiling (0, 1, t, t, t): the tiles are cut from ``volumes`` as they are read
            (:py:meth:`tile_batches`), T = M of them.
        block_tile: (M,) int64 tile of each labelled block.
        block_token: (M,) int64 position of the block in its tile's token grid (row-major, (t / b)^3).
        location: (M, 4) float64 :py:data:`LOCATION_FEATURES` of each block in its case's cropped volume.
        labels: (M,) int64 class: 1 tumour / 0 tissue, or the organ id.
        groups: (M,) int64 case index of each block (into ``cases``).
        intensity: (M, 4) float64 mean, std, 10th and 90th percentile of the block's windowed intensities.
        cases: case names (e.g. ``"sts/STS_001/CT_image.nii.gz"``).
        class_names: class -> name.
        tile_size: t, voxels per tile side (64).
        block_size: b, voxels per block side (16: the encoder's token stride).
        blocks_per_case: case name -> {class name: count}.
        settings: the preprocessing settings.
        tiling: one of :py:data:`TILINGS` ("grid").
        volumes: ``"per_block"`` only: each case's windowed volume, zero-padded by the tile's context on every
            side ((X + t - b, Y + t - b, Z + t - b), CPU); tile i is ``volumes[c][x:x+t, y:y+t, z:z+t]`` with
            (c, x, y, z) = ``tile_origin[i]``.
        tile_origin: ``"per_block"`` only: (T, 4) int64 case and corner of each tile in ``volumes``.
    """

    kind: str
    tiles: torch.Tensor
    block_tile: np.ndarray
    block_token: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    intensity: np.ndarray
    cases: list[str]
    class_names: dict[int, str]
    tile_size: int
    block_size: int
    blocks_per_case: dict[str, dict[str, int]]
    settings: dict[str, Any]
    location: np.ndarray = field(default_factory=lambda: np.zeros((0, len(LOCATION_FEATURES))))
    tiling: str = "grid"
    volumes: list[torch.Tensor] = field(default_factory=list, repr=False)
    tile_origin: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64), repr=False)
    _device_tiles: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_blocks(self) -> int:
        """M, the number of labelled blocks."""
        return int(len(self.labels))

    def class_counts(self) -> dict[str, int]:
        """Class name -> number of blocks."""
        values, counts = np.unique(self.labels, return_counts=True)
        return {self.class_names.get(int(v), str(int(v))): int(n) for v, n in zip(values, counts)}

    @property
    def num_tiles(self) -> int:
        """T, the number of encoder input tiles."""
        return int(len(self.tile_origin)) if self.tiling == "per_block" else int(self.tiles.shape[0])

    def tile_batches(self, batch_size: int, device: torch.device | str) -> Iterator[torch.Tensor]:
        """The tiles in order, ``batch_size`` at a time, each batch (B, 1, t, t, t) on ``device``."""
        batch_size = max(1, int(batch_size))
        if self.tiling != "per_block":
            tiles = self.tiles_on(device)
            for start in range(0, len(tiles), batch_size):
                yield tiles[start : start + batch_size]
            return
        t = self.tile_size
        for start in range(0, self.num_tiles, batch_size):
            batch = [self.volumes[c][x : x + t, y : y + t, z : z + t] for c, x, y, z in self.tile_origin[start : start + batch_size]]
            yield torch.stack(batch)[:, None].to(device)

    def tiles_on(self, device: torch.device | str) -> torch.Tensor:
        """The tiles on ``device``, copied there once and kept (the CPU tensor itself on CPU)."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.tiles
        key = str(device)
        if key not in self._device_tiles:
            self._device_tiles[key] = self.tiles.to(device)
        return self._device_tiles[key]

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: cases, blocks per class and per case, tiles, settings."""
        return {
            "cases": list(self.cases),
            "num_blocks": self.num_blocks,
            "blocks": self.class_counts(),
            "blocks_per_case": self.blocks_per_case,
            "num_tiles": self.num_tiles,
            "tiling": self.tiling,
            "tile_size": self.tile_size,
            "block_size": self.block_size,
            "settings": self.settings,
        }


@dataclass
class ProbeData:
    """The tumour blocks and (optionally) the organ blocks a probe runs on.

    Attributes:
        tumour: the tumour/tissue blocks.
        organ: the organ blocks, or None (no organ data, or fewer than 2 organs with enough blocks).
        organ_reason: why ``organ`` is None, else None.
        data_dir: the data folder.
        key: cache key (files, modification times, settings).
    """

    tumour: ProbeBlocks
    organ: ProbeBlocks | None
    organ_reason: str | None
    data_dir: str
    key: tuple


def tumour_datalist(
    data_dir: str | os.PathLike,
    sources: Sequence[str] = ("sts",),
    image_glob: str | None = None,
    label_replace: Sequence[str] | None = None,
    datalist: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """(image, tumour mask) pairs under ``data_dir``.

    Args:
        data_dir: the data folder (e.g. ``../shared/data/real``).
        sources: names of :py:data:`TUMOUR_SOURCES` to collect (``("sts",)``; add ``"chest"``), or
            ``"*/CT_image.nii.gz"``-style globs are given through ``image_glob`` instead.
        image_glob, label_replace: a custom layout, e.g. ``"*_ct.nii.gz"`` and ``("_ct", "_lesion")``;
            overrides ``sources``.
        datalist: a Decathlon-style JSON of ``image``/``label`` pairs (relative to ``data_dir``); overrides both.

    Returns:
        ``[{"image", "label", "case"}, ...]`` with absolute paths.

    Raises:
        ValueError: ``data_dir`` is not a folder, an unknown source, or no (image, mask) pair found.
        FileNotFoundError: an image whose mask file is missing (names both).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data folder '{data_dir}' does not exist or is not a folder.")
    if datalist is not None:
        return image_label_datalist(data_dir, datalist=datalist)
    layouts: list[tuple[str, Sequence[str]]]
    if image_glob is not None:
        if label_replace is None:
            raise ValueError("image_glob needs label_replace=(image-name part, mask-name part).")
        layouts = [(image_glob, label_replace)]
    else:
        unknown = [s for s in sources if s not in TUMOUR_SOURCES]
        if unknown:
            raise ValueError(f"unknown tumour sources {unknown}; known: {sorted(TUMOUR_SOURCES)}.")
        layouts = [TUMOUR_SOURCES[s] for s in sources]
    items: list[dict[str, Any]] = []
    for pattern, replace in layouts:
        if not list(data_dir.glob(pattern)):
            continue
        items += image_label_datalist(data_dir, image_glob=pattern, label_replace=replace)
    if not items:
        wanted = ", ".join(f"'{p}' + mask ('{r[0]}' -> '{r[1]}')" for p, r in layouts)
        raise ValueError(f"data folder '{data_dir}' has no (image, mask) pair: looked for {wanted}.")
    return items


def _organ_items(data_dir: Path) -> list[dict[str, Any]]:
    pattern, replace = ORGAN_SOURCE
    if not list(data_dir.glob(pattern)):
        return []
    return image_label_datalist(data_dir, image_glob=pattern, label_replace=replace)


def check_same_grid(image: str | os.PathLike, label: str | os.PathLike, atol: float = 1e-3) -> None:
    """Raise ValueError, naming both files and shapes, when ``label`` is not on ``image``'s voxel grid.

    Reads only the NIfTI headers: the spatial shapes must be equal and the affines equal within ``atol`` (mm).
    """
    image_header, label_header = nib.load(str(image)), nib.load(str(label))
    image_shape, label_shape = tuple(image_header.shape[:3]), tuple(label_header.shape[:3])
    if image_shape != label_shape:
        raise ValueError(
            f"mask '{label}' has shape {label_shape} but its image '{image}' has shape {image_shape}: "
            "the mask must be on the image's voxel grid."
        )
    if not np.allclose(image_header.affine, label_header.affine, atol=atol):
        raise ValueError(
            f"mask '{label}' (shape {label_shape}) and its image '{image}' (shape {image_shape}) have different "
            f"affines:\n{np.round(label_header.affine, 3)}\nvs\n{np.round(image_header.affine, 3)}\n"
            "the mask must be on the image's voxel grid."
        )


def _blockwise(volume: torch.Tensor, block: int) -> torch.Tensor:
    """(X, Y, Z) with sizes multiples of ``block`` -> (gx, gy, gz, block^3) voxels of each block."""
    gx, gy, gz = (int(s) // block for s in volume.shape)
    v = volume.reshape(gx, block, gy, block, gz, block).permute(0, 2, 4, 1, 3, 5)
    return v.reshape(gx, gy, gz, block**3)


def _check_divisible(shape: Sequence[int], block: int) -> None:
    if len(shape) != 3 or any(int(s) % block for s in shape):
        raise ValueError(f"volume shape {tuple(shape)} must be 3D with sizes multiples of the block size {block}.")


def label_tumour_blocks(
    tumour: torch.Tensor,
    body: torch.Tensor,
    block_size: int = 16,
    tumour_fraction: float = 0.5,
    body_fraction: float = 0.5,
) -> torch.Tensor:
    """Class of each ``block_size``^3 block: 1 tumour, 0 tissue, -1 left out.

    Args:
        tumour: (X, Y, Z) boolean tumour mask, sizes multiples of ``block_size``.
        body: (X, Y, Z) boolean body mask (HU > -500), same shape.
        block_size: voxels per block side (16).
        tumour_fraction: tumour when at least this fraction of the block is tumour (0.5).
        body_fraction: tissue when no voxel is tumour and at least this fraction is body (0.5).

    Returns:
        (gx, gy, gz) int64.
    """
    if tumour.shape != body.shape:
        raise ValueError(f"tumour mask {tuple(tumour.shape)} and body mask {tuple(body.shape)} differ in shape.")
    _check_divisible(tumour.shape, block_size)
    t = _blockwise(tumour.float(), block_size).mean(-1)
    b = _blockwise(body.float(), block_size).mean(-1)
    labels = torch.full(t.shape, -1, dtype=torch.int64)
    labels[(t == 0) & (b >= body_fraction)] = 0
    labels[t >= tumour_fraction] = 1
    return labels


def label_organ_blocks(label_map: torch.Tensor, block_size: int = 16, organ_fraction: float = 0.5) -> torch.Tensor:
    """Organ id of each block whose most frequent organ fills at least ``organ_fraction`` of it, else -1.

    Args:
        label_map: (X, Y, Z) integer organ ids (0 = background, never a class), sizes multiples of ``block_size``.
        block_size: voxels per block side (16).
        organ_fraction: minimal fraction of the block's voxels (0.5).

    Returns:
        (gx, gy, gz) int64.
    """
    _check_divisible(label_map.shape, block_size)
    ids = _blockwise(label_map.round().long(), block_size)
    organs = [int(v) for v in torch.unique(ids) if int(v) > 0]
    result = torch.full(ids.shape[:3], -1, dtype=torch.int64)
    if not organs:
        return result
    fractions = torch.stack([(ids == v).float().mean(-1) for v in organs])  # (K, gx, gy, gz)
    best, index = fractions.max(0)
    chosen = torch.as_tensor(organs, dtype=torch.int64)[index]
    result[best >= organ_fraction] = chosen[best >= organ_fraction]
    return result


def block_intensity_statistics(image: torch.Tensor, block_size: int = 16) -> torch.Tensor:
    """(gx, gy, gz, 4) mean, std, 10th and 90th percentile of ``image`` (X, Y, Z) in each block."""
    _check_divisible(image.shape, block_size)
    voxels = _blockwise(image.float(), block_size)
    flat = voxels.reshape(-1, voxels.shape[-1]).numpy()
    p10, p90 = np.percentile(flat, [10.0, 90.0], axis=1)
    stats = np.stack([flat.mean(1), flat.std(1), p10, p90], axis=1)
    return torch.as_tensor(stats, dtype=torch.float64).reshape(*voxels.shape[:3], 4)


def _load_case(
    image: str,
    label: str,
    spacing: Sequence[float],
    hu_range: Sequence[float],
    label_offset: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Image and mask on one RAS grid at ``spacing``: ``image`` [0, 1], ``hu``, ``label``, each (1, X, Y, Z)."""
    shapes = tuple(nib.load(image).shape[:3]), tuple(nib.load(label).shape[:3])
    offset_used = label_offset is not None and shapes[0] != shapes[1]
    if offset_used:
        start = [int(o) for o in label_offset]  # type: ignore[union-attr]
        if any(s < 0 or s + n > m for s, n, m in zip(start, shapes[1], shapes[0])):
            raise ValueError(
                f"mask '{label}' (shape {shapes[1]}) does not fit inside its image '{image}' (shape {shapes[0]}) "
                f"at label_offset {tuple(start)}."
            )
    else:
        check_same_grid(image, label)
    chain = localization_preprocessing(spacing, hu_range)
    loader, rest = chain.transforms[0], Compose(chain.transforms[1:])
    if not isinstance(loader, LoadImaged):  # the chain's layout is what this function relies on
        raise RuntimeError("localization_preprocessing no longer starts with LoadImaged.")
    data = loader({"image": image, "label": label})
    if offset_used:
        # the label map covers a sub-block of the CT whose header does not say where: cut that block out
        data["image"] = SpatialCrop(roi_start=start, roi_end=[s + n for s, n in zip(start, shapes[1])])(data["image"])
        data["label"].affine = data["image"].affine.clone()
    return rest(data)


def _crop_pad(
    volumes: Sequence[torch.Tensor], body: torch.Tensor, tile_size: int, margin: int, crop: bool
) -> tuple[list[torch.Tensor], tuple[int, ...]]:
    """Crop (X, Y, Z) volumes to the body's bounding box (+ ``margin``) and pad at the far end to multiples of the tile.

    Returns the volumes and the cropped extent before padding (X', Y', Z')."""
    if crop and bool(body.any()):
        coords = torch.nonzero(body)
        lo = (coords.min(0).values - margin).clamp(min=0)
        hi = torch.minimum(coords.max(0).values + 1 + margin, torch.as_tensor(body.shape))
        region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        volumes = [v[region] for v in volumes]
    extent = tuple(int(s) for s in volumes[0].shape)
    out = []
    for v in volumes:
        pad = [(-int(s)) % tile_size for s in v.shape]
        # F.pad takes the last axis first; zero = the bottom of the window / no tumour / no body
        out.append(F.pad(v[None, None].float(), (0, pad[2], 0, pad[1], 0, pad[0]))[0, 0].to(v.dtype))
    return out, extent


def block_location(index: torch.Tensor | np.ndarray, extent: Sequence[int], block_size: int) -> np.ndarray:
    """(M, 4) :py:data:`LOCATION_FEATURES` of blocks at grid ``index`` (M, 3) in a volume of ``extent`` voxels."""
    index = np.asarray(index, dtype=np.float64).reshape(-1, 3)
    offset = np.abs((index + 0.5) * block_size / np.asarray(extent, dtype=np.float64) - 0.5)
    return np.hstack([offset, np.sqrt((offset**2).sum(1, keepdims=True))])


def _tiles_and_blocks(
    image: torch.Tensor, labels: torch.Tensor, tile_size: int, block_size: int
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Tiles holding a labelled block and, per labelled block, its tile, its token index and its (gx, gy, gz) index.

    Returns (tiles (T, 1, t, t, t), block_tile (M,), block_token (M,), block grid indices (M, 3) int64 tensor).
    """
    per = tile_size // block_size
    index = torch.nonzero(labels >= 0)  # (M, 3) block coordinates, row-major order
    if len(index) == 0:
        empty = np.zeros(0, np.int64)
        return torch.zeros(0, 1, tile_size, tile_size, tile_size), empty, empty, index
    tile_xyz = index // per
    local = index % per
    token = (local[:, 0] * per + local[:, 1]) * per + local[:, 2]
    unique, tile_of_block = torch.unique(tile_xyz, dim=0, return_inverse=True)
    tiles = torch.stack(
        [image[tuple(slice(int(c) * tile_size, (int(c) + 1) * tile_size) for c in corner)] for corner in unique]
    )[:, None]
    return tiles.contiguous(), tile_of_block.numpy().astype(np.int64), token.numpy().astype(np.int64), index


def _per_block_tiles(
    image: torch.Tensor, labels: torch.Tensor, tile_size: int, block_size: int, position: int = PER_BLOCK_POSITION
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, torch.Tensor]:
    """``"per_block"`` tiling: one tile per labelled block, the block at ``position`` along each axis of its tile.

    Returns (the image zero-padded by ``position * b`` before and ``t - (position + 1) * b`` after each axis,
    tile corners (M, 3) in it, block_token (M,), block grid indices (M, 3) int64 tensor); tile i is
    ``padded[x:x+t, y:y+t, z:z+t]`` at corner i, which is the block's own voxel corner in the unpadded image.
    """
    per = tile_size // block_size
    if not 0 <= int(position) < per:
        raise ValueError(f"per-block position {position} must be in [0, {per}) (tile {tile_size}, block {block_size}).")
    index = torch.nonzero(labels >= 0)  # (M, 3), row-major: the grid tiling's block order
    low, high = int(position) * block_size, tile_size - (int(position) + 1) * block_size
    padded = F.pad(image[None, None].float(), (low, high, low, high, low, high))[0, 0]
    token = (int(position) * per + int(position)) * per + int(position)
    corners = (index * block_size).numpy().astype(np.int64).reshape(-1, 3)
    return padded, corners, np.full(len(index), token, dtype=np.int64), index


def _tiles_for(
    tiling: str, image: torch.Tensor, labels: torch.Tensor, tile_size: int, block_size: int
) -> dict[str, Any]:
    """One case's encoder inputs under ``tiling``: ``{"tiles", "block_tile", "block_token", "index"}``, plus
    ``"volume"`` and ``"corners"`` for ``"per_block"`` (its ``tiles`` empty)."""
    if tiling == "per_block":
        volume, corners, token, index = _per_block_tiles(image, labels, tile_size, block_size)
        return {"tiles": torch.zeros(0, 1, tile_size, tile_size, tile_size), "block_tile": np.arange(len(index)),
                "block_token": token, "index": index, "volume": volume, "corners": corners}
    tiles, block_tile, token, index = _tiles_and_blocks(image, labels, tile_size, block_size)
    return {"tiles": tiles, "block_tile": block_tile, "block_token": token, "index": index}


def _check_tiling_name(tiling: str) -> None:
    if tiling not in TILINGS:
        raise ValueError(f"tiling must be one of {TILINGS}, got '{tiling}'.")


def _file_key(items: Sequence[Mapping[str, Any]]) -> tuple:
    key = []
    for item in items:
        for path in (item["image"], item["label"]):
            stat = os.stat(path)
            key.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(key)


def _assemble(
    kind: str,
    parts: Sequence[dict[str, Any]],
    class_names: dict[int, str],
    tile_size: int,
    block_size: int,
    settings: dict[str, Any],
) -> ProbeBlocks:
    """One :py:class:`ProbeBlocks` from the per-case parts (tiles and blocks re-indexed)."""
    tiles, block_tile, tokens, labels, groups, intensity, cases, per_case = [], [], [], [], [], [], [], {}
    location, volumes, origins = [], [], []
    offset = 0
    for case_index, part in enumerate(parts):
        tiles.append(part["tiles"])
        block_tile.append(part["block_tile"] + offset)
        if "volume" in part:  # per-block tiling: tile i of this case is its i-th block's
            origins.append(np.hstack([np.full((len(part["corners"]), 1), len(volumes), np.int64), part["corners"]]))
            volumes.append(part["volume"])
            offset += len(part["corners"])
        else:
            offset += len(part["tiles"])
        location.append(part["location"])
        tokens.append(part["block_token"])
        labels.append(part["labels"])
        groups.append(np.full(len(part["labels"]), case_index, dtype=np.int64))
        intensity.append(part["intensity"])
        cases.append(part["case"])
        values, counts = np.unique(part["labels"], return_counts=True)
        per_case[part["case"]] = {class_names.get(int(v), str(int(v))): int(n) for v, n in zip(values, counts)}
    return ProbeBlocks(
        kind=kind,
        tiles=torch.cat(tiles) if tiles else torch.zeros(0, 1, tile_size, tile_size, tile_size),
        block_tile=np.concatenate(block_tile) if block_tile else np.zeros(0, np.int64),
        block_token=np.concatenate(tokens) if tokens else np.zeros(0, np.int64),
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        groups=np.concatenate(groups) if groups else np.zeros(0, np.int64),
        intensity=np.concatenate(intensity) if intensity else np.zeros((0, 4)),
        cases=cases,
        class_names=class_names,
        tile_size=tile_size,
        block_size=block_size,
        blocks_per_case=per_case,
        settings=settings,
        location=np.concatenate(location) if location else np.zeros((0, len(LOCATION_FEATURES))),
        tiling=str(settings.get("tiling", "grid")),
        volumes=volumes,
        tile_origin=np.concatenate(origins) if origins else np.zeros((0, 4), np.int64),
    )


def _check_tiling(tile_size: int, block_size: int) -> None:
    if tile_size <= 0 or block_size <= 0 or tile_size % block_size or tile_size % 32:
        raise ValueError(
            f"tile_size ({tile_size}) must be a multiple of 32 (the encoder's input multiple) and of the "
            f"block size ({block_size})."
        )


def prepare_tumour_blocks(
    items: Sequence[Mapping[str, Any]],
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    hu_range: Sequence[float] = (-1000.0, 1000.0),
    tile_size: int = 64,
    block_size: int = 16,
    body_hu: float = -500.0,
    tumour_fraction: float = 0.5,
    body_fraction: float = 0.5,
    label_values: Sequence[int] | None = None,
    crop_foreground: bool = True,
    margin: int = 2,
    tiling: str = DEFAULT_TILING,
) -> ProbeBlocks:
    """Preprocess (image, tumour mask) pairs and label their blocks (see the module docstring).

    Args:
        items: ``{"image", "label"[, "case"]}`` file paths (:py:func:`tumour_datalist`).
        spacing: voxel size in mm ((2, 2, 2), pretraining).
        hu_range: HU window -> [0, 1] ((-1000, 1000), pretraining).
        tile_size: encoder input tile side in voxels (64, the pretraining crop; a multiple of 32).
        block_size: block side in voxels (16, the token stride at ``sa_stage=3``).
        body_hu: body = HU above this (-500).
        tumour_fraction, body_fraction: the labelling thresholds (0.5, 0.5), :py:func:`label_tumour_blocks`.
        label_values: mask values that are tumour; None: any non-zero.
        crop_foreground: crop to the body's bounding box first, as pretraining does (True).
        margin: voxels kept around that box (2).
        tiling: one of :py:data:`TILINGS` (:py:data:`DEFAULT_TILING`, ``"per_block"``).

    Raises:
        ValueError: no items, a mask off its image's grid (names both files), or no tumour block in any case.
    """
    _check_tiling(tile_size, block_size)
    _check_tiling_name(tiling)
    if not items:
        raise ValueError("prepare_tumour_blocks got no cases.")
    settings = {"spacing": [float(s) for s in spacing], "hu_range": [float(h) for h in hu_range],
                "tile_size": int(tile_size), "block_size": int(block_size), "body_hu": float(body_hu),
                "tumour_fraction": float(tumour_fraction), "body_fraction": float(body_fraction),
                "label_values": None if label_values is None else [int(v) for v in label_values],
                "crop_foreground": bool(crop_foreground), "margin": int(margin), "tiling": str(tiling)}
    parts = []
    for item in items:
        data = _load_case(str(item["image"]), str(item["label"]), spacing, hu_range)
        image, hu, mask = data["image"][0], data["hu"][0], data["label"][0]
        if label_values is None:
            tumour = mask > 0.5
        else:
            tumour = torch.isin(mask.round().long(), torch.as_tensor([int(v) for v in label_values]))
        body = hu > body_hu
        (image, tumour, body), extent = _crop_pad([image, tumour, body], body, tile_size, margin, crop_foreground)
        labels = label_tumour_blocks(tumour, body, block_size, tumour_fraction, body_fraction)
        part = _tiles_for(tiling, image, labels, tile_size, block_size)
        index = part.pop("index")
        stats = block_intensity_statistics(image, block_size)
        case = str(item.get("case", Path(item["image"]).name))
        part.update(case=case, labels=labels[tuple(index.T)].numpy() if len(index) else np.zeros(0, np.int64),
                    intensity=stats[tuple(index.T)].numpy() if len(index) else np.zeros((0, 4)),
                    location=block_location(index, extent, block_size))
        n_tumour = int((part["labels"] == 1).sum())
        logger.info(f"probe: {case}: {tuple(image.shape)} voxels, {n_tumour} tumour and "
                    f"{int((part['labels'] == 0).sum())} tissue blocks in "
                    f"{len(part['corners']) if 'corners' in part else len(part['tiles'])} tiles")
        if n_tumour == 0:
            logger.warning(f"probe: {case} has no block with >= {tumour_fraction:g} tumour (mask '{item['label']}', "
                           f"{int(tumour.sum())} tumour voxels at {settings['spacing']} mm): only its tissue blocks count")
        parts.append(part)
    blocks = _assemble("tumour", parts, {0: "tissue", 1: "tumour"}, tile_size, block_size, settings)
    counts = blocks.class_counts()
    if counts.get("tumour", 0) == 0:
        raise ValueError(
            f"no tumour block in any of the {len(items)} cases ({', '.join(blocks.cases[:5])}"
            f"{' ...' if len(items) > 5 else ''}): no {block_size}^3-voxel block is >= {tumour_fraction:g} tumour "
            "at this spacing. Check the masks (and label_values), or lower tumour_fraction."
        )
    if counts.get("tissue", 0) == 0:
        raise ValueError(f"no tissue block (tumour-free, >= {body_fraction:g} body with HU > {body_hu:g}) in any case.")
    return blocks


def prepare_organ_blocks(
    items: Sequence[Mapping[str, Any]],
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    hu_range: Sequence[float] = (-1000.0, 1000.0),
    tile_size: int = 64,
    block_size: int = 16,
    organ_fraction: float = 0.5,
    min_blocks_per_organ: int = 5,
    label_offset: Sequence[int] | None = (0, 0, 82),
    label_names: Mapping[int, str] | None = None,
    body_hu: float = -500.0,
    crop_foreground: bool = True,
    margin: int = 2,
    tiling: str = DEFAULT_TILING,
) -> tuple[ProbeBlocks | None, str | None]:
    """Preprocess (CT, organ label map) pairs and label their blocks by organ.

    Args:
        items: ``{"image", "label"[, "case"]}`` file paths.
        spacing, hu_range, tile_size, block_size, body_hu, crop_foreground, margin, tiling: as
            :py:func:`prepare_tumour_blocks`.
        organ_fraction: see :py:func:`label_organ_blocks` (0.5).
        min_blocks_per_organ: organs with fewer blocks are left out (5).
        label_offset: voxel (x, y, z) of the CT where a label map *smaller* than the CT starts (its header
            does not say where); used only when the shapes differ. Default (0, 0, 82): the real
            ``organs/example_seg.nii.gz`` covers the last 30 of the CT's 112 slices.
        label_names: organ id -> name; None: TotalSegmentator's names.

    Returns:
        (blocks, None), or (None, reason) when fewer than 2 organs have ``min_blocks_per_organ`` blocks.
    """
    from dagman_components.data.organs import TOTALSEGMENTATOR_LABELS

    _check_tiling(tile_size, block_size)
    _check_tiling_name(tiling)
    names = dict(TOTALSEGMENTATOR_LABELS if label_names is None else label_names)
    settings = {"spacing": [float(s) for s in spacing], "hu_range": [float(h) for h in hu_range],
                "tile_size": int(tile_size), "block_size": int(block_size), "organ_fraction": float(organ_fraction),
                "min_blocks_per_organ": int(min_blocks_per_organ), "body_hu": float(body_hu),
                "label_offset": None if label_offset is None else [int(o) for o in label_offset],
                "crop_foreground": bool(crop_foreground), "margin": int(margin), "tiling": str(tiling)}
    volumes = []
    for item in items:
        data = _load_case(str(item["image"]), str(item["label"]), spacing, hu_range, label_offset)
        image, hu, ids = data["image"][0], data["hu"][0], data["label"][0].round().long()
        (image, ids), extent = _crop_pad([image, ids], hu > body_hu, tile_size, margin, crop_foreground)
        case = str(item.get("case", Path(item["image"]).name))
        volumes.append((case, image, label_organ_blocks(ids, block_size, organ_fraction), extent))
    all_labels = torch.cat([v[2].flatten() for v in volumes])
    organs, counts = torch.unique(all_labels[all_labels >= 0], return_counts=True)
    kept = [int(o) for o, n in zip(organs, counts) if int(n) >= min_blocks_per_organ]
    if len(kept) < 2:
        return None, (f"{len(kept)} organ(s) with >= {min_blocks_per_organ} blocks of {block_size}^3 voxels "
                      f"(>= {organ_fraction:g} one organ) in {[v[0] for v in volumes]}: kNN needs 2")
    parts = []
    for case, image, labels, extent in volumes:
        labels = torch.where(torch.isin(labels, torch.as_tensor(kept)), labels, torch.full_like(labels, -1))
        part = _tiles_for(tiling, image, labels, tile_size, block_size)
        index = part.pop("index")
        if not len(index):
            continue
        stats = block_intensity_statistics(image, block_size)
        part.update(case=case, labels=labels[tuple(index.T)].numpy(), intensity=stats[tuple(index.T)].numpy(),
                    location=block_location(index, extent, block_size))
        parts.append(part)
    class_names = {o: names.get(o, str(o)) for o in kept}
    blocks = _assemble("organ", parts, class_names, tile_size, block_size, settings)
    logger.info(f"probe: organ kNN on {blocks.num_blocks} blocks of {len(kept)} organs in {blocks.num_tiles} tiles")
    return blocks, None


#: prepared data by cache key, kept for the process's lifetime (clear_probe_cache empties it)
_DATA_CACHE: dict[tuple, ProbeData] = {}


def prepare_probe_data(
    data_dir: str | os.PathLike,
    tumour_sources: Sequence[str] = ("sts",),
    image_glob: str | None = None,
    label_replace: Sequence[str] | None = None,
    datalist: str | os.PathLike | None = None,
    label_values: Sequence[int] | None = None,
    organs: bool = True,
    max_cases: int | None = None,
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    hu_range: Sequence[float] = (-1000.0, 1000.0),
    tile_size: int = 64,
    block_size: int = 16,
    body_hu: float = -500.0,
    tumour_fraction: float = 0.5,
    body_fraction: float = 0.5,
    organ_fraction: float = 0.5,
    min_blocks_per_organ: int = 5,
    organ_label_offset: Sequence[int] | None = (0, 0, 82),
    tiling: str = DEFAULT_TILING,
    use_cache: bool = True,
) -> ProbeData:
    """The tumour blocks (and organ blocks, when ``data_dir/organs/*_ct.nii.gz`` + ``*_seg.nii.gz`` exist), cached.

    Args:
        data_dir: the data folder (``../shared/data/real``: ``sts/<case>/CT_image.nii.gz`` + ``CT_mask.nii.gz``,
            ``chest/<name>_ct.nii.gz`` + ``<name>_lesion.nii.gz``, ``organs/example_ct.nii.gz`` + ``example_seg.nii.gz``).
        tumour_sources, image_glob, label_replace, datalist: which tumour cases, :py:func:`tumour_datalist`.
        label_values: tumour mask values; None: any non-zero.
        organs: also prepare the organ kNN data when present (True).
        max_cases: use only the first this many tumour cases (sorted by path); None: all.
        use_cache: reuse the blocks of an earlier call with the same files and settings (True).
        spacing, hu_range, tile_size, block_size, body_hu, tumour_fraction, body_fraction, tiling: see
            :py:func:`prepare_tumour_blocks`; organ_fraction, min_blocks_per_organ, organ_label_offset:
            see :py:func:`prepare_organ_blocks`.

    Returns:
        a :py:class:`ProbeData`.
    """
    data_dir = Path(data_dir)
    items = tumour_datalist(data_dir, tumour_sources, image_glob, label_replace, datalist)
    if max_cases is not None:
        items = items[: int(max_cases)]
    organ_items = _organ_items(data_dir) if organs else []
    spacing = [float(s) for s in spacing]
    hu_range = [float(h) for h in hu_range]
    _check_tiling_name(tiling)
    common = dict(spacing=spacing, hu_range=hu_range, tile_size=int(tile_size), block_size=int(block_size),
                  body_hu=float(body_hu), tiling=str(tiling))
    options = dict(tumour_fraction=float(tumour_fraction), body_fraction=float(body_fraction),
                   label_values=None if label_values is None else tuple(int(v) for v in label_values),
                   organ_fraction=float(organ_fraction), min_blocks_per_organ=int(min_blocks_per_organ),
                   organ_label_offset=None if organ_label_offset is None else tuple(int(o) for o in organ_label_offset))
    key = (_file_key(items), _file_key(organ_items), json.dumps({**common, **options}, sort_keys=True))
    if use_cache and key in _DATA_CACHE:
        logger.info(f"probe: reusing the preprocessed blocks of '{data_dir}'")
        return _DATA_CACHE[key]
    start = time.perf_counter()
    tumour = prepare_tumour_blocks(items, tumour_fraction=tumour_fraction, body_fraction=body_fraction,
                                   label_values=label_values, **common)
    organ, reason = None, "no organ data" if organs else "organs=False"
    if organ_items:
        organ, reason = prepare_organ_blocks(organ_items, organ_fraction=organ_fraction,
                                             min_blocks_per_organ=min_blocks_per_organ,
                                             label_offset=organ_label_offset, **common)
    if reason is not None:
        logger.info(f"probe: no organ kNN ({reason})")
    data = ProbeData(tumour=tumour, organ=organ, organ_reason=reason, data_dir=str(data_dir), key=key)
    logger.info(f"probe: preprocessed {len(items)} tumour cases ({tumour.class_counts()}) "
                f"in {time.perf_counter() - start:.1f} s")
    if use_cache:
        _DATA_CACHE[key] = data
    return data

