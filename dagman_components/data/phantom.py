"""
Deterministic synthetic chest/upper-abdomen CT phantoms with benign and malignant lung nodules.

The phantoms stand in for real CT wherever a test, a smoke run or a tutorial needs volumes with
known content: Hounsfield-unit intensities, an organ label map and a record of every nodule. They are
drawn with numpy only, from a seeded ``numpy.random.Generator``, so one seed always yields
byte-identical volumes (nibabel writes gzip with a fixed header time, so the ``.nii.gz`` files are
byte-identical too).

Anatomy is laid out in "body coordinates": the axial body outline is an ellipse that fills most of the
field of view, and organs are ellipsoids placed relative to it, so the phantom scales with the field of
view (``shape * spacing``, 192 mm by default) while the nodules keep their physical radii in mm.
Array axes are (x, y, z) = (left->right, posterior->anterior, inferior->superior), i.e. RAS, matching the
affine from :py:func:`phantom_affine`.

Command line::

    python -m dagman_components.data.phantom --output_dir /tmp/phantom --num_volumes 4
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = [
    "PHANTOM_LABELS",
    "PHANTOM_HU",
    "BENIGN_RADIUS_MM",
    "MALIGNANT_RADIUS_MM",
    "phantom_affine",
    "make_phantom_volume",
    "generate_phantom_dataset",
]

logger = logging.getLogger(__name__)

#: label-map ids of the phantom's tissues; benign and malignant nodules share id 8 (the per-nodule
#: records in the datalist tell them apart).
PHANTOM_LABELS: dict[str, int] = {
    "background": 0,
    "body": 1,
    "lung": 2,
    "bone": 3,
    "heart": 4,
    "liver": 5,
    "kidney": 6,
    "spleen": 7,
    "nodule": 8,
}

#: mean Hounsfield units of each tissue before per-volume jitter, smoothing and noise
#: (textbook CT values; "fat" and "disc" are labelled as body).
PHANTOM_HU: dict[str, float] = {
    "air": -1000.0,
    "fat": -100.0,
    "soft_tissue": 40.0,
    "abdominal_fat": -70.0,
    "lung": -850.0,
    "bone": 700.0,
    "disc": 80.0,
    "spinal_canal": 15.0,
    "heart": 45.0,
    "liver": 60.0,
    "kidney": 30.0,
    "spleen": 50.0,
    "nodule": 45.0,
}

#: nodule radius ranges in mm, drawn uniformly (benign: small, smooth; malignant: large, spiculated).
BENIGN_RADIUS_MM: tuple[float, float] = (3.0, 6.0)
MALIGNANT_RADIUS_MM: tuple[float, float] = (7.0, 12.0)

_NOISE_STD_HU = 20.0
# HU range representable by a 12-bit CT scanner; clipping keeps air noise physically plausible
_HU_CLIP = (-1024, 3071)
# tries of random lung positions per nodule before giving up (each try is a small local check)
_PLACEMENT_TRIES = 200
# fresh radius/shape draws of a nodule before giving up on it
_SHAPE_DRAWS = 8
_MIN_SIZE = 16


def phantom_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """
    RAS voxel-to-world affine of a phantom: diagonal ``spacing`` with the volume centre at the world origin.

    Args:
        shape: spatial shape (x, y, z).
        spacing: voxel size in mm (x, y, z).

    Returns:
        a (4, 4) float64 affine.
    """
    affine = np.diag([float(s) for s in spacing] + [1.0])
    affine[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1.0) / 2.0 * np.asarray(spacing, dtype=np.float64)
    return affine


def _check_geometry(shape: Sequence[int], spacing: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    shape_t, spacing_t = tuple(int(s) for s in shape), tuple(float(s) for s in spacing)
    if len(shape_t) != 3 or min(shape_t) < _MIN_SIZE:
        raise ValueError(f"shape must be 3 sizes of at least {_MIN_SIZE} voxels, got shape={tuple(shape)}.")
    if len(spacing_t) != 3 or min(spacing_t) <= 0:
        raise ValueError(f"spacing must be 3 positive sizes in mm, got spacing={tuple(spacing)}.")
    return shape_t, spacing_t


def _smooth(volume: np.ndarray) -> np.ndarray:
    """Separable binomial [1, 2, 1] / 4 blur with edge replication: a cheap partial-volume effect."""
    out = volume
    for axis in range(volume.ndim):
        src = np.moveaxis(out, axis, 0)
        blurred = 0.5 * src
        blurred[1:] += 0.25 * src[:-1]
        blurred[:-1] += 0.25 * src[1:]
        blurred[0] += 0.25 * src[0]
        blurred[-1] += 0.25 * src[-1]
        out = np.moveaxis(blurred, 0, axis)
    return np.ascontiguousarray(out)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _random_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _dilate(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Binary dilation by a 3x3x3 box, ``iterations`` times (separable shifts, no scipy)."""
    grown = mask
    for _ in range(iterations):
        for axis in range(mask.ndim):
            src = grown
            grown = src.copy()
            dst, s = np.moveaxis(grown, axis, 0), np.moveaxis(src, axis, 0)
            dst[1:] |= s[:-1]
            dst[:-1] |= s[1:]
    return grown


