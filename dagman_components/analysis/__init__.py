"""Analyses of a pretrained encoder that the papers report (clustering, head diversity, localization)."""

from .attention_export import (
    AttentionMapNetwork,
    attention_export_postprocessing,
    attention_export_preprocessing,
    export_attention,
)
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
from .head_diversity import SwinAttentionStatistics, compute_head_diversity, plot_head_diversity, run_head_diversity
from .localization import image_label_datalist, run_zero_shot_localization, zero_shot_localization

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
    "SwinAttentionStatistics",
    "compute_head_diversity",
    "plot_head_diversity",
    "run_head_diversity",
    "image_label_datalist",
    "run_zero_shot_localization",
    "zero_shot_localization",
    "AttentionMapNetwork",
    "attention_export_postprocessing",
    "attention_export_preprocessing",
    "export_attention",
]
