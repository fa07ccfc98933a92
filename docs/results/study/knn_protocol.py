"""Does the organ kNN fall because of its protocol? (study.md, tenth session)

For each encoder file: the ``multiscale`` features of the probe's 61 organ blocks, scored by the probe's kNN
(k 5, five folds, five repeats) after four preprocessings (standardised / L2-normalised / raw, Euclidean; raw,
cosine), and the participation ratio of the standardised features (effective number of dimensions).

    python docs/results/study/knn_protocol.py RUN/models/model_epoch0.pt RUN/models/model.pt ... --data_dir ../shared/data/real
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from dagman_components.analysis.clustering import knn_accuracy, scale_features
from dagman_components.analysis.probe import build_encoder, prepare_probe_data
from dagman_components.analysis.probe.scores import block_features

PROTOCOLS = (("standardize", "euclidean"), ("l2", "euclidean"), ("none", "euclidean"), ("none", "cosine"))


def participation_ratio(features: np.ndarray) -> float:
    """(sum s^2)^2 / sum s^4 over the singular values s of (N, C) ``features``."""
    singular = np.linalg.svd(features, compute_uv=False)
    return float((singular**2).sum() ** 2 / (singular**4).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoders", nargs="+")
    parser.add_argument("--data_dir", default="../shared/data/real")
    parser.add_argument("--hu_range", type=float, nargs=2, default=(-175.0, 250.0))
    args = parser.parse_args()
    data = prepare_probe_data(args.data_dir, hu_range=list(args.hu_range))
    for path in args.encoders:
        encoder, _ = build_encoder(path)
        encoder.eval()
        features = np.asarray(block_features(encoder, data.organ, "multiscale"), dtype=np.float64)
        row = {
            f"{scaling}/{metric}": round(knn_accuracy(scale_features(features, scaling), data.organ.labels, k=5, folds=5,
                                                      seed=0, metric=metric, repeats=5)["accuracy_mean"], 3)
            for scaling, metric in PROTOCOLS
        }
        row["participation_ratio_standardized"] = round(participation_ratio(scale_features(features, "standardize")), 1)
        print(path, json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
