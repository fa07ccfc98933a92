"""Fault battery, unit level: every bad input or fault stops with one ERROR line naming its cause, or is skipped.

Tiny synthetic data (a 56 x 56 x 48 phantom and variants of it), no training. The bundle-level faults (the
command line, resume after kill -9, downstream configs) are in ``tests/bundles/test_bundle_faults.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.data import MetaTensor

from dagman_components.bundle_utils import positive_int, prepare_dataset
from dagman_components.data import (
    CheckedCacheDataset,
    SegmentationTargetd,
    generate_phantom_dataset,
    load_datalist,
    pretrain_transforms,
)
from dagman_components.engines import ModelCheckpointLoader, PretrainCheckpoint
from dagman_components.errors import BadImageError, report_error
from dagman_components.networks import SASwinEncoder, load_encoder_state_dict

ROI = (32, 32, 32)


def error_log(caplog, exc: BaseException) -> str:
    """The one ERROR line the bundles' exception hook logs for ``exc`` (what a user reads)."""
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="dagman_components.errors"):
        report_error(exc)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lines) == 1 and "\n" not in lines[0]
    return lines[0]


def raised(fn, *args, **kwargs) -> BaseException:
    with pytest.raises(Exception) as err:
        fn(*args, **kwargs)
    return err.value


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """One small phantom CT (HU, 2 mm) to derive the bad images from."""
    out = tmp_path_factory.mktemp("phantom")
    datalist = generate_phantom_dataset(out, num_volumes=1, shape=(56, 56, 48), nodules_per_volume=1)
    return Path(load_datalist(datalist=datalist)[0]["image"])


def save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4) * 2 if affine is None else affine), path)
    return str(path)


def make_bad_image(kind: str, phantom: Path, folder: Path) -> str:
    """A NIfTI file with one fault a user may bring."""
    image = nib.load(phantom)
    hu = np.asarray(image.dataobj).astype(np.float32)
    path = folder / f"{kind}.nii.gz"
    if kind == "truncated":  # a valid header, then the gzip stream stops
        raw = phantom.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
        return str(path)
    if kind == "nan":
        hu[10:12, 10:12, 10:12] = np.nan
    elif kind == "constant":
        hu[:] = -1000.0
    elif kind == "air":  # noise around -1000 HU: not constant, but nothing above the body threshold
        hu = (-1000.0 + 20.0 * np.random.default_rng(0).standard_normal(hu.shape)).astype(np.float32)
    elif kind == "mr":  # MR-like: 0..4000, no air
        hu = np.random.default_rng(0).uniform(0.0, 4000.0, hu.shape).astype(np.float32)
    elif kind == "tiny":  # 6^3 voxels, half air, half soft tissue: a few mm of a body
        hu = np.full((6, 6, 6), 40.0, np.float32)
        hu[:3] = -1000.0
    elif kind == "flat":  # 2D
        hu = hu[:, :, 0]
    elif kind == "series":  # 4D: a time series
        hu = np.stack([hu, hu], axis=-1)
    return save(path, hu, image.affine)


# fault -> what its one ERROR line must say (besides the file)
DATA_FAULTS = {
    "truncated": "cannot be read: truncated or corrupt",
    "nan": "non-finite voxels",
    "constant": "is constant",
    "air": "is empty after foreground cropping",
    "tiny": "is tiny after resampling and foreground cropping",
    "mr": "does not look like CT",
}


@pytest.mark.parametrize("kind", sorted(DATA_FAULTS))
def test_bad_image_data_stops_caching_with_one_line_naming_the_file(kind, phantom, tmp_path, caplog):
    path = make_bad_image(kind, phantom, tmp_path)
    err = raised(CheckedCacheDataset, [{"image": path}], pretrain_transforms(roi_size=ROI), progress=False)
    line = error_log(caplog, err)
    assert line.startswith("BadImageError:") and path in line and DATA_FAULTS[kind] in line, line


