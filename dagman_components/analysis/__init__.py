"""Analyses of a pretrained encoder: those the papers report (clustering, head diversity, localization) and a frozen-feature probe."""

import warnings

# `python -m dagman_components.analysis.probe` runs a module this package has already imported (for its
# exports); runpy warns about that, harmlessly: the command-line run uses the __main__ copy throughout
warnings.filterwarnings(
    "ignore", message=r"'dagman_components\.analysis\.probe' found in sys\.modules", category=RuntimeWarning
)

from .attention_export import (
    AttentionMapNetwork,
    attention_export_postprocessing,
    attention_export_preprocessing,
    export_attention,
)
from .clustering import (
    FEATURE_SCALINGS,
    ClusterMetrics,
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
    OrganClusterer,
    extract_features,
    feature_evaluator,
    save_organ_clusterer,
)
from .head_diversity import SwinAttentionStatistics, compute_head_diversity, plot_head_diversity, run_head_diversity
from .localization import image_label_datalist, run_zero_shot_localization, zero_shot_localization
from .probe import (
    DEFAULT_ENCODER_KWARGS,
    PROBE_FEATURES,
    ProbeBlocks,
    ProbeData,
    block_features,
    clear_probe_cache,
    encoder_kwargs_from_config,
    encoder_kwargs_from_encoder,
    evaluate_encoder,
    grouped_folds,
    label_organ_blocks,
    label_tumour_blocks,
    linear_probe,
    organ_knn,
    prepare_probe_data,
    probe_baselines,
    run_probe,
)
from .probe_handler import ProbeHandler, plot_probe_curve

__all__: list[str] = [
    "FEATURE_SCALINGS",
    "ClusterMetrics",
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
    "DEFAULT_ENCODER_KWARGS",
    "PROBE_FEATURES",
    "ProbeBlocks",
    "ProbeData",
    "ProbeHandler",
    "block_features",
    "clear_probe_cache",
    "encoder_kwargs_from_config",
    "encoder_kwargs_from_encoder",
    "evaluate_encoder",
    "grouped_folds",
    "label_organ_blocks",
    "label_tumour_blocks",
    "linear_probe",
    "organ_knn",
    "plot_probe_curve",
    "prepare_probe_data",
    "probe_baselines",
    "run_probe",
    "OrganClusterer",
    "save_organ_clusterer",
]
