"""
Organ-clustering analysis of encoder features (DAGMaN Task 4 / SMART Task 1, docs/design.md, section 4).

The papers report, for features of the frozen pretrained encoder on OrganMNIST3D, an intra-cluster
distance (mean Euclidean distance of samples to their class centroid) and an inter-cluster distance
(between class centroids), each as mean +- std, next to a UMAP plot coloured by organ. They do not say
in which space the distances were taken (encoder features or the 2-D UMAP embedding) nor over which
population the mean and std run; both spaces are reported here, and the populations are explicit
(``intra_over``). Added, from scikit-learn: k-means NMI/ARI and a cross-validated kNN accuracy, which
do not depend on the feature scale.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, pairwise_distances
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler, normalize

__all__ = [
    "FEATURE_SCALINGS",
    "analyze_clusters",
    "class_centroids",
    "cluster_distances",
    "inter_cluster_distances",
    "intra_cluster_distances",
    "kmeans_scores",
    "knn_accuracy",
    "plot_embedding",
    "scale_features",
    "umap_embedding",
    "write_json",
]

logger = logging.getLogger(__name__)

#: ``"none"``: features as the encoder gives them (papers: Euclidean distance); ``"standardize"``: zero
#: mean and unit variance per feature; ``"l2"``: each vector scaled to unit length (cosine geometry).
FEATURE_SCALINGS: tuple[str, ...] = ("none", "standardize", "l2")


def _check(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels).reshape(-1)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features must be (N, C) and labels (N,), got {features.shape} and {labels.shape}.")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values.")
    return features, labels


def scale_features(features: np.ndarray, scaling: str = "none") -> np.ndarray:
    """(N, C) features rescaled by one of :py:data:`FEATURE_SCALINGS` (scikit-learn's scalers)."""
    if scaling not in FEATURE_SCALINGS:
        raise ValueError(f"scaling must be one of {FEATURE_SCALINGS}, got '{scaling}'.")
    if scaling == "standardize":
        return StandardScaler().fit_transform(features)
    if scaling == "l2":
        return normalize(features)
    return np.asarray(features, dtype=np.float64)


def class_centroids(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted class labels (K,) and their centroids (K, C): the mean feature of each class."""
    features, labels = _check(features, labels)
    classes = np.unique(labels)
    return classes, np.stack([features[labels == c].mean(axis=0) for c in classes])


def intra_cluster_distances(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) Euclidean distance of every sample to the centroid of its own class."""
    features, labels = _check(features, labels)
    classes, centroids = class_centroids(features, labels)
    own = centroids[np.searchsorted(classes, labels)]
    return np.linalg.norm(features - own, axis=1)


def inter_cluster_distances(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K (K - 1) / 2,) Euclidean distances between the centroids of every pair of classes (upper triangle)."""
    _, centroids = class_centroids(features, labels)
    if len(centroids) < 2:
        raise ValueError(f"inter-cluster distances need at least 2 classes, got {len(centroids)}.")
    return pairwise_distances(centroids)[np.triu_indices(len(centroids), k=1)]


def _mean_std(values: np.ndarray, over: str) -> dict[str, Any]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "over": over, "count": int(len(values))}


def cluster_distances(
    features: np.ndarray,
    labels: np.ndarray,
    class_names: Mapping[int, str] | None = None,
    intra_over: str = "samples",
) -> dict[str, Any]:
    """
    Intra- and inter-cluster distances as mean +- std (population std, ``ddof=0``).

    - intra: with ``intra_over="samples"`` the mean and std run over all N samples' distances to their class
      centroid; with ``"classes"`` over the K per-class mean distances (each class weighs the same).
    - inter: the mean and std run over the K (K - 1) / 2 distances between distinct class centroids.

    Returns:
        ``{"intra_cluster": {mean, std, over, count}, "inter_cluster": {...}, "per_class_intra": {name: mean}}``.
    """
    if intra_over not in ("samples", "classes"):
        raise ValueError(f"intra_over must be 'samples' or 'classes', got '{intra_over}'.")
    features, labels = _check(features, labels)
    intra = intra_cluster_distances(features, labels)
    classes = np.unique(labels)
    per_class = {int(c): float(intra[labels == c].mean()) for c in classes}
    names = class_names or {}
    return {
        "intra_cluster": _mean_std(intra, "samples: distance of each sample to its class centroid")
        if intra_over == "samples"
        else _mean_std(np.asarray(list(per_class.values())), "classes: mean distance to the centroid per class"),
        "inter_cluster": _mean_std(inter_cluster_distances(features, labels), "class pairs: centroid-centroid"),
        "per_class_intra": {names.get(c, str(c)): d for c, d in per_class.items()},
    }


def kmeans_scores(features: np.ndarray, labels: np.ndarray, seed: int = 0, n_init: int = 10) -> dict[str, Any]:
    """k-means with k = the number of classes (scikit-learn, ``n_init`` seeded restarts), scored against the labels.

    Returns ``{"nmi", "ari", "num_clusters", "n_init"}``: normalised mutual information (arithmetic mean) and
    adjusted Rand index, both 1 for a perfect match and about 0 (ARI) for chance.
    """
    features, labels = _check(features, labels)
    k = len(np.unique(labels))
    predicted = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(features)
    return {
        "nmi": float(normalized_mutual_info_score(labels, predicted)),
        "ari": float(adjusted_rand_score(labels, predicted)),
        "num_clusters": int(k),
        "n_init": int(n_init),
    }


def knn_accuracy(
    features: np.ndarray,
    labels: np.ndarray,
    k: int = 10,
    folds: int = 5,
    seed: int = 0,
    metric: str = "euclidean",
    repeats: int = 1,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """
    Cross-validated k-nearest-neighbour accuracy (scikit-learn).

    ``StratifiedKFold(folds, shuffle=True, random_state=seed + r)`` for each repeat r of ``repeats`` (1);
    in each fold a distance-weighted ``KNeighborsClassifier(k, metric)`` is fitted on the other folds and
    scored on the held-out one. ``accuracy_mean`` and ``accuracy_std`` (``ddof=0``) run over all folds of
    all repeats, ``accuracy_per_repeat`` holds each split's mean. ``folds`` is lowered to the smallest
    class count and ``k`` to the smallest training-fold size; with fewer than 2 samples in some class no
    accuracy is computed (``accuracy_mean`` None, ``reason`` says why).

    ``groups`` (N,) (e.g. the case of each sample), when given with at least 2 distinct values:
    ``StratifiedGroupKFold`` instead, no group in both the fitted and the scored part of a fold, with
    ``folds`` lowered to the number of groups (``grouped`` True in the result).
    """
    features, labels = _check(features, labels)
    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    if groups is not None:
        groups = np.asarray(groups).reshape(-1)
        if len(groups) != len(labels):
            raise ValueError(f"groups must be (N,) like labels, got {groups.shape} for {len(labels)} samples.")
        if len(np.unique(groups)) < 2:
            groups = None
    if groups is not None:
        used_folds = min(int(folds), len(np.unique(groups)))
        splitter = StratifiedGroupKFold
    else:
        smallest = int(np.unique(labels, return_counts=True)[1].min())
        used_folds = min(int(folds), smallest)
        splitter = StratifiedKFold
        if used_folds < 2:
            return {"accuracy_mean": None, "accuracy_std": None, "k": int(k), "folds": used_folds, "metric": metric,
                    "repeats": int(repeats), "grouped": False,
                    "reason": f"a class has {smallest} sample(s): cross-validation needs at least 2 per class"}
    used_k = max(1, min(int(k), len(labels) - int(np.ceil(len(labels) / used_folds))))
    classifier = KNeighborsClassifier(n_neighbors=used_k, weights="distance", metric=metric)
    per_repeat = [cross_val_score(classifier, features, labels, groups=groups,
                                  cv=splitter(n_splits=used_folds, shuffle=True, random_state=seed + r))
                  for r in range(int(repeats))]
    scores = np.concatenate(per_repeat)
    return {"accuracy_mean": float(scores.mean()), "accuracy_std": float(scores.std()), "k": used_k,
            "folds": used_folds, "metric": metric, "repeats": int(repeats), "grouped": groups is not None,
            "accuracy_per_repeat": [float(s.mean()) for s in per_repeat]}


def umap_embedding(
    features: np.ndarray, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "euclidean"
) -> np.ndarray:
    """(N, 2) UMAP embedding (umap-learn, ``random_state=seed``: reproducible, single-threaded).

    ``n_neighbors`` (umap's default 15) is lowered to N - 1 for small sets.
    """
    import umap  # imported here: umap-learn compiles with numba on import, seconds the other analyses don't need

    features = np.asarray(features, dtype=np.float64)
    if len(features) < 3:
        raise ValueError(f"UMAP needs at least 3 samples, got {len(features)}.")
    reducer = umap.UMAP(n_components=2, n_neighbors=min(int(n_neighbors), len(features) - 1), min_dist=min_dist,
                        metric=metric, random_state=seed, n_jobs=1)
    return reducer.fit_transform(features)


def plot_embedding(
    embedding: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike,
    class_names: Mapping[int, str] | None = None,
    title: str = "",
) -> Path:
    """Scatter of a (N, 2) embedding coloured by class, with a legend naming the organs, saved as PNG (Agg)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    embedding, labels = np.asarray(embedding), np.asarray(labels).reshape(-1)
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab20" if len(classes) <= 20 else "gist_ncar")
    names = class_names or {}
    fig, ax = plt.subplots(figsize=(7.5 + 2.5 * (len(classes) > 20), 6), dpi=120)
    for i, c in enumerate(classes):
        colour = cmap(i % 20) if len(classes) <= 20 else cmap(i / len(classes))
        points = embedding[labels == c]
        ax.scatter(points[:, 0], points[:, 1], s=14, color=colour, label=names.get(int(c), str(c)), alpha=0.85)
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, markerscale=1.5, frameon=False,
              ncol=1 + len(classes) // 25)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_json(content: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``content`` as JSON indented 4 spaces (numpy scalars and arrays converted), creating the folder."""

    def convert(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=4, default=convert) + "\n")
    return path


def analyze_clusters(
    features: np.ndarray,
    labels: np.ndarray,
    output_dir: str | os.PathLike,
    class_names: Mapping[int, str] | None = None,
    seed: int = 0,
    feature_scaling: str = "none",
    intra_over: str = "samples",
    knn_k: int = 10,
    knn_folds: int = 5,
    umap_neighbors: int = 15,
    umap_min_dist: float = 0.1,
    title: str = "",
    info: Mapping[str, Any] | None = None,
    prefix: str = "clustering",
) -> dict[str, Any]:
    """
    The whole analysis of (N, C) ``features`` with (N,) class ``labels``; writes its results and returns them.

    Computes :py:func:`cluster_distances` in the (scaled) feature space and in the 2-D UMAP embedding,
    :py:func:`kmeans_scores` and :py:func:`knn_accuracy` on the scaled features, and writes into
    ``output_dir``: ``<prefix>.json`` (everything below plus ``info``), ``<prefix>_umap.png`` (the
    embedding coloured by organ) and ``<prefix>_features.npz`` (``features``, ``labels``, ``embedding``).

    Returns:
        a dict with ``num_samples``, ``num_classes``, ``feature_dim``, ``classes`` (name -> count),
        ``distances`` (``features`` and ``umap``: intra/inter mean +- std), ``kmeans``, ``knn``, ``umap``
        (its parameters), ``settings`` and ``files``.
    """
    features, labels = _check(features, labels)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"the clustering analysis needs at least 2 classes, got {classes.tolist()}.")
    names = {int(k): v for k, v in (class_names or {}).items()}
    scaled = scale_features(features, feature_scaling)
    logger.info(f"clustering {len(labels)} feature vectors ({features.shape[1]} dims) of {len(classes)} classes")
    embedding = umap_embedding(scaled, seed=seed, n_neighbors=umap_neighbors, min_dist=umap_min_dist)
    output_dir = Path(output_dir)
    files = {"json": output_dir / f"{prefix}.json", "umap_png": output_dir / f"{prefix}_umap.png",
             "features_npz": output_dir / f"{prefix}_features.npz"}
    result: dict[str, Any] = {
        **dict(info or {}),
        "num_samples": int(len(labels)),
        "num_classes": int(len(classes)),
        "feature_dim": int(features.shape[1]),
        "classes": {names.get(int(c), str(c)): int(n) for c, n in zip(classes, counts)},
        "distances": {
            "features": cluster_distances(scaled, labels, names, intra_over),
            "umap": cluster_distances(embedding, labels, names, intra_over),
        },
        "kmeans": kmeans_scores(scaled, labels, seed=seed),
        "knn": knn_accuracy(scaled, labels, k=knn_k, folds=knn_folds, seed=seed),
        "umap": {"n_neighbors": min(int(umap_neighbors), len(labels) - 1), "min_dist": float(umap_min_dist),
                 "seed": int(seed)},
        "settings": {"feature_scaling": feature_scaling, "intra_over": intra_over, "seed": int(seed)},
        "files": {k: str(v) for k, v in files.items()},
    }
    plot_embedding(embedding, labels, files["umap_png"], names, title=title)
    np.savez_compressed(files["features_npz"], features=features.astype(np.float32), labels=labels,
                        embedding=embedding.astype(np.float32))
    write_json(result, files["json"])
    d = result["distances"]
    logger.info(
        f"intra {d['features']['intra_cluster']['mean']:.3f} +- {d['features']['intra_cluster']['std']:.3f}, "
        f"inter {d['features']['inter_cluster']['mean']:.3f} +- {d['features']['inter_cluster']['std']:.3f} "
        f"(features); intra {d['umap']['intra_cluster']['mean']:.3f} +- {d['umap']['intra_cluster']['std']:.3f}, "
        f"inter {d['umap']['inter_cluster']['mean']:.3f} +- {d['umap']['inter_cluster']['std']:.3f} (UMAP); "
        f"k-means NMI {result['kmeans']['nmi']:.3f} ARI {result['kmeans']['ari']:.3f}; "
        f"kNN accuracy {result['knn']['accuracy_mean']}; written to {files['json']}"
    )
    return result


class ClusterMetrics:
    """
    Ignite handler: after the feature pass, k-means NMI/ARI and kNN accuracy of the collected features in
    ``engine.state.metrics`` (``kmeans_nmi``, ``kmeans_ari``, ``knn_accuracy``), where metric loggers attached
    after it (``--tracking mlflow``'s ``MLFlowHandler``, ``StatsHandler``) record them.

    Args:
        collector: the :py:class:`~dagman_components.analysis.features.FeatureCollector` of the same evaluator
            (attached before this handler).
        feature_scaling, knn_k, knn_folds, seed: as in :py:func:`analyze_clusters`, so the numbers match its JSON.
    """

    def __init__(self, collector: Any, feature_scaling: str = "none", knn_k: int = 10, knn_folds: int = 5,
                 seed: int = 0) -> None:
        self.collector = collector
        self.feature_scaling = feature_scaling
        self.knn_k = knn_k
        self.knn_folds = knn_folds
        self.seed = seed

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        features, labels = _check(self.collector.features, self.collector.labels)
        if len(np.unique(labels)) < 2:
            return
        scaled = scale_features(features, self.feature_scaling)
        kmeans = kmeans_scores(scaled, labels, seed=self.seed)
        knn = knn_accuracy(scaled, labels, k=self.knn_k, folds=self.knn_folds, seed=self.seed)
        metrics = {"kmeans_nmi": kmeans["nmi"], "kmeans_ari": kmeans["ari"], "knn_accuracy": knn["accuracy_mean"]}
        engine.state.metrics.update({k: v for k, v in metrics.items() if v is not None})
