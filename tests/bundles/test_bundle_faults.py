"""Fault battery, bundle level: bad values and faults met through the bundles' configs and the command line.

What a user sees: the last lines of ``python -m monai.bundle run`` name the cause; bad images are stopped or
dropped by the configs' cached checks; a downstream bundle names a wrong, missing or truncated encoder; a
pretraining run killed with SIGKILL and resumed ends with the weights of the uninterrupted run.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.transforms import Compose

from dagman_components.engines import ModelCheckpointLoader, latest_checkpoint
from dagman_components.errors import error_line
from dagman_components.networks import read_encoder_file

from .conftest import BUNDLES, TINY_PRETRAIN, bundle_workflow, cli_overrides

PRETRAIN_CONFIG = ["pretrain/configs/train.yaml"]


def failure(wf: ConfigWorkflow, key: str) -> str:
    """The one line the exception hook logs when building ``key`` fails."""
    with pytest.raises(Exception) as err:
        wf.parser.get_parsed_content(key) if key != "run" else wf.run()
    return error_line(err.value)


def bundle_command(config_files: list[str], overrides: dict) -> list[str]:
    config = config_files[0] if len(config_files) == 1 else str(config_files)
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", config] + cli_overrides(overrides)


def single_threaded() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_a_bad_value_on_the_command_line_ends_the_output(bundle_copy):
    bundle = bundle_copy("pretrain")
    result = subprocess.run(
        bundle_command(PRETRAIN_CONFIG, {**TINY_PRETRAIN, "masking": "attention_hgh"}),
        cwd=bundle.parent, capture_output=True, text=True, timeout=300, env=single_threaded(),
    )
    cause = "masking must be one of ('attention_high', 'attention_low', 'random', 'block'), got 'attention_hgh'"
    assert result.returncode != 0
    errors = [line for line in result.stdout.splitlines() if " - ERROR - " in line]
    assert len(errors) == 1 and errors[0].split(" - ERROR - ")[1].startswith(f"ValueError: {cause}"), errors
    assert "Failed to instantiate component" in result.stderr  # MONAI's wrapper still ends the traceback ...
    assert cause in result.stderr.strip().splitlines()[-1]  # ... and the cause follows it


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory) -> dict[str, str]:
    """A good phantom CT and bad variants of it, as in a user's data folder."""
    from dagman_components.data import generate_phantom_dataset, load_datalist

    folder = tmp_path_factory.mktemp("user_data")
    good = load_datalist(datalist=generate_phantom_dataset(folder / "phantom", num_volumes=1, nodules_per_volume=1))[0]
    image = nib.load(good["image"])
    hu = np.asarray(image.dataobj).astype(np.float32)
    nan = hu.copy()
    nan[20, 20, 20] = np.nan
    files = {"good": good["image"], "label": good["label"]}
    for kind, array in {"nan": nan, "mr": np.abs(hu) * 2.0, "constant": np.zeros_like(hu)}.items():
        files[kind] = str(folder / f"{kind}.nii.gz")
        nib.save(nib.Nifti1Image(array, image.affine), files[kind])
    raw = Path(good["image"]).read_bytes()
    files["truncated"] = str(folder / "truncated.nii.gz")
    Path(files["truncated"]).write_bytes(raw[: len(raw) // 2])
    return files


def test_pretrain_config_stops_at_a_bad_image_or_skips_it(bundle_copy, bad_images, caplog):
    bundle = bundle_copy("pretrain")
    kinds = ("truncated", "nan", "mr", "constant")
    folder = Path(bad_images["nan"]).parent
    datalist = folder / "datalist.json"
    datalist.write_text(
        '{"training": [' + ", ".join(f'{{"image": "{bad_images[k]}"}}' for k in ("good", *kinds)) + "]}"
    )
    overrides = {**TINY_PRETRAIN, "datalist": str(datalist), "dataset_dir": str(folder), "cache_workers": 1}
    line = failure(bundle_workflow(bundle, **overrides), "train::dataset")
    assert line.startswith("BadImageError") and bad_images["truncated"] in line and "truncated" in line, line
    with caplog.at_level(logging.WARNING):
        dataset = bundle_workflow(bundle, **overrides, on_bad_image="skip").parser.get_parsed_content("train::dataset")
    assert [item["image"] for item in dataset.data] == [bad_images["good"]]
    assert any(f"dropped {len(kinds)} of {len(kinds) + 1} images" in r.getMessage() for r in caplog.records)
    # MR-like data is let through on request (the NaN, constant and truncated files are still dropped)
    dataset = bundle_workflow(bundle, **overrides, on_bad_image="skip", intensity_check="none").parser.get_parsed_content(
        "train::dataset"
    )
    assert sorted(item["image"] for item in dataset.data) == sorted([bad_images["good"], bad_images["mr"]])


@pytest.mark.parametrize("value", [0, -2])
@pytest.mark.parametrize("name", ["pretrain", "nodule_classification", "segmentation", "response_prediction"])
def test_non_positive_epochs_fail_before_any_data_is_read(name, value, bundle_copy):
    bundle = bundle_copy(name)
    line = failure(bundle_workflow(bundle, num_epochs=value, pretrained=False), "train::trainer")
    assert line == f"ValueError: num_epochs must be a positive whole number, got {value}."
    assert not (bundle / "data").exists()  # failed before the phantom data was generated


@pytest.mark.parametrize("name", ["nodule_classification", "segmentation", "response_prediction", "organ_clustering"])
@pytest.mark.parametrize(
    "kind, expected",
    [("missing", "not found"), ("truncated", "cannot be read"), ("wrong", "does not match the encoder architecture")],
)
def test_downstream_bundles_name_a_wrong_missing_or_truncated_encoder(name, kind, expected, bundle_copy, tmp_path):
    from dagman_components.networks import SASwinEncoder

    path = tmp_path / f"{kind}.pt"
    if kind != "missing":
        torch.save(SASwinEncoder(feature_size=24 if kind == "wrong" else 12).state_dict(), path)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:4096])
    wf = bundle_workflow(bundle_copy(name), pretrained_path=str(path))
    key = "network" if name == "organ_clustering" else "network_def"
    line = failure(wf, key)
    assert str(path) in line and expected in line, line