def _candidate_centers(lung: np.ndarray, half: np.ndarray, core_mm: float, spacing: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    """
    Up to ``_PLACEMENT_TRIES`` random lung voxels whose nodule box fits in the volume and whose core radius
    reaches lung along all 6 axis directions: a cheap pre-filter, so the full check rarely fails.
    """
    idx = np.stack(np.nonzero(lung), axis=1)
    idx = idx[np.all((idx >= half) & (idx < np.asarray(lung.shape) - half), axis=1)]
    reach = np.floor(core_mm / spacing).astype(int)
    for axis in range(3):
        for sign in (-1, 1):
            probe = idx.copy()
            probe[:, axis] += sign * reach[axis]
            idx = idx[lung[probe[:, 0], probe[:, 1], probe[:, 2]]]
    return rng.permutation(idx)[:_PLACEMENT_TRIES]


class _Anatomy:
    """Normalised coordinate grids of one phantom, with helpers to paint ellipsoids in body coordinates."""

    def __init__(self, shape: tuple[int, ...], spacing: tuple[float, ...], rng: np.random.Generator):
        self.rng = rng
        # open grids (broadcast, never materialised at full size) in [-1, 1] over the field of view
        self.u, self.v, self.w = (
            (((np.arange(n, dtype=np.float32) + 0.5) / n) * 2.0 - 1.0).reshape([-1 if a == i else 1 for a in range(3)])
            for i, n in enumerate(shape)
        )
        self.half_fov_mm = [n * s / 2.0 for n, s in zip(shape, spacing)]
        # body outline: an ellipse whose centre sways gently along z, so slices are not all alike
        self.a = rng.uniform(0.78, 0.9)
        self.b = rng.uniform(0.6, 0.72)
        sway = rng.uniform(0.0, 0.03)
        phase = rng.uniform(0, 2 * np.pi)
        cu = rng.uniform(-0.03, 0.03) + sway * np.sin(np.pi * self.w + phase)
        cv = rng.uniform(-0.03, 0.03)
        self.bu = (self.u - cu) / self.a  # (x, 1, z)
        self.bv = (self.v - cv) / self.b  # (1, y, 1)
        self.rho = np.sqrt(self.bu**2 + self.bv**2)  # (x, y, z)

    def jitter(self, value: float, rel: float) -> float:
        return value * (1.0 + self.rng.uniform(-rel, rel))

    def ellipsoid(self, center: Sequence[float], semi: Sequence[float], pos_jitter: float = 0.04,
                  size_jitter: float = 0.1) -> np.ndarray:
        """Boolean ellipsoid in body coordinates (bu, bv, w) with jittered centre and semi-axes."""
        c = [c + self.rng.uniform(-pos_jitter, pos_jitter) for c in center]
        s = [self.jitter(s, size_jitter) for s in semi]
        return ((self.bu - c[0]) / s[0]) ** 2 + ((self.bv - c[1]) / s[1]) ** 2 + ((self.w - c[2]) / s[2]) ** 2 <= 1.0

    def shell(self, inner: np.ndarray, thickness: int = 1) -> np.ndarray:
        """Voxels within ``thickness`` voxels outside ``inner``."""
        grown = _dilate(inner, thickness)
        return grown & ~inner


def _nodule_mask(offsets_mm: list[np.ndarray], radius_mm: float, malignant: bool,
                 rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """
    Boolean nodule shape on a local grid of mm offsets from its centre.

    Benign: a smooth, slightly elongated ellipsoid. Malignant: a lobulated sphere with tapered radial
    spikes (spiculation). Returns the mask and the radius of its solid core, which must lie inside the lung
    (spikes may reach the pleura).
    """
    rot = _random_rotation(rng)
    dx, dy, dz = offsets_mm
    p = [rot[i, 0] * dx + rot[i, 1] * dy + rot[i, 2] * dz for i in range(3)]
    if not malignant:
        semi = radius_mm * (1.0 + rng.uniform(-0.15, 0.15, size=3))
        mask = (p[0] / semi[0]) ** 2 + (p[1] / semi[1]) ** 2 + (p[2] / semi[2]) ** 2 <= 1.0
        return mask, float(semi.max())
    dist = np.sqrt(p[0] ** 2 + p[1] ** 2 + p[2] ** 2)
    safe = np.maximum(dist, 1e-6)
    direction = [c / safe for c in p]
    # lobulation: low-order angular modulation of the radius, zero-mean over the sphere
    lobes = _random_directions(rng, 3)
    lobe_amp = rng.uniform(0.08, 0.2, size=3)
    radius = np.full_like(dist, radius_mm)
    for amp, d in zip(lobe_amp, lobes):
        cos = direction[0] * d[0] + direction[1] * d[1] + direction[2] * d[2]
        radius += radius_mm * amp * (cos**2 - 1.0 / 3.0)
    core = radius_mm * (1.0 + float(lobe_amp.sum()) * 2.0 / 3.0)
    # spicules: narrow cones whose reach decays with the angle to their axis, so they taper to a tip
    spikes = _random_directions(rng, int(rng.integers(10, 19)))
    spike_len = radius_mm * rng.uniform(0.6, 1.2, size=len(spikes))
    for length, d in zip(spike_len, spikes):
        cos = direction[0] * d[0] + direction[1] * d[1] + direction[2] * d[2]
        radius += length * np.exp(-(1.0 - cos) / 0.02)
    return dist <= radius, core


def _place_nodules(hu: np.ndarray, label: np.ndarray, spacing: tuple[float, ...], affine: np.ndarray,
                   rng: np.random.Generator, num_nodules: int) -> list[dict[str, Any]]:
    lung_id, nodule_id = PHANTOM_LABELS["lung"], PHANTOM_LABELS["nodule"]
    spacing_arr = np.asarray(spacing)
    guard_mm = float(spacing_arr.max())  # one voxel of lung kept around each nodule core
    # balanced malignancy in a random order, so every volume has both kinds
    malignant_flags = rng.permutation([i % 2 for i in range(num_nodules)])
    # malignant (large) nodules go first, while the lungs still have room; records keep the drawn order
    order = sorted(range(num_nodules), key=lambda i: -malignant_flags[i])
    records: list[dict[str, Any]] = [{} for _ in range(num_nodules)]
    for rank, index in enumerate(order):
        malignant = bool(malignant_flags[index])
        placed = None
        for _ in range(_SHAPE_DRAWS):
            radius_mm = float(rng.uniform(*(MALIGNANT_RADIUS_MM if malignant else BENIGN_RADIUS_MM)))
            # the shape is drawn on a box that holds any spike plus the gap, before its position is known
            half = np.ceil((radius_mm * 2.8 + 2 * guard_mm) / spacing_arr).astype(int)
            offsets = [
                (np.arange(-h, h + 1, dtype=np.float32) * s).reshape([-1 if a == i else 1 for a in range(3)])
                for i, (h, s) in enumerate(zip(half, spacing))
            ]
            shape_mask, core_mm = _nodule_mask(offsets, radius_mm, malignant, rng)
            core_ball = np.sqrt(offsets[0] ** 2 + offsets[1] ** 2 + offsets[2] ** 2) <= core_mm + guard_mm
            # two voxels between nodules keep them apart even under 26-connectivity
            keep_clear = _dilate(shape_mask, 2)
            for center in _candidate_centers(label == lung_id, half, core_mm + guard_mm, spacing_arr, rng):
                box = tuple(slice(c - h, c + h + 1) for c, h in zip(center, half))
                local = label[box]
                if np.all(local[core_ball] == lung_id) and not np.any(local[keep_clear] == nodule_id):
                    placed = center, box
                    break
            if placed is not None:
                break
        if placed is None:
            fov = tuple(round(n * s, 1) for n, s in zip(label.shape, spacing))
            raise ValueError(
                f"could not place a {'malignant' if malignant else 'benign'} nodule (radius {radius_mm:.1f} mm; "
                f"nodule {rank + 1} of {num_nodules}) fully inside the lungs, apart from the others, in a phantom of "
                f"shape {label.shape} and spacing {spacing} mm (field of view {fov} mm). The lungs scale with the "
                "field of view (shape * spacing); at the default 192 mm they hold 4 nodules reliably and about 8 "
                "at most: use a larger field of view, fewer nodules, or another seed."
            )
        center, box = placed
        # spicules may reach the pleura but only ever replace lung voxels
        paint = shape_mask & (label[box] == lung_id)
        label[box][paint] = nodule_id
        hu[box][paint] = rng.uniform(30.0, 60.0)
        center_mm = affine[:3, :3] @ center + affine[:3, 3]
        records[index] = {
            "center_voxel": [int(c) for c in center],
            "center_mm": [round(float(c), 3) for c in center_mm],
            "radius_mm": round(radius_mm, 3),
            "malignant": int(malignant),
            "num_voxels": int(paint.sum()),
        }
    return records


def make_phantom_volume(
    shape: Sequence[int] = (96, 96, 96),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    rng: np.random.Generator | int | None = None,
    nodules_per_volume: int = 4,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """
    Draw one synthetic CT volume, its label map and its nodule records.

    Tissues (HU before jitter, see :py:data:`PHANTOM_HU`): air outside an elliptical body with a
    subcutaneous fat layer, muscle wall, two lungs, heart with epicardial fat, liver, spleen, kidneys with
    perirenal fat, ribs and a vertebral column with discs, and ``nodules_per_volume`` lung nodules (half
    benign: radius 3-6 mm, smooth; half malignant: radius 7-12 mm, lobulated and spiculated; an odd count
    has one benign more; 30-60 HU), each with its core inside a lung, at least two voxels from the others;
    spicules may reach the pleura but replace only lung voxels. Organ sizes and positions vary smoothly per volume;
    the image is blurred by a [1, 2, 1] kernel and gets Gaussian noise of 20 HU.

    Args:
        shape: spatial shape (x, y, z), RAS axes, each at least 16. Default (96, 96, 96).
        spacing: voxel size in mm. Default (2.0, 2.0, 2.0), the papers' pretraining spacing. Nodules need a
            field of view (``shape * spacing``) of about 190 mm or more to fit in the lungs.
        rng: a numpy Generator, or an int seed for one. Default None: seed 0.
        nodules_per_volume: number of nodules. Default 4.

    Returns:
        ``(hu, label, nodules)``: int16 HU array of ``shape``, uint8 label map of ``shape`` with ids from
        :py:data:`PHANTOM_LABELS`, and one dict per nodule with ``center_voxel``, ``center_mm`` (world
        RAS mm under :py:func:`phantom_affine`), ``radius_mm``, ``malignant`` (0/1) and ``num_voxels``.

    Raises:
        ValueError: on a bad shape/spacing/count, or when a nodule does not fit in the lungs.
    """
    shape_t, spacing_t = _check_geometry(shape, spacing)
    if int(nodules_per_volume) < 0:
        raise ValueError(f"nodules_per_volume must be >= 0, got {nodules_per_volume}.")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(0 if rng is None else rng)
    anatomy = _Anatomy(shape_t, spacing_t, rng)
    hu = np.full(shape_t, PHANTOM_HU["air"], dtype=np.float32)
    label = np.zeros(shape_t, dtype=np.uint8)

    def paint(mask: np.ndarray, tissue: str, label_name: str, rel_jitter: float = 0.1) -> None:
        mask = np.broadcast_to(mask, shape_t)
        value = PHANTOM_HU[tissue] + abs(PHANTOM_HU[tissue]) * rng.uniform(-rel_jitter, rel_jitter)
        hu[mask] = value
        label[mask] = PHANTOM_LABELS[label_name]

    fat_layer = rng.uniform(0.05, 0.09)
    muscle_wall = rng.uniform(0.06, 0.09)
    diaphragm = rng.uniform(-0.2, -0.1)
    paint(anatomy.rho <= 1.0, "fat", "body")
    paint(anatomy.rho <= 1.0 - fat_layer, "soft_tissue", "body")
    # the abdominal cavity below the diaphragm is mostly fat: it makes abdominal organs stand out
    paint((anatomy.rho <= 1.0 - fat_layer - muscle_wall) & (anatomy.w < diaphragm), "abdominal_fat", "body")
    for side in (-1.0, 1.0):
        # the left lung (side -1) is narrower: the heart takes its room
        semi_u = 0.3 if side < 0 else 0.33
        paint(anatomy.ellipsoid((side * 0.5, -0.02, 0.38), (semi_u, 0.6, 0.6), pos_jitter=0.03, size_jitter=0.06),
              "lung", "lung")
    heart = anatomy.ellipsoid((-0.12, 0.22, -0.02), (0.3, 0.28, 0.25))
    paint(anatomy.shell(heart), "fat", "body")
    paint(heart, "heart", "heart")
    paint(anatomy.ellipsoid((0.36, 0.0, -0.5), (0.5, 0.55, 0.38)), "liver", "liver")
    paint(anatomy.ellipsoid((-0.55, -0.3, -0.42), (0.17, 0.22, 0.18)), "spleen", "spleen")
    for side, z in ((-1.0, -0.62), (1.0, -0.72)):  # the right kidney sits lower, under the liver
        kidney = anatomy.ellipsoid((side * 0.36, -0.42, z), (0.12, 0.16, 0.22), pos_jitter=0.02)
        paint(anatomy.shell(kidney), "fat", "body")
        paint(kidney, "kidney", "kidney")
    # ribs: a ring of bone inside the muscle wall, banded along z (about 25 mm pitch), thorax only
    rib_radius = 1.0 - fat_layer - muscle_wall / 2.0
    rib_pitch = 25.0 / anatomy.half_fov_mm[2]
    rib_band = np.cos(2 * np.pi * (anatomy.w / rib_pitch + rng.uniform())) > 0.55
    ribs = (np.abs(anatomy.rho - rib_radius) < 0.02) & rib_band & (anatomy.w > diaphragm - 0.25)
    ribs &= (np.abs(anatomy.bu) > 0.15) | (anatomy.bv < 0)  # no ribs at the sternum
    paint(ribs, "bone", "bone", rel_jitter=0.15)
    # vertebral column: bodies separated by discs (about 30 mm pitch), a posterior arch around the canal
    vertebral_body = ((anatomy.bu / 0.12) ** 2 + ((anatomy.bv + 0.55) / 0.12) ** 2) <= 1.0
    arch = (anatomy.bu**2 + (anatomy.bv + 0.74) ** 2) <= 0.085**2
    spinous = ((anatomy.bu / 0.035) ** 2 + ((anatomy.bv + 0.86) / 0.07) ** 2) <= 1.0
    vertebra_pitch = 30.0 / anatomy.half_fov_mm[2]
    disc = np.mod(anatomy.w / vertebra_pitch + rng.uniform(), 1.0) < 0.18
    paint(vertebral_body | arch | spinous, "bone", "bone", rel_jitter=0.15)
    paint(vertebral_body & disc, "disc", "body")
    paint((anatomy.bu**2 + (anatomy.bv + 0.74) ** 2) <= 0.05**2, "spinal_canal", "body")

    records = _place_nodules(hu, label, spacing_t, phantom_affine(shape_t, spacing_t), rng, int(nodules_per_volume))
    hu = _smooth(hu)
    hu += rng.standard_normal(shape_t, dtype=np.float32) * np.float32(_NOISE_STD_HU)
    hu = np.clip(np.rint(hu), *_HU_CLIP).astype(np.int16)
    return hu, label, records


def _hidden_temp_path(path: Path) -> Path:
    """A unique hidden sibling of ``path`` with the same suffix (nibabel picks the format from it)."""
    suffix = "".join(path.suffixes)
    return path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex}{suffix}")


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """
    ``write`` a hidden temp file, then ``os.replace`` it onto ``path``: readers (another process, a resumed
    run) never see a partial file. Files are created normally, so they get the user's umask permissions.
    """
    tmp = _hidden_temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_nifti_atomically(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    _replace_atomically(path, lambda tmp: nib.save(image, tmp))


def _write_json_atomically(content: dict, path: Path) -> None:
    _replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(content, indent=2)))


def _warn_if_parameters_differ(datalist_path: Path, requested: dict[str, Any]) -> bool:
    """Return False when the existing datalist is unreadable (then it is regenerated)."""
    try:
        existing = json.loads(datalist_path.read_text())
    except (OSError, ValueError) as e:
        logger.warning(f"existing datalist {datalist_path} is unreadable ({e}); regenerating the phantom dataset.")
        return False
    differing = {k: (existing.get(k), v) for k, v in requested.items() if existing.get(k) != v}
    if differing:
        details = ", ".join(f"{k}: existing {old} vs requested {new}" for k, (old, new) in differing.items())
        logger.warning(
            f"reusing the existing phantom dataset {datalist_path}, generated with other parameters ({details}); "
            "pass overwrite=True or another output_dir to regenerate."
        )
    return True


def generate_phantom_dataset(
    output_dir: str | os.PathLike,
    num_volumes: int = 8,
    shape: Sequence[int] = (96, 96, 96),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    seed: int = 0,
    nodules_per_volume: int = 4,
    overwrite: bool = False,
) -> Path:
    """
    Write a Decathlon-style phantom dataset once, and return the path of its datalist.

    Layout under ``output_dir``: ``imagesTr/phantom_000.nii.gz`` ... (int16 HU), ``labelsTr/phantom_000.nii.gz``
    ... (uint8 label maps, ids :py:data:`PHANTOM_LABELS`), and ``dataset.json`` with the Decathlon keys
    (``name``, ``labels``, ``modality``, ``numTraining``, ``training``), the generation parameters, and per
    training entry relative ``image``/``label`` paths plus its ``nodules`` records (see
    :py:func:`make_phantom_volume`). Read it with :py:func:`dagman_components.data.load_datalist` or
    ``monai.data.load_decathlon_datalist``.

    Volume ``i`` is drawn from ``numpy.random.SeedSequence(seed).spawn(num_volumes)[i]``, so the first
    volumes of a dataset do not depend on ``num_volumes`` and one seed gives byte-identical files.

    Args:
        output_dir: folder to write into (created if missing).
        num_volumes: number of volumes. Default 8.
        shape: spatial shape of each volume. Default (96, 96, 96).
        spacing: voxel size in mm. Default (2.0, 2.0, 2.0).
        seed: seed of the whole dataset. Default 0.
        nodules_per_volume: lung nodules per volume, half of them malignant. Default 4.
        overwrite: regenerate even if ``dataset.json`` exists. Default False: an existing ``dataset.json`` is
            returned as is (a warning names any parameter that differs from the request). It is written last,
            atomically, so its presence means the dataset is complete.

    Returns:
        the path of ``output_dir/dataset.json``.
    """
    output_dir = Path(output_dir)
    datalist_path = output_dir / "dataset.json"
    shape_t, spacing_t = _check_geometry(shape, spacing)
    if int(num_volumes) < 1:
        raise ValueError(f"num_volumes must be >= 1, got {num_volumes}.")
    requested = {
        "seed": int(seed),
        "shape": list(shape_t),
        "spacing": list(spacing_t),
        "numTraining": int(num_volumes),
        "nodules_per_volume": int(nodules_per_volume),
    }
    if datalist_path.is_file() and not overwrite and _warn_if_parameters_differ(datalist_path, requested):
        return datalist_path

    (output_dir / "imagesTr").mkdir(parents=True, exist_ok=True)
    (output_dir / "labelsTr").mkdir(parents=True, exist_ok=True)
    affine = phantom_affine(shape_t, spacing_t)
    training = []
    for i, seed_seq in enumerate(np.random.SeedSequence(int(seed)).spawn(int(num_volumes))):
        rng = np.random.default_rng(seed_seq)
        hu, label, nodules = make_phantom_volume(shape_t, spacing_t, rng, nodules_per_volume)
        image_rel, label_rel = f"imagesTr/phantom_{i:03d}.nii.gz", f"labelsTr/phantom_{i:03d}.nii.gz"
        _save_nifti_atomically(hu, affine, output_dir / image_rel)
        _save_nifti_atomically(label, affine, output_dir / label_rel)
        training.append({"image": image_rel, "label": label_rel, "nodules": nodules})
    datalist = {
        "name": "dagman-phantom",
        "description": "Synthetic chest/upper-abdomen CT phantoms (HU) with benign (smooth, 3-6 mm) and malignant "
        "(spiculated, 7-12 mm) lung nodules, generated by dagman_components.data.phantom.",
        "reference": "dagman_components",
        "licence": "Apache-2.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(v): k for k, v in PHANTOM_LABELS.items()},
        **requested,
        "training": training,
    }
    _write_json_atomically(datalist, datalist_path)
    return datalist_path


if __name__ == "__main__":
    import fire

    fire.Fire(generate_phantom_dataset)
