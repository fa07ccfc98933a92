"""The pretrain bundle run the way users run it: ``python -m monai.bundle run`` and ``ConfigWorkflow``."""

import os
import subprocess
import sys

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.data import CacheDataset, PersistentDataset

from dagman_components.engines import latest_checkpoint
from dagman_components.networks import SASwinEncoder

from .conftest import TINY_PRETRAIN, bundle_workflow, cli_overrides, error_chain

pytestmark = pytest.mark.slow


def run_bundle(cwd, config_files, overrides, nproc=None, timeout=600):
    config = config_files[0] if len(config_files) == 1 else str(config_files)
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "-m", "monai.bundle", "run"]
    else:
        cmd = [sys.executable, "-m", "monai.bundle", "run"]
    cmd += ["--config_file", config] + cli_overrides(overrides)
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if nproc else dict(os.environ)
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


def workflow(bundle_dir, **overrides):
    """The tiny pretraining, logging set up from the bundle's logging.conf as ``monai.bundle run`` does."""
    return bundle_workflow(bundle_dir, logging_file=str(bundle_dir / "configs" / "logging.conf"), **{**TINY_PRETRAIN, **overrides})


def test_run_from_the_parent_folder_writes_into_the_bundle(bundle_copy):
    bundle = bundle_copy("pretrain")
    log = run_bundle(bundle.parent, ["pretrain/configs/train.yaml"], TINY_PRETRAIN)
    assert "Epoch: 2/2, Iter: 2/2" in log and "amip" in log and "teacher_entropy_mean_aitd" in log
    assert (bundle / "data" / "phantom" / "dataset.json").is_file()
    assert latest_checkpoint(bundle / "models").name == "checkpoint_2.pt"
    assert any((bundle / "logs").iterdir())  # TensorBoard events
    encoder = SASwinEncoder(feature_size=12).load_pretrained(bundle / "models" / "model.pt")
    out = encoder(torch.rand(1, 1, 32, 32, 32))
    assert out.satt.shape == (1, 8)
    assert not (bundle.parent / "models").exists()  # nothing written into the launch folder


def test_check_properties_and_defaults_are_the_papers(bundle_copy):
    bundle = bundle_copy("pretrain")
    wf = workflow(bundle)
    assert wf.check_properties() == []
    parser = wf.parser
    for key, value in {"mask_ratio": 0.7, "hint_ratio": 0.1, "teacher_drop_ratio": 0.7, "ampd_weight": 0.1,
                       "aitd_weight": 0.1, "gitd_weight": 0.1, "amip_weight": 1.0, "ema_momentum": 0.996,
                       "student_temp": 0.1, "teacher_temp": 0.04, "warmup_teacher_temp": 0.04, "sa_stage": 3,
                       "drop_path_rate": 0.1, "lr": 8e-4, "masking": "attention_high"}.items():
        assert parser[key] == value, key
    # the choices where train.yaml departs from the papers' heads (docs/README.md, Collapse)
    assert parser["head_input_norm"] == "batch" and parser["centering"] == "center" and parser["koleo_weight"] == 0.0
    assert parser["satt_source"] == "clean" and parser["ampd_tokens"] == "premerge"
    # speed and scale keys (docs/README.md, Performance): same weights either way
    encoder = parser.get_parsed_content("network").encoder
    assert encoder.swin_forward == "fast" and not encoder.compile_stages and not encoder.channels_last
    assert encoder.skip_mask_windows
    assert parser["cache"] == "memory" and isinstance(parser.get_parsed_content("train::dataset"), CacheDataset)
    paper = ConfigWorkflow(
        config_file=[str(bundle / "configs" / "train.yaml"), str(bundle / "configs" / "paper.yaml")],
        meta_file=str(bundle / "configs" / "metadata.json"), logging_file=False, workflow_type="train",
    ).parser
    assert paper["roi_size"] == [128, 128, 128] and paper["num_epochs"] == 800 and paper["warmup_epochs"] == 80
    assert paper["feature_size"] == 48 and paper["head_out_dim"] == 8192 and paper["lr"] == 8e-4
    assert paper["teacher_temp"] == 0.07  # the papers' (SMIT) value
    # 10,412 CTs do not fit in RAM: the disk cache, with workers reading it
    assert paper["cache"] == "disk" and paper["num_workers"] >= 4


