import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"

# every size knob at its smallest, so a bundle run takes seconds on a 2-core CPU
TINY_PRETRAIN = {
    "phantom_volumes": 2,
    "roi_size": [32, 32, 32],
    "batch_size": 1,
    "num_epochs": 2,
    "warmup_epochs": 1,
    "warmup_teacher_temp_epochs": 1,
    "head_out_dim": 64,
    "head_hidden_dim": 32,
    "head_bottleneck_dim": 16,
    "num_workers": 0,
}


def cli_overrides(overrides: dict) -> list[str]:
    """``--key value`` pairs for ``python -m monai.bundle run``."""
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", str(value).replace(" ", "") if isinstance(value, list) else str(value)]
    return args


def bundle_workflow(bundle: Path, configs=("train",), workflow_type: str = "train", logging_file=False, **overrides):
    """``ConfigWorkflow`` of a bundle copy's ``configs/<name>.yaml`` files (layered in order), initialised.

    ``logging_file``: False (default) sets no logging up; a path configures logging from that file.
    """
    from monai.bundle import ConfigWorkflow

    files = [str(bundle / "configs" / (c if c.endswith(".yaml") else f"{c}.yaml")) for c in configs]
    wf = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=logging_file,
        workflow_type=workflow_type,
        bundle_root=str(bundle),
        **overrides,
    )
    wf.initialize()
    return wf


def error_chain(exc: BaseException) -> str:
    """Messages of an exception and its causes (MONAI wraps errors raised inside config expressions)."""
    text = []
    while exc is not None:
        text.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(text)


@pytest.fixture
def bundle_copy(tmp_path):
    """A copy of a bundle's configs in tmp_path/<name>, so runs write nowhere in the repository."""

    def make(name: str, under: str = "") -> Path:
        target = tmp_path / under / name
        shutil.copytree(BUNDLES / name / "configs", target / "configs")
        return target

    return make


@pytest.fixture(scope="session")
def tiny_pretrained_encoder(tmp_path_factory) -> Path:
    """A ``model.pt`` as ``bundles/pretrain`` writes it (weights + architecture, ``save_encoder``) at feature_size 12.

    Seeded random weights: downstream bundle tests need the file's format and key names, not a
    trained encoder, and building it takes a second instead of a pretraining run.
    """
    import torch

    from dagman_components.networks import SASwinEncoder, save_encoder

    torch.manual_seed(0)
    return save_encoder(SASwinEncoder(feature_size=12), tmp_path_factory.mktemp("pretrained") / "model.pt")
