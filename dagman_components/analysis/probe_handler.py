"""
:py:class:`ProbeHandler`: the frozen-feature probe of :py:mod:`dagman_components.analysis.probe` as a learning curve.

Attached to the pretraining trainer it evaluates the current student encoder every ``interval``
epochs and at the end (tumour-vs-tissue linear probe, organ kNN when the organ data exist), on
blocks preprocessed once at attach time, next to reference lines computed once at attach time too:
the same architecture at random initialisation (mean +- std over seeds) and the raw-intensity
baseline. One evaluation costs one frozen forward per 64^3 tile plus the logistic regressions and a
kNN. With the probe's default per-block tiles the 20 real STS cases plus the organ CT are 2411 tiles:
about 2.5 min per evaluation at train.yaml's architecture on one CPU thread (2026-12-04);
``prepare_options={"tiling": "grid"}`` reads 145 tiles instead (cheaper, but it reads the block's position
in its tile, docs/results/study.md, twelfth session) and ``{"max_cases": 4}`` fewer cases.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from dagman_components.analysis.probe import (
    DEFAULT_PROBE_FEATURE,
    ProbeData,
    encoder_kwargs_from_encoder,
    evaluate_encoder,
    prepare_probe_data,
    probe_baselines,
    reference_scores,
)
from dagman_components.options import as_bool

__all__ = ["ProbeHandler", "plot_probe_curve"]

logger = logging.getLogger(__name__)

#: the curve's metrics: (key in a point, key prefix of the random-init reference, label)
_METRICS: tuple[tuple[str, str, str], ...] = (
    ("tumour_auc", "tumour_auc", "tumour ROC AUC"),
    ("tumour_ap", "tumour_ap", "tumour average precision"),
    ("organ_knn", "organ_knn", "organ kNN accuracy"),
)


def plot_probe_curve(curve: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Draw ``probe_curve.json``'s content: one panel per metric vs iteration, reference lines across.

    The random-init mean is a dotted line with a +- std band, the intensity baseline a dashed line, the
    intensity + place-in-crop row a green dashed line and the grid tiling's tile-position row dash-dotted (tumour
    panels), the organ kNN's tile-identity floor (:py:func:`~dagman_components.analysis.probe.tile_identity_knn`) dash-dotted.
    Metrics without any value (organ kNN without organ data) get no panel.
    """
    from matplotlib.figure import Figure  # no pyplot: headless and no global state

    points = list(curve.get("points", []))
    references = curve.get("references", {})
    shown = [m for m in _METRICS if any(p.get(m[0]) is not None for p in points)
             or references.get("random_init", {}).get(f"{m[1]}_mean") is not None]
    shown = shown or list(_METRICS[:1])
    fig = Figure(figsize=(4.2 * len(shown), 3.4), constrained_layout=True)
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    for ax, (key, ref, label) in zip(axes, shown):
        xs = [p["iteration"] for p in points if p.get(key) is not None]
        ys = [p[key] for p in points if p.get(key) is not None]
        ax.plot(xs, ys, "o-", color="tab:blue", label="encoder")
        random_init = references.get("random_init", {})
        mean, std = random_init.get(f"{ref}_mean"), random_init.get(f"{ref}_std")
        if mean is not None:
            ax.axhline(mean, color="tab:gray", linestyle=":", label=f"random init (n={len(random_init.get('seeds', []))})")
            ax.axhspan(mean - (std or 0.0), mean + (std or 0.0), color="tab:gray", alpha=0.2)
        intensity = references.get("intensity", {}).get(key)
        if intensity is not None:
            ax.axhline(intensity, color="tab:orange", linestyle="--", label="intensity statistics")
        location = references.get("location", {}).get(key)
        if location is not None:
            ax.axhline(location, color="tab:green", linestyle="--", label="intensity + place in crop")
        position = references.get("tile_position", {}).get(key)
        if position is not None:
            ax.axhline(position, color="tab:purple", linestyle="-.", label="position in tile (no image)")
        tile_identity = references.get("tile_identity", {}).get(key)
        if tile_identity is not None:
            ax.axhline(tile_identity, color="tab:red", linestyle="-.", label="tile identity (no image)")
        ax.set_xlabel("iteration")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


