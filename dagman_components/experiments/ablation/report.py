"""``ablation.md`` / ``.csv`` / ``.json``: the tables, and the sentences that say what the numbers show."""

from __future__ import annotations

import contextlib
import csv
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import Paths, write_result
from .plots import copy_figures, group_rows, plot_group
from .statistics import (
    METRICS,
    PAPER_COLUMN,
    Metric,
    aggregate,
    compare_variants,
    format_mean_std,
    metrics_of,
    paired_differences,
)
from .variants import DEFAULT_GROUPS, GROUPS, UNTRAINED, VARIANTS, AblationBudget

__all__ = ["hardware", "write_report"]


def hardware() -> dict[str, Any]:
    """CPU model, cores, torch/MONAI versions and the device the suite ran on."""
    import monai

    cpu = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "device": "cuda:0" if torch.cuda.is_available() else "cpu"}


def _paper_text(metric: Metric) -> str:
    return "; ".join(f"{v}: {text}" for v, text in metric.paper.items()) or "-"


def _verdict(summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Plain sentences comparing DAGMaN with SMIT metric by metric, from the numbers alone."""
    if "DAGMaN" not in summary or "SMIT" not in summary:
        return ["DAGMaN and SMIT were not both run: no comparison."]
    better, worse, tied = compare_variants(summary, "DAGMaN", "SMIT")
    n = len(better) + len(worse) + len(tied)
    single_seed = all(e["n"] < 2 for v in ("DAGMaN", "SMIT") for e in summary[v].values())
    if single_seed:
        lines = [f"With a single seed there is no spread to compare against: of {n} metrics measured for both, "
                 f"DAGMaN is ahead of SMIT on {len(better)}, behind on {len(worse)} and equal on {len(tied)}, and "
                 "none of these differences is tested. Run with several seeds before drawing any conclusion."]
    else:
        lines = [f"Of {n} metrics measured for both, DAGMaN is better than SMIT by more than one standard deviation "
                 f"(the larger of the two variants' seed-to-seed standard deviations) on {len(better)}, worse by "
                 f"more than one standard deviation on {len(worse)}, and within one standard deviation on "
                 f"{len(tied)}."]
    if better:
        lines.append("Better: " + "; ".join(better) + ".")
    if worse:
        lines.append("Worse: " + "; ".join(worse) + ".")
    if tied:
        lines.append("Within the seed-to-seed spread: " + "; ".join(tied) + ".")
    if len(better) <= len(worse) or len(better) < n / 2:
        lines.append(
            "So at this budget DAGMaN does not clearly beat SMIT. What we think would change it: pretraining long "
            "enough for the teacher's SATT to become informative (the papers: 800 epochs on 10,412 CTs; here a few "
            "epochs on a few dozen volumes, so attention-guided masking mostly follows an untrained attention map), "
            "128^3 crops (more SA tokens to rank), feature size 48, and evaluation sets of hundreds of real cases "
            "instead of tens of phantom nodules, where an AUC difference of a few hundredths is measurable."
        )
    return lines


def _context(summary: Mapping[str, Mapping[str, Any]], baselines: Mapping[str, Sequence[float]]) -> list[str]:
    """Sentences that say what the comparison can show: how far pretraining moved the encoders, and how the
    zero-shot maps compare with the trivial baselines on the same views."""
    lines = []
    drift = {v: m["encoder_drift"]["mean"] for v, m in summary.items()
             if v not in UNTRAINED and m.get("encoder_drift", {}).get("mean") is not None}
    if drift:
        low, high = min(drift, key=drift.get), max(drift, key=drift.get)
        line = (f"Pretraining moved the encoder weights by {100 * drift[low]:.1f} % ({low}) to {100 * drift[high]:.1f} % "
                f"({high}) of their norm (relative L2 change from the initial weights, mean over seeds).")
        if drift[high] < 0.1:
            line += (" Every encoder evaluated here is therefore close to its random initialisation, and the seed "
                     "sets the initialisation: differences between variants measure the architecture (SA module or "
                     "not, SA stage) and the seed more than what pretraining learnt.")
        lines.append(line)
    for metric_key, prefix, views in (("loc_dice", "full_", "whole volumes"), ("loc_dice_crop", "crop_", "off-centre crops")):
        maps = {v: m[metric_key]["mean"] for v, m in summary.items() if m.get(metric_key, {}).get("mean") is not None}
        trivial = {k: float(np.mean(v)) for k, v in baselines.items() if k.startswith(prefix) and not k.endswith("noise")}
        if maps and trivial:
            best_variant, best_baseline = max(maps, key=maps.get), max(trivial, key=trivial.get)
            verb = "beats" if maps[best_variant] > trivial[best_baseline] else "does not reach"
            lines.append(f"Zero-shot localization on {views}: the best SATT map ({best_variant}, Dice "
                         f"{maps[best_variant]:.3f}) {verb} the best trivial map ({best_baseline}, Dice "
                         f"{trivial[best_baseline]:.3f}).")
    return lines


def _pretraining_effect(records: Sequence[Mapping[str, Any]],
                        summary: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]], list[str]]:
    """The control group's table (header, rows) and sentences: each pretrained variant against its untrained
    control (same architecture, same initial weights), metric by metric, paired by seed."""
    pairs = [(base, name) for name, base in UNTRAINED.items() if name in summary and base in summary]
    header = ["metric"]
    for base, name in pairs:
        header += [base, name, f"{base}: pretrained - untrained, per seed"]
    rows, lines = [], []
    counts = {base: {"better": [], "worse": [], "mixed": []} for base, _ in pairs}
    seeds = {base: 0 for base, _ in pairs}
    for metric in metrics_of(summary, [v for pair in pairs for v in pair], every=True):
        row = [metric.label]
        for base, name in pairs:
            diffs = paired_differences(records, base, name, metric.key)
            seeds[base] = max(seeds[base], len(diffs))
            row += [format_mean_std(summary[base].get(metric.key)), format_mean_std(summary[name].get(metric.key)),
                    " / ".join(f"{d:+.3f}" for d in diffs) or "-"]
            # distances follow the feature scale, which pretraining changes: not counted, their ratio is below
            if metric.higher_is_better is None or len(diffs) < 2 or not metric.scale_free:
                continue
            signed = [d if metric.higher_is_better else -d for d in diffs]
            kind = "better" if min(signed) > 0 else "worse" if max(signed) < 0 else "mixed"
            counts[base][kind].append(metric.label)
        rows.append(row)
    for base, name in pairs:
        c = counts[base]
        n = sum(map(len, c.values()))
        if not n:
            continue
        chance = 2 * 0.5 ** seeds[base]
        lines.append(f"{base} pretrained vs the same encoder untrained ({name}): of {n} scale-free metrics, "
                     f"pretraining improved {len(c['better'])} on every seed, worsened {len(c['worse'])} on every "
                     f"seed, and moved {len(c['mixed'])} in different directions on different seeds. A metric that "
                     f"pretraining does not change falls on the same side on all {seeds[base]} seeds with probability "
                     f"{chance:.2f}, so chance alone puts about {chance * n:.0f} of {n} in the first two counts.")
        if c["better"]:
            lines.append(f"{base}, improved on every seed: " + "; ".join(c["better"]) + ".")
        if c["worse"]:
            lines.append(f"{base}, worsened on every seed: " + "; ".join(c["worse"]) + ".")
        scale = [summary[base][k]["mean"] / summary[name][k]["mean"] for k in ("organs_phantom_intra", "organs_real_intra")
                 if summary[base].get(k, {}).get("mean") and summary[name].get(k, {}).get("mean")]
        if scale:
            lines.append(f"{base}: pretraining scaled the organ-crop feature distances to "
                         + " and ".join(f"{r:.2f}x" for r in scale) + " of the untrained encoder's (intra-cluster, "
                         "phantom and real CT): the feature scale changed, so intra- and inter-cluster distances are "
                         "left out of the counts above; their ratio and kNN accuracy are in them.")
    return header, rows, lines


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def write_report(
    records: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    budget: AblationBudget,
    work_dir: str | os.PathLike,
    real_data: str | os.PathLike | None,
    command: str,
    wall_s: float,
    skipped: Mapping[str, str] | None = None,
    groups: Sequence[str] = DEFAULT_GROUPS,
) -> dict[str, Path]:
    """Write ``ablation.md``, ``ablation.csv``, ``ablation.json`` and the plots into ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = Paths(Path(work_dir).resolve(), Path(real_data).resolve() if real_data and Path(real_data).is_dir() else None)
    summary = aggregate(records)
    info = hardware()
    timing: dict[str, list[float]] = {}
    for record in records:
        timing.setdefault(record["task"], []).append(float(record.get("wall_s", 0.0)))
    pretrain_records = [r for r in records if r["task"] == "pretrain"]
    iterations = sorted({r["metrics"]["iterations"] for r in pretrain_records if r["variant"] not in UNTRAINED})

    # CSV: one row per (variant, metric)
    csv_path = output_dir / "ablation.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "metric", "task", "mean", "std", "n", "values", "paper_theirs"])
        for variant, metrics in summary.items():
            for key, entry in metrics.items():
                metric = next((m for m in METRICS if m.key == key), None)
                writer.writerow([variant, key, metric.task if metric else "", entry["mean"], entry["std"], entry["n"],
                                 " ".join(f"{v:.6g}" for v in entry["values"]),
                                 metric.paper.get(variant, "") if metric else ""])

    figures = {f"group_{g}": plot_group(g, summary, output_dir / f"ablation_{g}.png") for g in groups}
    figures.update({k: v for k, v in copy_figures(records, paths, output_dir, budget).items()})

    baselines: dict[str, list[float]] = {}
    for record in records:
        for key, value in record.get("baselines", {}).items():
            baselines.setdefault(key, []).append(value)

    md = ["# Ablation: attention-guided masking and noisy teacher vs random masking", "",
          "Written by `python -m dagman_components.experiments ablation`; every number below comes from that run.", "",
          "## How it was run", "", f"- command: `{command}`",
          f"- wall time of the suite: {sum(map(sum, timing.values())) / 60:.1f} min, the sum of every unit's own wall "
          "time (each is cached with its result, so the sum survives `--resume`): "
          + ", ".join(f"{k} {sum(v) / 60:.1f} min" for k, v in timing.items())
          + f"; this invocation took {wall_s / 60:.1f} min (under `--resume` it computes only the missing units)",
          f"- hardware: {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), "
          f"device {info['device']}{' (' + info['gpu'] + ')' if info['gpu'] else ''}; torch {info['torch']}, "
          f"MONAI {info['monai']}, Python {info['python']}",
          f"- pretraining: `bundles/pretrain/configs/train.yaml` with the variant's overrides; "
          f"{', '.join(map(str, iterations))} iterations per run (equal for every variant"
          + ("; the untrained controls: none" if any(r["variant"] in UNTRAINED for r in pretrain_records) else "")
          + "), "
          f"{budget.roi_size}^3 crops, batch {budget.batch_size}, feature size {budget.feature_size}; data: "
          f"{budget.pretrain_phantoms} synthetic phantoms (seed 0)"
          + (f" + the real CTs of `{paths.real_data}` (all CT images, masks excluded)"
             if budget.use_real_pretraining and paths.real_data else " only"),
          f"- evaluation phantoms: seed {budget.eval_phantom_seed} (none of them seen in pretraining); split seed "
          f"{budget.split_seed}; fixed for every variant and seed", "",
          "Budget (`dagman_components.experiments.AblationBudget`, fingerprint "
          f"`{budget.fingerprint()}`):", ""]
    md += _markdown_table(["field", "value"], [[k, str(v)] for k, v in asdict(budget).items()])
    md += ["", "Variants (pretrain-bundle overrides; empty = the bundle's DAGMaN defaults):", ""]
    md += _markdown_table(["variant", "overrides"],
                          [[v, f"{UNTRAINED[v]}'s architecture and initial weights (same seed), not pretrained"
                            if v in UNTRAINED else
                            ", ".join(f"`{k}={val}`" for k, val in VARIANTS[v].items()) or "(defaults)"]
                           for v in VARIANTS if v in summary])
    if skipped:
        md += ["", "Not run:", ""] + [f"- `{task}`: {why}" for task, why in skipped.items()]
    if "core" in groups:
        core = [v for v in GROUPS["core"] if v in summary]
        md += ["", "## Core variants (mean +- std over seeds)", ""]
        rows = [[m.label] + [format_mean_std(summary[v].get(m.key)) for v in core] + [_paper_text(m)]
                for m in metrics_of(summary, core)]
        md += _markdown_table(["metric"] + core + [PAPER_COLUMN], rows)
        md += ["", "The paper column holds the papers' own numbers on their data (LIDC-IDRI nodules, OrganMNIST3D, "
               "SMART's tumours), not a reproduction: our rows are synthetic phantoms and a handful of real CTs, "
               "with a small encoder pretrained briefly. Distances depend on the feature scale of each encoder; "
               "kNN accuracy and inter/intra do not. Variants without the SA module (SMIT, NT only) have no SATT "
               "map, hence no zero-shot localization Dice; their frozen feature is the pooled last stage, the "
               "others' the [CLS] token (papers' protocol; the pooled-feature probe row compares all on one footing).",
               ""]
        if baselines:
            md += ["Zero-shot localization baselines on the same views (independent of the encoder):", ""]
            md += _markdown_table(["map", "Dice"], [[k, f"{np.mean(v):.3f}"] for k, v in sorted(baselines.items())])
            md += [""]
        md += ["What the numbers show:", ""] + [f"- {line}" for line in _verdict(summary) + _context(summary, baselines)]
    if "control" in groups:
        header, rows, lines = _pretraining_effect(records, summary)
        if rows:
            md += ["", "## Pretrained vs untrained: what pretraining itself changed", "",
                   "Each untrained control is built by its variant's pretrain workflow with the same seed and saved "
                   "before the first iteration, so it holds exactly the weights the pretrained encoder started from; "
                   "the per-seed column is pretrained minus untrained for seeds 0, 1, ... in order.", ""]
            md += _markdown_table(header, rows)
            md += [""] + [f"- {line}" for line in lines]
    for group, title in (("loss", "Loss ablation"), ("pdr", "Teacher patch-drop ratio (PDR) sweep"),
                         ("sa_stage", "SA stage sweep")):
        if group not in groups:
            continue
        rows_g = group_rows(group, summary)
        metrics = metrics_of(summary, [v for _, v in rows_g], every=True)
        md += ["", f"## {title} (mean +- std over seeds)", ""]
        md += _markdown_table(["variant"] + [m.label for m in metrics],
                              [[label] + [format_mean_std(summary[v].get(m.key)) for m in metrics]
                               for label, v in rows_g])
    head_keys = sorted({k for v in summary.values() for k in v if k.startswith("hd_") and "_entropy_" in k})
    if head_keys:
        core = [v for v in GROUPS["core"] if v in summary]
        md += ["", "## Attention head diversity per stage (entropy of attention distances, nats)", ""]
        md += _markdown_table(["statistic"] + core, [[k] + [format_mean_std(summary[v].get(k)) for v in core]
                                                     for k in head_keys])
    md += ["", "## Plots", ""]
    for name, value in figures.items():
        for figure in value if isinstance(value, list) else [value]:
            if figure is not None:
                md.append(f"![{name}]({Path(figure).name})")
    md += ["", "Files: `ablation.csv` (one row per variant and metric, with every seed's value) and `ablation.json` "
           "(the same plus every unit's record).", ""]
    md_path = output_dir / "ablation.md"
    md_path.write_text("\n".join(md) + "\n")
    json_path = output_dir / "ablation.json"
    write_result(json_path, {"command": command, "wall_s": wall_s, "hardware": info, "budget": asdict(budget),
                             "budget_fingerprint": budget.fingerprint(), "skipped": dict(skipped or {}),
                             "summary": summary, "records": list(records)})
    return {"markdown": md_path, "csv": csv_path, "json": json_path}
