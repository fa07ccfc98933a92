"""Training the bundles the way MONAI Label's ``BundleTrainTask`` does, and ``--tracking mlflow``.

MONAI Label overrides ``train::trainer::max_epochs`` (not ``num_epochs``) and ``train::dataset::data`` /
``validate::dataset::data`` with ``{"image", "label"}`` items whose labels are {0, 1} masks (1: foreground).
The schedules must follow the overridden ``max_epochs``, a run shorter than ``val_interval`` must still
validate and save ``models/model.pt``, and the user's label 1 must be the target.
"""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from dagman_components.data import SegmentationTargetd

from .conftest import BUNDLES, cli_overrides
from .conftest import bundle_workflow as workflow

SCHEDULED = ["segmentation", "nodule_classification", "response_prediction", "pretrain"]


def _schedule_length(bundle: str, **overrides) -> int:
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.yaml"))
    parser.update(overrides)
    if bundle == "pretrain":  # 3 iterations per epoch, no data read
        parser["train::dataloader"] = "$[0, 0, 0]"
        return parser.get_parsed_content("lr_scheduler::t_total") // 3
    return parser.get_parsed_content("lr_scheduler::T_max")


@pytest.mark.parametrize("bundle", SCHEDULED)
def test_lr_schedule_follows_max_epochs_override(bundle):
    default = _schedule_length(bundle)
    assert default == ConfigParser.load_config_file(BUNDLES / bundle / "configs" / "train.yaml")["num_epochs"]
    assert _schedule_length(bundle, **{"train::trainer::max_epochs": default + 3}) == default + 3


def test_pretrain_warmup_fits_a_short_run():
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "pretrain" / "configs" / "train.yaml"))
    parser.update({"train::trainer::max_epochs": 2, "warmup_epochs": 10, "train::dataloader": "$[0, 0, 0]"})
    assert parser.get_parsed_content("lr_scheduler::warmup_steps") == 3  # 1 of the 2 epochs


def test_user_mask_label_one_is_the_default_target():
    label = torch.zeros(1, 8, 8, 8)
    label[0, 2:5, 2:5, 2:5] = 1.0
    default = ConfigParser.load_config_file(BUNDLES / "segmentation" / "configs" / "train.yaml")["target_labels"]
    target = SegmentationTargetd("label", target_labels=default, image_key=None)({"label": label})["label"]
    assert target.sum() == 27 and set(target.unique().tolist()) == {0.0, 1.0}


def test_monai_label_style_two_epoch_run_validates_and_saves(tmp_path, tiny_pretrained_encoder):
    """max_epochs 2 < val_interval 5, user {0, 1} masks: the run validates at its last epoch and saves the model."""
    bundle = tmp_path / "segmentation"
    shutil.copytree(BUNDLES / "segmentation" / "configs", bundle / "configs")
    tiny = {"phantom_volumes": 2, "num_folds": 2, "spacing": [4.0, 4.0, 4.0], "batch_size": 1, "sw_batch_size": 1,
            "cache_workers": 1, "pretrained_path": str(tiny_pretrained_encoder)}
    # the phantoms' organ maps as a user would bring them: binary nodule masks in their own folder
    phantom = workflow(bundle, **tiny).parser.get_parsed_content("all_data")
    user = tmp_path / "user"
    user.mkdir()
    items = []
    for i, item in enumerate(phantom):
        organ = nib.load(item["label"].replace("labelsTr_8", "labelsTr"))
        mask = (np.asarray(organ.dataobj) == 8).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, organ.affine), user / f"mask_{i}.nii.gz")
        items.append({"image": item["image"], "label": str(user / f"mask_{i}.nii.gz")})
    wf = workflow(bundle, **tiny, **{"train::trainer::max_epochs": 2, "train::dataset::data": items[:1],
                                      "validate::dataset::data": items[1:]})
    assert wf.parser.get_parsed_content("val_interval") == 5
    assert wf.parser.get_parsed_content("lr_scheduler").T_max == 2
    assert wf.parser.get_parsed_content("validate::dataset")[0]["label"].sum() > 0  # label 1 is the target
    wf.run()
    wf.finalize()
    trainer = wf.parser.get_parsed_content("train::trainer")
    assert trainer.state.epoch == 2
    assert "val_mean_dice" in wf.parser.get_parsed_content("validate::evaluator").state.metrics
    assert (bundle / "models" / "model.pt").is_file()