@pytest.mark.parametrize("name", ["nodule_classification", "segmentation", "response_prediction"])
def test_downstream_evaluate_and_inference_load_through_the_checked_loader(name):
    configs = BUNDLES / name / "configs"
    for config, key in (("evaluate", "validate::handlers"), ("inference", "handlers")):
        parser = ConfigParser()
        parser.read_config([str(configs / "train.yaml")] * (config == "evaluate") + [str(configs / f"{config}.yaml")])
        targets = [h.get("_target_") for h in parser.get(key, [])]
        assert f"dagman_components.engines.{ModelCheckpointLoader.__name__}" in targets, (config, targets)


def segmentation_transforms(bundle: Path, **overrides) -> Compose:
    wf = bundle_workflow(bundle, **overrides)
    return Compose(wf.parser.get_parsed_content("deterministic_transforms"))


def test_segmentation_config_names_bad_images_and_labels(bundle_copy, bad_images, tmp_path):
    bundle = bundle_copy("segmentation")
    transforms = segmentation_transforms(bundle, target_labels=None)
    label = nib.load(bad_images["label"])
    values = np.asarray(label.dataobj)
    cases = {}
    cases["out of range"] = str(tmp_path / "label_range.nii.gz")
    nib.save(nib.Nifti1Image(values, label.affine), cases["out of range"])  # organ ids 0..8, 2 classes
    shifted = label.affine.copy()
    shifted[0, 3] += 10.0
    cases["off the grid"] = str(tmp_path / "label_shifted.nii.gz")
    nib.save(nib.Nifti1Image((values == 8).astype(np.uint8), shifted), cases["off the grid"])
    expected = {"out of range": "outside the classes 0..1", "off the grid": "is off its image's grid"}
    for case, path in cases.items():
        with pytest.raises(Exception) as err:
            transforms({"image": bad_images["good"], "label": path})
        line = error_line(err.value)
        assert path in line and expected[case] in line, line
    with pytest.raises(Exception) as err:
        transforms({"image": bad_images["nan"], "label": cases["off the grid"]})
    assert bad_images["nan"] in error_line(err.value) and "non-finite" in error_line(err.value)


