"""Probe scores: per-block features of a frozen encoder, the case-grouped linear probe, the organ kNN and the reference rows."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dagman_components.analysis.clustering import knn_accuracy, scale_features
from dagman_components.analysis.probe.blocks import (
    _DATA_CACHE,
    INTENSITY_STATISTICS,
    LOCATION_FEATURES,
    ProbeBlocks,
    ProbeData,
)
from dagman_components.analysis.probe.encoders import resolve_encoder_kwargs
from dagman_components.networks.sa_swin import SASwinEncoder

__all__ = ["clear_probe_cache", "block_features", "grouped_folds", "linear_probe", "organ_knn", "tile_identity_knn", "tile_position_probe", "evaluate_encoder", "probe_baselines", "reference_scores", "PROBE_FEATURES", "DEFAULT_PROBE_FEATURE"]

logger = logging.getLogger(__name__)

#: per-block features of the frozen encoder (see the module docstring).
PROBE_FEATURES: tuple[str, ...] = ("tokens", "sa_tokens", "multiscale", "last_stage")

#: the feature every probe entry point reads unless told otherwise **[choice]**: all five stage maps, what a
#: SwinUNETR-style decoder reads, and the feature the study's criterion is measured on (docs/results/study.md,
#: sixth session on): the SA-stage ``tokens`` alone stay below their random init in every study run.
DEFAULT_PROBE_FEATURE: str = "multiscale"

#: baseline results by (data key, architecture, options)
_BASELINE_CACHE: dict[tuple, dict[str, Any]] = {}


def clear_probe_cache() -> None:
    """Forget the cached preprocessed blocks and baseline results."""
    _DATA_CACHE.clear()
    _BASELINE_CACHE.clear()


def _fmt(value: float | None, std: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if std is None else f"{value:.3f} +- {std:.3f}"


def _stage_features(out: Any, feature: str, grid: Sequence[int]) -> torch.Tensor:
    """(B, N, C) per-token features of one encoder output."""
    if feature == "tokens":
        return out.tokens
    if feature == "sa_tokens":
        return out.sa_tokens
    maps = []
    for h in out.hidden_states[-1:] if feature == "last_stage" else out.hidden_states:
        if tuple(h.shape[2:]) == tuple(grid):
            maps.append(h)
        elif all(int(s) >= int(g) for s, g in zip(h.shape[2:], grid)):
            maps.append(F.adaptive_avg_pool3d(h, tuple(grid)))
        else:
            maps.append(F.interpolate(h, size=tuple(grid), mode="trilinear", align_corners=False))
    return torch.cat(maps, dim=1).flatten(2).transpose(1, 2)


@torch.no_grad()
def block_features(
    encoder: SASwinEncoder,
    blocks: ProbeBlocks,
    feature: str = DEFAULT_PROBE_FEATURE,
    batch_size: int = 4,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """(M, C) float32 features of the labelled blocks from the frozen ``encoder``.

    The encoder runs on each tile (:py:meth:`ProbeBlocks.tile_batches`, ``batch_size`` tiles per forward) under ``torch.no_grad``,
    on ``device`` (None: the encoder's). The caller sets eval mode (:py:func:`evaluate_encoder` does).
    C is 8F for ``"tokens"``/``"sa_tokens"`` at ``sa_stage=3``, 31F for ``"multiscale"`` and 16F for ``"last_stage"``.

    Raises:
        ValueError: an unknown ``feature``, ``"sa_tokens"`` without SA, or an encoder whose token stride
            is not the blocks' size.
    """
    if feature not in PROBE_FEATURES:
        raise ValueError(f"feature must be one of {PROBE_FEATURES}, got '{feature}'.")
    if feature == "sa_tokens" and getattr(encoder, "semantic_attention", None) is None:
        raise ValueError("feature 'sa_tokens' needs an encoder with semantic attention; use 'tokens'.")
    stride = int(getattr(encoder, "token_stride", blocks.block_size))
    if stride != blocks.block_size:
        raise ValueError(f"the encoder's tokens cover {stride}^3 voxels, the prepared blocks {blocks.block_size}^3: "
                         "prepare the data with block_size = encoder.token_stride.")
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    grid = (blocks.tile_size // blocks.block_size,) * 3
    block_tile, block_token = torch.as_tensor(blocks.block_tile), torch.as_tensor(blocks.block_token)
    features: torch.Tensor | None = None
    start = 0
    for tiles in blocks.tile_batches(batch_size, device):
        out = encoder(tiles, stop_after_sa=feature in ("tokens", "sa_tokens"))
        per_token = _stage_features(out, feature, grid).float().cpu()  # (B, N, C)
        if features is None:
            features = torch.zeros(blocks.num_blocks, per_token.shape[-1])
        # keep only the labelled blocks' tokens: per-block tiling reads one token of each tile
        here = torch.nonzero((block_tile >= start) & (block_tile < start + len(tiles)))[:, 0]
        features[here] = per_token[block_tile[here] - start, block_token[here]]
        start += len(tiles)
    return np.zeros((0, 0), dtype=np.float32) if features is None else features.numpy()


def grouped_folds(
    labels: np.ndarray, groups: np.ndarray, n_folds: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs of ``StratifiedGroupKFold(min(n_folds, cases), shuffle, seed)``: no group in both.

    Raises ValueError with fewer than 2 groups (cases).
    """
    labels, groups = np.asarray(labels).reshape(-1), np.asarray(groups).reshape(-1)
    n_groups = len(np.unique(groups))
    folds = min(int(n_folds), n_groups)
    if folds < 2:
        raise ValueError(f"grouped cross-validation needs at least 2 cases, got {n_groups}.")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(train, test) for train, test in splitter.split(np.zeros(len(labels)), labels, groups)]


