"""The organ_clustering bundle run the way users run it: ``python -m monai.bundle run`` and ``ConfigWorkflow``."""

import json
import subprocess
import sys

import numpy as np
import pytest

from .conftest import bundle_workflow, cli_overrides, error_chain

pytestmark = pytest.mark.slow

# 1 phantom x 6 organs x 3 crops = 18 volumes of 32^3
TINY = {"phantom_volumes": 1, "crops_per_organ": 3, "image_size": [32, 32, 32], "batch_size": 4}


def workflow(bundle, **overrides):
    return bundle_workflow(bundle, workflow_type="infer", **{**TINY, **overrides})


def test_run_from_the_parent_folder_writes_json_and_png_into_the_bundle(bundle_copy, tiny_pretrained_encoder):
    bundle = bundle_copy("organ_clustering")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "organ_clustering/configs/train.yaml"]
    cmd += cli_overrides({**TINY, "pretrained_path": tiny_pretrained_encoder})
    result = subprocess.run(cmd, cwd=bundle.parent, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    out = json.loads((bundle / "eval" / "clustering.json").read_text())
    assert out["encoder"] == str(tiny_pretrained_encoder) and out["pretrained"] is True and out["feature"] == "cls"
    assert out["num_samples"] == 18 and out["feature_dim"] == 96
    assert out["classes"] == {name: 3 for name in ("lung", "bone", "heart", "liver", "kidney", "spleen")}
    for space in ("features", "umap"):
        for key in ("intra_cluster", "inter_cluster"):
            assert set(out["distances"][space][key]) >= {"mean", "std", "over"}
            assert np.isfinite(out["distances"][space][key]["mean"]) and out["distances"][space][key]["mean"] > 0
    assert 0 <= out["kmeans"]["nmi"] <= 1 and -1 <= out["kmeans"]["ari"] <= 1
    assert 0 <= out["knn"]["accuracy_mean"] <= 1 and out["knn"]["folds"] == 3
    assert (bundle / "eval" / "clustering_umap.png").read_bytes()[:4] == b"\x89PNG"
    assert (bundle / "data" / "organ_crops" / "phantom" / "datalist.json").is_file()
    assert not (bundle.parent / "eval").exists()  # nothing written into the launch folder
    # configs/inference.yaml: the organ crops -> nearest of the centroids the train run wrote into models/model.pt
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "organ_clustering/configs/inference.yaml"]
    cmd += cli_overrides({"image_size": TINY["image_size"], "encoder_checkpoint": tiny_pretrained_encoder})
    result = subprocess.run(cmd, cwd=bundle.parent, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    rows = (bundle / "eval" / "inference" / "clusters.csv").read_text().splitlines()
    assert len(rows) == 18 and all(0 <= float(row.split(",")[1]) < 6 for row in rows)
    names = json.loads((bundle / "eval" / "inference" / "cluster_names.json").read_text())
    assert names == {str(k): n for k, n in enumerate(("lung", "bone", "heart", "liver", "kidney", "spleen"))}


def test_check_properties_and_random_init_baseline(bundle_copy, tmp_path):
    bundle = bundle_copy("organ_clustering")
    wf = workflow(bundle, pretrained=False)
    assert wf.check_properties() == []
    assert wf.parser["feature"] == "cls" and wf.parser["data_source"] == "phantom"
    # "--pretrained false" reaches the config as a string
    assert workflow(bundle, pretrained="false").parser.get_parsed_content("use_pretrained") is False
    network = wf.parser.get_parsed_content("network")
    assert network.feature == "cls" and network.out_channels == 96
    bad = workflow(bundle, pretrained_path=str(tmp_path / "no_model.pt"))
    with pytest.raises(Exception) as err:
        bad.parser.get_parsed_content("network")
    assert "no_model.pt" in error_chain(err.value)


def test_organmnist3d_source(bundle_copy, tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).reshape(n, 1)
    np.savez(tmp_path / "organmnist3d.npz", **arrays)
    wf = workflow(bundle_copy("organ_clustering"), data_source="organmnist3d", dataset_dir=str(tmp_path),
                  splits=["val", "test"], pretrained=False)
    assert wf.parser.get_parsed_content("intensity_range") == [0.0, 255.0]
    data = wf.parser.get_parsed_content("organ_data")
    assert len(data.items) == 4 and data.class_names == {0: "liver", 1: "kidney-right"}
    sample = wf.parser.get_parsed_content("dataset")[0]
    assert tuple(sample["image"].shape) == (1, 32, 32, 32) and float(sample["image"].max()) <= 1.0


def test_inference_network_matches_network_data_format(bundle_copy):
    """``network_def`` of inference.yaml takes and gives what metadata.json says (MONAI's own check)."""
    from monai.bundle import verify_net_in_out

    configs = bundle_copy("organ_clustering") / "configs"
    verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"),
                      config_file=str(configs / "inference.yaml"), bundle_root=str(configs.parent), n_batch=1)
