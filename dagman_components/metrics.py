"""Binary classification metrics of the downstream tasks: AUC, AP, sensitivity and specificity.

The papers report AUC for nodule malignancy and immunotherapy response (DAGMaN Fig. 2, SMART
Tables II-III), with sensitivity and specificity in the text (DAGMaN sec. 4). Two ways to get them:

- during a MONAI evaluation, as Ignite metrics: the bundles' evaluators use MONAI's ``ROCAUC`` (key
  metric), ``AveragePrecision`` and ``ConfusionMatrix`` (sensitivity, specificity) handlers;
- from saved scores, with scikit-learn: :func:`binary_classification_metrics`, and
  :func:`write_metrics_json` to store either result.

Sensitivity and specificity use the fixed threshold 0.5 on the positive-class probability
(the papers do not state theirs) **[choice]**.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

__all__ = ["METRIC_NAMES", "binary_classification_metrics", "write_metrics_json"]

#: the metrics every classification bundle reports, in this order.
METRIC_NAMES: tuple[str, ...] = ("auc", "ap", "sensitivity", "specificity")


def _as_binary_arrays(y_true: Sequence[Any], y_score: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(y_true, dtype=float).reshape(-1)
    score = np.asarray(y_score, dtype=float).reshape(-1)
    if truth.shape != score.shape:
        raise ValueError(f"y_true and y_score need one value per case, got {truth.size} labels and {score.size} scores.")
    if truth.size == 0:
        raise ValueError("no cases to evaluate: y_true and y_score are empty.")
    bad = sorted(set(truth.tolist()) - {0.0, 1.0})
    if bad:
        raise ValueError(f"y_true must hold binary labels 0/1, found {bad[:5]}.")
    if not np.all(np.isfinite(score)):
        raise ValueError("y_score holds NaN or infinite values.")
    return truth.astype(int), score


def binary_classification_metrics(
    y_true: Sequence[Any], y_score: Sequence[Any], threshold: float = 0.5
) -> dict[str, float | int]:
    """AUC, AP, sensitivity and specificity of positive-class scores, with scikit-learn.

    Args:
        y_true: (N,) labels 0/1 (1 = malignant / durable clinical benefit).
        y_score: (N,) scores of the positive class, e.g. sigmoid probabilities.
        threshold: a case is predicted positive when its score is >= ``threshold``. Default 0.5.

    Returns:
        ``{"auc", "ap", "sensitivity", "specificity", "threshold", "num_cases", "num_positive"}``;
        AUC and AP are NaN when only one class is present (they are undefined), sensitivity is NaN
        without positives and specificity NaN without negatives.
    """
    truth, score = _as_binary_arrays(y_true, y_score)
    predicted = (score >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(truth, predicted, labels=[0, 1]).ravel()
    both_classes = 0 < truth.sum() < truth.size
    return {
        "auc": float(roc_auc_score(truth, score)) if both_classes else math.nan,
        "ap": float(average_precision_score(truth, score)) if both_classes else math.nan,
        "sensitivity": float(tp / (tp + fn)) if tp + fn else math.nan,
        "specificity": float(tn / (tn + fp)) if tn + fp else math.nan,
        "threshold": float(threshold),
        "num_cases": int(truth.size),
        "num_positive": int(truth.sum()),
    }


def write_metrics_json(
    metrics: Mapping[str, Any],
    path: str | os.PathLike,
    prefix: str = "",
    cases: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write ``metrics`` to the JSON file ``path`` (folders created) and return what was written.

    Values are converted to plain floats/ints (tensors and numpy scalars included); ``prefix`` is
    stripped from the names, so an evaluator's ``{"val_auc": ...}`` is stored as ``{"auc": ...}``.
    NaN is written as JSON ``null``. With ``cases`` (datalist items with a 0/1 ``label``), their
    count and number of positives are added as ``num_cases`` and ``num_positive``.
    """
    content: dict[str, Any] = {}
    for name, value in metrics.items():
        key = name[len(prefix) :] if prefix and name.startswith(prefix) else name
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        content[key] = value
    if cases is not None:
        content["num_cases"] = len(cases)
        content["num_positive"] = int(sum(int(case["label"]) for case in cases))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=4) + "\n")
    return content
