"""Evaluate pretraining runs of the study configuration: learning curves of the frozen-feature probe.

For every run folder written by ``bundles/pretrain/configs/study.yaml`` (``models/model_epoch<E>.pt``
snapshots, ``models/model.pt``, TensorBoard scalars in ``logs/``), this evaluates each snapshot with
:py:mod:`dagman_components.analysis.probe` (tumour-vs-tissue linear probe and organ kNN on frozen
per-block features), next to the same architecture at random init (``n_random_seeds`` seeds) and the
raw-intensity baseline on the same blocks, and summarises the collapse monitors of the run.

Run::

    python -m dagman_components.experiments.study \\
        --runs '{"DAGMaN": {"dir": "/tmp/study/dagman"}, "SMIT": {"dir": "/tmp/study/smit", "encoder": {"use_semantic_attention": false}}}' \\
        --data_dir ../shared/data/real --output_dir docs/results/study

Writes ``study.json`` (every number) and ``learning_curves.png`` into ``output_dir``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dagman_components.analysis.probe import DEFAULT_PROBE_FEATURE

__all__ = ["MONITOR_TAGS", "collapse_monitors", "evaluate_study", "plot_learning_curves", "snapshots"]

logger = logging.getLogger(__name__)

#: TensorBoard scalars summarised per run (first and last epoch means)
MONITOR_TAGS: tuple[str, ...] = (
    "amip",
    "embedding_cosine",
    "teacher_entropy_sample_ampd",
    "teacher_entropy_mean_ampd",
    "teacher_mutual_information_ampd",
    "teacher_entropy_sample_aitd",
    "teacher_entropy_mean_aitd",
    "teacher_mutual_information_aitd",
    "teacher_entropy_sample_gitd",
    "teacher_entropy_mean_gitd",
    "teacher_mutual_information_gitd",
)

_SNAPSHOT = re.compile(r"^model_epoch(\d+)\.pt$")


def snapshots(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the encoder snapshots of a run, by epoch; raises when there is none."""
    models = Path(run_dir) / "models"
    found = sorted((int(m.group(1)), p) for p in models.glob("model_epoch*.pt") if (m := _SNAPSHOT.match(p.name)))
    if not found:
        raise FileNotFoundError(
            f"no models/model_epoch<E>.pt in {run_dir}: pretrain with --encoder_snapshot_interval N (study.yaml sets 5)."
        )
    return found