def _metric(fn: Any, labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(fn(labels, scores)) if len(np.unique(labels)) == 2 else None


def linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    n_folds: int = 5,
    C: float = 0.1,
    max_iter: int = 5000,
    seed: int = 0,
    case_names: Sequence[str] | None = None,
    repeats: int = 1,
) -> dict[str, Any]:
    """Case-grouped cross-validated logistic-regression probe of binary ``labels``.

    Args:
        features: (M, C) features.
        labels: (M,) 0/1 (1 = tumour).
        groups: (M,) case of each row; a case is never in both parts of a fold (:py:func:`grouped_folds`).
        n_folds: folds (5), lowered to the number of cases.
        C: inverse L2 strength of ``LogisticRegression`` (0.1) **[choice]**, after ``StandardScaler``;
            ``class_weight="balanced"``, lbfgs, ``max_iter`` (5000).
        seed: the folds' shuffle seed (repeat r uses ``seed + r``).
        case_names: names of the group ids, for the per-fold case lists.
        repeats: cross-validations with different splits (1). With 20 cases, which cases share a fold
            moves one split's AUC by up to 0.01 (docs/results/study.md, eighth session): the mean over
            a few splits is what separates two encoders.

    Returns:
        ``{"auc", "ap", "auc_per_repeat", "ap_per_repeat", "repeats", "prevalence", "num_blocks",
        "num_features", "folds", "per_fold": [{repeat, fold, auc, ap, num_test, num_tumour, test_cases,
        train_cases}], "C"}``; each repeat's ``auc``/``ap`` is that of its pooled out-of-fold
        probabilities, and ``auc``/``ap`` their mean over the repeats (``ap``'s chance level is
        ``prevalence``). A fold whose training part lacks a class predicts the training prevalence.
    """
    features = np.asarray(features, dtype=np.float64)
    labels, groups = np.asarray(labels).reshape(-1).astype(np.int64), np.asarray(groups).reshape(-1)
    if features.ndim != 2 or len(features) != len(labels) or len(labels) != len(groups):
        raise ValueError(f"features (M, C), labels (M,), groups (M,) expected, got {features.shape}, "
                         f"{labels.shape}, {groups.shape}.")
    if not np.isfinite(features).all():
        raise ValueError("probe features contain NaN or infinite values.")
    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    names = (lambda g: str(case_names[int(g)])) if case_names is not None else (lambda g: str(int(g)))
    per_fold, auc_per_repeat, ap_per_repeat = [], [], []
    for repeat in range(int(repeats)):
        scores = np.zeros(len(labels), dtype=np.float64)
        folds = grouped_folds(labels, groups, n_folds, seed + repeat)
        for k, (train, test) in enumerate(folds):
            if len(np.unique(labels[train])) < 2:
                scores[test] = labels[train].mean()
                logger.warning(f"probe fold {k}: the training cases hold one class only; predicting its prevalence")
            else:
                model = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=max_iter))
                model.fit(features[train], labels[train])
                scores[test] = model.predict_proba(features[test])[:, 1]
            per_fold.append({
                "repeat": repeat,
                "fold": k,
                "auc": _metric(roc_auc_score, labels[test], scores[test]),
                "ap": _metric(average_precision_score, labels[test], scores[test]),
                "num_test": int(len(test)),
                "num_tumour": int(labels[test].sum()),
                "test_cases": sorted({names(g) for g in groups[test]}),
                "train_cases": sorted({names(g) for g in groups[train]}),
            })
        auc_per_repeat.append(_metric(roc_auc_score, labels, scores))
        ap_per_repeat.append(_metric(average_precision_score, labels, scores))
    mean = lambda values: None if any(v is None for v in values) else float(np.mean(values))  # noqa: E731
    return {
        "auc": mean(auc_per_repeat),
        "ap": mean(ap_per_repeat),
        "auc_per_repeat": auc_per_repeat,
        "ap_per_repeat": ap_per_repeat,
        "repeats": int(repeats),
        "prevalence": float(labels.mean()),
        "num_blocks": int(len(labels)),
        "num_features": int(features.shape[1]),
        "folds": len(folds),
        "C": float(C),
        "per_fold": per_fold,
    }