def test_skip_drops_each_bad_image_with_a_warning_and_counts_them(phantom, tmp_path, caplog):
    bad = [make_bad_image(kind, phantom, tmp_path) for kind in sorted(DATA_FAULTS)]
    items = [{"image": str(phantom)}] + [{"image": p} for p in bad]
    # half the items cached: the uncached rest is checked too, so that no bad one turns up mid-training
    with caplog.at_level(logging.WARNING, logger="dagman_components.data.checks"):
        dataset = CheckedCacheDataset(
            items, pretrain_transforms(roi_size=ROI), on_bad_image="skip", cache_rate=0.5, progress=False
        )
    assert [item["image"] for item in dataset.data] == [str(phantom)] and len(dataset) == 1
    assert sorted(name for name, _ in dataset.dropped) == sorted(bad)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for path in bad:
        assert any(path in w and "skip" in w for w in warnings), path
    assert any(f"dropped {len(bad)} of {len(items)} images" in w for w in warnings)
    assert dataset[0]["view_1"].shape == (1, *ROI)


def test_mr_or_normalised_data_passes_with_intensity_check_none(phantom, tmp_path, caplog):
    mr = make_bad_image("mr", phantom, tmp_path)
    transform = pretrain_transforms(roi_size=ROI, intensity_check="none")
    assert len(CheckedCacheDataset([{"image": mr}], transform, progress=False)) == 1
    # the finite check stays on
    nan = make_bad_image("nan", phantom, tmp_path)
    assert "non-finite" in error_log(caplog, raised(CheckedCacheDataset, [{"image": nan}], transform, progress=False))


def test_every_image_bad_is_an_error_even_when_skipping(phantom, tmp_path, caplog):
    nan = make_bad_image("nan", phantom, tmp_path)
    err = raised(CheckedCacheDataset, [{"image": nan}], pretrain_transforms(roi_size=ROI), on_bad_image="skip", progress=False)
    assert "every one of the 1 images is bad" in error_log(caplog, err)


@pytest.mark.parametrize("kind, expected", [("flat", "expected 3 spatial dims"), ("series", "time series")])
def test_2d_and_4d_images_fail_the_header_check(kind, expected, phantom, tmp_path, caplog):
    path = make_bad_image(kind, phantom, tmp_path)
    line = error_log(caplog, raised(prepare_dataset, str(tmp_path)))
    assert path in line and expected in line


def test_header_check_skip_keeps_the_good_images(phantom, tmp_path, caplog):
    folder = tmp_path / "cts"
    folder.mkdir()
    good = save(folder / "good.nii.gz", np.asarray(nib.load(phantom).dataobj), nib.load(phantom).affine)
    bad = [make_bad_image(kind, phantom, folder) for kind in ("flat", "series")]
    with caplog.at_level(logging.WARNING):
        items = prepare_dataset(str(folder), on_error="skip")
    assert [item["image"] for item in items] == [good]
    assert all(any(p in r.getMessage() for r in caplog.records) for p in bad)
    assert any("dropped 2 of 3" in r.getMessage() for r in caplog.records)


def write_datalist(folder: Path, content: object) -> str:
    path = folder / "dataset.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "is not valid JSON"),
        ({"validation": []}, "has no key 'training'"),
        ({"training": []}, "must be a non-empty list"),
        ({"training": [{"label": "x.nii.gz"}]}, "entry 0 of 'training'"),
        ({"training": [{"image": "missing.nii.gz"}]}, "missing.nii.gz' does not exist"),
    ],
)
def test_malformed_or_missing_datalist_entries_name_the_datalist(content, expected, tmp_path, caplog):
    datalist = write_datalist(tmp_path, content)
    line = error_log(caplog, raised(prepare_dataset, str(tmp_path), datalist))
    assert expected in line and "dataset.json" in line, line


