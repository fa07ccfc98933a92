"""``run_probe``: the probe of one encoder file next to its references, written as ``probe.json`` and a table."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dagman_components.analysis.clustering import write_json
from dagman_components.analysis.probe.blocks import DEFAULT_PREPROCESSING, DEFAULT_TILING, prepare_probe_data
from dagman_components.analysis.probe.encoders import _encoder_parameter_names, build_encoder, preprocessing_from_config
from dagman_components.analysis.probe.scores import (
    DEFAULT_PROBE_FEATURE,
    _fmt,
    _summary_line,
    evaluate_encoder,
    probe_baselines,
)

__all__ = ["format_probe_table", "run_probe", "main"]

logger = logging.getLogger(__name__)


def format_probe_table(result: Mapping[str, Any]) -> str:
    """The short table of :py:func:`run_probe`'s result: rows encoder / random init / intensity / location /
    tile position / tile identity (the last three where they exist)."""
    enc, rnd, inten = result["encoder"], result["random_init"], result["intensity"]
    tile = (result.get("tile_identity") or {}).get("organ")
    location = (result.get("location") or {}).get("tumour")
    position = (result.get("tile_position") or {}).get("tumour")
    organ = lambda r: None if r is None else r["accuracy_mean"]  # noqa: E731
    rows = [
        ("encoder", _fmt(enc["tumour"]["auc"]), _fmt(enc["tumour"]["ap"]), _fmt(organ(enc["organ"]))),
        (f"random init ({len(rnd['seeds'])} seed{'' if len(rnd['seeds']) == 1 else 's'})",
         _fmt(rnd["tumour_auc_mean"], rnd["tumour_auc_std"]), _fmt(rnd["tumour_ap_mean"], rnd["tumour_ap_std"]),
         _fmt(rnd["organ_knn_mean"], rnd["organ_knn_std"])),
        ("intensity (4 statistics)", _fmt(inten["tumour"]["auc"]), _fmt(inten["tumour"]["ap"]),
         _fmt(organ(inten["organ"]))),
    ]
    if location is not None:
        rows.append(("intensity + place in crop (no encoder)", _fmt(location["auc"]), _fmt(location["ap"]), "-"))
    added = enc.get("tumour_with_references")
    if added is not None:  # what the features add to that row
        rows.append(("encoder + intensity + place", _fmt(added["auc"]), _fmt(added["ap"]), "-"))
        if rnd.get("tumour_with_references_auc_mean") is not None:
            rows.append(("random init + intensity + place", _fmt(rnd["tumour_with_references_auc_mean"],
                                                                  rnd["tumour_with_references_auc_std"]),
                         _fmt(rnd["tumour_with_references_ap_mean"], rnd["tumour_with_references_ap_std"]), "-"))
    if position is not None:
        rows.append(("position in tile (no image)", _fmt(position["auc"]), _fmt(position["ap"]), "-"))
    if tile is not None:
        rows.append(("tile identity (no image)", "-", "-", _fmt(organ(tile))))
    blocks = result["data"]["tumour"]["blocks"]
    organ_data = result["data"]["organ"]
    header = (f"probe '{result['settings']['feature']}' features, {result['settings'].get('tiling', 'grid')} tiling: {blocks.get('tumour', 0)} tumour / "
              f"{blocks.get('tissue', 0)} tissue blocks in {len(result['data']['tumour']['cases'])} cases "
              f"(AP chance {enc['tumour']['prevalence']:.3f}; mean of {enc['tumour'].get('repeats', 1)} CV splits); organ kNN: "
              + (f"{organ_data['num_blocks']} blocks of {len(organ_data['blocks'])} organs" if organ_data else
                 f"none ({result['data']['organ_reason']})"))
    widths = [max(len(r[i]) for r in rows + [("", "tumour AUC", "tumour AP", "organ kNN")]) for i in range(4)]
    lines = [header, "  ".join(h.ljust(w) for h, w in zip(("", "tumour AUC", "tumour AP", "organ kNN"), widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def run_probe(
    encoder_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    encoder_kwargs: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike | Sequence[str] | None = None,
    output_dir: str | os.PathLike = "probe",
    feature: str = DEFAULT_PROBE_FEATURE,
    tumour_sources: Sequence[str] = ("sts",),
    organs: bool = True,
    max_cases: int | None = None,
    spacing: Sequence[float] | None = None,
    hu_range: Sequence[float] | None = None,
    tile_size: int = 64,
    tiling: str = DEFAULT_TILING,
    body_hu: float = -500.0,
    tumour_fraction: float = 0.5,
    body_fraction: float = 0.5,
    organ_fraction: float = 0.5,
    min_blocks_per_organ: int = 5,
    organ_label_offset: Sequence[int] | None = (0, 0, 82),
    n_folds: int = 5,
    C: float = 0.1,
    max_iter: int = 5000,
    knn_k: int = 5,
    n_random_seeds: int = 3,
    seed: int = 0,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    cv_repeats: int = 5,
) -> dict[str, Any]:
    """Frozen-feature probe of the encoder in ``encoder_path``; writes ``output_dir/probe.json`` and logs a table.

    Args:
        encoder_path: an encoder state dict (``models/model.pt`` of the pretrain bundle).
        data_dir: the data folder (see :py:func:`prepare_probe_data`).
        encoder_kwargs: ``SASwinEncoder`` arguments over :py:data:`DEFAULT_ENCODER_KWARGS` (train.yaml's:
            ``feature_size`` 12, ``depths`` (2, 2, 8, 2), ``num_heads`` (4, 4, 8, 16), ...).
        config_file: pretrain config path(s) whose ``encoder_def`` gives the arguments (applied before
            ``encoder_kwargs``), e.g. ``["bundles/pretrain/configs/train.yaml", "my.yaml"]``.
        output_dir: where ``probe.json`` goes ("probe").
        feature: one of :py:data:`PROBE_FEATURES` (:py:data:`DEFAULT_PROBE_FEATURE`, "multiscale").
        tumour_sources, organs, max_cases, spacing, hu_range, tile_size, tiling, body_hu, tumour_fraction,
            body_fraction, organ_fraction, min_blocks_per_organ, organ_label_offset: the data
            (:py:func:`prepare_probe_data`; its blocks are cached across calls). ``spacing`` and
            ``hu_range`` None: ``config_file``'s (:py:func:`preprocessing_from_config`), else 2 mm and
            -1000..1000 HU (train.yaml's).
        n_folds, C, max_iter: the tumour probe (:py:func:`linear_probe`); knn_k: the organ kNN (5).
        n_random_seeds: random-init reference encoders (3).
        seed: seed of the folds.
        batch_size: tiles per encoder forward (4).
        device: where the encoders run (None: CUDA if available, else CPU).
        cv_repeats: cross-validations with different splits, averaged (5): one split's tumour AUC moves
            by up to 0.01 and its organ kNN by up to 0.04 with the split (docs/results/study.md).

    Returns:
        ``{"encoder": {"path", "kwargs", "tumour", "organ"}, "random_init", "intensity", "data":
        {"tumour": blocks summary, "organ": blocks summary or None, "organ_reason"}, "settings",
        "wall_time_s", "files"}`` (as written to ``probe.json``).
    """
    start = time.perf_counter()
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder, kwargs = build_encoder(encoder_path, encoder_kwargs, config_file)
    encoder = encoder.to(device)
    preprocessing = preprocessing_from_config(config_file) if config_file is not None else DEFAULT_PREPROCESSING
    spacing = spacing if spacing is not None else preprocessing["spacing"]
    hu_range = hu_range if hu_range is not None else preprocessing["hu_range"]
    data = prepare_probe_data(
        data_dir, tumour_sources=tumour_sources, organs=organs, max_cases=max_cases, spacing=spacing,
        hu_range=hu_range, tile_size=tile_size, tiling=tiling, block_size=encoder.token_stride, body_hu=body_hu,
        tumour_fraction=tumour_fraction, body_fraction=body_fraction, organ_fraction=organ_fraction,
        min_blocks_per_organ=min_blocks_per_organ, organ_label_offset=organ_label_offset,
    )
    options = dict(n_folds=n_folds, C=C, max_iter=max_iter, knn_k=knn_k, seed=seed, cv_repeats=cv_repeats)
    scores = evaluate_encoder(encoder, data, feature, batch_size, device, **options)
    logger.info(f"probe: encoder: {_summary_line(scores)} ({time.perf_counter() - start:.1f} s so far)")
    baselines = probe_baselines(data, kwargs, n_random_seeds, feature, batch_size, device, **options)
    output_dir = Path(output_dir)
    files = {"json": str(output_dir / "probe.json")}
    config_files = None
    if config_file is not None:
        config_files = [str(config_file)] if isinstance(config_file, (str, os.PathLike)) else [str(c) for c in config_file]
    result = {
        "encoder": {"path": str(encoder_path), "kwargs": kwargs, **scores},
        **baselines,
        "data": {"tumour": data.tumour.summary(), "organ": None if data.organ is None else data.organ.summary(),
                 "organ_reason": data.organ_reason, "data_dir": str(data_dir)},
        "settings": {"feature": feature, "tiling": tiling, "config_file": config_files, "device": str(device), "batch_size": int(batch_size), "n_random_seeds": int(n_random_seeds),
                     "tumour_sources": list(tumour_sources), "max_cases": max_cases,
                     "spacing": [float(v) for v in spacing], "hu_range": [float(v) for v in hu_range],
                     "probe": {"model": "StandardScaler + LogisticRegression(class_weight='balanced')", "C": float(C),
                               "max_iter": int(max_iter), "cv": "StratifiedGroupKFold by case", "n_folds": int(n_folds),
                               "seed": int(seed), "cv_repeats": int(cv_repeats)},
                     "knn": {"k": int(knn_k), "metric": "euclidean on standardised features", "weights": "distance",
                             "cv": ("StratifiedGroupKFold by CT" if scores["organ"] is not None and scores["organ"].get("grouped")
                                    else "StratifiedKFold over the blocks of one CT (read against tile_identity)"),
                             "cv_repeats": int(cv_repeats)}},
        "wall_time_s": round(time.perf_counter() - start, 2),
        "files": files,
    }
    write_json(result, files["json"])
    for line in format_probe_table(result).splitlines():
        logger.info(line)
    logger.info(f"probe: written to {files['json']} in {result['wall_time_s']:.1f} s")
    return result




def main(
    encoder_path: str,
    data_dir: str,
    output_dir: str = "probe",
    config_file: str | Sequence[str] | None = None,
    feature: str = DEFAULT_PROBE_FEATURE,
    tumour_sources: Sequence[str] = ("sts",),
    organs: bool = True,
    max_cases: int | None = None,
    spacing: Sequence[float] | None = None,
    hu_range: Sequence[float] | None = None,
    tile_size: int = 64,
    tiling: str = DEFAULT_TILING,
    n_folds: int = 5,
    C: float = 0.1,
    knn_k: int = 5,
    n_random_seeds: int = 3,
    seed: int = 0,
    batch_size: int = 4,
    device: str | None = None,
    cv_repeats: int = 5,
    **encoder_kwargs: Any,
) -> None:
    """Command line: ``python -m dagman_components.analysis.probe --encoder_path model.pt --data_dir DIR --output_dir OUT``.

    Any other ``--name value`` is an ``SASwinEncoder`` argument (``--feature_size 12 --depths "[2,2,8,2]"``),
    applied over ``--config_file`` (pretrain config(s)) over train.yaml's defaults. ``--hu_range`` and
    ``--spacing`` default to the config files' (pretraining's window). Prints the table.
    """
    unknown = sorted(set(encoder_kwargs) - _encoder_parameter_names())
    if unknown:
        raise ValueError(f"unknown options {unknown}: neither a probe option nor an SASwinEncoder argument "
                         f"({sorted(_encoder_parameter_names())}).")
    if isinstance(tumour_sources, str):
        tumour_sources = [tumour_sources]
    result = run_probe(encoder_path, data_dir, encoder_kwargs=encoder_kwargs, config_file=config_file,
                       output_dir=output_dir, feature=feature, tumour_sources=tumour_sources, organs=organs,
                       max_cases=max_cases, spacing=spacing, hu_range=hu_range, tile_size=tile_size,
                       tiling=tiling, n_folds=n_folds, C=C, knn_k=knn_k,
                       n_random_seeds=n_random_seeds, seed=seed, batch_size=batch_size, device=device,
                       cv_repeats=cv_repeats)
    print(format_probe_table(result))
    print(f"written: {result['files']['json']} ({result['wall_time_s']:.1f} s)")

