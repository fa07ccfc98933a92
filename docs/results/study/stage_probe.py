"""Which encoder stage carries what the frozen probe finds? (study.md, sixth session)

For each encoder file: the probe's ``multiscale`` feature (the five hidden states x0..x4, strides 2..32,
average-pooled or interpolated to the 16^3 block grid; F, 2F, 4F, 8F, 16F channels) and each stage's slice
of it alone, scored exactly as ``python -m dagman_components.analysis.probe`` scores a feature (tumour
AUC / AP, case-grouped folds; organ kNN).

    python docs/results/study/stage_probe.py RUN/models/model_epoch0.pt RUN/models/model.pt ... --output stage_probe.json
    python docs/results/study/stage_probe.py ... --tokens      # also the probe's default feature (seventh session)
    python docs/results/study/stage_probe.py ... --cv_repeats 5  # the mean over 5 splits, as the probe now (eighth session)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dagman_components.analysis.probe import build_encoder, linear_probe, organ_knn, prepare_probe_data
from dagman_components.analysis.probe.scores import block_features


def stage_slices(feature_size: int) -> dict[str, slice]:
    """Column ranges of x0..x4 in the ``multiscale`` feature (F, 2F, 4F, 8F, 16F channels, in order)."""
    widths = [feature_size * 2**i for i in range(5)]
    starts = np.cumsum([0, *widths])
    return {f"x{i}": slice(int(starts[i]), int(starts[i + 1])) for i in range(5)}


def score(tumour: np.ndarray, organ: np.ndarray, data, repeats: int = 1) -> dict[str, float]:
    t = linear_probe(tumour, data.tumour.labels, data.tumour.groups, repeats=repeats)
    o = organ_knn(organ, data.organ.labels, repeats=repeats)
    return {"auc": round(t["auc"], 4), "ap": round(t["ap"], 4), "knn": round(o["accuracy_mean"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoders", nargs="+")
    parser.add_argument("--data_dir", default="../shared/data/real")
    parser.add_argument("--hu_range", type=float, nargs=2, default=(-175.0, 250.0))
    parser.add_argument("--output", default=None, help="JSON file (merged into if it exists)")
    parser.add_argument("--tiling", default="per_block", choices=["grid", "per_block"],
                        help="the probe's tiling (sessions 4-11 measured with grid, the probe's default then)")
    parser.add_argument("--tokens", action="store_true", help="also score the probe's default feature, tokens")
    parser.add_argument("--cv_repeats", type=int, default=1,
                        help="cross-validation splits averaged (the probe's cv_repeats; 1 before the eighth session)")
    args = parser.parse_args()
    data = prepare_probe_data(args.data_dir, hu_range=list(args.hu_range), tiling=args.tiling)
    result = json.loads(Path(args.output).read_text()) if args.output and Path(args.output).exists() else {}
    for path in args.encoders:
        encoder, _ = build_encoder(path)
        encoder.eval()
        tumour = block_features(encoder, data.tumour, "multiscale")
        organ = block_features(encoder, data.organ, "multiscale")
        repeats = args.cv_repeats
        rows = {"multiscale": score(tumour, organ, data, repeats), "cv_repeats": repeats}
        for name, columns in stage_slices(tumour.shape[1] // 31).items():
            rows[name] = score(tumour[:, columns], organ[:, columns], data, repeats)
        if args.tokens:  # the probe's default feature (SA-stage tokens before the SA blocks)
            rows["tokens"] = score(block_features(encoder, data.tumour, "tokens"), block_features(encoder, data.organ, "tokens"),
                                   data, repeats)
        result[path] = rows
        print(path, json.dumps(rows), flush=True)
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
