"""Frozen-probe learning curves and collapse monitors of the long study runs (docs/results/study.md, third session).

    python docs/results/study/long_run.py RUN_DIR[:LOG] [RUN_DIR[:LOG] ...] --hu_range -175 250 --output long_run.json
    (--snapshots "model_epoch*.pt": the student's snapshots only)

For each run, every encoder snapshot the run kept (``models/model_epoch<E>.pt``: the student, which becomes
``model.pt``; ``teacher_epoch<E>.pt``: the EMA teacher) is probed with the probe's defaults (``tokens`` feature,
20 STS cases, organ kNN) on blocks windowed to ``--hu_range``. Scores are cached in ``RUN_DIR/probe_snaps.json``
(key ``<file>:<feature>``), so a rerun only evaluates new snapshots. With ``:LOG`` (the run's console log), the
epoch means of the logged losses and teacher monitors are added for every ``--every`` epochs.
"""

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from dagman_components.analysis.probe import build_encoder, evaluate_encoder, prepare_probe_data

MONITORS = ("amip", "embedding_cosine", "teacher_entropy_sample_aitd", "teacher_entropy_sample_ampd",
            "teacher_entropy_sample_gitd", "teacher_entropy_mean_aitd", "teacher_entropy_mean_ampd",
            "teacher_entropy_mean_gitd", "token_participation_ratio")


def snapshots(run: Path, pattern: str = "*_epoch*.pt") -> list[Path]:
    files = Path(run, "models").glob(pattern)
    return sorted(files, key=lambda p: (int(re.findall(r"epoch(\d+)", p.name)[0]), p.name))


def probe_curve(run: Path, data, feature: str, pattern: str = "*_epoch*.pt") -> dict:
    cache_file = run / "probe_snaps.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    for path in snapshots(run, pattern):
        key = f"{path.name}:{feature}"
        if key not in cache:
            scores = evaluate_encoder(build_encoder(path)[0], data, feature)
            cache[key] = {"auc": round(scores["tumour"]["auc"], 4), "ap": round(scores["tumour"]["ap"], 4),
                          "knn": round(scores["organ"]["accuracy_mean"], 4)}
            print(run.name, key, cache[key], flush=True)
            cache_file.write_text(json.dumps(cache, indent=1))
    return {k: v for k, v in cache.items() if k.endswith(f":{feature}")}


def epoch_monitors(log: Path | list[Path], every: int) -> dict:
    """Epoch means of the monitors in a console log, or in the logs of an interrupted and resumed run
    (oldest first: an epoch a later log holds replaces the earlier log's, partial, copy)."""
    per_epoch: dict[int, list] = defaultdict(list)
    for path in [log] if isinstance(log, Path) else log:
        this_log = defaultdict(list)
        for line in path.read_text().splitlines():
            match = re.search(r"Epoch: (\d+)/\d+, Iter: \d+/\d+ -- (.*)", line)
            if match:
                this_log[int(match.group(1))].append(dict(re.findall(r"(\w+): ([-\d.]+)", match.group(2))))
        per_epoch.update(this_log)
    out = {}
    last = max(per_epoch, default=0)
    for epoch, rows in sorted(per_epoch.items()):
        if epoch % every == 0 or epoch == 1 or epoch == last:
            out[epoch] = {k: round(sum(float(r[k]) for r in rows) / len(rows), 3) for k in MONITORS if k in rows[0]}
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR:LOG")
    parser.add_argument("--hu_range", nargs=2, type=float, default=[-175.0, 250.0])
    parser.add_argument("--data_dir", default="../shared/data/real")
    parser.add_argument("--feature", default="tokens")
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--output", default="long_run.json")
    parser.add_argument("--snapshots", default="*_epoch*.pt", help="which snapshots: model_epoch*.pt = the student only")
    args = parser.parse_args()
    data = prepare_probe_data(args.data_dir, hu_range=tuple(args.hu_range), block_size=16)
    result = {"hu_range": args.hu_range, "feature": args.feature, "runs": {}}
    for spec in args.runs:
        run, _, log = spec.partition(":")
        entry = {"probe": probe_curve(Path(run), data, args.feature, args.snapshots)}
        if log:
            entry["monitors"] = epoch_monitors(Path(log), args.every)
        result["runs"][Path(run).name] = entry
    Path(args.output).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
