"""Frozen-probe points of the window / learning-rate runs of docs/results/study.md (second session, 2026-12-02).

    python docs/results/study/window_lr.py RUN_DIR [RUN_DIR ...] --hu_range -175 250 --output window_lr.json

Evaluates every ``models/model_epoch<E>.pt`` of each run with the probe's defaults (``tokens`` feature, 20 STS
cases, organ kNN) on blocks windowed to ``--hu_range``, plus the random-init rows (3 seeds) and the intensity
statistics under that window and under -1000..1000 HU.
"""

import argparse
import json
import re
from pathlib import Path

from dagman_components.analysis.probe import (
    DEFAULT_ENCODER_KWARGS,
    build_encoder,
    evaluate_encoder,
    prepare_probe_data,
    probe_baselines,
)


def point(scores):
    return {"auc": scores["tumour"]["auc"], "ap": scores["tumour"]["ap"], "knn": scores["organ"]["accuracy_mean"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="*")
    parser.add_argument("--hu_range", nargs=2, type=float, default=[-175.0, 250.0])
    parser.add_argument("--data_dir", default="../shared/data/real")
    parser.add_argument("--output", default="window_lr.json")
    args = parser.parse_args()
    result = {"references": {}, "runs": {}}
    for window in ([-1000.0, 1000.0], list(args.hu_range)):
        data = prepare_probe_data(args.data_dir, hu_range=window)
        base = probe_baselines(data, DEFAULT_ENCODER_KWARGS, 3, "tokens")
        result["references"][str(window)] = {
            "random_init": {k: v for k, v in base["random_init"].items() if k != "per_seed"},
            "intensity": point(base["intensity"]),
        }
    data = prepare_probe_data(args.data_dir, hu_range=args.hu_range)
    for run in args.runs:
        snaps = sorted(Path(run, "models").glob("model_epoch*.pt"), key=lambda p: int(re.findall(r"\d+", p.name)[0]))
        result["runs"][run] = {p.name: point(evaluate_encoder(build_encoder(p)[0], data)) for p in snaps}
    Path(args.output).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