def test_disk_cache_run_writes_each_volume_once_and_trains(bundle_copy):
    bundle = bundle_copy("pretrain")
    wf = workflow(bundle, cache="disk", swin_forward="monai")
    assert isinstance(wf.parser.get_parsed_content("train::dataset"), PersistentDataset)
    assert wf.parser.get_parsed_content("network").encoder.swin_forward == "monai"
    wf.run()
    assert len(list((bundle / "cache").glob("*.pt"))) == TINY_PRETRAIN["phantom_volumes"]
    assert wf.parser.get_parsed_content("train::trainer").state.iteration == 4


def test_resume_ends_where_an_uninterrupted_run_ends(bundle_copy):
    straight = workflow(bundle_copy("pretrain", under="straight"), num_epochs=2)
    straight.run()
    interrupted = bundle_copy("pretrain", under="interrupted")
    first = workflow(interrupted, num_epochs=2)
    # stop after the first epoch, as a killed job would
    first.parser.get_parsed_content("train::trainer").add_event_handler(
        Events.EPOCH_COMPLETED, lambda engine: engine.terminate()
    )
    first.run()
    assert latest_checkpoint(interrupted / "models").name == "checkpoint_1.pt"
    resumed = workflow(interrupted, num_epochs=2, resume=True)
    resumed.run()
    a = straight.parser.get_parsed_content("train::trainer").state
    b = resumed.parser.get_parsed_content("train::trainer").state
    assert (b.epoch, b.iteration) == (a.epoch, a.iteration) == (2, 4)
    for key in ("lr", "ema_momentum", "teacher_temp"):
        assert b.output[key] == pytest.approx(a.output[key]), key
    sched_a = straight.parser.get_parsed_content("lr_scheduler").state_dict()
    sched_b = resumed.parser.get_parsed_content("lr_scheduler").state_dict()
    assert sched_a["last_epoch"] == sched_b["last_epoch"] == 4
    assert latest_checkpoint(interrupted / "models").name == "checkpoint_2.pt"


def test_resume_without_a_checkpoint_says_where_it_looked(bundle_copy):
    bundle = bundle_copy("pretrain")
    wf = workflow(bundle, resume=True)
    with pytest.raises(Exception) as err:
        wf.run()
    assert "FileNotFoundError" in error_chain(err.value) and str(bundle / "models") in error_chain(err.value)


def test_missing_dataset_dir_is_named(bundle_copy, tmp_path):
    bundle = bundle_copy("pretrain")
    missing = tmp_path / "no_such_ct_folder"
    wf = workflow(bundle, dataset_dir=str(missing))
    with pytest.raises(Exception) as err:
        wf.run()
    assert str(missing) in error_chain(err.value)


def test_two_process_gloo_ddp(bundle_copy):
    bundle = bundle_copy("pretrain")
    log = run_bundle(
        bundle.parent,
        ["pretrain/configs/train.yaml", "pretrain/configs/multi_gpu_train.yaml"],
        {**TINY_PRETRAIN, "phantom_volumes": 4, "num_epochs": 1},
        nproc=2,
    )
    # 4 volumes over 2 ranks, batch 1: two iterations per epoch, logged by rank 0 only
    assert log.count("Epoch: 1/1, Iter: 2/2") == 1
    assert latest_checkpoint(bundle / "models").name == "checkpoint_1.pt"
    SASwinEncoder(feature_size=12).load_pretrained(bundle / "models" / "model.pt")
