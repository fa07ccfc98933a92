"""Attention head diversity of a pretrained encoder (DAGMaN Fig. 4a), per Swin stage and head.

For every attention head the statistics of Xie et al. (CVPR 2023, "Revealing the dark secrets of MIM")
are computed, with token positions in millimetres (docs/design.md, section 4):

- attention distance ``AD = mean_i sum_j A_ij ||p_i - p_j||``,
- attention entropy ``H = mean_i -sum_j A_ij log A_ij`` (nats),
- entropy of the attention distances: the per-query distances ``d_i = sum_j A_ij ||p_i - p_j||`` of a
  head are binned into a histogram with ``bins`` equal bins over ``[0, largest distance between two
  tokens of the window]`` and its Shannon entropy (nats) is taken **[choice]**: the papers plot
  "entropy of attention distances" per stage without giving the estimator. A head whose queries
  all look equally far has entropy 0; one whose queries range from local to far has a high entropy.

A "head" of a stage is every (block, head) pair of that stage (stage 3 of the default encoder has
8 blocks x 8 heads = 64); the papers' spread across heads is the variance of these values.

Swin attention is local: the hooks sit on MONAI's ``WindowAttention.softmax`` and see one (n x n)
matrix per window, so ``p_i`` are the positions of the tokens inside their window, spaced by the
block's token stride (``patch_size * 2**(stage-1)`` voxels) times the voxel spacing. This is exact
for shifted windows: MONAI's shift mask adds -100 before the softmax between tokens that are not
neighbours in the unshifted image, so their weights are ~e^-100, and tokens that may attend each
other keep their true relative offsets inside the rolled window. Tokens that MONAI adds as padding
(a grid not divisible by the window) are dropped as queries; as keys they stay, since the model
does attend to them. The semantic-attention (SA) blocks are global: their patch-to-patch attention
(the [CLS] column dropped and rows renormalised, as for SATT) is measured the same way over the
SA-stage grid.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import SwinTransformerBlock, WindowAttention, get_window_size, window_partition
from monai.utils import ensure_tuple_rep

from dagman_components.networks.sa_swin import SASwinEncoder

__all__ = [
    "AttentionHeadStatistics",
    "SwinAttentionStatistics",
    "attention_distance_and_entropy",
    "histogram_entropy",
    "compute_head_diversity",
    "plot_head_diversity",
    "run_head_diversity",
]

logger = logging.getLogger(__name__)

SA_STAGE_NAME = "SA"


def token_positions(grid: Sequence[int], spacing_mm: Sequence[float]) -> torch.Tensor:
    """Positions in mm, (n, 3), of the tokens of a ``grid`` in row-major order (as ``window_partition`` flattens)."""
    axes = [torch.arange(int(g), dtype=torch.float32) * float(s) for g, s in zip(grid, spacing_mm)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))


def attention_distance_and_entropy(attention: torch.Tensor, distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query attention distance and entropy.

    Args:
        attention: (..., n_query, n_key) softmax attention, rows summing to 1.
        distances: (n_query, n_key) distances between query and key positions (mm).

    Returns:
        ``(distance, entropy)``, each (..., n_query): ``sum_j A_ij d_ij`` and ``-sum_j A_ij log A_ij``
        (nats; ``0 log 0 = 0``).
    """
    attention = attention.float()
    distance = (attention * distances.to(attention.device)).sum(dim=-1)
    entropy = -torch.special.xlogy(attention, attention).sum(dim=-1)
    return distance, entropy


