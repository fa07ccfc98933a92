"""
Features of a pretrained encoder, without fine-tuning, over a MONAI dataloader.

The papers cluster organs with the [CLS] token of the semantic-attention module for DAGMaN/SMART and
with the average-pooled last Swin stage for SMIT (SMART sec. V-A and VII). :py:class:`EncoderFeatures`
turns an :py:class:`~dagman_components.networks.SASwinEncoder` into a network whose output is that one
vector per image, so it runs in MONAI's ``SupervisedEvaluator`` (eval mode, no gradients, any device);
:py:class:`FeatureCollector` gathers the vectors and labels, and :py:func:`extract_features` does both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer
from monai.utils import CommonKeys

from dagman_components.networks import SASwinEncoder, make_encoder

__all__ = [
    "FEATURE_TYPES",
    "EncoderFeatures",
    "FeatureCollector",
    "OrganClusterer",
    "extract_features",
    "feature_evaluator",
    "save_organ_clusterer",
]

logger = logging.getLogger(__name__)

#: ``"cls"``: (B, 8F) [CLS] token of the SA module (DAGMaN/SMART); ``"pooled"``: (B, 16F) average-pooled
#: last stage (SMIT, and any encoder without SA).
FEATURE_TYPES: tuple[str, ...] = ("cls", "pooled")


class EncoderFeatures(nn.Module):
    """An encoder whose output is one feature vector per image: ``forward(x) -> (B, C)``.

    Args:
        encoder: a :py:class:`~dagman_components.networks.SASwinEncoder`, a path to an encoder file (weights and
            architecture), or a mapping of ``SASwinEncoder`` arguments (random initialisation); see
            :py:func:`~dagman_components.networks.make_encoder`.
        feature: one of :py:data:`FEATURE_TYPES`. Default "cls" (papers' choice for DAGMaN/SMART).
        encoder_args: the architecture of a bare state dict at ``encoder`` (older files).

    Raises:
        ValueError: an unknown ``feature``, or ``"cls"`` with an encoder without semantic attention.
    """

    def __init__(
        self,
        encoder: SASwinEncoder | str | Path | Mapping[str, Any],
        feature: str = "cls",
        encoder_args: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if feature not in FEATURE_TYPES:
            raise ValueError(f"feature must be one of {FEATURE_TYPES}, got '{feature}'.")
        encoder = make_encoder(encoder, encoder_args)
        if feature == "cls" and getattr(encoder, "semantic_attention", None) is None:
            raise ValueError("feature 'cls' needs an encoder with semantic attention (use_semantic_attention=True); "
                             "use feature 'pooled' for a plain Swin (SMIT).")
        self.encoder = encoder
        self.feature = feature

    @property
    def out_channels(self) -> int:
        """Length of the feature vector: 8F for "cls" at ``sa_stage=3``, 16F for "pooled"."""
        return self.encoder.sa_dim if self.feature == "cls" else self.encoder.out_dim

    def load_pretrained(self, path: str | Path, strict: bool = True) -> EncoderFeatures:
        """Load the encoder weights the pretrain bundle writes (``models/model.pt``); errors name file and keys."""
        self.encoder.load_pretrained(path, strict=strict)
        logger.info(f"loaded pretrained encoder weights from '{path}'")
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) images, sizes multiples of 32 -> (B, C) features (float32)."""
        out = self.encoder(x)
        return (out.cls if self.feature == "cls" else out.pooled).float()


class FeatureCollector:
    """Ignite handler that gathers each iteration's ``pred`` (B, C) and ``label`` (B,) of an evaluator.

    Attach it to an evaluator built with ``decollate=False`` (the output is then one batch dict). It
    resets at every run's start; after the run, :py:attr:`features` is (N, C) float32 and
    :py:attr:`labels` (N,) int64, in dataloader order. Logs progress every ``log_every`` iterations.
    """

    def __init__(self, log_every: int = 10) -> None:
        self.log_every = max(1, int(log_every))
        self._features: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)

    def reset(self, engine: Engine | None = None) -> None:
        self._features, self._labels = [], []

    def collect(self, engine: Engine) -> None:
        output = engine.state.output
        if not isinstance(output, dict) or CommonKeys.PRED not in output:
            raise ValueError("FeatureCollector needs an evaluator with decollate=False, whose output is a dict "
                             f"with '{CommonKeys.PRED}'.")
        pred = output[CommonKeys.PRED]
        label = output.get(CommonKeys.LABEL)
        if label is None:
            raise ValueError(f"batch {engine.state.iteration} has no '{CommonKeys.LABEL}': every item needs a "
                             "class label for the clustering analysis.")
        pred = pred.detach().float().cpu().numpy()
        label = torch.as_tensor(label).detach().cpu().numpy().reshape(-1).astype(np.int64)
        if pred.ndim != 2 or len(pred) != len(label):
            raise ValueError(f"expected features (B, C) and labels (B,), got {pred.shape} and {label.shape}.")
        self._features.append(pred)
        self._labels.append(label)
        iteration, total = engine.state.iteration, engine.state.epoch_length
        if iteration % self.log_every == 0 or iteration == total:
            logger.info(f"features: batch {iteration}/{total}, {sum(len(f) for f in self._features)} images")

    @property
    def features(self) -> np.ndarray:
        """(N, C) float32 features gathered so far."""
        if not self._features:
            raise RuntimeError("no features collected: run the evaluator first.")
        return np.concatenate(self._features)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 labels gathered so far."""
        if not self._labels:
            raise RuntimeError("no labels collected: run the evaluator first.")
        return np.concatenate(self._labels)


def feature_evaluator(
    network: nn.Module,
    dataloader: Iterable,
    device: torch.device | str = "cpu",
    collector: FeatureCollector | None = None,
    amp: bool = False,
    handlers: Sequence[Any] | None = None,
) -> SupervisedEvaluator:
    """
    A MONAI ``SupervisedEvaluator`` that runs ``network`` (eval mode, no grad) and feeds ``collector``.

    ``handlers`` are attached too (``collector`` once, whether or not it is among them), e.g. the
    ``MLFlowHandler`` that ``monai.bundle run --tracking mlflow`` appends to a bundle's ``handlers``.
    """
    val_handlers = [collector] if collector is not None else []
    val_handlers += [h for h in (handlers or []) if h is not None and h is not collector]
    return SupervisedEvaluator(
        device=torch.device(device),
        val_data_loader=dataloader,
        network=network,
        inferer=SimpleInferer(),
        amp=amp,
        decollate=False,
        val_handlers=val_handlers or None,
    )


def extract_features(
    network: nn.Module,
    dataloader: Iterable,
    device: torch.device | str = "cpu",
    amp: bool = False,
    log_every: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """
    Features and labels of every batch of ``dataloader``: batches are dicts with ``image`` (B, 1, D, H, W)
    and ``label`` (B,); ``network`` maps images to (B, C), e.g. :py:class:`EncoderFeatures`.

    Runs in MONAI's ``SupervisedEvaluator`` (``network.eval()``, ``torch.no_grad``, batches moved to
    ``device``; ``amp`` autocasts on GPU). Returns (N, C) float32 features and (N,) int64 labels.
    """
    collector = FeatureCollector(log_every=log_every)
    feature_evaluator(network.to(device), dataloader, device, collector, amp).run()
    return collector.features, collector.labels


class OrganClusterer(EncoderFeatures):
    """Nearest-centroid cluster assignment of organ volumes: ``forward(x) -> (B, K)`` scores.

    The score of cluster k is minus the Euclidean distance of the image's feature vector (of
    :py:class:`EncoderFeatures`, scaled as in the analysis) to the centroid of organ class k, so the
    argmax is the nearest centroid. The organ_clustering bundle's train run fits the centroids
    (:py:func:`save_organ_clusterer`); its ``models/model.pt`` is this module's state dict, which carries
    the centroids, the scaling and the cluster names (``class_names``).

    Args:
        encoder, feature, encoder_args: as :py:class:`EncoderFeatures`.
        feature_scaling: "none", "standardize" (``offset``/``scale`` buffers) or "l2". Default "none".
        num_clusters: K, the number of organ classes the centroids were fitted to. Default 1.
    """

    def __init__(
        self,
        encoder: SASwinEncoder | str | Path | Mapping[str, Any],
        feature: str = "cls",
        encoder_args: Mapping[str, Any] | None = None,
        feature_scaling: str = "none",
        num_clusters: int = 1,
    ) -> None:
        super().__init__(encoder, feature=feature, encoder_args=encoder_args)
        self._set_scaling(feature_scaling)
        channels = super().out_channels
        self.register_buffer("centroids", torch.zeros(int(num_clusters), channels))
        self.register_buffer("offset", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(channels))
        self.class_names = [str(k) for k in range(int(num_clusters))]

    def _set_scaling(self, feature_scaling: str) -> None:
        if feature_scaling not in ("none", "standardize", "l2"):
            raise ValueError(f"feature_scaling must be 'none', 'standardize' or 'l2', got '{feature_scaling}'.")
        self.feature_scaling = feature_scaling

    @property
    def feature_channels(self) -> int:
        """Length of the feature vector (C)."""
        return super().out_channels

    @property
    def out_channels(self) -> int:
        """Number of clusters (K)."""
        return int(self.centroids.shape[0])

    def set_clusters(self, centroids: torch.Tensor, class_names: Sequence[str], offset: torch.Tensor | None = None,
                     scale: torch.Tensor | None = None) -> OrganClusterer:
        """(K, C) centroids in the scaled feature space, their K names, and the standardisation (C,) if any."""
        centroids = torch.as_tensor(centroids, dtype=torch.float32)
        if centroids.ndim != 2 or centroids.shape[1] != self.feature_channels or len(class_names) != len(centroids):
            raise ValueError(f"centroids must be (K, {self.feature_channels}) with K names, got "
                             f"{tuple(centroids.shape)} and {len(class_names)} names.")
        device = self.offset.device
        self.centroids = centroids.to(device)
        if offset is not None:
            self.offset = torch.as_tensor(offset, dtype=torch.float32, device=device)
        if scale is not None:
            self.scale = torch.as_tensor(scale, dtype=torch.float32, device=device)
        self.class_names = [str(n) for n in class_names]
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = super().forward(x).float()
        if self.feature_scaling == "l2":
            features = torch.nn.functional.normalize(features, dim=1)
        elif self.feature_scaling == "standardize":
            features = (features - self.offset) / self.scale
        return -torch.cdist(features, self.centroids)

    def get_extra_state(self) -> dict[str, Any]:
        return {"class_names": list(self.class_names), "feature_scaling": self.feature_scaling}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._set_scaling(state["feature_scaling"])
        self.class_names = list(state["class_names"])


def save_organ_clusterer(
    network: EncoderFeatures,
    features: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    class_names: Mapping[int, str] | None = None,
    feature_scaling: str = "none",
) -> Path:
    """Fit the class centroids of (N, C) ``features`` and save an :py:class:`OrganClusterer` state dict at ``path``.

    Uses ``network``'s encoder and feature type; the centroids live in the ``feature_scaling`` space of the
    analysis (standardize: mean and std of ``features``, a zero std taken as 1).
    """
    from .clustering import class_centroids, scale_features

    features = np.asarray(features, dtype=np.float64)
    offset, scale = features.mean(axis=0), features.std(axis=0)
    scale[scale == 0] = 1.0
    classes, centroids = class_centroids(scale_features(features, feature_scaling), labels)
    names = {int(k): v for k, v in (class_names or {}).items()}
    clusterer = OrganClusterer(network.encoder, feature=network.feature, feature_scaling=feature_scaling)
    clusterer.set_clusters(torch.from_numpy(centroids), [names.get(int(c), str(c)) for c in classes],
                           offset=torch.from_numpy(offset) if feature_scaling == "standardize" else None,
                           scale=torch.from_numpy(scale) if feature_scaling == "standardize" else None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(clusterer.state_dict(), path)
    logger.info(f"saved the nearest-centroid organ clusterer ({len(classes)} clusters) to '{path}'")
    return path
