"""The segmentation bundle run the way users and tools run it: ConfigWorkflow, ``monai.bundle run``, MONAI Label.

One tiny training run (2 phantoms at 4 mm, one 64^3 crop, one epoch) is shared by the tests of a module;
the rest evaluate, infer, export and check errors against its ``models/model.pt``.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_net_in_out
from monai.handlers import HausdorffDistance, MeanDice
from monai.metrics import DiceMetric, HausdorffDistanceMetric

from dagman_components.networks import read_encoder_file

from .conftest import BUNDLES, cli_overrides, error_chain
from .conftest import bundle_workflow as workflow

pytestmark = pytest.mark.slow

# 4 mm shrinks a phantom to about 56 x 56 x 48 voxels: one padded 64^3 window per volume
TINY = {
    "phantom_volumes": 2,
    "num_folds": 2,
    "spacing": [4.0, 4.0, 4.0],
    "num_epochs": 1,
    "val_interval": 1,
    "batch_size": 1,
    "num_samples": 1,
    "sw_batch_size": 1,
    "cache_workers": 1,
}


def configs(bundle: Path, *names: str) -> list[str]:
    return [str(bundle / "configs" / f"{name}.yaml") for name in names]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_pretrained_encoder) -> Path:
    """A bundle copy trained for one tiny epoch from the (random-weight) pretrained encoder fixture."""
    bundle = tmp_path_factory.mktemp("bundles") / "segmentation"
    shutil.copytree(BUNDLES / "segmentation" / "configs", bundle / "configs")
    wf = workflow(bundle, pretrained_path=str(tiny_pretrained_encoder), **TINY)
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    return bundle


def test_training_writes_a_cpu_state_dict(trained, tiny_pretrained_encoder):
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert all(v.device.type == "cpu" for v in state.values())
    _, encoder = read_encoder_file(tiny_pretrained_encoder)
    assert set(encoder) == {k[len("encoder."):] for k in state if k.startswith("encoder.")}
    assert {"decoder1.conv_block.conv1.conv.weight", "out.conv.conv.weight"} <= set(state)
    assert (trained / "data" / "phantom" / "dataset.json").is_file()
    assert any((trained / "logs").iterdir())


def test_defaults_and_few_shot_split(trained):
    wf = workflow(trained, pretrained=False, phantom_volumes=2, num_folds=2)
    # labels hold classes (a user's {0, 1} mask); the phantoms' nodule id 8 is written as class 1 files
    assert wf.parser["target_labels"] is None and wf.parser["phantom_target_labels"] == [8]
    assert wf.parser["out_channels"] == 2
    assert ConfigParser.load_config_file(trained / "configs" / "train.yaml")["pretrained"] is True
    train, val = wf.parser.get_parsed_content("train_data"), wf.parser.get_parsed_content("val_data")
    assert len(train) == 1 and len(val) == 1 and train[0]["image"] != val[0]["image"]
    assert {"image", "label", "nodules"} <= set(train[0])
    label = nib.load(train[0]["label"])
    assert Path(train[0]["label"]).parent.name == "labelsTr_8" and set(np.unique(label.dataobj)) == {0, 1}


def test_evaluate_writes_dice_and_hd95(trained, tiny_pretrained_encoder):
    # the overrides of training: the encoder's architecture is read from its checkpoint (not its weights)
    wf = workflow(trained, configs=("train", "evaluate"), pretrained_path=str(tiny_pretrained_encoder), **TINY)
    assert wf.check_properties() == []
    wf.run()
    summary = json.loads((trained / "eval" / "metrics.json").read_text())
    assert 0.0 <= summary["dice"] <= 1.0 and summary["num_cases"] == 1
    assert summary["hd95_voxels"] is None or summary["hd95_mm"] == pytest.approx(summary["hd95_voxels"] * 4.0)
    assert (trained / "eval" / "val_mean_dice_raw.csv").is_file()


def test_metric_handlers_on_known_masks():
    """The metrics behind the configs' MeanDice/HausdorffDistance handlers, on masks with hand-computed values."""
    label = torch.zeros(1, 2, 16, 16, 16)
    label[0, 1, 4:8, 4:8, 4:8] = 1  # a 4^3 cube
    pred = torch.zeros_like(label)
    pred[0, 1, 4:8, 4:8, 6:10] = 1  # the same cube shifted by 2 voxels along z: half overlap
    label[0, 0] = 1 - label[0, 1]
    pred[0, 0] = 1 - pred[0, 1]
    handlers = MeanDice(include_background=False), HausdorffDistance(include_background=False, percentile=95)
    assert isinstance(handlers[0].metric_fn, DiceMetric) and isinstance(handlers[1].metric_fn, HausdorffDistanceMetric)
    dice, hd95 = (handler.metric_fn(pred, label) for handler in handlers)
    assert float(dice) == pytest.approx(0.5)  # overlap 32 voxels of 64 + 64
    assert float(hd95) == pytest.approx(2.0)  # the shifted faces lie 2 voxels apart