def test_empty_or_missing_dataset_dir_is_named(tmp_path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"no NIfTI image found under dataset_dir '{empty}'" in error_log(caplog, raised(prepare_dataset, str(empty)))
    missing = tmp_path / "nowhere"
    assert f"dataset_dir '{missing}' does not exist" in error_log(caplog, raised(prepare_dataset, str(missing)))


@pytest.mark.parametrize("value", [0, -3, "abc", 2.5, None])
def test_non_positive_epochs_name_the_key(value, caplog):
    line = error_log(caplog, raised(positive_int, value, "num_epochs"))
    assert line == f"ValueError: num_epochs must be a positive whole number, got {value!r}."


def test_positive_int_accepts_whole_numbers():
    assert positive_int(3) == 3 and positive_int("2") == 2 and positive_int(4.0) == 4


@pytest.fixture(scope="module")
def encoder_files(tmp_path_factory) -> dict[str, Path]:
    """The pretrained encoder files a downstream bundle may be pointed at: good, truncated, another architecture."""
    out = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    good, wrong = out / "model.pt", out / "model_f24.pt"
    torch.save(SASwinEncoder(feature_size=12).state_dict(), good)
    torch.save(SASwinEncoder(feature_size=24).state_dict(), wrong)
    truncated = out / "model_truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    return {"good": good, "wrong": wrong, "truncated": truncated, "missing": out / "no_model.pt"}


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("missing", "pretrained encoder checkpoint not found"),
        ("truncated", "cannot be read: truncated, corrupt or not a torch file"),
        ("wrong", "does not match the encoder architecture"),
    ],
)
def test_wrong_missing_or_truncated_pretrained_encoder_is_named(kind, expected, encoder_files, caplog):
    path = encoder_files[kind]
    line = error_log(caplog, raised(load_encoder_state_dict, SASwinEncoder(feature_size=12), path))
    assert str(path) in line and expected in line, line
    load_encoder_state_dict(SASwinEncoder(feature_size=12), encoder_files["good"])


@pytest.mark.parametrize(
    "kind, expected",
    [("missing", "not found: run this bundle's configs/train.yaml"), ("truncated", "cannot be read"),
     ("wrong", "does not match this config's network")],
)
def test_model_checkpoint_loader_names_the_file(kind, expected, tmp_path, caplog):
    model = nn.Linear(3, 2)
    path = tmp_path / "model.pt"
    if kind == "truncated":
        torch.save(model.state_dict(), path)
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "wrong":
        torch.save(nn.Linear(4, 2).state_dict(), path)
    loader = ModelCheckpointLoader(load_path=str(path), load_dict={"model": model})
    line = error_log(caplog, raised(loader, Engine(lambda engine, batch: None)))
    assert str(path) in line and expected in line, line


def label_and_image(label_values: np.ndarray, shift_mm: float = 0.0) -> dict:
    image = MetaTensor(torch.zeros(1, 8, 8, 8), affine=torch.eye(4), meta={"filename_or_obj": "ct.nii.gz"})
    affine = torch.eye(4)
    affine[0, 3] = shift_mm
    label = MetaTensor(torch.as_tensor(label_values)[None].float(), affine=affine, meta={"filename_or_obj": "seg.nii.gz"})
    return {"image": image, "label": label}


@pytest.mark.parametrize(
    "values, shift_mm, expected",
    [
        (np.full((8, 8, 8), 3), 0.0, "outside the classes 0..1"),
        (np.zeros((8, 8, 6)), 0.0, "must be on the same grid"),
        (np.zeros((8, 8, 8)), 2.5, "is off its image's grid"),
    ],
)
def test_label_maps_out_of_range_or_off_the_grid_are_named(values, shift_mm, expected, caplog):
    err = raised(SegmentationTargetd("label", target_labels=None, num_classes=2), label_and_image(values, shift_mm))
    line = error_log(caplog, err)
    assert "seg.nii.gz" in line and expected in line, line


