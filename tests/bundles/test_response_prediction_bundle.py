"""The response_prediction bundle: run from inside its folder, CSV labels, and configs shared with nodule_classification."""

import csv
import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from dagman_components.metrics import binary_classification_metrics

from .conftest import BUNDLES, cli_overrides
from .conftest import bundle_workflow as workflow

pytestmark = pytest.mark.slow

NAME = "response_prediction"
# 6 phantom patients, 3 DCB / 3 NDB, 32^3 crops -> 4 training and 2 validation cases in fold 0
TINY = {"phantom::num_volumes": 6, "phantom::dcb_fraction": 0.5, "phantom::crop_size": [32, 32, 32],
        "roi_size": [32, 32, 32], "num_epochs": 1, "batch_size": 4, "augment": False}
# the keys in which the two bundles' configs may differ: the task, not the pipeline
TASK_KEYS = {"bundle_root", "datalist", "class_names", "phantom_task", "phantom", "pos_weight", "roi_size",
             "batch_size", "dataset_dir"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_pretrained_encoder):
    """The bundle's configs copied to tmp and trained once from inside the bundle folder."""
    bundle = tmp_path_factory.mktemp("bundles") / NAME
    shutil.copytree(BUNDLES / NAME / "configs", bundle / "configs")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.yaml"]
    cmd += cli_overrides({**TINY, "pretrained_path": tiny_pretrained_encoder})
    result = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return bundle, result.stdout + result.stderr


def test_train_from_the_bundle_folder_on_csv_labels(trained):
    bundle, log = trained
    assert "val_auc" in log and "Epoch: 1/1" in log
    assert (bundle / "models" / "model.pt").is_file() and any((bundle / "logs").iterdir())
    rows = list(csv.DictReader((bundle / "data" / "phantom" / "response.csv").open()))
    assert sorted(r["label"] for r in rows) == ["DCB"] * 3 + ["NDB"] * 3


def test_configs_share_everything_but_the_task_with_nodule_classification():
    for config in ("train.yaml", "evaluate.yaml", "multi_gpu_train.yaml", "inference.yaml"):
        ours = ConfigParser.load_config_file(BUNDLES / NAME / "configs" / config)
        theirs = ConfigParser.load_config_file(BUNDLES / "nodule_classification" / "configs" / config)
        assert set(ours) == set(theirs), config
        differing = {k for k in ours if ours[k] != theirs[k]}
        assert differing <= TASK_KEYS, (config, differing - TASK_KEYS)


def test_properties_and_defaults(trained, tiny_pretrained_encoder):
    bundle, _ = trained
    wf = workflow(bundle, **TINY, pretrained_path=str(tiny_pretrained_encoder))
    assert wf.check_properties() == []
    defaults = ConfigParser.load_config_file(bundle / "configs" / "train.yaml")
    assert defaults["class_names"] == ["NDB", "DCB"] and defaults["phantom"]["dcb_fraction"] == 0.41
    assert wf.parser.get_parsed_content("all_data")[0]["label"] in (0, 1)
    assert workflow(bundle, ("inference.yaml",), workflow_type="infer").check_properties() == []


def test_evaluate_and_inference(trained, tmp_path, tiny_pretrained_encoder):
    bundle, _ = trained
    wf = workflow(bundle, ("train.yaml", "evaluate.yaml"), **TINY, pretrained_path=str(tiny_pretrained_encoder))
    assert wf.check_properties() == []
    wf.run()
    metrics = json.loads((bundle / "eval" / "metrics.json").read_text())
    rows = list(csv.reader((bundle / "eval" / "predictions.csv").open()))
    assert metrics["num_cases"] == len(rows) == 2 and metrics["num_positive"] == 1
    expected = binary_classification_metrics([float(r[2]) for r in rows], [float(r[1]) for r in rows])
    for name in ("auc", "ap", "sensitivity", "specificity"):
        assert metrics[name] == pytest.approx(expected[name], abs=1e-5), name

    out = tmp_path / "out"
    infer = workflow(bundle, ("inference.yaml",), workflow_type="infer", output_dir=str(out), roi_size=[32, 32, 32])
    infer.run()
    crops = sorted((bundle / "data" / "phantom" / "responseTr").glob("*.nii.gz"))
    predictions = list(csv.reader((out / "predictions.csv").open()))
    assert len(predictions) == len(crops) == 6
    source = nib.load(str(crops[0]))
    attention = nib.load(str(out / crops[0].name.replace(".nii.gz", "_attention.nii.gz")))
    assert attention.shape == source.shape
    np.testing.assert_allclose(attention.affine, source.affine, atol=1e-4)


def test_label_outside_the_classes_is_named(trained, tmp_path):
    bundle, _ = trained
    crop = next((bundle / "data" / "phantom" / "responseTr").glob("*.nii.gz"))
    datalist = tmp_path / "cohort.csv"
    datalist.write_text(f"image,label\n{crop},DCB\n{crop},PD\n")
    wf = workflow(bundle, datalist=str(datalist), dataset_dir=str(tmp_path))
    with pytest.raises(Exception) as error:
        wf.parser.get_parsed_content("all_data")
    chain, exc = [], error.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any("entry 1" in m and "'PD'" in m and str(datalist) in m for m in chain)
    assert torch.load(bundle / "models" / "model.pt", weights_only=True)  # the trained model is untouched