def test_monai_label_style_run_without_validation_data_saves_final_model(tmp_path, tiny_pretrained_encoder, caplog):
    """MONAI Label's 80/20 split of two labelled images leaves validation empty: the trained weights still land."""
    bundle = tmp_path / "segmentation"
    shutil.copytree(BUNDLES / "segmentation" / "configs", bundle / "configs")
    tiny = {"phantom_volumes": 2, "num_folds": 2, "spacing": [4.0, 4.0, 4.0], "batch_size": 1, "sw_batch_size": 1,
            "cache_workers": 1, "pretrained_path": str(tiny_pretrained_encoder)}
    items = [{"image": item["image"], "label": item["label"]}
             for item in workflow(bundle, **tiny).parser.get_parsed_content("all_data")]
    wf = workflow(bundle, **tiny, **{"train::trainer::max_epochs": 1, "train::dataset::data": items,
                                      "validate::dataset::data": []})
    with caplog.at_level("WARNING", logger="dagman_components.engines.handlers"):
        wf.run()
    wf.finalize()
    model = bundle / "models" / "model.pt"
    assert model.is_file()
    assert any("no validation produced a key metric" in r.getMessage() for r in caplog.records)
    state = torch.load(model, map_location="cpu", weights_only=True)
    network = wf.parser.get_parsed_content("network")
    assert set(state) == set(network.state_dict())
    assert all(torch.equal(state[k], v.cpu()) for k, v in network.state_dict().items())  # the final weights


@pytest.mark.parametrize("best_metric_epoch, saved", [(-1, True), (2, False)])
def test_final_validation_handler_saves_when_nothing_was_validated(tmp_path, best_metric_epoch, saved):
    from ignite.engine import Engine

    from dagman_components.engines import FinalValidationHandler

    network = torch.nn.Linear(2, 1)
    validator = SimpleNamespace(run=lambda epoch: None, network=torch.nn.DataParallel(network),
                                state=SimpleNamespace(best_metric_epoch=best_metric_epoch))
    target = tmp_path / "models" / "model.pt"
    trainer = Engine(lambda engine, batch: None)
    handler = FinalValidationHandler(interval=5, save_if_unvalidated=str(target))
    handler.validator = validator  # the constructor accepts only a monai Evaluator
    handler.attach(trainer)
    trainer.run([0], max_epochs=2)
    assert target.is_file() == saved
    if saved:  # unwrapped from DataParallel: the bare network's keys
        assert set(torch.load(target, weights_only=True)) == {"weight", "bias"}


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (extra: mlflow)")
def test_tracking_mlflow_logs_params_metrics_and_config(tmp_path, tiny_pretrained_encoder):
    """``--tracking mlflow`` on organ_clustering (the smallest run): a local store under the output dir."""
    import mlflow

    bundle = tmp_path / "organ_clustering"
    shutil.copytree(BUNDLES / "organ_clustering" / "configs", bundle / "configs")
    store = tmp_path / "mlruns.db"
    overrides = {"phantom_volumes": 1, "crops_per_organ": 3, "image_size": [32, 32, 32], "batch_size": 4,
                 "pretrained_path": tiny_pretrained_encoder, "bundle_root": bundle,
                 "tracking_uri": f"sqlite:///{store}", "experiment_name": "organs"}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "train.yaml"),
           "--meta_file", str(bundle / "configs" / "metadata.json"), "--tracking", "mlflow"]
    result = subprocess.run(cmd + cli_overrides(overrides), capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("organs").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params and run.data.metrics, (run.data.params, run.data.metrics)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts), artifacts
    assert any(Path(bundle / "eval").glob("config_*.json"))


@pytest.mark.parametrize("bundle", SCHEDULED + ["organ_clustering"])
def test_tracking_config_artifact_is_a_file_under_output_dir(bundle, tmp_path):
    """``--tracking mlflow`` appends ``+ '/config_<time>.json'`` to ``output_dir``: it must be an expression."""
    from monai.bundle import ConfigWorkflow

    target = tmp_path / bundle
    shutil.copytree(BUNDLES / bundle / "configs", target / "configs")
    wf = ConfigWorkflow(config_file=str(target / "configs" / "train.yaml"), workflow_type="train",
                        meta_file=str(target / "configs" / "metadata.json"), logging_file=False,
                        bundle_root=str(target), tracking="mlflow")
    output_dir = Path(wf.parser.get_parsed_content("output_dir"))
    config = Path(wf.parser.get_parsed_content("save_execute_config"))
    assert config.parent == output_dir and config.is_file() and config.name.startswith("config_")
    assert str(wf.parser.get_parsed_content("tracking_uri")).endswith(str(output_dir / "mlruns.db"))


@pytest.mark.parametrize("max_epochs, expected", [(2, [2]), (7, [5, 7]), (10, [5, 10])])
def test_final_validation_handler_epochs(max_epochs, expected):
    from ignite.engine import Engine

    from dagman_components.engines import FinalValidationHandler

    validated = []
    trainer = Engine(lambda engine, batch: None)
    handler = FinalValidationHandler(interval=5)
    handler.validator = SimpleNamespace(run=validated.append)  # ValidationHandler calls validator.run(epoch)
    handler.attach(trainer)
    trainer.run([0], max_epochs=max_epochs)
    assert validated == expected
