"""How much of the organ kNN is the tile a block lies in? (study.md, eleventh session)

The organ kNN runs on the 61 labelled blocks of one CT (``organs/example_ct``, 6 tiles of 64^3 voxels), in
folds stratified over the blocks. For each encoder file, and for the intensity statistics and a one-hot of
the block's tile (no image information), two protocols:

- ``blocks``: the probe's organ kNN (folds over the blocks; neighbours may share the test block's tile);
- ``leave_tiles_out``: the same kNN with folds grouped by tile, so a block's neighbours come from other tiles.

    python docs/results/study/tile_leakage.py RUN/models/model_epoch0.pt RUN/models/model.pt ... \
        --data_dir ../shared/data/real --output tile_leakage.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dagman_components.analysis.probe import build_encoder, organ_knn, prepare_probe_data, tile_identity_knn
from dagman_components.analysis.probe.scores import block_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoders", nargs="*")
    parser.add_argument("--data_dir", default="../shared/data/real")
    parser.add_argument("--hu_range", type=float, nargs=2, default=(-175.0, 250.0))
    parser.add_argument("--cv_repeats", type=int, default=5)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    data = prepare_probe_data(args.data_dir, hu_range=list(args.hu_range))
    organ = data.organ
    tiles = np.asarray(organ.block_tile)
    per_tile = {int(t): {organ.class_names[int(v)]: int(((tiles == t) & (organ.labels == v)).sum())
                         for v in np.unique(organ.labels[tiles == t])} for t in np.unique(tiles)}
    majority = float(np.unique(organ.labels, return_counts=True)[1].max() / organ.num_blocks)
    result = {"blocks": organ.num_blocks, "organs": organ.class_counts(), "blocks_per_tile": per_tile,
              "majority_class": round(majority, 3)}

    def both(features: np.ndarray) -> dict[str, float]:
        return {"blocks": round(organ_knn(features, organ.labels, repeats=args.cv_repeats)["accuracy_mean"], 3),
                "leave_tiles_out": round(organ_knn(features, organ.labels, repeats=args.cv_repeats,
                                                   groups=tiles)["accuracy_mean"], 3)}

    one_hot = np.eye(int(tiles.max()) + 1)[tiles]
    result["tile_identity"] = {"blocks": round(tile_identity_knn(organ, repeats=args.cv_repeats)["accuracy_mean"], 3),
                               "leave_tiles_out": both(one_hot)["leave_tiles_out"]}
    result["intensity"] = both(organ.intensity)
    print(json.dumps({k: result[k] for k in ("blocks", "organs", "majority_class", "tile_identity", "intensity")}))
    result["encoders"] = {}
    for path in args.encoders:
        encoder, _ = build_encoder(path)
        result["encoders"][path] = both(block_features(encoder.eval(), organ, "multiscale"))
        print(path, json.dumps(result["encoders"][path]), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
