"""Cluster distances against hand-computed answers; k-means/kNN on separable and on shuffled data; files written."""

import json

import numpy as np
import pytest

from dagman_components.analysis import (
    analyze_clusters,
    cluster_distances,
    inter_cluster_distances,
    intra_cluster_distances,
    kmeans_scores,
    knn_accuracy,
    scale_features,
)

# class 0: 4 points at distance 1 from (0, 0); class 1: 2 points at distance 2 from (4, 0);
# class 2: 2 points at distance 3 from (0, 3). Centroid distances: 4, 3 and 5.
POINTS = np.array([[1, 0], [-1, 0], [0, 1], [0, -1], [4, 2], [4, -2], [3, 3], [-3, 3]], dtype=float)
LABELS = np.array([0, 0, 0, 0, 1, 1, 2, 2])


def test_intra_and_inter_distances_by_hand():
    np.testing.assert_allclose(intra_cluster_distances(POINTS, LABELS), [1, 1, 1, 1, 2, 2, 3, 3])
    np.testing.assert_allclose(sorted(inter_cluster_distances(POINTS, LABELS)), [3, 4, 5])


def test_mean_and_std_populations():
    by_sample = cluster_distances(POINTS, LABELS, {0: "a", 1: "b", 2: "c"}, intra_over="samples")
    assert by_sample["intra_cluster"]["mean"] == pytest.approx(14 / 8)
    assert by_sample["intra_cluster"]["std"] == pytest.approx(np.std([1, 1, 1, 1, 2, 2, 3, 3]))
    assert by_sample["intra_cluster"]["count"] == 8
    assert by_sample["inter_cluster"]["mean"] == pytest.approx(4.0)
    assert by_sample["inter_cluster"]["std"] == pytest.approx(np.sqrt(2 / 3))
    assert by_sample["per_class_intra"] == pytest.approx({"a": 1.0, "b": 2.0, "c": 3.0})
    by_class = cluster_distances(POINTS, LABELS, intra_over="classes")
    assert by_class["intra_cluster"]["mean"] == pytest.approx(2.0)
    assert by_class["intra_cluster"]["count"] == 3
    # labels need not be contiguous: the same geometry with ids 7, 3, 9
    relabelled = cluster_distances(POINTS, np.array([7, 7, 7, 7, 3, 3, 9, 9]))
    assert relabelled["intra_cluster"]["mean"] == pytest.approx(14 / 8)
    assert relabelled["inter_cluster"]["mean"] == pytest.approx(4.0)


def blobs(per_class=12, classes=4, dim=16, spread=0.1, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)) * 5
    labels = np.repeat(np.arange(classes), per_class)
    return centers[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def test_kmeans_and_knn_on_separable_and_on_shuffled_labels():
    features, labels = blobs()
    assert kmeans_scores(features, labels)["nmi"] == pytest.approx(1.0)
    assert kmeans_scores(features, labels)["ari"] == pytest.approx(1.0)
    knn = knn_accuracy(features, labels, k=5, folds=3)
    assert knn["accuracy_mean"] == pytest.approx(1.0) and knn["folds"] == 3
    shuffled = np.random.default_rng(1).permutation(labels)
    assert kmeans_scores(features, shuffled)["ari"] < 0.3
    assert knn_accuracy(features, shuffled, k=5, folds=3)["accuracy_mean"] < 0.6


def test_knn_adapts_folds_and_reports_when_impossible():
    features, labels = blobs(per_class=3)
    assert knn_accuracy(features, labels, k=50, folds=5)["folds"] == 3
    assert knn_accuracy(features, labels, k=50, folds=5)["k"] <= len(labels) - 4
    single = np.append(labels, 99)
    result = knn_accuracy(np.vstack([features, features[:1]]), single)
    assert result["accuracy_mean"] is None and "at least 2" in result["reason"]


def test_scaling_and_bad_input():
    features, labels = blobs()
    np.testing.assert_allclose(np.linalg.norm(scale_features(features, "l2"), axis=1), 1.0)
    np.testing.assert_allclose(scale_features(features, "standardize").std(axis=0), 1.0)
    with pytest.raises(ValueError, match="scaling"):
        scale_features(features, "whiten")
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        cluster_distances(features, labels[:-1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        inter_cluster_distances(features, np.zeros(len(features)))
    with pytest.raises(ValueError, match="intra_over"):
        cluster_distances(features, labels, intra_over="pairs")


def test_analyze_clusters_writes_json_png_and_features(tmp_path):
    features, labels = blobs(per_class=10, classes=3)
    names = {0: "liver", 1: "lung", 2: "spleen"}
    result = analyze_clusters(features, labels, tmp_path, class_names=names, seed=0, info={"encoder": "test"})
    written = json.loads((tmp_path / "clustering.json").read_text())
    assert written["encoder"] == "test" and written["num_samples"] == 30 and written["feature_dim"] == 16
    assert written["classes"] == {"liver": 10, "lung": 10, "spleen": 10}
    for space in ("features", "umap"):
        assert written["distances"][space]["intra_cluster"]["mean"] < written["distances"][space]["inter_cluster"]["mean"]
    assert written["kmeans"]["nmi"] == pytest.approx(1.0) and written["knn"]["accuracy_mean"] == pytest.approx(1.0)
    assert written == json.loads(json.dumps(result))
    assert (tmp_path / "clustering_umap.png").read_bytes()[:4] == b"\x89PNG"
    saved = np.load(tmp_path / "clustering_features.npz")
    assert saved["features"].shape == (30, 16) and saved["embedding"].shape == (30, 2)
    np.testing.assert_array_equal(saved["labels"], labels)


def test_grouped_knn_cannot_use_a_group_fingerprint():
    # 6 groups (e.g. CTs), 3 per label; a feature that is only the group's fingerprint: within-group neighbours
    # give the label away (ungrouped folds), across groups it carries nothing (grouped folds)
    groups = np.repeat(np.arange(6), 8)
    labels = groups // 3
    fingerprint = np.eye(6)[groups] + 1e-3 * np.random.default_rng(0).normal(size=(len(groups), 6))
    ungrouped = knn_accuracy(fingerprint, labels, k=5, folds=4)
    grouped = knn_accuracy(fingerprint, labels, k=5, folds=4, groups=groups)
    assert ungrouped["accuracy_mean"] == pytest.approx(1.0) and ungrouped["grouped"] is False
    assert grouped["grouped"] is True and grouped["folds"] == 4 and grouped["accuracy_mean"] < 0.7
    # a feature that generalises across groups still scores with grouped folds
    informative, blob_labels = blobs(per_class=24, classes=2)
    assert np.array_equal(blob_labels, labels)
    assert knn_accuracy(informative, labels, k=5, folds=4, groups=groups)["accuracy_mean"] == pytest.approx(1.0)
    # one group: nothing to group by, the stratified split
    assert knn_accuracy(fingerprint, labels, k=5, folds=3, groups=np.zeros(len(labels)))["grouped"] is False
    with pytest.raises(ValueError, match="groups"):
        knn_accuracy(fingerprint, labels, groups=groups[:-1])
