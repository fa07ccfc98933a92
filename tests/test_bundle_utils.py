from pathlib import Path

import pytest
import torch

from dagman_components.bundle_utils import as_bool, locate_bundle_root, prepare_dataset


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "bundles" / "pretrain" / "configs").mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize(
    "argv",
    [
        ["monai.bundle", "run", "--config_file", "bundles/pretrain/configs/train.yaml"],
        ["monai.bundle", "run", "--config_file=bundles/pretrain/configs/train.yaml"],
        ["monai.bundle", "run", "--config_file",
         "['bundles/pretrain/configs/train.yaml','bundles/pretrain/configs/multi_gpu_train.yaml']"],
        ["pytest"],  # no config on the command line: found under bundles/ of the launch folder
    ],
)
def test_bundle_root_from_the_repository_root(repo, argv):
    assert Path(locate_bundle_root("pretrain", argv=argv, cwd=str(repo))) == repo / "bundles" / "pretrain"


def test_bundle_root_from_inside_the_bundle(repo):
    inside = repo / "bundles" / "pretrain"
    assert Path(locate_bundle_root("pretrain", argv=["run", "--config_file", "configs/train.yaml"], cwd=str(inside))) == inside
    assert Path(locate_bundle_root("pretrain", argv=["pytest"], cwd=str(inside))) == inside


def test_bundle_root_falls_back_to_the_launch_folder(tmp_path):
    assert Path(locate_bundle_root("pretrain", argv=["pytest"], cwd=str(tmp_path))) == tmp_path


def test_default_dataset_is_generated_once_and_user_folders_are_checked(tmp_path):
    phantom = tmp_path / "phantom"
    items = prepare_dataset(str(phantom), None, phantom_dir=str(phantom), phantom_volumes=2)
    assert len(items) == 2 and all(Path(i["image"]).is_file() for i in items)
    mtime = (phantom / "dataset.json").stat().st_mtime_ns
    prepare_dataset(str(phantom), None, phantom_dir=str(phantom), phantom_volumes=2)
    assert (phantom / "dataset.json").stat().st_mtime_ns == mtime
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises((FileNotFoundError, ValueError), match="empty"):
        prepare_dataset(str(empty), None, phantom_dir=str(phantom))
    # a user folder is read as it is, never filled with phantoms
    assert not any(empty.iterdir())


@pytest.mark.parametrize("value, expected", [(True, True), ("false", False), ("False", False), ("true", True),
                                             ("0", False), (1, True), (None, False), ("no", False)])
def test_as_bool_reads_command_line_flags(value, expected):
    assert as_bool(value) is expected


def test_as_bool_names_the_flag():
    with pytest.raises(ValueError, match="resume must be true or false, got 'maybe'"):
        as_bool("maybe", "resume")


def test_resume_false_from_the_command_line_does_not_resume(tmp_path):
    from dagman_components.engines import PretrainCheckpoint

    assert PretrainCheckpoint(str(tmp_path), {}, encoder=torch.nn.Linear(1, 1), resume="false").resume is False


def test_bundle_utils_re_exports_the_lower_layers_helpers():
    from dagman_components import bundle_utils, options
    from dagman_components.data import datalist

    assert bundle_utils.as_bool is options.as_bool and bundle_utils.positive_int is options.positive_int
    assert bundle_utils.prepare_dataset is datalist.prepare_dataset


@pytest.mark.parametrize("value", [None, "null", "None", " none ", ""])
def test_optional_reads_command_line_nulls(value):
    from dagman_components.options import optional

    assert optional(value) is None


def test_optional_keeps_set_values():
    from dagman_components.options import optional

    assert optional([72, 72, 72]) == [72, 72, 72] and optional(0) == 0 and optional("memory") == "memory"
