"""How many dimensions do the probed tokens use, and do they encode the case? (study.md, sixth session)

For each encoder file: the frozen-probe features (SA-stage tokens of the 16^3 blocks of the 20 STS cases,
``python -m dagman_components.analysis.probe``'s data and defaults), then
- ``participation_ratio``: effective number of channels of the standardised features,
  ``(sum l)^2 / sum l^2`` over the eigenvalues of their correlation matrix (96 channels at F=12);
- ``eta2_case``: mean over channels of the fraction of the tissue blocks' variance that lies between cases;
- ``case_accuracy``: a logistic regression naming the case of a tissue block (5 stratified folds; chance ~0.05);
- ``auc_grouped`` (the probe's tumour AUC, folds grouped by case) and ``auc_random_folds`` (same model,
  folds that mix the cases): a gap that grows would mean features that only work within a case.

    python docs/results/study/token_dimensions.py RUN/models/model_epoch0.pt RUN/models/model.pt ... --output token_dimensions.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dagman_components.analysis.probe import build_encoder, prepare_probe_data
from dagman_components.analysis.probe.scores import block_features, linear_probe


def participation_ratio(features: np.ndarray) -> float:
    eigenvalues = np.linalg.eigvalsh(np.corrcoef(features.T))
    return float(eigenvalues.sum() ** 2 / (eigenvalues**2).sum())


def case_variance_fraction(features: np.ndarray, groups: np.ndarray) -> float:
    centred = features - features.mean(0)
    between = sum((groups == g).sum() * (features[groups == g].mean(0) - features.mean(0)) ** 2 for g in np.unique(groups))
    return float((between / (centred**2).sum(0)).mean())


def describe(features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    standardised = StandardScaler().fit_transform(features)
    tissue = labels == 0
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    case_model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    case_accuracy = (cross_val_predict(case_model, features[tissue], groups[tissue], cv=folds) == groups[tissue]).mean()
    tumour_model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=3000))
    random_fold_scores = cross_val_predict(tumour_model, features, labels, cv=folds, method="decision_function")
    return {
        "participation_ratio": round(participation_ratio(standardised), 2),
        "eta2_case": round(case_variance_fraction(standardised[tissue], groups[tissue]), 3),
        "case_accuracy": round(float(case_accuracy), 3),
        "auc_grouped": round(float(linear_probe(features, labels, groups)["auc"]), 4),
        "auc_random_folds": round(float(roc_auc_score(labels, random_fold_scores)), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoders", nargs="+", help="encoder files (model.pt, model_epoch<E>.pt)")
    parser.add_argument("--data_dir", default="../shared/data/real")
    parser.add_argument("--hu_range", type=float, nargs=2, default=(-175.0, 250.0))
    parser.add_argument("--output", default=None, help="JSON file (merged into if it exists)")
    args = parser.parse_args()
    data = prepare_probe_data(args.data_dir, hu_range=list(args.hu_range)).tumour
    result = json.loads(Path(args.output).read_text()) if args.output and Path(args.output).exists() else {}
    for path in args.encoders:
        encoder = build_encoder(path)[0].eval()
        result[path] = describe(block_features(encoder, data, "tokens"), data.labels, data.groups)
        print(path, result[path], flush=True)
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