class ProbeHandler:
    """Ignite handler: the frozen-feature probe of the student encoder during pretraining.

    At attach time (rank 0 only; other ranks attach nothing) it prepares the blocks
    (:py:func:`~dagman_components.analysis.probe.prepare_probe_data`, cached per process) and the
    reference rows (:py:func:`~dagman_components.analysis.probe.probe_baselines`); then at every
    ``interval``-th epoch end and at the end of the run (once per iteration) it evaluates the encoder
    (``unwrap(network).encoder``, or ``encoder``) in eval mode without gradients and puts it back in
    its previous mode, and:

    - logs ``probe epoch E iteration I: tumour AUC x, AP y, organ kNN z``;
    - writes ``probe/tumour_auc``, ``probe/tumour_ap`` and ``probe/organ_knn`` at step I to TensorBoard
      (``summary_writer``, or one opened on ``log_dir``);
    - appends the point to ``output_dir/probe_curve.json`` and redraws ``output_dir/probe_curve.png``.

    Args:
        data_dir: the probe's data folder (e.g. ``../shared/data/real``), or None with ``data``.
        network: the pretraining model (``DAGMaNPretrainModel``, DDP-wrapped or not): the probe reads
            its ``.encoder`` at each evaluation. One of ``network``/``encoder`` is needed.
        encoder: the encoder itself, instead of ``network``.
        data: prepared :py:class:`~dagman_components.analysis.probe.ProbeData` (skips ``data_dir``).
        interval: epochs between evaluations (1).
        output_dir: folder of ``probe_curve.json``/``.png``; None writes no files.
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter``; None with ``log_dir`` opens one.
        log_dir: TensorBoard folder when no ``summary_writer`` is given; None: no TensorBoard.
        encoder_kwargs: the architecture of the random-init references; None reads it from
            ``config_file``'s ``encoder_def``, or else from the encoder's modules at attach time
            (:py:func:`~dagman_components.analysis.probe.encoder_kwargs_from_encoder`).
        config_file: pretrain config(s) for ``encoder_kwargs``.
        n_random_seeds: random-init references (3).
        feature: per-block feature (:py:data:`~dagman_components.analysis.probe.DEFAULT_PROBE_FEATURE`, ``"multiscale"``).
        evaluate_at_start: also evaluate when the run starts (False).
        resume: keep the points of an existing ``probe_curve.json`` (False: start a new curve).
        batch_size: tiles per forward (4).
        prepare_options: more :py:func:`~dagman_components.analysis.probe.prepare_probe_data` arguments
            (``max_cases``, ``tumour_sources``, ``spacing``, ``hu_range``, ``tile_size``, ``tiling``, ``organs``, ...).
        probe_options: more scoring arguments (``n_folds``, ``C``, ``max_iter``, ``knn_k``, ``seed``,
            ``cv_repeats``: splits averaged, 5).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        network: nn.Module | None = None,
        encoder: nn.Module | None = None,
        data: ProbeData | None = None,
        interval: int = 1,
        output_dir: str | os.PathLike | None = None,
        summary_writer: Any | None = None,
        log_dir: str | os.PathLike | None = None,
        encoder_kwargs: Mapping[str, Any] | None = None,
        config_file: str | os.PathLike | Sequence[str] | None = None,
        n_random_seeds: int = 3,
        feature: str = DEFAULT_PROBE_FEATURE,
        evaluate_at_start: bool = False,
        resume: bool = False,
        batch_size: int = 4,
        prepare_options: Mapping[str, Any] | None = None,
        probe_options: Mapping[str, Any] | None = None,
    ) -> None:
        if network is None and encoder is None:
            raise ValueError("ProbeHandler needs the pretraining network (its .encoder is probed) or an encoder.")
        if data is None and data_dir is None:
            raise ValueError("ProbeHandler needs data_dir (the probe's data folder) or prepared data.")
        self.data_dir = data_dir
        self.network = network
        self.encoder = encoder
        self.data = data
        self.interval = max(1, int(interval))
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.summary_writer = summary_writer
        self.log_dir = log_dir
        self.encoder_kwargs = None if encoder_kwargs is None else dict(encoder_kwargs)
        self.config_file = config_file
        self.n_random_seeds = int(n_random_seeds)
        self.feature = feature
        self.evaluate_at_start = as_bool(evaluate_at_start, "evaluate_at_start")
        self.resume = as_bool(resume, "resume")
        self.batch_size = int(batch_size)
        self.prepare_options = dict(prepare_options or {})
        self.probe_options = dict(probe_options or {})
        self.references: dict[str, Any] = {}
        self.points: list[dict[str, Any]] = []
        self._last_iteration: int | None = None
        self._owns_writer = False

    # -- helpers ------------------------------------------------------------------------------

    def current_encoder(self) -> nn.Module:
        """The module probed now: ``unwrap(network).encoder`` (DDP unwrapped), or ``encoder``."""
        from dagman_components.engines.handlers import unwrap  # lazy: engines imports far more than this needs

        if self.encoder is not None:
            return unwrap(self.encoder)
        network = unwrap(self.network)
        return unwrap(getattr(network, "encoder", network))

    @property
    def curve_path(self) -> Path | None:
        """``output_dir/probe_curve.json``, or None without ``output_dir``."""
        return None if self.output_dir is None else self.output_dir / "probe_curve.json"

    def _device(self, encoder: nn.Module) -> torch.device:
        try:
            return next(encoder.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    # -- ignite -------------------------------------------------------------------------------

    def attach(self, engine: Engine) -> None:
        """Prepare data and references (rank 0) and register the evaluations."""
        if _rank() != 0:
            return
        encoder = self.current_encoder()
        if self.data is None:
            self.data = prepare_probe_data(self.data_dir, **self.prepare_options)  # type: ignore[arg-type]
        kwargs = self.encoder_kwargs
        if kwargs is None:
            if self.config_file is not None:
                from dagman_components.analysis.probe import resolve_encoder_kwargs

                kwargs = resolve_encoder_kwargs(None, self.config_file)
            else:
                kwargs = encoder_kwargs_from_encoder(encoder)  # type: ignore[arg-type]
        self.encoder_kwargs = dict(kwargs)
        baselines = probe_baselines(self.data, kwargs, self.n_random_seeds, self.feature, self.batch_size,
                                    self._device(encoder), **self.probe_options)
        self.references = reference_scores(baselines)
        random_init = self.references["random_init"]
        logger.info(
            "probe references: random init tumour AUC "
            f"{_fmt(random_init['tumour_auc_mean'])} +- {_fmt(random_init['tumour_auc_std'])}, organ kNN "
            f"{_fmt(random_init['organ_knn_mean'])}; intensity tumour AUC {_fmt(self.references['intensity']['tumour_auc'])}, "
            f"organ kNN {_fmt(self.references['intensity']['organ_knn'])}; intensity + place in crop tumour AUC "
            f"{_fmt(self.references['location']['tumour_auc'])}; tile identity organ kNN "
            f"{_fmt(self.references['tile_identity']['organ_knn'])}"
        )
        if self.resume and self.curve_path is not None and self.curve_path.is_file():
            self.points = list(json.loads(self.curve_path.read_text()).get("points", []))
        if self.summary_writer is None and self.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.summary_writer = SummaryWriter(log_dir=str(self.log_dir))
            self._owns_writer = True
        if self.evaluate_at_start:
            engine.add_event_handler(Events.STARTED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)
        if self._owns_writer:
            engine.add_event_handler(Events.COMPLETED, self._close_writer)

    def _close_writer(self, engine: Engine) -> None:
        if self.summary_writer is not None:
            self.summary_writer.close()

    def __call__(self, engine: Engine) -> dict[str, Any] | None:
        """Evaluate now (once per iteration) and record the point; returns it, or None if already done."""
        iteration, epoch = int(engine.state.iteration), int(engine.state.epoch)
        if self._last_iteration == iteration:
            return None
        self._last_iteration = iteration
        encoder = self.current_encoder()
        with torch.random.fork_rng(devices=[]):
            scores = evaluate_encoder(encoder, self.data, self.feature, self.batch_size,  # type: ignore[arg-type]
                                      self._device(encoder), **self.probe_options)
        point = {
            "epoch": epoch,
            "iteration": iteration,
            "tumour_auc": scores["tumour"]["auc"],
            "tumour_ap": scores["tumour"]["ap"],
            "organ_knn": None if scores["organ"] is None else scores["organ"]["accuracy_mean"],
        }
        self.points = [p for p in self.points if p["iteration"] != iteration] + [point]
        logger.info(f"probe epoch {epoch} iteration {iteration}: tumour AUC {_fmt(point['tumour_auc'])}, "
                    f"AP {_fmt(point['tumour_ap'])}, organ kNN {_fmt(point['organ_knn'])}")
        if self.summary_writer is not None:
            for key in ("tumour_auc", "tumour_ap", "organ_knn"):
                if point[key] is not None:
                    self.summary_writer.add_scalar(f"probe/{key}", point[key], iteration)
        if self.curve_path is not None:
            self.write_curve()
        return point

    def write_curve(self) -> None:
        """Write ``probe_curve.json`` (atomically) and redraw ``probe_curve.png``."""
        assert self.curve_path is not None
        curve = {
            "points": self.points,
            "references": self.references,
            "feature": self.feature,
            "encoder_kwargs": self.encoder_kwargs,
            "blocks": self.data.tumour.class_counts() if self.data is not None else None,
            "organ_blocks": None if self.data is None or self.data.organ is None else self.data.organ.class_counts(),
        }
        self.curve_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.curve_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(curve, indent=2, default=str) + "\n")
        os.replace(tmp, self.curve_path)
        plot_probe_curve(curve, self.curve_path.with_suffix(".png"))


def _rank() -> int:
    """This process's rank under ``torch.distributed``, 0 without it."""
    distributed = torch.distributed
    return distributed.get_rank() if distributed.is_available() and distributed.is_initialized() else 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
