"""Release zips (``python -m dagman_components.release``): layout, vendored package, metadata, the model zoo's check."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import dagman_components
from dagman_components.analysis import OrganClusterer
from dagman_components.networks import BUNDLE_ENCODER_ARGS, SAClassifier, SASwinEncoder, SASwinUNETR, save_encoder
from dagman_components.release import ZOO_NAMES, main

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO.parent / "shared" / "specs"
SCHEMA = SPECS / "meta_schema_20240725.json"
ZOO_CHECK = SPECS / "model-zoo" / "ci" / "verify_bundle.py"
BUNDLES = ("pretrain", "nodule_classification", "response_prediction", "segmentation", "organ_clustering")

# run `monai.bundle run` with the editable install of this project switched off: only the vendored copy can load
ISOLATED_RUN = """
import os, runpy, sys
repo = os.environ['DAGMAN_REPO_ROOT']  # the checkout an editable install points at
sys.meta_path = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', type(f).__module__).lower()]
sys.path = [p for p in sys.path if '__editable__' not in p and os.path.realpath(p or '.') != repo]
sys.path.insert(0, '')
sys.argv = ['monai.bundle', 'run', '--config_file', 'configs/inference.yaml'] + sys.argv[1:]
try:
    runpy.run_module('monai.bundle', run_name='__main__')
except SystemExit as e:
    if e.code:
        raise