def test_inference_subprocess_writes_aligned_labels(trained, tmp_path):
    image = Path(json.loads((trained / "data" / "phantom" / "dataset.json").read_text())["training"][0]["image"])
    image = trained / "data" / "phantom" / image
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(image, inputs / "case.nii.gz")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "segmentation/configs/inference.yaml"]
    cmd += cli_overrides({"dataset_dir": str(inputs), "output_dir": str(out), "spacing": [4.0, 4.0, 4.0]})
    result = subprocess.run(cmd, cwd=trained.parent, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    source, seg = nib.load(inputs / "case.nii.gz"), nib.load(out / "case_seg.nii.gz")
    assert seg.shape == source.shape
    np.testing.assert_allclose(seg.affine, source.affine, atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1}


def test_inference_preprocessing_keeps_monai_label_image_path(trained):
    wf = workflow(trained, configs=("inference",), workflow_type="infer", spacing=[4.0, 4.0, 4.0])
    assert wf.check_properties() == []
    path = wf.parser.get_parsed_content("datalist")[0]["image"]
    data = wf.parser.get_parsed_content("preprocessing")({"image": path, "image_path": path})
    assert data["image_path"] == path
    assert data["image"].shape[0] == 1 and 0.0 <= float(data["image"].min()) <= float(data["image"].max()) <= 1.0


def test_verify_net_in_out_and_torchscript_export(trained):
    config, meta = configs(trained, "inference")[0], str(trained / "configs" / "metadata.json")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, device="cpu", n=1)
    ts = trained / "models" / "model.ts"
    # MONAI's Swin uses torch.utils.checkpoint, which TorchScript cannot script: export by tracing at roi_size
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(trained / "models" / "model.pt"),
                meta_file=meta, config_file=config, use_trace=True, input_shape=[1, 1, 64, 64, 64])
    wf = workflow(trained, configs=("inference",), workflow_type="infer")
    net = wf.parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True))
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(ts))(x), net.eval()(x), rtol=1e-4, atol=1e-4)


def test_bad_inputs_are_named(trained, tmp_path, tiny_pretrained_encoder):
    labels = trained / "data" / "phantom" / "labelsTr"
    # organ ids 0..8 taken as classes of a 2-class network
    wf = workflow(trained, pretrained=False, target_labels=None, phantom_target_labels=None, **TINY)
    item = wf.parser.get_parsed_content("val_data")[0]
    with pytest.raises(Exception) as info:
        wf.parser.get_parsed_content("validate::preprocessing")(item)
    assert "outside the classes 0..1" in error_chain(info.value) and str(labels) in error_chain(info.value)

    # a missing label file
    missing = tmp_path / "missing"
    shutil.copytree(trained / "data" / "phantom", missing)
    (missing / "labelsTr" / "phantom_001.nii.gz").unlink()
    wf = workflow(trained, pretrained=False, dataset_dir=str(missing), datalist=str(missing / "dataset.json"))
    with pytest.raises(Exception) as info:
        wf.parser.get_parsed_content("all_data")
    assert "phantom_001.nii.gz' does not exist" in error_chain(info.value)

    # a volume smaller than the crop (but not tiny: a 32 mm body in air) is padded, and named in a warning
    small = tmp_path / "small"
    body = np.full((20, 20, 20), -1000, np.int16)
    body[2:18, 2:18, 2:18] = 40
    for case in ("a", "b"):
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        (small / case).mkdir(parents=True)
        nib.save(nib.Nifti1Image(body, affine), str(small / case / "ct.nii.gz"))
        nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.uint8), affine), str(small / case / "mask.nii.gz"))
    wf = workflow(trained, pretrained=False, dataset_dir=str(small), image_name="ct.nii.gz",
                  label_name="mask.nii.gz", target_labels=[1], num_folds=2)
    logger = logging.getLogger("dagman_components.data.transforms")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        crops = wf.parser.get_parsed_content("train::preprocessing")(wf.parser.get_parsed_content("train_data")[0])
    finally:
        logger.removeHandler(handler)
    assert crops[0]["image"].shape == (1, 64, 64, 64)
    assert any("ct.nii.gz" in r.getMessage() and "smaller than the crop" in r.getMessage() for r in records)

    # a pretrained checkpoint of another architecture
    other = tmp_path / "other.pt"
    _, state = read_encoder_file(tiny_pretrained_encoder)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, other)  # a bare state dict: encoder_args (the pretrain bundle's default) is its architecture
    wf = workflow(trained, pretrained_path=str(other))
    with pytest.raises(Exception) as info:
        wf.parser.get_parsed_content("network_def")
    assert "other.pt does not match" in error_chain(info.value) and "extra.weight" in error_chain(info.value)
