"""Seeded, stratified data splits shared by the downstream bundles: few-shot fractions and k-fold CV.

The papers report few-shot results at 25 / 50 / 100 % of the training cases and 3-fold stratified
cross-validation; both must be reproducible from a seed and keep the class balance, and cases of one
patient must never straddle a train/validation boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

__all__ = ["kfold_split", "subset_fraction"]


def _values(items: Sequence[dict], key: str | None, what: str) -> np.ndarray | None:
    if key is None:
        return None
    missing = [i for i, item in enumerate(items) if key not in item]
    if missing:
        raise KeyError(f"{what} key {key!r} missing from datalist entries {missing[:5]} (e.g. {items[missing[0]]})")
    return np.asarray([str(item[key]) for item in items])


def subset_fraction(
    items: Sequence[dict[str, Any]], fraction: float, seed: int = 0, stratify_key: str | None = "label"
) -> list[dict[str, Any]]:
    """A seeded random ``fraction`` of ``items``, drawn per class when ``stratify_key`` is given.

    Each class keeps ``round(fraction * n_class)`` items (at least one), so the class balance of
    the subset matches the full set. ``fraction=1.0`` returns all items in their original order;
    the subset also keeps the original order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return list(items)
    rng = np.random.default_rng(seed)
    classes = _values(items, stratify_key, "stratify")
    groups = np.zeros(len(items), dtype=int) if classes is None else np.unique(classes, return_inverse=True)[1]
    keep: list[int] = []
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        count = max(1, int(round(fraction * len(members))))
        keep += rng.choice(members, size=count, replace=False).tolist()
    return [items[i] for i in sorted(keep)]


def kfold_split(
    items: Sequence[dict[str, Any]],
    num_folds: int = 3,
    fold: int = 0,
    seed: int = 0,
    stratify_key: str | None = "label",
    group_key: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation) items of fold ``fold`` of a seeded ``num_folds``-fold split.

    Stratified by ``stratify_key`` (scikit-learn ``StratifiedKFold``) and, with ``group_key`` (e.g. a
    patient id), grouped so no group is in both parts (``StratifiedGroupKFold``). Default 3 folds
    (papers' 3-fold cross-validation).
    """
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, {num_folds}), got {fold}")
    if len(items) < num_folds:
        raise ValueError(f"{len(items)} datalist entries cannot be split into {num_folds} folds")
    labels = _values(items, stratify_key, "stratify")
    groups = _values(items, group_key, "group")
    if labels is not None:
        smallest = min(np.unique(labels, return_counts=True)[1])
        if smallest < num_folds:
            raise ValueError(
                f"class {stratify_key!r} has only {smallest} entries, fewer than num_folds={num_folds}: "
                "lower num_folds or add data"
            )
    index = np.arange(len(items))
    if labels is not None and groups is not None:
        splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    elif labels is not None:
        splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    elif groups is not None:
        splitter = GroupKFold(n_splits=num_folds)
    else:
        splitter = KFold(n_splits=num_folds, shuffle=True, random_state=seed)
    train_index, val_index = list(splitter.split(index, labels, groups))[fold]
    return [items[i] for i in sorted(train_index)], [items[i] for i in sorted(val_index)]