def test_label_on_the_image_grid_passes():
    out = SegmentationTargetd("label", target_labels=None, num_classes=2)(label_and_image(np.ones((8, 8, 8)), 0.001))
    assert float(out["label"].max()) == 1.0


class _Run:
    """A tiny Ignite run with ``PretrainCheckpoint`` (one linear layer as student and encoder)."""

    def __init__(self, save_dir: Path, resume: bool = False, width: int = 3) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(width, 2)
        self.engine = Engine(lambda engine, batch: None)
        self.engine.state.rank = 0  # as MONAI's workflows have it
        self.start_epoch: list[int] = []
        checkpoint = PretrainCheckpoint(save_dir, {"student": self.model}, encoder=self.model, resume=resume)
        checkpoint.attach(self.engine)
        self.engine.add_event_handler(Events.EPOCH_STARTED, lambda engine: self.start_epoch.append(engine.state.epoch))

    def run(self, max_epochs: int) -> None:
        self.engine.run([0, 1], max_epochs=max_epochs)


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("checkpoint_*.pt"))}


def test_resume_skips_a_corrupt_newest_checkpoint(tmp_path, caplog):
    _Run(tmp_path).run(max_epochs=3)  # keeps checkpoint_2 and checkpoint_3
    newest = tmp_path / "checkpoint_3.pt"
    newest.write_bytes(newest.read_bytes()[:200])  # a write cut short
    resumed = _Run(tmp_path, resume=True)
    with caplog.at_level(logging.INFO):
        resumed.run(max_epochs=4)  # checkpoint_2 lists checkpoint_1, rotated out since: saving must not trip on it
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(newest) in w and "unreadable, truncated or corrupt" in w for w in warnings), warnings
    assert any("resumed from" in r.getMessage() and "checkpoint_2.pt" in r.getMessage() for r in caplog.records)
    assert resumed.start_epoch == [3, 4]  # epochs 1-2 came from checkpoint_2
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_3.pt", "checkpoint_4.pt"]


def test_resume_without_a_usable_checkpoint_names_each_and_changes_none(tmp_path, caplog):
    _Run(tmp_path).run(max_epochs=2)
    newest = tmp_path / "checkpoint_2.pt"
    newest.write_bytes(newest.read_bytes()[:200])
    before = digest(tmp_path)
    other_config = _Run(tmp_path, resume=True, width=5)  # checkpoint_1 is of another architecture
    line = error_log(caplog, raised(other_config.run, 3))
    assert "no checkpoint in" in line and "checkpoint_2.pt: unreadable" in line, line
    assert "checkpoint_1.pt: 'student' does not match this config's network" in line, line
    assert digest(tmp_path) == before


def test_the_exception_hook_logs_the_cause_first_and_repeats_it_last(tmp_path):
    # a project error raised inside a config expression, as `python -m monai.bundle run` meets it
    script = (
        "import logging, sys; logging.basicConfig(stream=sys.stdout, level=logging.INFO)\n"
        "import dagman_components.bundle_utils\n"
        "from monai.bundle import ConfigParser\n"
        "parser = ConfigParser({'x': \"$dagman_components.bundle_utils.positive_int(0, 'num_epochs')\"},\n"
        "                      globals={'dagman_components': 'dagman_components'})\n"
        "parser.get_parsed_content('x')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    cause = "ValueError: num_epochs must be a positive whole number, got 0."
    assert result.returncode == 1
    assert result.stdout.count("ERROR") == 1 and result.stdout.strip().endswith(cause)
    assert "Failed to evaluate ConfigExpression" in result.stderr  # MONAI's wrapper is still in the traceback
    assert result.stderr.strip().splitlines()[-1] == f"ERROR (the cause of the traceback above): {cause}"


def test_bad_image_error_pickles_for_dataloader_workers():
    import pickle

    err = pickle.loads(pickle.dumps(BadImageError("a.nii.gz", "is constant")))
    assert (err.filename, err.reason, str(err)) == ("a.nii.gz", "is constant", "image 'a.nii.gz' is constant")
