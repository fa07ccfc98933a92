"""Analyses of a pretrained encoder that the papers report (clustering, head diversity, localization)."""

from .clustering import (
    FEATURE_SCALINGS,
    analyze_clusters,
    class_centroids,
    cluster_distances,
    inter_cluster_distances,
    intra_cluster_distances,
    kmeans_scores,
    knn_accuracy,
    plot_embedding,
    scale_features,
    umap_embedding,
    write_json,
)
from .features import (
    FEATURE_TYPES,
    EncoderFeatures,
    FeatureCollector,
    extract_features,
    feature_evaluator,
)

__all__: list[str] = [
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
    "FEATURE_TYPES",
    "EncoderFeatures",
    "FeatureCollector",
    "extract_features",
    "feature_evaluator",
]
