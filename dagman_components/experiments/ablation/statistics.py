"""The report's metrics (with the papers' numbers) and the statistics over seeds: mean +- std, comparisons, pairs."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["METRICS", "PAPER_COLUMN", "PAPER_RESULTS", "aggregate", "compare_variants", "format_mean_std", "Metric", "metrics_of", "paired_differences"]


@dataclass(frozen=True)
class Metric:
    """One row of the report: ``key`` in a task's JSON, its label, and the papers' value (their data) if any.

    ``scale_free``: False for feature-space distances, which change with the encoder's feature scale (pretraining
    rescales it), so comparing them between encoders says little.
    """

    key: str
    task: str
    label: str
    higher_is_better: bool | None = True
    paper: Mapping[str, str] = field(default_factory=dict)
    scale_free: bool = True


#: the papers' numbers (docs/design.md, section 4), on THEIR data: LIDC (nodules), OrganMNIST3D (organs), SMART's tumours.
PAPER_RESULTS: dict[str, dict[str, str]] = {
    "ft_auc": {"DAGMaN": "0.895 (LIDC)", "SMIT": "0.859 (LIDC)"},
    "lp_auc": {"DAGMaN": "0.642 (LIDC)", "SMIT": "0.629 (LIDC)"},
    "organs_phantom_intra": {"DAGMaN": "1.28 +- 0.57 (OrganMNIST3D)", "SMIT": "1.53 +- 0.45 (OrganMNIST3D)"},
    "organs_phantom_inter": {"DAGMaN": "5.93 +- 3.30 (OrganMNIST3D)", "SMIT": "3.73 +- 2.74 (OrganMNIST3D)"},
    "organs_real_intra": {"DAGMaN": "1.28 +- 0.57 (OrganMNIST3D)", "SMIT": "1.53 +- 0.45 (OrganMNIST3D)"},
    "organs_real_inter": {"DAGMaN": "5.93 +- 3.30 (OrganMNIST3D)", "SMIT": "3.73 +- 2.74 (OrganMNIST3D)"},
    "loc_dice": {"DAGMaN": "0.62 +- 0.32 (SMART, their tumours)"},
}


PAPER_COLUMN = "paper (theirs, LIDC / OrganMNIST3D / SMART tumours)"


METRICS: tuple[Metric, ...] = tuple(
    Metric(key, task, label, better, PAPER_RESULTS.get(key, {}), scale_free=not key.endswith(("_intra", "_inter")))
    for key, task, label, better in (
        ("encoder_drift", "pretrain", "encoder weights, relative L2 change from initialisation by pretraining", None),
        ("lp_auc", "nodule_lp", "nodule malignancy, linear probe AUC (100 %)", True),
        ("lp_auc_25", "nodule_lp", "nodule malignancy, linear probe AUC (25 %)", True),
        ("lp_auc_pooled", "nodule_lp", "nodule malignancy, linear probe AUC on pooled stage 4 (100 %)", True),
        ("ft_auc", "nodule_ft", "nodule malignancy, fine-tune AUC (100 %)", True),
        ("ft_auc_25", "nodule_ft", "nodule malignancy, fine-tune AUC (25 %)", True),
        ("organs_phantom_intra", "organs_phantom", "phantom organs, intra-cluster distance", False),
        ("organs_phantom_inter", "organs_phantom", "phantom organs, inter-cluster distance", True),
        ("organs_phantom_ratio", "organs_phantom", "phantom organs, inter / intra", True),
        ("organs_phantom_knn", "organs_phantom", "phantom organs, kNN accuracy", True),
        ("organs_real_intra", "organs_real", "real CT organs, intra-cluster distance", False),
        ("organs_real_inter", "organs_real", "real CT organs, inter-cluster distance", True),
        ("organs_real_ratio", "organs_real", "real CT organs, inter / intra", True),
        ("organs_real_knn", "organs_real", "real CT organs, kNN accuracy", True),
        ("loc_dice", "localization", "zero-shot localization Dice, whole volumes (STS + chest)", True),
        ("loc_dice_crop", "localization", "zero-shot localization Dice, off-centre crops", True),
        ("seg_dice", "segmentation", "few-shot STS tumour segmentation Dice", True),
        ("hd_stage3_entropy_mean", "head_diversity", "stage 3 entropy of attention distances, mean over heads", True),
        ("hd_stage3_entropy_var", "head_diversity", "stage 3 entropy of attention distances, variance over heads", True),
    )
)


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean +- std over seeds of every metric: ``{variant: {metric: {"mean", "std", "n", "values"}}}``.

    ``std`` is the sample standard deviation (``ddof=1``) over the seeds, None with a single seed; NaN values
    (an undefined AUC) are left out and counted in ``n`` only when finite.
    """
    values: dict[str, dict[str, list[float]]] = {}
    for record in records:
        for key, value in record.get("metrics", {}).items():
            values.setdefault(record["variant"], {}).setdefault(key, []).append(
                math.nan if value is None else float(value))
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for variant, metrics in values.items():
        for key, raw in metrics.items():
            finite = [v for v in raw if math.isfinite(v)]
            summary.setdefault(variant, {})[key] = {
                "mean": float(np.mean(finite)) if finite else None,
                "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
                "n": len(finite),
                "values": raw,
            }
    return summary


