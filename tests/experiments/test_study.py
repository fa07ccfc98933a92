import json

import numpy as np
import pytest
import torch

from dagman_components.experiments.study import evaluate_study, snapshots
from dagman_components.networks import SASwinEncoder
from tests.analysis.test_probe import NUM_CASES, TINY, TUMOUR_STARTS, write_case, write_organs


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as study.yaml leaves it: two encoder snapshots and TensorBoard scalars."""
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path_factory.mktemp("run")
    (run / "models").mkdir()
    for epoch, seed in ((0, 0), (5, 1)):
        torch.manual_seed(seed)
        torch.save(SASwinEncoder(**TINY).state_dict(), run / "models" / f"model_epoch{epoch}.pt")
    writer = SummaryWriter(str(run / "logs"))
    for step in range(1, 13):  # 2 epochs of 6 iterations
        writer.add_scalar("teacher_mutual_information_aitd", 1.0 if step <= 6 else 0.5, step)
    writer.close()
    return run


def test_study_curve_baselines_and_monitors(run_dir, tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i, start in enumerate(TUMOUR_STARTS[:NUM_CASES]):
        write_case(data, f"STS_{i + 1:03d}", start, rng)
    write_organs(data, rng)
    out = tmp_path / "out"
    encoder = {k: v for k, v in TINY.items()}
    result = evaluate_study({"tiny": {"dir": str(run_dir), "encoder": encoder}}, data_dir=str(data), output_dir=str(out),
                            n_random_seeds=2, tiling="grid")
    run = result["runs"]["tiny"]
    assert [p["epoch"] for p in run["curve"]] == [0, 5] and [p["iteration"] for p in run["curve"]] == [0, 30]
    assert all(0.0 <= p["tumour_auc"] <= 1.0 for p in run["curve"])
    assert [p["path"].rsplit("/", 1)[-1] for p in run["curve"]] == ["model_epoch0.pt", "model_epoch5.pt"]
    assert run["random_init"]["seeds"] == [0, 1]
    assert run["monitors"]["teacher_mutual_information_aitd"] == {"first_epoch": 1.0, "last_epoch": 0.5}
    saved = json.loads((out / "study.json").read_text())
    assert saved["tiling"] == "grid" and result["tiling"] == "grid"
    assert saved["runs"]["tiny"]["curve"] == json.loads(json.dumps(run["curve"]))
    assert (out / "learning_curves.png").stat().st_size > 0


def test_a_run_without_snapshots_says_what_to_set(tmp_path):
    (tmp_path / "models").mkdir()
    with pytest.raises(FileNotFoundError, match="encoder_snapshot_interval"):
        snapshots(tmp_path)