print('DAGMAN_FILE', sys.modules['dagman_components'].__file__)
"""


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("release")
    weights = tmp / "weights"
    torch.manual_seed(0)
    encoder_file = save_encoder(SASwinEncoder(**BUNDLE_ENCODER_ARGS), weights / "pretrain" / "models" / "model.pt")
    classifier = SAClassifier(encoder=str(encoder_file), num_classes=1, feature="cls", mode="finetune")
    clusterer = OrganClusterer(encoder=str(encoder_file), feature="cls")
    clusterer.set_clusters(torch.randn(6, clusterer.feature_channels), ["lung", "bone", "heart", "liver", "kidney", "spleen"])
    tiny = {"nodule_classification": classifier, "response_prediction": classifier,
            "segmentation": SASwinUNETR(encoder=str(encoder_file), out_channels=2), "organ_clustering": clusterer}
    for bundle, network in tiny.items():
        (weights / bundle / "models").mkdir(parents=True)
        torch.save(network.state_dict(), weights / bundle / "models" / "model.pt")
    archives = main(["--output_dir", str(tmp / "dist"), "--bundles", ",".join(BUNDLES), "--weights_from", str(weights)])
    extracted = tmp / "models"
    for archive in archives:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(extracted)
    return {"tmp": tmp, "archives": archives, "models": extracted}


def test_zip_layout(release):
    names = sorted(p.name for p in release["archives"])
    assert names == sorted(
        f"{ZOO_NAMES[b]}_v{json.loads((REPO / 'bundles' / b / 'configs' / 'metadata.json').read_text())['version']}.zip"
        for b in BUNDLES
    )
    for archive in release["archives"]:
        with zipfile.ZipFile(archive) as zf:
            files = zf.namelist()
        tops = {f.split("/")[0] for f in files}
        assert tops == {archive.name.split("_v")[0]}
        top = tops.pop()
        for required in ("LICENSE", "configs/metadata.json", "configs/inference.yaml", "models/model.pt",
                         "large_files.yml", "dagman_components/__init__.py", "dagman_components/release.py"):
            assert f"{top}/{required}" in files, required
        assert any(f.startswith(f"{top}/dagman_components/resources/") for f in files)
        assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)
    assert len({ZOO_NAMES[b] for b in ZOO_NAMES}) == len(ZOO_NAMES)
    assert "segmentation" in ZOO_NAMES["segmentation"] and "classification" in ZOO_NAMES["nodule_classification"]


@pytest.mark.parametrize("bundle", ["nodule_classification", "response_prediction", "segmentation", "organ_clustering"])
def test_downstream_carries_encoder_and_points_at_it(release, bundle):
    root = release["models"] / ZOO_NAMES[bundle]
    assert (root / "models" / "encoder" / "encoder.pt").is_file()
    # MONAI Label offers every models/*.pt as a model to load (strict=False): only the bundle's own model is there
    assert sorted(p.name for p in (root / "models").glob("*.pt")) == ["model.pt"]
    for config in ("inference.yaml", "train.yaml", "evaluate.yaml"):  # evaluate.yaml layers on train.yaml
        if not (root / "configs" / config).is_file():  # organ_clustering: no evaluate.yaml
            continue
        text = (root / "configs" / config).read_text()
        assert "'pretrain'" not in text and ("'encoder', 'encoder.pt'" in text or config == "evaluate.yaml"), config
    metadata = json.loads((root / "configs" / "metadata.json").read_text())
    assert "dagman-components" not in metadata["required_packages_version"]
    large = (root / "large_files.yml").read_text()
    for weight in ("model.pt", "encoder/encoder.pt"):
        assert f'path: "models/{weight}"' in large
        assert hashlib.md5((root / "models" / weight).read_bytes()).hexdigest() in large


@pytest.mark.skipif(not SCHEMA.is_file(), reason="../shared/specs/meta_schema_20240725.json absent")
def test_metadata_valid_and_names_distinct(release):
    from monai.bundle import verify_metadata

    names = set()
    for bundle in BUNDLES:
        meta = release["models"] / ZOO_NAMES[bundle] / "configs" / "metadata.json"
        verify_metadata(meta_file=str(meta), filepath=str(SCHEMA))
        names.add(json.loads(meta.read_text())["name"])
    all_names = {json.loads((REPO / "bundles" / b / "configs" / "metadata.json").read_text())["name"] for b in ZOO_NAMES}
    assert len(names) == len(BUNDLES) and len(all_names) == len(ZOO_NAMES)


@pytest.mark.skipif(not ZOO_CHECK.is_file() or not SCHEMA.is_file(), reason="../shared/specs/model-zoo absent")
def test_model_zoo_min_check(release):
    tmp = release["tmp"] / "zoo"
    models = tmp / "models"
    shutil.copytree(release["models"], models)
    (models / "model_info.json").write_text("{}")  # the zoo's record of released versions
    for bundle in BUNDLES:
        name = ZOO_NAMES[bundle]
        (models / name / "eval").mkdir(exist_ok=True)  # what the zoo's prepare_schema.py does before the check
        shutil.copy(SCHEMA, models / name / "eval" / "schema.json")
        result = subprocess.run([sys.executable, str(ZOO_CHECK), "-b", name, "-m", "min"], cwd=tmp,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "metadata format is verified correctly" in result.stdout


@pytest.mark.parametrize("bundle,size,output", [("nodule_classification", 32, "predictions.csv"),
                                                ("pretrain", 64, "case0_satt.nii.gz"),
                                                ("response_prediction", 64, "predictions.csv"),
                                                ("segmentation", 48, "case0_seg.nii.gz"),
                                                ("organ_clustering", 32, "clusters.csv")])
def test_released_inference_runs_on_the_vendored_package(release, tmp_path, bundle, size, output):
    """Launched from the released folder (the zoo's usage), with the editable install of this project removed."""
    root = release["models"] / ZOO_NAMES[bundle]
    data = tmp_path / "crops"
    data.mkdir()
    rng = np.random.default_rng(0)
    volume = rng.uniform(-1000, 400, (size,) * 3).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 2.0, 1.0])), data / "case0.nii.gz")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["DAGMAN_REPO_ROOT"] = os.path.realpath(Path(dagman_components.__file__).parents[1])
    result = subprocess.run([sys.executable, "-c", ISOLATED_RUN, "--dataset_dir", str(data)], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("DAGMAN_FILE")][-1]
    assert Path(line.split(" ", 1)[1]).resolve().is_relative_to(root.resolve())
    assert (root / "eval" / "inference" / output).is_file(), sorted(os.listdir(root / "eval" / "inference"))
