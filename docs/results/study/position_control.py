"""Does the probe read where a block lies in its tile? (study.md, eleventh session)

The probe cuts each case into 64^3 tiles on a fixed grid, so a 16^3 block sits at one of 4^3 positions in its
tile, and an encoder's features carry that position (tile edges, the stride-32 map's interpolation). Because the
STS crops are centred on their tumours, the position alone predicts tumour blocks: a one-hot of the position
gives the tumour probe AUC 0.757 (AP 0.333, chance 0.126), and with the four intensity statistics AUC 0.870
(AP 0.648). This script re-runs the probe with every block at the same interior position, (1, 1, 1) of its own
64^3 tile (the volume padded with zeros, the bottom of the window, as the probe pads): position then says nothing,
and on the organ CT no two blocks share a tile either. It was written (and its numbers in study.md measured) with
a drop-in for the probe's tiling; the probe now has that tiling itself (``tiling="per_block"``, the default), and
this script uses it.

    python docs/results/study/position_control.py RUN/models/model_epoch0.pt RUN/models/model.pt ... \
        --data_dir ../shared/data/real --output position_control.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dagman_components.analysis.probe import build_encoder, linear_probe, organ_knn, prepare_probe_data
from dagman_components.analysis.probe.scores import block_features


def scores(encoder, data, repeats: int) -> dict[str, float]:
    tumour, organ = data.tumour, data.organ
    probe = linear_probe(block_features(encoder, tumour, "multiscale"), tumour.labels, tumour.groups, repeats=repeats)
    knn = organ_knn(block_features(encoder, organ, "multiscale"), organ.labels, repeats=repeats)
    return {"auc": round(probe["auc"], 3), "ap": round(probe["ap"], 3), "organ_knn": round(knn["accuracy_mean"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoders", nargs="+")
    parser.add_argument("--data_dir", default="../shared/data/real")
    parser.add_argument("--hu_range", type=float, nargs=2, default=(-175.0, 250.0))
    parser.add_argument("--cv_repeats", type=int, default=5)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    grid = prepare_probe_data(args.data_dir, hu_range=list(args.hu_range), tiling="grid")
    tumour = grid.tumour
    position = np.eye((tumour.tile_size // tumour.block_size) ** 3)[tumour.block_token]
    baselines = {
        "position_one_hot": linear_probe(position, tumour.labels, tumour.groups, repeats=args.cv_repeats),
        "intensity_and_position": linear_probe(np.hstack([tumour.intensity, position]), tumour.labels, tumour.groups,
                                               repeats=args.cv_repeats),
    }
    result = {"grid_tiling_baselines": {k: {"auc": round(v["auc"], 3), "ap": round(v["ap"], 3)} for k, v in baselines.items()},
              "encoders": {}}
    print(json.dumps(result["grid_tiling_baselines"]), flush=True)
    fixed = prepare_probe_data(args.data_dir, hu_range=list(args.hu_range), tiling="per_block")
    if not (np.array_equal(fixed.tumour.labels, tumour.labels) and np.array_equal(fixed.tumour.groups, tumour.groups)
            and np.array_equal(fixed.organ.labels, grid.organ.labels)):
        raise RuntimeError("the fixed-position blocks are not the grid tiling's blocks")
    for path in args.encoders:
        encoder, _ = build_encoder(path)
        encoder.eval()
        result["encoders"][path] = {"grid": scores(encoder, grid, args.cv_repeats),
                                    "fixed_position": scores(encoder, fixed, args.cv_repeats)}
        print(path, json.dumps(result["encoders"][path]), flush=True)
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