def organ_knn(
    features: np.ndarray,
    labels: np.ndarray,
    k: int = 5,
    folds: int = 5,
    seed: int = 0,
    repeats: int = 1,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """kNN organ accuracy on standardised (M, C) ``features``: :py:func:`~dagman_components.analysis.clustering.knn_accuracy`.

    Euclidean, distance-weighted, ``folds`` (5), ``repeats`` splits (1). With ``groups`` (M,) (the CT of
    each block) from at least 2 CTs the folds are grouped by CT (``grouped`` True); with one CT they are
    stratified over its blocks, and the accuracy mostly measures which tile a block came from: compare
    it with :py:func:`tile_identity_knn` (on the 61 blocks of ``organs/``, 0.80 from the tile alone,
    docs/results/study.md, eleventh session). One split's accuracy there moves by 0.015-0.04.
    """
    return knn_accuracy(scale_features(np.asarray(features, dtype=np.float64), "standardize"), labels, k=k,
                        folds=folds, seed=seed, repeats=repeats, groups=groups)


def tile_identity_knn(blocks: ProbeBlocks, k: int = 5, folds: int = 5, seed: int = 0, repeats: int = 1) -> dict[str, Any]:
    """The organ kNN of a feature that knows only which encoder tile a block lies in: the protocol's leakage floor.

    Each block's feature is the one-hot (T,) of its tile (:py:attr:`ProbeBlocks.block_tile`): blocks of one
    tile are at distance 0, all others at sqrt(2). Same kNN, folds and grouping as :py:func:`organ_knn`
    (``groups``: the blocks' CTs), without standardising. With the folds of one CT's blocks, every
    encoder's neighbours share its tile context (the stride-32 map covers 2^3 tokens of a 64^3 tile), so
    an encoder's organ kNN is read against this row as well as against random init: it carries no image
    information at all. Across CTs (grouped folds) it falls to the majority-class level.
    """
    tiles = np.asarray(blocks.block_tile).reshape(-1)
    one_hot = np.eye(int(tiles.max()) + 1 if len(tiles) else 1)[tiles]
    return knn_accuracy(one_hot, blocks.labels, k=k, folds=folds, seed=seed, repeats=repeats, groups=blocks.groups)


def tile_position_probe(blocks: ProbeBlocks, **probe_options: Any) -> dict[str, Any] | None:
    """The tumour probe of a feature that knows only where a block lies in its encoder tile (no image).

    The one-hot ((t / b)^3,) of :py:attr:`ProbeBlocks.block_token` through :py:func:`linear_probe`. With ``"grid"``
    tiling on tumour-centred crops it is far above chance (AUC 0.76 on ``sts/``); None with ``"per_block"``
    tiling, where every block lies at the same position.
    """
    if blocks.tiling == "per_block":
        return None
    per = blocks.tile_size // blocks.block_size
    one_hot = np.eye(per**3)[np.asarray(blocks.block_token).reshape(-1)]
    return linear_probe(one_hot, blocks.labels, blocks.groups, case_names=blocks.cases, **probe_options)


def _scores(
    features_of: Any,
    data: ProbeData,
    n_folds: int,
    C: float,
    max_iter: int,
    knn_k: int,
    seed: int,
    cv_repeats: int = 1,
    with_references: bool = False,
) -> dict[str, Any]:
    tumour = data.tumour
    features = features_of(tumour)
    result: dict[str, Any] = {"tumour": linear_probe(features, tumour.labels, tumour.groups, n_folds, C,
                                                     max_iter, seed, tumour.cases, repeats=cv_repeats)}
    if with_references:
        # what the features add to what needs no encoder: the intensity statistics and the place in the crop
        result["tumour_with_references"] = linear_probe(
            np.hstack([features, tumour.intensity, tumour.location]), tumour.labels, tumour.groups, n_folds, C,
            max_iter, seed, tumour.cases, repeats=cv_repeats)
    result["organ"] = None
    if data.organ is not None:
        result["organ"] = organ_knn(features_of(data.organ), data.organ.labels, k=knn_k, folds=n_folds, seed=seed,
                                    repeats=cv_repeats, groups=data.organ.groups)
    return result


def evaluate_encoder(
    encoder: SASwinEncoder,
    data: ProbeData,
    feature: str = DEFAULT_PROBE_FEATURE,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    n_folds: int = 5,
    C: float = 0.1,
    max_iter: int = 5000,
    knn_k: int = 5,
    seed: int = 0,
    cv_repeats: int = 5,
) -> dict[str, Any]:
    """Tumour probe and organ kNN of an in-memory ``encoder`` on prepared ``data`` (:py:func:`prepare_probe_data`).

    Both are cross-validated ``cv_repeats`` times (5) with fold seeds ``seed``, ``seed + 1``, ... and
    averaged (:py:func:`linear_probe`, :py:func:`organ_knn`). The encoder is put in eval mode for the evaluation and returned to its previous mode. Returns
    ``{"tumour": linear_probe result, "tumour_with_references": the same probe on the features next to the
    intensity statistics and the place in the crop (what the encoder adds to the "location" reference row),
    "organ": knn result or None}``.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        return _scores(lambda b: block_features(encoder, b, feature, batch_size, device), data, n_folds, C,
                       max_iter, knn_k, seed, cv_repeats, with_references=True)
    finally:
        encoder.train(was_training)


def _random_encoder(encoder_kwargs: Mapping[str, Any], seed: int) -> SASwinEncoder:
    """``torch.manual_seed(seed)`` then the encoder, without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return SASwinEncoder(**{**encoder_kwargs, "drop_path_rate": 0.0})


def _summary_line(scores: Mapping[str, Any]) -> str:
    organ = scores.get("organ")
    return (f"tumour AUC {_fmt(scores['tumour']['auc'])}, AP {_fmt(scores['tumour']['ap'])}, organ kNN "
            f"{_fmt(None if organ is None else organ['accuracy_mean'])}")


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    kept = [v for v in values if v is not None]
    return (float(np.mean(kept)), float(np.std(kept))) if kept else (None, None)


def probe_baselines(
    data: ProbeData,
    encoder_kwargs: Mapping[str, Any],
    n_random_seeds: int = 3,
    feature: str = DEFAULT_PROBE_FEATURE,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    n_folds: int = 5,
    C: float = 0.1,
    max_iter: int = 5000,
    knn_k: int = 5,
    seed: int = 0,
    cv_repeats: int = 5,
    use_cache: bool = True,
) -> dict[str, Any]:
    """The reference rows on the same blocks: random-init encoders, the intensity statistics and tile identity (cached).

    Random init: for seed s in ``range(n_random_seeds)`` (3; 0 gives no random-init row, its values
    None), ``torch.manual_seed(s)`` then ``SASwinEncoder(**encoder_kwargs)``, the arguments taken
    over :py:data:`DEFAULT_ENCODER_KWARGS` (train.yaml's); the caller's RNG state is restored.
    Intensity: the four statistics of :py:data:`INTENSITY_STATISTICS` per block through the same
    probe / kNN. Location: the tumour probe of those statistics and the block's place in its cropped case
    (:py:data:`LOCATION_FEATURES`): no encoder, and on tumour-centred crops (``sts/``) above every encoder measured
    (AUC 0.967 against 0.92-0.95). Tile position: :py:func:`tile_position_probe` (None with ``"per_block"`` tiling).
    Tile identity: the organ kNN of :py:func:`tile_identity_knn` (None without organ data or with ``"per_block"``
    tiling, where no two blocks share a tile).
    Results are cached per data, architecture and options (``use_cache``).

    Returns:
        ``{"random_init": {"seeds", "tumour_auc_mean", "tumour_auc_std", "tumour_ap_mean",
        "tumour_ap_std", "tumour_with_references_auc_mean", ..._std, "tumour_with_references_ap_mean", ..._std,
        "organ_knn_mean", "organ_knn_std", "per_seed": [{"seed", "tumour", "organ"}]},
        "intensity": {"tumour", "organ"}, "location": {"features", "tumour"}, "tile_position": {"tumour"},
        "tile_identity": {"organ"}}``.
    """
    kwargs = resolve_encoder_kwargs(encoder_kwargs, None)
    key = (data.key, json.dumps(kwargs, sort_keys=True, default=str), int(n_random_seeds), feature, int(n_folds),
           float(C), int(max_iter), int(knn_k), int(seed), int(cv_repeats))
    if use_cache and key in _BASELINE_CACHE:
        return _BASELINE_CACHE[key]
    options = dict(n_folds=n_folds, C=C, max_iter=max_iter, knn_k=knn_k, seed=seed, cv_repeats=cv_repeats)
    per_seed = []
    for s in range(int(n_random_seeds)):
        encoder = _random_encoder(kwargs, s).to(device)
        per_seed.append({"seed": s, **evaluate_encoder(encoder, data, feature, batch_size, device, **options)})
        del encoder
        logger.info(f"probe: random init seed {s}: {_summary_line(per_seed[-1])}")
    random_init: dict[str, Any] = {"seeds": list(range(int(n_random_seeds)))}
    for name, get in (("tumour_auc", lambda r: r["tumour"]["auc"]), ("tumour_ap", lambda r: r["tumour"]["ap"]),
                      ("tumour_with_references_auc", lambda r: r["tumour_with_references"]["auc"]),
                      ("tumour_with_references_ap", lambda r: r["tumour_with_references"]["ap"]),
                      ("organ_knn", lambda r: None if r["organ"] is None else r["organ"]["accuracy_mean"])):
        random_init[f"{name}_mean"], random_init[f"{name}_std"] = _mean_std([get(r) for r in per_seed])
    random_init["per_seed"] = per_seed
    intensity = _scores(lambda b: b.intensity, data, **options)
    tumour = data.tumour
    probe_options = dict(n_folds=n_folds, C=C, max_iter=max_iter, seed=seed, repeats=cv_repeats)
    location = linear_probe(np.hstack([tumour.intensity, tumour.location]), tumour.labels, tumour.groups,
                            case_names=tumour.cases, **probe_options)
    # per-block tiles: every block its own tile, so tile identity is no floor (its one-hots are all equidistant)
    tile_identity = (None if data.organ is None or data.organ.tiling == "per_block"
                     else tile_identity_knn(data.organ, knn_k, n_folds, seed, cv_repeats))
    result = {"random_init": random_init, "intensity": {"statistics": list(INTENSITY_STATISTICS), **intensity},
              "location": {"features": list(INTENSITY_STATISTICS + LOCATION_FEATURES), "tumour": location},
              "tile_position": {"tumour": tile_position_probe(tumour, **probe_options)},
              "tile_identity": {"organ": tile_identity}}
    if use_cache:
        _BASELINE_CACHE[key] = result
    return result




def reference_scores(baselines: Mapping[str, Any]) -> dict[str, Any]:
    """The reference lines of a learning curve from :py:func:`probe_baselines`'s result.

    Returns ``{"random_init": its summary without "per_seed", "intensity": {"tumour_auc", "tumour_ap",
    "organ_knn"}, "location": {"tumour_auc", "tumour_ap"}, "tile_position": {"tumour_auc", "tumour_ap"},
    "tile_identity": {"organ_knn"}}`` (None where there is no organ data, no tile position, or an older result).
    """
    organ = lambda r: None if r is None else r["accuracy_mean"]  # noqa: E731
    tumour = lambda r, key: None if r is None else r[key]  # noqa: E731
    intensity = baselines["intensity"]
    location = (baselines.get("location") or {}).get("tumour")
    position = (baselines.get("tile_position") or {}).get("tumour")
    return {
        "random_init": {k: v for k, v in baselines["random_init"].items() if k != "per_seed"},
        "intensity": {"tumour_auc": intensity["tumour"]["auc"], "tumour_ap": intensity["tumour"]["ap"],
                      "organ_knn": organ(intensity["organ"])},
        "location": {"tumour_auc": tumour(location, "auc"), "tumour_ap": tumour(location, "ap")},
        "tile_position": {"tumour_auc": tumour(position, "auc"), "tumour_ap": tumour(position, "ap")},
        "tile_identity": {"organ_knn": organ(baselines.get("tile_identity", {}).get("organ"))},
    }
