"""Probe every student snapshot of one or more pretraining runs as it appears (study.md, fifth and sixth sessions).

Each run folder's ``models/model_epoch<E>.pt`` (``encoder_snapshot_interval``) and, once the run has logged its
last epoch, ``models/model.pt`` are scored with the package's frozen probe (``evaluate_encoder``, feature
``tokens``, the soft-tissue window of ``study.yaml``); results are cached in ``RUN/probe_snaps.json`` as
``{"<file>:tokens": {"auc", "ap", "knn"}}``, so a restarted watcher skips what it has done.

    python docs/results/study/watch_probe.py /work/runs/plain_s0 /work/runs/appear --num_epochs 150
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from dagman_components.analysis.probe import build_encoder, evaluate_encoder, prepare_probe_data


def pending(run: Path, num_epochs: int, cache: dict) -> list[Path]:
    snaps = sorted(run.glob("models/model_epoch*.pt"), key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    log = run / "console.log"
    if (run / "models" / "model.pt").exists() and log.exists() and f"Epoch[{num_epochs}] Complete" in log.read_text():
        snaps.append(run / "models" / "model.pt")
    return [p for p in snaps if f"{p.name}:tokens" not in cache]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data_dir", default="../shared/data/real")
    parser.add_argument("--hu_range", type=float, nargs=2, default=(-175.0, 250.0))
    parser.add_argument("--num_epochs", type=int, default=150, help="the runs' last epoch (model.pt is probed after it)")
    parser.add_argument("--once", action="store_true", help="probe what is there and stop")
    args = parser.parse_args()
    data = prepare_probe_data(args.data_dir, hu_range=list(args.hu_range))
    while True:
        done_any = False
        for run in args.runs:
            cache_file = run / "probe_snaps.json"
            cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
            for path in pending(run, args.num_epochs, cache):
                time.sleep(5)  # let the writer finish the file
                scores = evaluate_encoder(build_encoder(path)[0], data, "tokens")
                cache[f"{path.name}:tokens"] = {"auc": round(scores["tumour"]["auc"], 4), "ap": round(scores["tumour"]["ap"], 4),
                                                "knn": round(scores["organ"]["accuracy_mean"], 4)}
                print(run.name, path.name, cache[f"{path.name}:tokens"], flush=True)
                cache_file.write_text(json.dumps(cache, indent=1))
                done_any = True
        if args.once:
            return
        if not done_any:
            time.sleep(60)


if __name__ == "__main__":
    main()
