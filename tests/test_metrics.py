"""Binary metrics: against scikit-learn, against hand-computed values, and MONAI's handlers agree with them."""

import json
import math

import numpy as np
import pytest
import torch
from monai.metrics import AveragePrecisionMetric, ConfusionMatrixMetric, ROCAUCMetric
from sklearn.metrics import average_precision_score, roc_auc_score

from dagman_components.metrics import METRIC_NAMES, binary_classification_metrics, write_metrics_json


def test_hand_computed_example():
    # positives score 0.35 and 0.8, negatives 0.1 and 0.4: one of four pairs is misordered
    metrics = binary_classification_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert metrics["auc"] == pytest.approx(0.75)
    assert metrics["ap"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert metrics["sensitivity"] == pytest.approx(0.5) and metrics["specificity"] == pytest.approx(1.0)
    assert (metrics["num_cases"], metrics["num_positive"], metrics["threshold"]) == (4, 2, 0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scikit_learn_and_monai(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, 40)
    y_score = np.clip(0.3 * y_true + rng.uniform(0, 0.7, 40), 0, 1)
    metrics = binary_classification_metrics(y_true, y_score)
    assert metrics["auc"] == pytest.approx(roc_auc_score(y_true, y_score))
    assert metrics["ap"] == pytest.approx(average_precision_score(y_true, y_score))
    predicted = y_score >= 0.5
    assert metrics["sensitivity"] == pytest.approx(predicted[y_true == 1].mean())
    assert metrics["specificity"] == pytest.approx(1 - predicted[y_true == 0].mean())
    # the bundles' evaluators compute the same numbers with MONAI's metrics (per-case (1,) tensors)
    scores = [torch.tensor([s], dtype=torch.float32) for s in y_score]
    labels = [torch.tensor([float(t)]) for t in y_true]
    binary = [torch.tensor([float(p)]) for p in predicted]
    auc, ap = ROCAUCMetric(), AveragePrecisionMetric()
    auc(scores, labels)
    ap(scores, labels)
    assert auc.aggregate() == pytest.approx(metrics["auc"], abs=1e-6)
    assert ap.aggregate() == pytest.approx(metrics["ap"], abs=1e-6)
    for name in ("sensitivity", "specificity"):
        confusion = ConfusionMatrixMetric(include_background=True, metric_name=name)
        confusion(torch.stack(binary), torch.stack(labels))
        assert confusion.aggregate()[0].item() == pytest.approx(metrics[name], abs=1e-6)


def test_undefined_metrics_are_nan_and_bad_input_raises():
    only_negative = binary_classification_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert math.isnan(only_negative["auc"]) and math.isnan(only_negative["sensitivity"])
    assert only_negative["specificity"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="binary labels"):
        binary_classification_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="one value per case"):
        binary_classification_metrics([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        binary_classification_metrics([0, 1], [0.1, float("nan")])


def test_write_metrics_json(tmp_path):
    path = tmp_path / "eval" / "metrics.json"
    written = write_metrics_json(
        {"val_auc": torch.tensor(0.75), "val_ap": np.float64(0.5), "val_sensitivity": float("nan"), "val_specificity": 1},
        path,
        prefix="val_",
        cases=[{"label": 1}, {"label": 0}, {"label": 1}],
    )
    assert json.loads(path.read_text()) == written
    assert written == {"auc": 0.75, "ap": 0.5, "sensitivity": None, "specificity": 1, "num_cases": 3, "num_positive": 2}
    assert set(METRIC_NAMES) <= set(written)