def checkpoint_weights(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    return {name: state[name] for name in ("student", "teacher")} | {"trainer": state["trainer"]}


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    """The two checkpoints end at the same iteration with student and teacher weights equal within ``atol``."""
    progress = (dict(a["trainer"]), dict(b["trainer"]))
    assert progress[0] == progress[1]
    for name in ("student", "teacher"):
        keys = (sorted(a[name]), sorted(b[name]))
        assert keys[0] == keys[1], name
        worst = max(float((a[name][k].float() - b[name][k].float()).abs().max()) for k in keys[0])
        assert worst <= atol, (name, worst)


KILL_RUN = {**TINY_PRETRAIN, "num_epochs": 3, "cache_workers": 1}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The models/ folder of a tiny 3-epoch pretraining run that nobody interrupted."""
    root = tmp_path_factory.mktemp("uninterrupted")
    shutil.copytree(BUNDLES / "pretrain" / "configs", root / "pretrain" / "configs")
    result = subprocess.run(bundle_command(PRETRAIN_CONFIG, KILL_RUN), cwd=root, capture_output=True, text=True,
                            timeout=600, env=single_threaded())
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "pretrain" / "models"


@pytest.mark.slow
def test_kill_9_then_resume_ends_with_the_weights_of_the_uninterrupted_run(bundle_copy, uninterrupted):
    bundle = bundle_copy("pretrain")
    models = bundle / "models"
    process = subprocess.Popen(bundle_command(PRETRAIN_CONFIG, KILL_RUN), cwd=bundle.parent, env=single_threaded(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (models / "checkpoint_1.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # mid-epoch 2: no handler, no final save runs
    process.wait()
    assert process.returncode == -signal.SIGKILL and latest_checkpoint(models).name == "checkpoint_1.pt"
    result = subprocess.run(bundle_command(PRETRAIN_CONFIG, {**KILL_RUN, "resume": True}), cwd=bundle.parent,
                            capture_output=True, text=True, timeout=600, env=single_threaded())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout and "checkpoint_1.pt" in result.stdout
    assert_same_weights(checkpoint_weights(models / "checkpoint_3.pt"), checkpoint_weights(uninterrupted / "checkpoint_3.pt"))
    encoder, reference = (read_encoder_file(m / "model.pt")[1] for m in (models, uninterrupted))
    assert max(float((encoder[k] - reference[k]).abs().max()) for k in reference) <= 1e-6


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_is_skipped_and_the_run_still_ends_as_the_uninterrupted_one(
    bundle_copy, uninterrupted, caplog
):
    bundle = bundle_copy("pretrain")
    shutil.copytree(uninterrupted, bundle / "models")
    newest = bundle / "models" / "checkpoint_3.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a write cut short (full disk, killed copy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference run: other thread counts round sums differently
    try:
        with caplog.at_level(logging.INFO):
            bundle_workflow(bundle, **KILL_RUN, resume=True).run()
    finally:
        torch.set_num_threads(threads)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(newest) in w and "unreadable, truncated or corrupt" in w for w in warnings), warnings
    assert any("resumed from" in r.getMessage() and "checkpoint_2.pt" in r.getMessage() for r in caplog.records)
    assert_same_weights(checkpoint_weights(newest), checkpoint_weights(uninterrupted / "checkpoint_3.pt"))
