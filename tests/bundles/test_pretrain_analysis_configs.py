"""The pretrain bundle's analysis configs (head diversity, zero-shot localization, attention export) run by monai.bundle."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

from .conftest import BUNDLES, bundle_workflow, cli_overrides

pytestmark = pytest.mark.slow

AFFINE = np.diag([-1.5, 1.6, 2.5, 1.0])  # not RAS, not 2 mm


@pytest.fixture(scope="module")
def tumour_dataset(tmp_path_factory):
    """Two small CTs with a label map whose nodule id is 8 (as the phantoms'), in a Decathlon-style JSON."""
    root = tmp_path_factory.mktemp("tumours")
    shape = (40, 36, 24)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    entries = []
    for i, centre in enumerate([(20, 18, 12), (14, 20, 10)]):
        r = np.sqrt((((grid - np.array(centre)[:, None, None, None]) * np.diag(AFFINE)[:3, None, None, None]) ** 2).sum(0))
        hu = np.where(r < 40, -80, -1000).astype(np.int16)
        hu[r < 8] = 40
        label = np.where(r < 40, 1, 0).astype(np.uint8)
        label[r < 8] = 8
        nib.save(nib.Nifti1Image(hu, AFFINE), root / f"ct_{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, AFFINE), root / f"ct_{i}_label.nii.gz")
        entries.append({"image": f"ct_{i}.nii.gz", "label": f"ct_{i}_label.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"training": entries}))
    return root


def data_overrides(root, checkpoint):
    return {"dataset_dir": str(root), "datalist": str(root / "dataset.json"), "checkpoint": str(checkpoint)}


def test_head_diversity_cli_writes_into_the_bundle(bundle_copy, tumour_dataset, tiny_pretrained_encoder):
    bundle = bundle_copy("pretrain")
    # --pretrained False: the CLI switch to a random encoder (no checkpoint read, the path may not exist)
    overrides = {**data_overrides(tumour_dataset, tiny_pretrained_encoder.parent / "absent.pt"),
                 "roi_size": [32, 32, 32], "num_volumes": 1, "pretrained": False}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "pretrain/configs/head_diversity.yaml"]
    result = subprocess.run(cmd + cli_overrides(overrides), cwd=bundle.parent, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = bundle / "eval" / "head_diversity" / "random_init"
    written = json.loads((out / "head_diversity.json").read_text())
    assert [e["stage"] for e in written["stages"]] == [1, 2, 3, 4, "SA"]
    assert written["num_volumes"] == 1 and written["input_shape"] == [32, 32, 32]
    assert written["maps_captured"] == 2 + 2 + 8 + 2 + 2
    assert (out / "head_diversity.png").is_file()
    assert not (bundle.parent / "eval").exists()


def test_zero_shot_localization_pretrained_and_random(bundle_copy, tumour_dataset, tiny_pretrained_encoder):
    bundle = bundle_copy("pretrain")
    overrides = {**data_overrides(tumour_dataset, tiny_pretrained_encoder), "label_values": [8],
                 "num_random_crops": 1, "crop_size": [32, 32, 32], "num_overlays": 1}
    bundle_workflow(bundle, ["zero_shot_localization"], **overrides).run()
    result = json.loads((bundle / "eval" / "localization" / "pretrained" / "localization.json").read_text())
    assert {c["case"] for c in result["cases"]} == {"ct_0.nii.gz", "ct_1.nii.gz"}
    assert result["summary"]["full"]["pretrained"]["n"] == 2
    assert set(result["summary"]["random_crop"]) == {"pretrained", "center_gaussian", "soft_tissue", "noise"}
    assert result["settings"]["percentile"] == 90.0 and result["settings"]["body_hu"] == -500.0
    assert (bundle / "eval" / "localization" / "pretrained" / "localization.png").is_file()
    bundle_workflow(bundle, ["zero_shot_localization"], **{**overrides, "pretrained": False, "num_random_crops": 0}).run()
    random = json.loads((bundle / "eval" / "localization" / "random_init" / "localization.json").read_text())
    assert "random_init" in random["summary"]["full"]


def test_export_attention_matches_the_input_grid(bundle_copy, tumour_dataset, tiny_pretrained_encoder):
    bundle = bundle_copy("pretrain")
    bundle_workflow(bundle, ["export_attention"], **data_overrides(tumour_dataset, tiny_pretrained_encoder),
             per_head=True).run()
    for i in range(2):
        saved = nib.load(bundle / "eval" / "attention" / "pretrained" / f"ct_{i}_satt_heads.nii.gz")
        assert saved.shape == (40, 36, 24, 8)
        np.testing.assert_allclose(saved.affine, AFFINE, atol=1e-5)
        assert np.isfinite(saved.get_fdata()).all()


@pytest.mark.parametrize("config", ["head_diversity.yaml", "zero_shot_localization.yaml", "export_attention.yaml"])
@pytest.mark.parametrize("flag, name", [("false", "random_init"), ("False", "random_init"), ("true", "pretrained")])
def test_pretrained_flag_from_the_command_line(config, flag, name):
    # `monai.bundle run --pretrained false` hands the config the string "false"
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "pretrain" / "configs" / config))
    parser["pretrained"] = flag
    assert parser.get_parsed_content("name") == name
