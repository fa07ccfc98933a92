"""The nodule_classification bundle run the way users run it: ``python -m monai.bundle`` and ``ConfigWorkflow``."""

import csv
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ckpt_export, verify_net_in_out

from dagman_components.metrics import binary_classification_metrics
from dagman_components.networks import SAClassifier

from .conftest import bundle_workflow as workflow
from .conftest import cli_overrides, error_chain

pytestmark = pytest.mark.slow

NAME = "nodule_classification"
# 3 phantom volumes -> 12 nodules (6 malignant) -> 8 training and 4 validation crops in fold 0
TINY = {"phantom::num_volumes": 3, "num_epochs": 1, "batch_size": 4, "augment": False}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_pretrained_encoder):
    """The bundle's configs copied to tmp, trained once from the parent folder with ``monai.bundle run``."""
    import shutil

    from .conftest import BUNDLES

    bundle = tmp_path_factory.mktemp("bundles") / NAME
    shutil.copytree(BUNDLES / NAME / "configs", bundle / "configs")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"{NAME}/configs/train.yaml"]
    cmd += cli_overrides({**TINY, "pretrained_path": tiny_pretrained_encoder})
    result = subprocess.run(cmd, cwd=bundle.parent, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return bundle, result.stdout + result.stderr


def test_train_from_the_parent_folder_writes_a_cpu_model_into_the_bundle(trained):
    bundle, log = trained
    assert "val_auc" in log and "val_sensitivity" in log and "Epoch: 1/1" in log
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(v.device.type == "cpu" for v in state.values())
    SAClassifier({"feature_size": 12}).load_state_dict(state)  # a plain state dict of the classifier
    assert (bundle / "data" / "phantom" / "nodules.json").is_file() and any((bundle / "logs").iterdir())
    assert not (bundle.parent / "models").exists() and not (bundle.parent / "data").exists()


def test_properties_defaults_and_splits(trained, tiny_pretrained_encoder):
    bundle, _ = trained
    wf = workflow(bundle, **TINY, pretrained_path=str(tiny_pretrained_encoder), train_fraction=0.5)
    assert wf.check_properties() == []
    parser = wf.parser
    for key, value in {"mode": "finetune", "feature": "cls", "num_folds": 3, "fold": 0, "lr": 2e-4,
                       "pretrained": True, "num_classes": 1}.items():
        assert parser[key] == value, key
    # the encoder is named by its checkpoint only: the architecture comes from the file
    assert parser.get_parsed_content("encoder") == str(tiny_pretrained_encoder)
    assert parser.get_parsed_content("network_def").encoder.feature_size == 12
    train, val = parser.get_parsed_content("split")
    assert not {i["patient_id"] for i in train} & {i["patient_id"] for i in val}  # grouped by patient
    few = parser.get_parsed_content("train_data")
    assert len(few) == len(train) // 2 and sum(i["label"] for i in few) == sum(i["label"] for i in train) // 2
    infer = workflow(bundle, ("inference.yaml",), workflow_type="infer")
    assert infer.check_properties() == []
    first = infer.parser.get_parsed_content("preprocessing").transforms[0]
    assert type(first).__name__ == "LoadImaged" and list(first.keys) == ["image"]


def test_evaluate_writes_metrics_that_match_scikit_learn(trained, tiny_pretrained_encoder):
    bundle, _ = trained
    # the overrides of training: the encoder's architecture is read from its checkpoint (not its weights)
    wf = workflow(bundle, ("train.yaml", "evaluate.yaml"), **TINY, pretrained_path=str(tiny_pretrained_encoder))
    assert wf.check_properties() == []
    wf.run()
    metrics = json.loads((bundle / "eval" / "metrics.json").read_text())
    rows = list(csv.reader((bundle / "eval" / "predictions.csv").open()))
    assert metrics["num_cases"] == len(rows) == 4 and metrics["num_positive"] == 2
    expected = binary_classification_metrics([float(r[2]) for r in rows], [float(r[1]) for r in rows])
    for name in ("auc", "ap", "sensitivity", "specificity"):
        assert metrics[name] == pytest.approx(expected[name], abs=1e-5), name


def test_inference_writes_probabilities_and_aligned_attention_maps(trained, tmp_path):
    bundle, _ = trained
    crops = sorted((bundle / "data" / "phantom" / "nodulesTr").glob("*.nii.gz"))[:2]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for crop in crops:
        (inputs / crop.name).symlink_to(crop)
    out = tmp_path / "out"
    wf = workflow(bundle, ("inference.yaml",), workflow_type="infer", dataset_dir=str(inputs), output_dir=str(out),
                  spacing=[1.5, 2.0, 2.0])
    wf.run()
    rows = list(csv.reader((out / "predictions.csv").open()))
    assert [r[0].split("/")[-1] for r in rows] == [c.name for c in crops]
    assert all(0.0 <= float(r[1]) <= 1.0 for r in rows)
    for crop in crops:
        attention = nib.load(str(out / crop.name.replace(".nii.gz", "_attention.nii.gz")))
        source = nib.load(str(crop))
        assert attention.shape == source.shape
        np.testing.assert_allclose(attention.affine, source.affine, atol=1e-4)
        assert attention.get_fdata().min() >= -1e-6 and attention.get_fdata().max() > 0


def test_verify_net_in_out_and_torchscript_export(trained, tmp_path):
    bundle, _ = trained
    configs = bundle / "configs"
    verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"),
                      config_file=str(configs / "inference.yaml"), bundle_root=str(bundle))
    exported = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(exported), ckpt_file=str(bundle / "models" / "model.pt"),
                meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.yaml"),
                bundle_root=str(bundle), use_trace=True, input_shape=[1, 1, 32, 32, 32])
    scripted = torch.jit.load(str(exported))
    eager = SAClassifier({"feature_size": 12}).eval()
    eager.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_named(trained, tmp_path):
    bundle, _ = trained
    crop = next((bundle / "data" / "phantom" / "nodulesTr").glob("*.nii.gz"))
    datalist = tmp_path / "cases.json"
    datalist.write_text(json.dumps({"training": [{"image": str(crop), "label": 1}, {"image": str(crop), "label": 3}]}))
    wf = workflow(bundle, datalist=str(datalist), dataset_dir=str(tmp_path))
    with pytest.raises(Exception) as error:
        wf.parser.get_parsed_content("all_data")
    assert "label 3 is not one of the classes" in error_chain(error.value) and str(datalist) in error_chain(error.value)

    missing = tmp_path / "no_pretrain" / "model.pt"
    wf = workflow(bundle, **TINY, pretrained_path=str(missing))
    with pytest.raises(Exception) as error:
        wf.parser.get_parsed_content("network_def")
    assert "Run bundles/pretrain first" in error_chain(error.value) and str(missing) in error_chain(error.value)

    other = tmp_path / "wider.pt"
    from dagman_components.networks import SASwinEncoder

    torch.save(SASwinEncoder(feature_size=24).state_dict(), other)
    wf = workflow(bundle, **TINY, pretrained_path=str(other))
    with pytest.raises(Exception) as error:
        wf.parser.get_parsed_content("network_def")
    assert "mask_token: checkpoint (1, 24, 1, 1, 1) vs model (1, 12, 1, 1, 1)" in error_chain(error.value)
