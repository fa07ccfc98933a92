"""Does an encoder add to what a block's intensities and its place in the crop say? (study.md, twelfth session)

Per-block tiles (each block at position 1 of its own 64^3 tile): the tumour probe of [intensity statistics +
the block's place in its cropped case] (``LOCATION_FEATURES``), of the encoder's multiscale features alone, and of
both together, each as [AUC, AP] over five splits.

    python docs/results/study/added_value.py OUT.json RUN/models/model_epoch0.pt RUN/models/model.pt ... \
        --data_dir ../shared/data/real
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dagman_components.analysis.probe import block_features, build_encoder, linear_probe, prepare_probe_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("encoders", nargs="*")
    parser.add_argument("--data_dir", default="../shared/data/real")
    parser.add_argument("--hu_range", type=float, nargs=2, default=(-175.0, 250.0))
    parser.add_argument("--cv_repeats", type=int, default=5)
    args = parser.parse_args()
    tumour = prepare_probe_data(args.data_dir, hu_range=list(args.hu_range), organs=False, tiling="per_block").tumour
    base = np.hstack([tumour.intensity, tumour.location])
    result: dict[str, list[float]] = {}

    def probe(name: str, features: np.ndarray) -> None:
        scores = linear_probe(features, tumour.labels, tumour.groups, repeats=args.cv_repeats)
        result[name] = [round(scores["auc"], 3), round(scores["ap"], 3)]
        print(name, result[name], flush=True)

    probe("location", tumour.location)
    probe("intensity+location", base)
    for path in args.encoders:
        encoder, _ = build_encoder(path)
        encoder.eval()
        features = block_features(encoder, tumour, "multiscale")
        probe(path, features)
        probe(path + " +intensity+location", np.hstack([features, base]))
        Path(args.output).write_text(json.dumps(result, indent=1))
    Path(args.output).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