def format_mean_std(entry: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``"0.812 +- 0.034"``, ``"0.812 (n=1)"`` with one seed, ``"-"`` when missing."""
    if not entry or entry.get("mean") is None:
        return "-"
    if entry.get("std") is None:
        return f"{entry['mean']:.{digits}f} (n={entry['n']})"
    return f"{entry['mean']:.{digits}f} +- {entry['std']:.{digits}f}"


def metrics_of(summary: Mapping[str, Mapping[str, Any]], variants: Sequence[str], every: bool = False) -> list[Metric]:
    """The rows of :py:data:`METRICS` measured for any of ``variants`` (``every``: for all of them)."""
    keys = [set(summary.get(v, {})) for v in variants]
    present = (set.intersection(*keys) if every else set.union(*keys)) if keys else set()
    return [m for m in METRICS if m.key in present]


def compare_variants(summary: Mapping[str, Mapping[str, Any]], variant: str,
                     reference: str) -> tuple[list[str], list[str], list[str]]:
    """Labels of the metrics on which ``variant`` is better than ``reference``, worse, and within the spread.

    Better/worse: the means differ by more than one standard deviation, the larger of the two variants'
    seed-to-seed standard deviations, in the metric's direction. Metrics without a direction
    (``higher_is_better=None``) or not measured for both are left out.
    """
    better, worse, tied = [], [], []
    for metric in METRICS:
        a, b = summary[variant].get(metric.key), summary[reference].get(metric.key)
        if not a or not b or a["mean"] is None or b["mean"] is None or metric.higher_is_better is None:
            continue
        spread = max(a["std"] or 0.0, b["std"] or 0.0)
        diff = a["mean"] - b["mean"]
        wins = diff > 0 if metric.higher_is_better else diff < 0
        if abs(diff) <= spread or diff == 0:
            tied.append(metric.label)
        elif wins:
            better.append(metric.label)
        else:
            worse.append(metric.label)
    return better, worse, tied


def paired_differences(records: Iterable[Mapping[str, Any]], variant: str, reference: str, key: str) -> list[float]:
    """``variant`` minus ``reference`` of metric ``key``, seed by seed, over the seeds where both are finite."""
    by_seed: dict[str, dict[int, float]] = {variant: {}, reference: {}}
    for record in records:
        value = record.get("metrics", {}).get(key)
        if record["variant"] in by_seed and value is not None and math.isfinite(float(value)):
            by_seed[record["variant"]][int(record["seed"])] = float(value)
    return [by_seed[variant][s] - by_seed[reference][s] for s in sorted(by_seed[variant]) if s in by_seed[reference]]
