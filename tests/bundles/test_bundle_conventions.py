"""Model-zoo conventions every bundle under ``bundles/`` must meet (docs/bundles.md), checked with MONAI's own tools."""

import json
import shutil

import pytest
from monai.bundle import ConfigParser, verify_metadata

from dagman_components.bundle_utils import METADATA_SCHEMA

from .conftest import BUNDLES

ALL_BUNDLES = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "metadata.json").is_file())
REQUIRED_FILES = ["LICENSE", "configs/metadata.json", "configs/train.yaml", "configs/logging.conf", "docs/README.md",
                  "docs/data_license.txt"]


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_verify_metadata_offline(name, tmp_path):
    schema = tmp_path / "schema.json"
    shutil.copy(METADATA_SCHEMA, schema)
    verify_metadata(meta_file=str(BUNDLES / name / "configs" / "metadata.json"), filepath=str(schema))


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_files_version_and_json_style(name):
    bundle = BUNDLES / name
    missing = [f for f in REQUIRED_FILES if not (bundle / f).is_file()]
    assert not missing, f"{bundle} lacks {missing}"
    assert not list(bundle.rglob("*.yml")), "MONAI Label ignores .yml: use .yaml"
    text = (bundle / "configs" / "metadata.json").read_text()
    meta = json.loads(text)
    assert meta["version"] in meta["changelog"]
    assert text == json.dumps(meta, indent=4) + "\n", "metadata.json must be indented 4 spaces"
    assert set(meta["network_data_format"]["inputs"]) >= {"image"}
    assert set(meta["network_data_format"]["outputs"]) >= {"pred"}
    train = ConfigParser.load_config_file(bundle / "configs" / "train.yaml")
    assert "run" in train and "bundle_root" in train, "train.yaml needs bundle_root and run"


def test_schema_rejects_what_verify_metadata_must_catch(tmp_path):
    meta = json.loads((BUNDLES / "pretrain" / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    meta["optional_packages_version"] = {}
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    schema = tmp_path / "schema.json"
    shutil.copy(METADATA_SCHEMA, schema)
    with pytest.raises(ValueError, match="Failed validating"):
        verify_metadata(meta_file=str(bad), filepath=str(schema))