def histogram_entropy(counts: torch.Tensor | np.ndarray) -> float:
    """Shannon entropy (nats) of a histogram given as counts; 0.0 for an empty histogram."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts / total
    return float(-torch.special.xlogy(p, p).sum())


@dataclass
class AttentionHeadStatistics:
    """Running sums of one attention layer's per-head statistics over all queries seen.

    Attributes:
        stage: Swin stage 1..4, or ``"SA"`` for a semantic-attention block.
        block: index of the block within its stage.
        num_heads: heads of the layer.
        max_distance_mm: upper edge of the distance histogram (the largest token distance in a window).
        bins: histogram bins.
        token_spacing_mm: distance between neighbouring tokens per axis, in mm.
        window: window size in tokens (the whole SA grid for ``"SA"``).
        shifted: whether the block uses shifted windows.
    """

    stage: int | str
    block: int
    num_heads: int
    max_distance_mm: float
    bins: int
    token_spacing_mm: tuple[float, ...]
    window: tuple[int, ...]
    shifted: bool = False
    calls: int = 0
    num_queries: int = 0
    distance_sum: torch.Tensor = field(default=None)  # type: ignore[assignment]
    entropy_sum: torch.Tensor = field(default=None)  # type: ignore[assignment]
    histogram: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.distance_sum = torch.zeros(self.num_heads, dtype=torch.float64)
        self.entropy_sum = torch.zeros(self.num_heads, dtype=torch.float64)
        self.histogram = torch.zeros(self.num_heads, self.bins, dtype=torch.float64)

    def update(self, distance: torch.Tensor, entropy: torch.Tensor) -> None:
        """Add per-query values, each (heads, n_queries) for the valid queries only."""
        distance, entropy = distance.detach().double().cpu(), entropy.detach().double().cpu()
        self.distance_sum += distance.sum(dim=1)
        self.entropy_sum += entropy.sum(dim=1)
        self.num_queries += distance.shape[1]
        # bin i covers [i, i+1) * width; the largest distance falls into the last bin
        width = self.max_distance_mm / self.bins if self.max_distance_mm > 0 else 1.0
        index = (distance / width).floor().long().clamp_(0, self.bins - 1)
        index = index + torch.arange(self.num_heads).unsqueeze(1) * self.bins
        self.histogram += torch.bincount(index.flatten(), minlength=self.num_heads * self.bins).reshape(
            self.num_heads, self.bins
        ).double()

    def per_head(self) -> list[dict[str, float]]:
        """Per head: ``attention_distance_mm``, ``attention_entropy``, ``distance_entropy`` (nats)."""
        n = max(self.num_queries, 1)
        return [
            {
                "head": h,
                "attention_distance_mm": float(self.distance_sum[h] / n),
                "attention_entropy": float(self.entropy_sum[h] / n),
                "distance_entropy": histogram_entropy(self.histogram[h]),
            }
            for h in range(self.num_heads)
        ]


def _valid_query_mask(
    grid: Sequence[int], window: Sequence[int], shift: Sequence[int], device: torch.device
) -> torch.Tensor:
    """(num_windows, n) True where a window's token is a real token, not MONAI's padding; same order as the block."""
    ones = torch.ones(1, *grid, 1, device=device)
    pads = [(w - g % w) % w for g, w in zip(grid, window)]
    padded = F.pad(ones, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
    if any(s > 0 for s in shift):
        padded = torch.roll(padded, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    return window_partition(padded, window).squeeze(-1) > 0


class SwinAttentionStatistics:
    """Context manager that hooks an :class:`SASwinEncoder` and accumulates per-head attention statistics.

    On entry, forward hooks go on every Swin block's ``attn.softmax`` (with a pre-hook on the block
    for its grid and shift) and on every SA block; MONAI's SDPA path, which bypasses the softmax
    module, is switched off and restored on exit, and the hooks make the encoder's fast forward
    (``swin_forward="fast"``) run MONAI's own forward for every hooked stage. Run the encoder in eval mode under ``torch.no_grad()``
    (gradient-checkpoint recomputation would fire the hooks twice).

    Args:
        encoder: the encoder (not DDP-wrapped).
        voxel_spacing: voxel size of the encoder input in mm, one value or one per axis. Default 2.0
            (the papers' resampling).
        bins: bins of the distance histograms. Default 32 **[choice]**.
        include_semantic_attention: also measure the SA blocks. Default True.

    Attributes:
        layers: one :class:`AttentionHeadStatistics` per hooked block, keyed ``(stage, block)``.
        maps_captured: number of attention matrices (one per block call) seen so far.
    """

    def __init__(
        self,
        encoder: SASwinEncoder,
        voxel_spacing: float | Sequence[float] = 2.0,
        bins: int = 32,
        include_semantic_attention: bool = True,
    ) -> None:
        if not isinstance(encoder, SASwinEncoder):
            raise TypeError(f"SwinAttentionStatistics needs an SASwinEncoder, got {type(encoder).__name__}.")
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}.")
        self.encoder = encoder
        self.voxel_spacing = tuple(float(s) for s in ensure_tuple_rep(voxel_spacing, 3))
        self.bins = bins
        self.include_semantic_attention = include_semantic_attention and encoder.semantic_attention is not None
        self.layers: dict[tuple[int | str, int], AttentionHeadStatistics] = {}
        self.maps_captured = 0
        self._input_shape: tuple[int, ...] | None = None
        self._block_context: dict[int, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
        self._handles: list[Any] = []
        self._flash: dict[WindowAttention, bool] = {}

    def _swin_blocks(self) -> Iterable[tuple[int, int, SwinTransformerBlock]]:
        swin = self.encoder.swinViT
        for stage, layer in enumerate((swin.layers1, swin.layers2, swin.layers3, swin.layers4), start=1):
            for index, block in enumerate(layer[0].blocks):
                yield stage, index, block

    def __enter__(self) -> SwinAttentionStatistics:
        self._handles.append(self.encoder.register_forward_pre_hook(self._record_input))
        for stage, index, block in self._swin_blocks():
            self._flash[block.attn] = bool(getattr(block.attn, "use_flash_attention", False))
            block.attn.use_flash_attention = False
            self._handles.append(block.register_forward_pre_hook(self._block_pre_hook(block)))
            self._handles.append(block.attn.softmax.register_forward_hook(self._softmax_hook(stage, index, block)))
        if self.include_semantic_attention:
            for index, sa_block in enumerate(self.encoder.semantic_attention.blocks):
                self._handles.append(sa_block.register_forward_hook(self._sa_hook(index)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for attn, flash in self._flash.items():
            attn.use_flash_attention = flash
        self._flash.clear()

    def _record_input(self, module: nn.Module, args: tuple) -> None:
        self._input_shape = tuple(int(s) for s in args[0].shape[2:])

    def _token_spacing(self, grid: Sequence[int]) -> tuple[float, ...]:
        if self._input_shape is None:
            raise RuntimeError("the encoder input shape is unknown: run the encoder itself, not its submodules.")
        return tuple(sp * (i // g) for sp, i, g in zip(self.voxel_spacing, self._input_shape, grid))

    def _block_pre_hook(self, block: SwinTransformerBlock):
        def hook(module: nn.Module, args: tuple) -> None:
            grid = tuple(int(s) for s in args[0].shape[1:4])  # blocks run on (B, D, H, W, C)
            window, shift = get_window_size(grid, block.window_size, block.shift_size)
            self._block_context[id(block)] = (grid, tuple(window), tuple(shift))

        return hook

    def _layer(self, key: tuple[int | str, int], heads: int, window: Sequence[int], spacing: Sequence[float],
               shifted: bool) -> AttentionHeadStatistics:
        positions = token_positions(window, spacing)
        max_distance = float(torch.cdist(positions, positions).max())
        layer = self.layers.get(key)
        if layer is None or layer.window != tuple(window):
            if layer is not None:
                raise ValueError(
                    f"block {key} saw windows {layer.window} and {tuple(window)}: use one input size per analysis "
                    "(small inputs shrink MONAI's windows at the last stage)."
                )
            layer = AttentionHeadStatistics(key[0], key[1], heads, max_distance, self.bins, tuple(spacing),
                                            tuple(window), shifted)
            self.layers[key] = layer
        return layer

    def _softmax_hook(self, stage: int, index: int, block: SwinTransformerBlock):
        def hook(module: nn.Module, args: tuple, attention: torch.Tensor) -> None:
            grid, window, shift = self._block_context[id(block)]
            spacing = self._token_spacing(grid)
            shifted = any(s > 0 for s in shift)
            layer = self._layer((stage, index), attention.shape[1], window, spacing, shifted)
            positions = token_positions(window, spacing).to(attention.device)
            distance, entropy = attention_distance_and_entropy(attention, torch.cdist(positions, positions))
            valid = _valid_query_mask(grid, window, shift, attention.device)  # (nW, n)
            num_windows, n = valid.shape
            heads = attention.shape[1]
            # (B*nW, heads, n) -> (heads, B*nW*n) restricted to real tokens
            keep = valid.repeat(attention.shape[0] // num_windows, 1).flatten()
            distance = distance.permute(1, 0, 2).reshape(heads, -1)[:, keep]
            entropy = entropy.permute(1, 0, 2).reshape(heads, -1)[:, keep]
            layer.update(distance, entropy)
            layer.calls += 1
            self.maps_captured += 1

        return hook

    def _sa_hook(self, index: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            attention = module.attention[:, :, 1:, 1:].float()  # patch queries and keys, [CLS] dropped
            attention = attention / attention.sum(dim=-1, keepdim=True).clamp_min(1e-12)
            grid = self.encoder.grid_size(self._input_shape)
            spacing = self._token_spacing(grid)
            layer = self._layer((SA_STAGE_NAME, index), attention.shape[1], grid, spacing, False)
            positions = token_positions(grid, spacing).to(attention.device)
            distance, entropy = attention_distance_and_entropy(attention, torch.cdist(positions, positions))
            layer.update(distance.permute(1, 0, 2).flatten(1), entropy.permute(1, 0, 2).flatten(1))
            layer.calls += 1
            self.maps_captured += 1

        return hook

    def summary(self) -> dict[str, Any]:
        """Per stage: settings, per (block, head) values, and mean / std / variance across them.

        Also ``distance_entropy_pooled``: the entropy of the stage's histogram summed over all its heads.
        """
        stages: list[dict[str, Any]] = []
        for stage in (1, 2, 3, 4, SA_STAGE_NAME):
            layers = [layer for (s, _), layer in sorted(self.layers.items(), key=lambda kv: kv[0][1]) if s == stage]
            if not layers:
                continue
            heads = [dict(block=layer.block, shifted=layer.shifted, **h) for layer in layers for h in layer.per_head()]
            entry: dict[str, Any] = {
                "stage": stage,
                "token_spacing_mm": list(layers[0].token_spacing_mm),
                "window": list(layers[0].window),
                "max_distance_mm": layers[0].max_distance_mm,
                "num_heads": len(heads),
                "num_queries_per_head": layers[0].num_queries,
                "distance_entropy_pooled": histogram_entropy(sum(layer.histogram.sum(dim=0) for layer in layers)),
                "heads": heads,
            }
            for name in ("attention_distance_mm", "attention_entropy", "distance_entropy"):
                values = np.array([h[name] for h in heads])
                entry[name] = {"mean": float(values.mean()), "std": float(values.std()), "var": float(values.var())}
            stages.append(entry)
        return {"voxel_spacing_mm": list(self.voxel_spacing), "histogram_bins": self.bins, "stages": stages}


def compute_head_diversity(
    encoder: SASwinEncoder,
    volumes: Iterable[torch.Tensor | Mapping[str, Any]],
    voxel_spacing: float | Sequence[float] = 2.0,
    bins: int = 32,
    image_key: str = "image",
    include_semantic_attention: bool = True,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Attention head diversity of ``encoder`` over ``volumes`` (DAGMaN Fig. 4a).

    Args:
        encoder: a (pretrained) :class:`SASwinEncoder`; put in eval mode here.
        volumes: batches (B, 1, D, H, W), or dicts holding them under ``image_key`` (a MONAI
            ``DataLoader``); every batch the same spatial size, a multiple of ``encoder.min_input_multiple``.
        voxel_spacing: input voxel size in mm (2.0: the papers' resampling).
        bins: distance-histogram bins (32) **[choice]**.
        image_key: key of the image in dict batches ("image").
        include_semantic_attention: also report the SA blocks' heads (True).
        device: where to run; None keeps the encoder's device.

    Returns:
        :meth:`SwinAttentionStatistics.summary` plus ``num_volumes``, ``input_shape`` and ``maps_captured``.
    """
    encoder.eval()
    device = next(encoder.parameters()).device if device is None else torch.device(device)
    encoder.to(device)
    num_volumes, input_shape = 0, None
    with SwinAttentionStatistics(encoder, voxel_spacing, bins, include_semantic_attention) as stats, torch.no_grad():
        for batch in volumes:
            image = batch[image_key] if isinstance(batch, Mapping) else batch
            image = torch.as_tensor(image).to(device)
            encoder(image)
            num_volumes += image.shape[0]
            input_shape = list(image.shape[2:])
    if num_volumes == 0:
        raise ValueError("compute_head_diversity got no volumes.")
    result = stats.summary()
    result.update(num_volumes=num_volumes, input_shape=input_shape, maps_captured=stats.maps_captured)
    return result


def plot_head_diversity(results: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Box plots per stage of the per-head values, one colour per encoder (DAGMaN Fig. 4a layout).

    Args:
        results: ``{name: compute_head_diversity(...)}``; several names compare encoders side by side.
        path: output PNG.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state, works headless

    panels = (
        ("distance_entropy", "entropy of attention distances (nats)"),
        ("attention_distance_mm", "attention distance (mm)"),
        ("attention_entropy", "attention entropy (nats)"),
    )
    stage_names = []
    for result in results.values():
        for entry in result["stages"]:
            if str(entry["stage"]) not in stage_names:
                stage_names.append(str(entry["stage"]))
    fig = Figure(figsize=(4.2 * len(panels), 3.6), constrained_layout=True)
    axes = fig.subplots(1, len(panels))
    width = 0.8 / max(len(results), 1)
    colors = [f"C{i}" for i in range(len(results))]
    for ax, (metric, label) in zip(axes, panels):
        for k, (name, result) in enumerate(results.items()):
            by_stage = {str(e["stage"]): [h[metric] for h in e["heads"]] for e in result["stages"]}
            xs = [i - 0.4 + width * (k + 0.5) for i, s in enumerate(stage_names) if s in by_stage]
            data = [by_stage[s] for s in stage_names if s in by_stage]
            box = ax.boxplot(data, positions=xs, widths=width * 0.9, patch_artist=True, manage_ticks=False)
            for patch in box["boxes"]:
                patch.set_facecolor(colors[k])
                patch.set_alpha(0.6)
            box["boxes"][0].set_label(name)
        ax.set_xticks(range(len(stage_names)))
        ax.set_xticklabels([s if s == SA_STAGE_NAME else f"stage {s}" for s in stage_names])
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="best", fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def run_head_diversity(
    encoder: SASwinEncoder,
    dataloader: Iterable[Mapping[str, Any]],
    output_dir: str | Path,
    name: str = "encoder",
    voxel_spacing: float | Sequence[float] = 2.0,
    bins: int = 32,
    compare_with: Mapping[str, str | Path] | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Bundle entry point: compute, then write ``head_diversity.json`` and ``head_diversity.png`` to ``output_dir``.

    Args:
        encoder: the encoder to analyse.
        dataloader: batches of preprocessed volumes under ``"image"``.
        output_dir: output folder (created).
        name: label of this encoder in the JSON and the plot.
        voxel_spacing, bins, device: see :func:`compute_head_diversity`.
        compare_with: ``{label: path of an earlier head_diversity.json}`` drawn beside this encoder
            (e.g. SMIT, SA only, NT only, DAGMaN as in the paper's figure).
    """
    result = compute_head_diversity(encoder, dataloader, voxel_spacing=voxel_spacing, bins=bins, device=device)
    result["name"] = name
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "head_diversity.json").write_text(json.dumps(result, indent=2) + "\n")
    to_plot: dict[str, Mapping[str, Any]] = {}
    for label, other in (compare_with or {}).items():
        other = Path(other)
        if not other.is_file():
            raise FileNotFoundError(f"compare_with['{label}']: head-diversity JSON '{other}' does not exist.")
        to_plot[label] = json.loads(other.read_text())
    to_plot[name] = result
    plot_head_diversity(to_plot, output_dir / "head_diversity.png")
    for entry in result["stages"]:
        de = entry["distance_entropy"]
        logger.info(
            f"stage {entry['stage']}: {entry['num_heads']} heads, attention distance "
            f"{entry['attention_distance_mm']['mean']:.1f} mm, attention entropy {entry['attention_entropy']['mean']:.3f}, "
            f"distance entropy {de['mean']:.3f} (variance across heads {de['var']:.4f})"
        )
    return result
