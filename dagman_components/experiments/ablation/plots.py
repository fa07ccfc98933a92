"""The report's figures: a bar chart per group, and the UMAP, head-diversity and localization figures of seed 0."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cache import Paths
from .statistics import metrics_of
from .variants import GROUPS, SWEEP_KEYS, AblationBudget, slug, variant_setting

__all__ = ["copy_figures", "group_rows", "plot_group"]


def group_rows(group: str, summary: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(row label, variant) of a group's table: sweep rows labelled by the swept value."""
    rows = []
    for variant in GROUPS[group]:
        if variant not in summary:
            continue
        if group in SWEEP_KEYS:
            key, default = SWEEP_KEYS[group]
            label = f"{key} = {variant_setting(variant, key, default)} ({variant})"
        else:
            label = variant
        rows.append((label, variant))
    return rows


def plot_group(group: str, summary: Mapping[str, Mapping[str, Any]], path: Path) -> Path | None:
    """Bar chart (mean +- std over seeds) of every metric measured for a group's variants."""
    from matplotlib.figure import Figure

    rows = group_rows(group, summary)
    # a sweep compares its points on the tasks they all ran (budget.sweep_tasks)
    metrics = metrics_of(summary, [v for _, v in rows], every=group != "core")
    if not rows or not metrics:
        return None
    columns = min(4, len(metrics))
    lines = math.ceil(len(metrics) / columns)
    fig = Figure(figsize=(4.2 * columns, 3.2 * lines), constrained_layout=True)
    axes = np.atleast_1d(fig.subplots(lines, columns, squeeze=False)).reshape(-1)
    for ax, metric in zip(axes, metrics):
        names, means, stds, colours = [], [], [], []
        for i, (label, variant) in enumerate(rows):
            entry = summary[variant].get(metric.key)
            if entry and entry["mean"] is not None:
                names.append(variant if group not in SWEEP_KEYS else label.split(" (")[0].split("= ")[1])
                means.append(entry["mean"])
                stds.append(entry["std"] or 0.0)
                colours.append(f"C{i}")  # one colour per variant in every panel
        ax.bar(range(len(names)), means, yerr=stds, color=colours, capsize=3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        ax.set_title(metric.label, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_axis_off()
    if group in SWEEP_KEYS:
        fig.suptitle(f"{SWEEP_KEYS[group][0]} sweep (mean +- std over seeds)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def copy_figures(records: Sequence[Mapping[str, Any]], paths: Paths, output_dir: Path,
                  budget: AblationBudget) -> dict[str, list[Path]]:
    """UMAP plots (seed 0 of each core variant), the head-diversity comparison and localization overlays."""
    figures: dict[str, list[Path]] = {"umap": [], "head_diversity": [], "localization": []}
    seed0 = {(r["variant"], r["task"]): r for r in records if r.get("seed") == 0}
    for variant in GROUPS["core"]:
        for prefix in ("organs_phantom", "organs_real"):
            record = seed0.get((variant, prefix))
            if record and record.get("files", {}).get("umap_png"):
                target = output_dir / f"ablation_umap_{prefix.split('_')[1]}_{slug(variant)}.png"
                shutil.copyfile(record["files"]["umap_png"], target)
                figures["umap"].append(target)
        record = seed0.get((variant, "localization"))
        overlay = paths.unit(variant, 0) / "localization" / "localization.png"
        if record and overlay.is_file():
            target = output_dir / f"ablation_localization_{slug(variant)}.png"
            shutil.copyfile(overlay, target)
            figures["localization"].append(target)
    diversity = {v: json.loads(Path(seed0[(v, "head_diversity")]["files"]["json"]).read_text())
                 for v in GROUPS["core"] if (v, "head_diversity") in seed0}
    if diversity:
        from dagman_components.analysis import plot_head_diversity

        figures["head_diversity"].append(plot_head_diversity(diversity, output_dir / "ablation_head_diversity.png"))
    return figures