def collapse_monitors(run_dir: str | Path, iterations_per_epoch: int) -> dict[str, dict[str, float]]:
    """First- and last-epoch means of :data:`MONITOR_TAGS` from the run's TensorBoard logs (absent tags skipped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(Path(run_dir) / "logs"), size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags().get("scalars", []))
    result = {}
    for tag in MONITOR_TAGS:
        if tag not in tags:
            continue
        values = np.array([event.value for event in accumulator.Scalars(tag)], dtype=np.float64)
        n = min(iterations_per_epoch, len(values))
        result[tag] = {"first_epoch": float(values[:n].mean()), "last_epoch": float(values[-n:].mean())}
    return result


def evaluate_study(
    runs: Mapping[str, Mapping[str, Any]],
    data_dir: str = "../shared/data/real",
    output_dir: str = "docs/results/study",
    feature: str = DEFAULT_PROBE_FEATURE,
    n_random_seeds: int = 3,
    iterations_per_epoch: int = 6,
    device: str = "cpu",
    tiling: str | None = None,
) -> dict[str, Any]:
    """Probe every snapshot of every run; ``runs``: name -> ``{"dir": run folder, "encoder": {encoder kwargs},
    "config_file": pretrain config(s)}``.

    ``config_file`` (optional; e.g. ``["bundles/pretrain/configs/train.yaml", "bundles/pretrain/configs/study.yaml"]``)
    gives the run's architecture and its preprocessing (HU window, spacing: the probe windows the blocks as
    the run's pretraining did); ``encoder`` overrides the architecture (e.g. ``{"use_semantic_attention": False}``
    for SMIT). ``tiling``: the probe's tiling (None: its default, ``"per_block"``; ``"grid"`` is 17 times cheaper
    on ``sts/`` but reads the block's position in its tile, docs/results/study.md, twelfth session).
    Returns (and writes as ``study.json``) per run: the curve (epoch, iteration, tumour AUC/AP, organ
    kNN), the random-init rows of its architecture, the intensity baseline and the collapse monitors.
    """
    from dagman_components.analysis.probe import (
        DEFAULT_PREPROCESSING,
        DEFAULT_TILING,
        build_encoder,
        evaluate_encoder,
        prepare_probe_data,
        preprocessing_from_config,
        probe_baselines,
        reference_scores,
    )

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    tiling = DEFAULT_TILING if tiling is None else str(tiling)
    result: dict[str, Any] = {"data_dir": str(data_dir), "feature": feature, "tiling": tiling,
                              "n_random_seeds": n_random_seeds, "runs": {}}
    for name, run in runs.items():
        kwargs = dict(run.get("encoder", {}))
        config_file = run.get("config_file")
        preprocessing = (preprocessing_from_config(config_file) if config_file is not None
                         else {k: list(v) for k, v in DEFAULT_PREPROCESSING.items()})
        data = prepare_probe_data(data_dir, tiling=tiling, **preprocessing)  # cached per preprocessing and tiling
        curve = []
        for epoch, path in snapshots(run["dir"]):
            encoder, resolved = build_encoder(path, kwargs, config_file)
            scores = evaluate_encoder(encoder, data, feature=feature, device=device)
            organ = scores["organ"]
            curve.append(
                {
                    "epoch": epoch,
                    "iteration": epoch * iterations_per_epoch,
                    "path": str(path),
                    "tumour_auc": scores["tumour"]["auc"],
                    "tumour_ap": scores["tumour"]["ap"],
                    "organ_knn": None if organ is None else organ["accuracy_mean"],
                }
            )
            logger.info(f"{name} epoch {epoch}: {curve[-1]}")
        baselines = probe_baselines(data, resolved, n_random_seeds=n_random_seeds, feature=feature, device=device)
        result["runs"][name] = {
            "dir": str(run["dir"]),
            "config_file": config_file,
            "preprocessing": preprocessing,
            "encoder": resolved,
            "curve": curve,
            **reference_scores(baselines),
            "monitors": collapse_monitors(run["dir"], iterations_per_epoch),
        }
    (output / "study.json").write_text(json.dumps(result, indent=2, default=str))
    plot_learning_curves(result, output / "learning_curves.png")
    return result


def plot_learning_curves(result: Mapping[str, Any], path: str | Path, metrics: Sequence[str] = ("tumour_auc", "organ_knn")) -> Path:
    """Probe metric vs iteration per run, with each run's random-init mean +- std band, the intensity line and the
    organ kNN's tile-identity floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4))
    axes = np.atleast_1d(axes)
    names = {"tumour_auc": ("tumour_auc_mean", "tumour_auc_std", "tumour probe ROC AUC"),
             "organ_knn": ("organ_knn_mean", "organ_knn_std", "organ kNN accuracy")}
    for ax, metric in zip(axes, metrics):
        mean_key, std_key, label = names[metric]
        for i, (run_name, run) in enumerate(result["runs"].items()):
            color = f"C{i}"
            xs = [p["iteration"] for p in run["curve"] if p[metric] is not None]
            ys = [p[metric] for p in run["curve"] if p[metric] is not None]
            ax.plot(xs, ys, "o-", color=color, label=run_name)
            mean, std = run["random_init"].get(mean_key), run["random_init"].get(std_key)
            if mean is not None and xs:
                ax.axhspan(mean - std, mean + std, color=color, alpha=0.15)
                ax.axhline(mean, color=color, ls=":", lw=1, label=f"{run_name} random init (mean +- std)")
        first = next(iter(result["runs"].values()))
        if first["intensity"][metric] is not None:
            ax.axhline(first["intensity"][metric], color="k", ls="--", lw=1, label="intensity statistics")
        tile_identity = first.get("tile_identity", {}).get(metric)
        if tile_identity is not None:
            ax.axhline(tile_identity, color="tab:red", ls="-.", lw=1, label="tile identity (no image)")
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def main(**kwargs: Any) -> None:
    """Command-line entry: :func:`evaluate_study`, printing one line per snapshot."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    runs = kwargs.pop("runs")
    if isinstance(runs, str):
        runs = json.loads(runs)
    result = evaluate_study(runs, **kwargs)
    for name, run in result["runs"].items():
        print(f"{name}: random init {run['random_init']}; intensity {run['intensity']}")
        for point in run["curve"]:
            print(f"  epoch {point['epoch']:>3} it {point['iteration']:>4}: tumour AUC {point['tumour_auc']:.3f} "
                  f"AP {point['tumour_ap']:.3f} organ kNN {point['organ_knn']}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
