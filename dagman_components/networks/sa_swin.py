"""``SASwinEncoder``: MONAI's 3D ``SwinTransformer`` with a learnable mask token and a semantic attention stage.

Architecture defaults are the papers' (DAGMaN appendix, SMART sec. IV-C; SMIT's 128^3 config):
``feature_size=48``, ``patch_size=2``, ``window_size=4``, ``depths=(2, 2, 8, 2)``,
``num_heads=(4, 4, 8, 16)``, ``qkv_bias=True``, ``patch_norm=True``. The Swin weights live in the
attribute ``swinViT`` with MONAI's key names, so ``swinViT.*`` loads unchanged into
``monai.networks.nets.SwinUNETR`` (see :func:`swin_unetr_state_dict`). The stages run MONAI's modules
through :mod:`dagman_components.networks.fast_swin` by default (``swin_forward="fast"``): same weights and,
within float rounding, the same results as MONAI's forward, in a third to a half of its time on a CPU.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import SwinTransformer

from dagman_components.masking import upsample_token_mask
from dagman_components.networks.fast_swin import swin_stage, swin_stage_with_uniform_tokens
from dagman_components.networks.semantic_attention import SemanticAttention
from dagman_components.options import as_bool

__all__ = [
    "ARCHITECTURE_ARGS",
    "BUNDLE_ENCODER_ARGS",
    "ENCODER_FILE_FORMAT",
    "EncoderOutput",
    "SASwinEncoder",
    "SWIN_FORWARDS",
    "encoder_args_with_defaults",
    "encoder_checkpoint",
    "encoder_source",
    "load_encoder_state_dict",
    "make_encoder",
    "package_version",
    "read_encoder_file",
    "save_encoder",
    "state_dict_differences",
    "swin_unetr_state_dict",
]

#: how the Swin stages run: ``"fast"`` (:mod:`dagman_components.networks.fast_swin`: window-ordered
#: residual stream, fused or cache-sized window attention) or ``"monai"`` (MONAI's ``BasicLayer.forward``)
SWIN_FORWARDS = ("fast", "monai")

#: the constructor arguments that fix an encoder's weights and forward: stored in its checkpoint
#: (:func:`encoder_checkpoint`), read back by :meth:`SASwinEncoder.from_pretrained`
ARCHITECTURE_ARGS: tuple[str, ...] = (
    "in_channels", "feature_size", "patch_size", "window_size", "depths", "num_heads", "mlp_ratio", "qkv_bias",
    "sa_stage", "use_semantic_attention", "sa_depth", "sa_num_heads", "sa_layer_scale_init", "sa_inline",
)
#: the other constructor arguments (training and speed options): not stored, each user sets its own
RUNTIME_OPTIONS: tuple[str, ...] = (
    "drop_path_rate", "use_checkpoint", "swin_forward", "compile_stages", "channels_last", "skip_mask_windows",
)
#: the ``"format"`` entry of a self-describing encoder file
ENCODER_FILE_FORMAT = "dagman-encoder"
#: what a downstream bundle builds with ``--pretrained false`` (from scratch) and the probe's default architecture:
#: the pretrain bundle's default encoder (``configs/train.yaml``: ``feature_size`` 12 [small]; every other
#: argument :class:`SASwinEncoder`'s default, the papers')
BUNDLE_ENCODER_ARGS: dict[str, Any] = {"feature_size": 12}


@dataclass
class EncoderOutput:
    """Everything a pretraining loss or a downstream head needs from one forward.

    Attributes:
        hidden_states: the five layer-normalised maps of MONAI's ``SwinTransformer``, x0..x4, with
            channels F, 2F, 4F, 8F, 16F and strides 2, 4, 8, 16, 32 (F = ``feature_size``); with the
            fast forward they are channels-last views (``torch.channels_last_3d`` strides), not contiguous.
        tokens: (B, N, C) tokens of the SA stage, before the SA blocks (layer-normalised stage output).
        sa_tokens: (B, N, C) patch tokens after the SA blocks, or None without SA.
        cls: (B, C) [CLS] token of the SA module, or None without SA.
        satt: (B, N) head-averaged [CLS] attention, rows sum to 1, or None without SA.
        head_attention: (B, heads, N) per-head [CLS] attention, or None without SA.
        pooled: (B, 16F) average-pooled last stage.
        grid_size: the SA-stage token grid per input axis, N = prod(grid_size) (tokens in row-major order).
        premerge_tokens: (B, 8N, C/2) layer-normalised tokens of the SA stage *before* its patch merging
            (stride ``token_stride / 2``; SMART sec. III-C computes AMPD there), on the grid
            ``2 * grid_size``, row-major; None unless the forward was asked for them.
    """

    hidden_states: list[torch.Tensor]
    tokens: torch.Tensor
    sa_tokens: torch.Tensor | None
    cls: torch.Tensor | None
    satt: torch.Tensor | None
    head_attention: torch.Tensor | None
    pooled: torch.Tensor
    grid_size: tuple[int, int, int]
    premerge_tokens: torch.Tensor | None = None

    def attention_volume(self, spatial_size: Sequence[int], per_head: bool = False) -> torch.Tensor:
        """SATT as an image aligned with the encoder's input (the papers' explanation / localization map).

        Args:
            spatial_size: (H, W, D) of the encoder input.
            per_head: False gives the head-averaged map (B, 1, H, W, D); True the per-head maps
                (B, heads, H, W, D).

        Each SA-stage token covers a block of ``stride`` voxels per axis; trilinear upsampling with
        ``align_corners=False`` puts each token's value at its block centre, so the map stays aligned.
        Raises ValueError when the encoder has no SA module (SMIT: no [CLS], no SATT).
        """
        attention = self.head_attention if per_head else (None if self.satt is None else self.satt.unsqueeze(1))
        if attention is None:
            raise ValueError("this encoder has no semantic attention (use_semantic_attention=False): no SATT map")
        grid = attention.reshape(*attention.shape[:2], *self.grid_size)
        return F.interpolate(grid.float(), size=tuple(int(s) for s in spatial_size), mode="trilinear", align_corners=False)


class SASwinEncoder(nn.Module):
    """Swin encoder with semantic attention at stage ``sa_stage`` and a mask token at the patch embedding.

    Args:
        in_channels: image channels (1 for CT).
        feature_size: Swin embedding dimension F (48, papers). Must be divisible by 12 as in SwinUNETR.
        patch_size: patch embedding size (2).
        window_size: Swin window size (4).
        depths: Swin blocks per stage ((2, 2, 8, 2)).
        num_heads: Swin heads per stage ((4, 4, 8, 16)).
        mlp_ratio: MLP ratio (4.0).
        qkv_bias: qkv bias (True).
        drop_path_rate: stochastic depth (0.1 for the student, papers; the EMA teacher runs in eval mode).
        sa_stage: stage 1..4 whose output feeds the SA module (3, papers; Table V ablation).
        use_semantic_attention: False gives a plain Swin (SMIT): no [CLS], no SATT.
        sa_depth: ViT blocks in the SA module (2).
        sa_num_heads: SA heads; None uses the Swin stage's heads **[choice]**.
        sa_layer_scale_init: LayerScale init in the SA blocks (0.1) **[choice]**.
        sa_inline: True: the SA patch tokens replace the stage output that feeds the next stage
            (the SA module is "inserted into" stage 3, SMART sec. III-B) **[choice]**; False: SA is a
            side branch and the Swin path is exactly MONAI's.
        use_checkpoint: gradient checkpointing in the Swin blocks (MONAI's option).
        swin_forward: ``"fast"`` (default) or ``"monai"``, see :data:`SWIN_FORWARDS`. Same parameters
            and, up to float rounding, the same outputs and gradients; stages whose blocks carry
            forward hooks run MONAI's forward either way.
        compile_stages: run the fast forward's stages through ``torch.compile`` (off: measured, the
            first step compiles for minutes on a CPU for a few per cent per step; see the bundle README).
        channels_last: feed the patch embedding a ``channels_last_3d`` input, so that its output is
            already channels-last for the fast forward (off: no measurable gain; see the bundle README).
        skip_mask_windows: in the fast forward of a masked input, compute the windows that hold only
            mask tokens once per sample up to the SA stage
            (:func:`~dagman_components.networks.fast_swin.swin_stage_with_uniform_tokens`; same outputs and
            gradients up to float rounding). On by default; off for the compiled stages.
    """

    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        patch_size: int = 2,
        window_size: int = 4,
        depths: Sequence[int] = (2, 2, 8, 2),
        num_heads: Sequence[int] = (4, 4, 8, 16),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        sa_stage: int = 3,
        use_semantic_attention: bool = True,
        sa_depth: int = 2,
        sa_num_heads: int | None = None,
        sa_layer_scale_init: float = 0.1,
        sa_inline: bool = True,
        use_checkpoint: bool = False,
        swin_forward: str = "fast",
        compile_stages: bool = False,
        channels_last: bool = False,
        skip_mask_windows: bool = True,
    ) -> None:
        super().__init__()
        # flags may arrive as "false" strings from `monai.bundle run --key false`
        use_semantic_attention = as_bool(use_semantic_attention, "use_semantic_attention")
        sa_inline = as_bool(sa_inline, "sa_inline")
        use_checkpoint = as_bool(use_checkpoint, "use_checkpoint")
        self.compile_stages = as_bool(compile_stages, "compile_stages")
        self.channels_last = as_bool(channels_last, "channels_last")
        self.skip_mask_windows = as_bool(skip_mask_windows, "skip_mask_windows")
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"depths and num_heads need 4 stages, got depths={depths}, num_heads={num_heads}.")
        if sa_stage not in (1, 2, 3, 4):
            raise ValueError(f"sa_stage must be 1, 2, 3 or 4, got {sa_stage}.")
        if swin_forward not in SWIN_FORWARDS:
            raise ValueError(f"swin_forward must be one of {SWIN_FORWARDS}, got {swin_forward!r}.")
        if feature_size % 12 != 0:
            raise ValueError(f"feature_size must be divisible by 12 (as in MONAI SwinUNETR), got {feature_size}.")
        #: the architecture arguments (:data:`ARCHITECTURE_ARGS`), as :func:`encoder_checkpoint` stores them
        self.encoder_args: dict[str, Any] = _plain_args(
            in_channels=in_channels, feature_size=feature_size, patch_size=patch_size, window_size=window_size,
            depths=depths, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, sa_stage=sa_stage,
            use_semantic_attention=use_semantic_attention, sa_depth=sa_depth, sa_num_heads=sa_num_heads,
            sa_layer_scale_init=sa_layer_scale_init, sa_inline=sa_inline,
        )
        self.in_channels = in_channels
        self.feature_size = feature_size
        self.patch_size = patch_size
        self.sa_stage = sa_stage
        self.sa_inline = sa_inline
        self.swin_forward = swin_forward
        self.swinViT = SwinTransformer(
            in_chans=in_channels,
            embed_dim=feature_size,
            window_size=(window_size,) * 3,
            patch_size=(patch_size,) * 3,
            depths=depths,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
            patch_norm=True,
            use_checkpoint=use_checkpoint,
            spatial_dims=3,
        )
        # zero-initialised like SMIT/SimMIM, so an untrained mask token means "no information"
        self.mask_token = nn.Parameter(torch.zeros(1, feature_size, 1, 1, 1))
        self.sa_dim = feature_size * 2**sa_stage
        self.out_dim = feature_size * 2**4
        self.semantic_attention: SemanticAttention | None = None
        if use_semantic_attention:
            self.semantic_attention = SemanticAttention(
                dim=self.sa_dim,
                num_heads=sa_num_heads or num_heads[sa_stage - 1],
                depth=sa_depth,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=drop_path_rate,
                layer_scale_init=sa_layer_scale_init,
            )

    @property
    def token_stride(self) -> int:
        """Voxels per SA-stage token along each axis (16 at ``sa_stage=3``, ``patch_size=2``)."""
        return self.patch_size * 2**self.sa_stage

    @property
    def min_input_multiple(self) -> int:
        """Every spatial size must be a multiple of this (32 with ``patch_size=2``)."""
        return self.patch_size * 2**4

    def grid_size(self, spatial_shape: Sequence[int]) -> tuple[int, int, int]:
        """SA-stage token grid (d, h, w) for an input of ``spatial_shape`` (D, H, W)."""
        self._check_input_shape(spatial_shape)
        return tuple(int(s) // self.token_stride for s in spatial_shape)  # type: ignore[return-value]

    def _check_input_shape(self, spatial_shape: Sequence[int]) -> None:
        m = self.min_input_multiple
        if len(spatial_shape) != 3 or any(int(s) % m for s in spatial_shape):
            raise ValueError(
                f"SASwinEncoder expects a 3D input whose sizes are multiples of {m}, got spatial shape "
                f"{tuple(int(s) for s in spatial_shape)}; crop or pad the image (e.g. roi_size 64, 96 or 128)."
            )

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_premerge: bool = False,
        stop_after_sa: bool = False,
    ) -> EncoderOutput:
        """Encode ``x`` (B, in_channels, D, H, W), replacing masked tokens by the mask token.

        Args:
            x: input volume, D, H, W multiples of ``min_input_multiple``.
            mask: (B, N) boolean on the SA-stage token grid, True = masked (replaced by the mask
                token after the patch embedding), or None.
            return_premerge: also return the SA stage's tokens before its patch merging
                (``EncoderOutput.premerge_tokens``).
            stop_after_sa: skip the stages after the SA stage (enough for SATT, [CLS] and ``tokens``);
                ``hidden_states`` then ends at the SA stage and ``pooled`` pools that stage.
        """
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"SASwinEncoder expects (B, {self.in_channels}, D, H, W), got {tuple(x.shape)}.")
        grid = self.grid_size(x.shape[2:])
        swin = self.swinViT
        x0 = swin.patch_embed(x.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else x)
        if mask is not None:
            n_tokens = grid[0] * grid[1] * grid[2]
            if mask.shape != (x.shape[0], n_tokens):
                raise ValueError(
                    f"mask must have shape (B, N) = ({x.shape[0]}, {n_tokens}) for the {grid} token grid, "
                    f"got {tuple(mask.shape)}."
                )
            weight = upsample_token_mask(mask, grid, self.token_stride // self.patch_size).unsqueeze(1).to(x0.dtype)
            x0 = x0 * (1.0 - weight) + self.mask_token.to(x0.dtype) * weight
        x_stage = swin.pos_drop(x0)
        # stage-1 tokens equal to the mask token (dropout off: pos_drop is MONAI's rate 0 by default)
        uniform = weight[:, 0] > 0.5 if self._skips_mask_windows(mask, swin.pos_drop) else None
        hidden_states = [self._normalized(x_stage)]
        sa_out = None
        premerge: list[torch.Tensor] = []
        for stage, layers in enumerate((swin.layers1, swin.layers2, swin.layers3, swin.layers4), start=1):
            if stage > self.sa_stage and stop_after_sa:
                break
            capture = return_premerge and stage == self.sa_stage and layers[0].downsample is not None
            # MONAI's BasicLayer merges patches inside its forward; its input (B, D, H, W, C) is the pre-merge map
            handle = (
                layers[0].downsample.register_forward_pre_hook(lambda _module, args: premerge.append(args[0]))
                if capture
                else None
            )
            try:
                if uniform is not None and stage <= self.sa_stage:
                    x_stage, uniform = self._run_stage_with_uniform_tokens(layers[0], x_stage, uniform)
                else:
                    x_stage = self._run_stage(layers[0], x_stage)
            finally:
                if handle is not None:
                    handle.remove()
            stage_map = self._normalized(x_stage)
            if stage == self.sa_stage:
                tokens = stage_map.flatten(2).transpose(1, 2)
                if self.semantic_attention is not None:
                    sa_out = self.semantic_attention(x_stage)
                    if self.sa_inline:
                        x_stage = sa_out.features
                        stage_map = self._normalized(x_stage)
            hidden_states.append(stage_map)
        premerge_tokens = None
        if premerge:
            channels_last = premerge[0]
            premerge_tokens = F.layer_norm(channels_last, channels_last.shape[-1:]).flatten(1, 3)
        return EncoderOutput(
            hidden_states=hidden_states,
            premerge_tokens=premerge_tokens,
            tokens=tokens,
            sa_tokens=None if sa_out is None else sa_out.tokens,
            cls=None if sa_out is None else sa_out.cls,
            satt=None if sa_out is None else sa_out.satt,
            head_attention=None if sa_out is None else sa_out.head_attention,
            pooled=hidden_states[-1].flatten(2).mean(dim=-1),
            grid_size=grid,
        )

    def _use_monai_forward(self) -> bool:
        # a trace records the fast forward's reshapes with the traced batch size baked in; MONAI's stays
        # valid for other batch sizes, so exports (ckpt_export --use_trace) trace MONAI's forward
        return self.swin_forward == "monai" or torch.jit.is_tracing() or torch.jit.is_scripting()

    def _run_stage(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One MONAI ``BasicLayer`` on (B, C, D, H, W); the fast forward returns a channels-last view of the same shape."""
        if self._use_monai_forward():
            return layer(x.contiguous())
        stage = _compiled_swin_stage() if self.compile_stages else swin_stage
        return stage(layer, x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)

    def _skips_mask_windows(self, mask: torch.Tensor | None, pos_drop: nn.Module) -> bool:
        # compiled stages want static shapes; positional dropout would make the mask tokens differ
        dropout = isinstance(pos_drop, nn.Dropout) and pos_drop.p > 0 and pos_drop.training
        return (
            mask is not None and self.skip_mask_windows and not self.compile_stages
            and not self._use_monai_forward() and not dropout
        )

    def _run_stage_with_uniform_tokens(
        self, layer: nn.Module, x: torch.Tensor, uniform: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`_run_stage` computing windows of mask tokens once per sample; ``uniform`` (B, D, H, W) bool."""
        out, uniform = swin_stage_with_uniform_tokens(layer, x.permute(0, 2, 3, 4, 1), uniform)
        return out.permute(0, 4, 1, 2, 3), uniform

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        """MONAI's ``proj_out(x, normalize=True)``: layer norm over channels (no affine) of (B, C, D, H, W)."""
        if self._use_monai_forward():
            return self.swinViT.proj_out(x, normalize=True)
        # on a channels-last map both permutes are views: no copy (MONAI rearranges twice)
        channels_last = x.permute(0, 2, 3, 4, 1)
        return F.layer_norm(channels_last, channels_last.shape[-1:]).permute(0, 4, 1, 2, 3)

    def load_pretrained(self, path: str | Path, strict: bool = True) -> SASwinEncoder:
        """Load encoder weights written by the pretrain bundle (``models/model.pt``); see :func:`load_encoder_state_dict`."""
        load_encoder_state_dict(self, path, strict=strict)
        return self

    @classmethod
    def from_pretrained(cls, path: str | Path, strict: bool = True, **kwargs: Any) -> SASwinEncoder:
        """The encoder a checkpoint describes, with its weights loaded (strictly by default).

        Args:
            path: an encoder file the pretrain bundle writes (``models/model.pt``, ``model_epoch<E>.pt``):
                weights and architecture (:func:`encoder_checkpoint`); or a bare state dict (older files,
                ``SASwinEncoder(...).state_dict()``), whose architecture ``kwargs`` must then give.
            strict: every key and shape must match (see :func:`load_encoder_state_dict`).
            kwargs: constructor arguments. Training and speed options (:data:`RUNTIME_OPTIONS`, e.g.
                ``drop_path_rate=0.1``, ``use_checkpoint=True``) apply as given; an architecture argument
                (:data:`ARCHITECTURE_ARGS`) must equal the file's, or, for a bare state dict, is its architecture.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file cannot be read; a bare state dict and no architecture argument; an architecture
                argument that contradicts the file; weights that do not fit (each message names the file).
        """
        return _from_file(path, kwargs, strict)


@functools.lru_cache(maxsize=1)
def _compiled_swin_stage():
    """One compiled ``swin_stage`` shared by every encoder (student and teacher share the compiled graphs)."""
    return torch.compile(swin_stage, dynamic=False)


#: what to tell a user whose pretrained encoder file is missing
PRETRAINED_HINT = (
    "Run bundles/pretrain first (python -m monai.bundle run --config_file bundles/pretrain/configs/train.yaml), "
    "point --pretrained_path to an encoder model.pt, or set --pretrained false (encoder from scratch)"
)


def _unwrap_state_dict(obj: object, path: str | Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("encoder", "model", "state_dict", "student"):
            if key in obj and isinstance(obj[key], dict):
                return _unwrap_state_dict(obj[key], path)
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            prefix = "module."
            return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in obj.items()}
    raise ValueError(f"{path}: not an encoder state dict (expected a dict of tensors, optionally under 'model').")


def state_dict_differences(own: Mapping[str, torch.Tensor], state: Mapping[str, object]) -> str | None:
    """What keeps ``state`` from loading into a module whose state dict is ``own``, or None if it loads.

    Returns one line with the counts and the first few names of the missing, unexpected and mis-shaped keys.
    """
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if hasattr(own[k], "shape") and getattr(state[k], "shape", None) != own[k].shape  # not: a module's extra state
    )
    if not (missing or unexpected or wrong_shape):
        return None

    def listed(keys: list[str]) -> str:
        return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "")

    return (
        f"{len(missing)} missing keys [{listed(missing)}]; {len(unexpected)} unexpected keys [{listed(unexpected)}]; "
        f"{len(wrong_shape)} shape mismatches [{listed(wrong_shape)}]"
    )


def package_version() -> str:
    """The installed ``dagman-components`` version ("unknown" when run from a source tree that is not installed)."""
    try:
        return importlib.metadata.version("dagman-components")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _plain_args(**args: Any) -> dict[str, Any]:
    """Architecture arguments as plain Python values (lists, not tuples; bools), so files and comparisons agree."""
    plain = {}
    for key, value in args.items():
        if key in ("depths", "num_heads"):
            value = [int(v) for v in value]
        elif key in ("use_semantic_attention", "sa_inline", "qkv_bias"):
            value = as_bool(value, key)
        elif key in ("in_channels", "feature_size", "patch_size", "window_size", "sa_stage", "sa_depth"):
            value = int(value)
        elif key in ("mlp_ratio", "sa_layer_scale_init"):
            value = float(value)
        elif key == "sa_num_heads" and value is not None:
            value = int(value)
        plain[key] = value
    return plain


def encoder_args_with_defaults(**overrides: Any) -> dict[str, Any]:
    """Every architecture argument (:data:`ARCHITECTURE_ARGS`): :class:`SASwinEncoder`'s defaults, updated by ``overrides``.

    ``overrides`` may hold runtime options (:data:`RUNTIME_OPTIONS`), which are left out; any other name is a ValueError.
    """
    unknown = sorted(set(overrides) - set(ARCHITECTURE_ARGS) - set(RUNTIME_OPTIONS))
    if unknown:
        raise ValueError(f"unknown encoder arguments {unknown}; SASwinEncoder takes {sorted(ARCHITECTURE_ARGS + RUNTIME_OPTIONS)}.")
    parameters = inspect.signature(SASwinEncoder.__init__).parameters
    args = {name: parameters[name].default for name in ARCHITECTURE_ARGS}
    args.update({k: v for k, v in overrides.items() if k in ARCHITECTURE_ARGS})
    return _plain_args(**args)


def encoder_checkpoint(encoder: nn.Module) -> dict[str, Any]:
    """The self-describing encoder file's content: weights (CPU), the architecture and the package version.

    ``{"format": "dagman-encoder", "format_version": 1, "package_version": ..., "encoder_args": {...},
    "state_dict": {...}}``; ``encoder_args`` are the :data:`ARCHITECTURE_ARGS` the encoder was built with
    (``SASwinEncoder.encoder_args``), so :meth:`SASwinEncoder.from_pretrained` rebuilds it without being told.
    A DDP wrapper is unwrapped.
    """
    encoder = getattr(encoder, "module", encoder)
    if not isinstance(encoder, SASwinEncoder):
        raise TypeError(f"encoder_checkpoint needs an SASwinEncoder, got {type(encoder).__name__}.")
    return {
        "format": ENCODER_FILE_FORMAT,
        "format_version": 1,
        "package_version": package_version(),
        "encoder_args": dict(encoder.encoder_args),
        "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
    }


def save_encoder(encoder: nn.Module, path: str | Path) -> Path:
    """Write :func:`encoder_checkpoint` of ``encoder`` to ``path`` (through a temporary file: never half-written).

    A module that is not an :class:`SASwinEncoder` has no architecture to record: its bare CPU state dict is written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    module = getattr(encoder, "module", encoder)
    content = (encoder_checkpoint(module) if isinstance(module, SASwinEncoder)
               else {k: v.detach().cpu() for k, v in module.state_dict().items()})
    torch.save(content, tmp)
    os.replace(tmp, path)
    return path


def read_encoder_file(path: str | Path) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    """``(encoder_args, state_dict)`` of an encoder file; ``encoder_args`` is None for a bare state dict.

    Accepts the self-describing file (:func:`encoder_checkpoint`) and bare state dicts: plain, or under
    ``"model"``/``"state_dict"``/``"encoder"``/``"student"``, with or without DDP's ``module.`` prefix.
    A missing file is a ``FileNotFoundError``, a truncated or non-torch file a ``ValueError``, both naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained encoder checkpoint not found: {path}; {PRETRAINED_HINT}.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError (zip), EOFError, UnpicklingError, ... naming no file
        raise ValueError(
            f"pretrained encoder checkpoint {path} cannot be read: truncated, corrupt or not a torch file "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}). {PRETRAINED_HINT}."
        ) from e
    if isinstance(loaded, Mapping) and loaded.get("format") == ENCODER_FILE_FORMAT:
        args = loaded.get("encoder_args")
        if not isinstance(args, Mapping):
            raise ValueError(f"{path}: a '{ENCODER_FILE_FORMAT}' file without its 'encoder_args' mapping.")
        # a newer version may store arguments this one does not know: they cannot be honoured, so say so
        unknown = sorted(set(args) - set(ARCHITECTURE_ARGS))
        if unknown:
            raise ValueError(
                f"{path} was written by dagman-components {loaded.get('package_version', '?')} with encoder "
                f"arguments this version ({package_version()}) does not know: {unknown}."
            )
        return encoder_args_with_defaults(**args), _unwrap_state_dict(loaded.get("state_dict"), path)
    return None, _unwrap_state_dict(loaded, path)


def _effective_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """What decides the forward: ``sa_num_heads`` resolved, the LayerScale init (overwritten by weights) dropped."""
    effective = dict(args)
    if effective.get("sa_num_heads") is None:
        effective["sa_num_heads"] = effective["num_heads"][effective["sa_stage"] - 1]
    effective.pop("sa_layer_scale_init", None)
    return effective


def _args_differences(file_args: Mapping[str, Any], own_args: Mapping[str, Any]) -> str | None:
    file_args, own_args = _effective_args(file_args), _effective_args(own_args)
    differ = [f"{k}={file_args[k]!r} vs {own_args[k]!r}" for k in file_args if own_args.get(k) != file_args[k]]
    return "; ".join(differ) if differ else None


def _load_state(
    encoder: SASwinEncoder, path: Path, file_args: Mapping[str, Any] | None, state: Mapping[str, torch.Tensor], strict: bool
) -> tuple[list[str], list[str]]:
    own = encoder.state_dict()
    differences = state_dict_differences(own, state)
    arg_differences = None if file_args is None else _args_differences(file_args, encoder.encoder_args)
    if strict and (differences or arg_differences):
        raise ValueError(
            f"{path} does not match the encoder architecture: "
            + (f"the file's encoder has {arg_differences} (file vs this encoder)" if arg_differences else "")
            + ("; " if arg_differences and differences else "")
            + (differences or "")
            + ". Build the encoder from the file (SASwinEncoder.from_pretrained), or check feature_size, depths, "
            "num_heads, sa_stage and use_semantic_attention against the pretraining config."
        )
    loadable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    encoder.load_state_dict(loadable, strict=False)
    return sorted(set(own) - set(state)), sorted(set(state) - set(own))


def load_encoder_state_dict(encoder: nn.Module, path: str | Path, strict: bool = True) -> tuple[list[str], list[str]]:
    """Load the encoder file ``path`` (:func:`read_encoder_file`) into ``encoder`` on CPU and report mismatches by name.

    With ``strict`` any missing, unexpected or wrongly-shaped key, or (self-describing file) an architecture
    argument the file's encoder did not have, raises a ``ValueError`` naming the file and the keys; otherwise
    the matching keys are loaded and ``(missing, unexpected)`` returned. A missing file is a
    ``FileNotFoundError``, a truncated or non-torch file a ``ValueError``, both naming the file.
    """
    path = Path(path)
    file_args, state = read_encoder_file(path)
    if not isinstance(encoder, SASwinEncoder):
        file_args = None  # an encoder-like module of another class: only the keys can be compared
    return _load_state(encoder, path, file_args, state, strict)


def _from_file(
    path: str | Path, kwargs: Mapping[str, Any], strict: bool = True, bare_args: Mapping[str, Any] | None = None
) -> SASwinEncoder:
    """:meth:`SASwinEncoder.from_pretrained`; ``bare_args``: the architecture to use only when the file has none."""
    path = Path(path)
    encoder_args_with_defaults(**kwargs)  # unknown names are an error before the file is read
    file_args, state = read_encoder_file(path)
    architecture = {k: v for k, v in kwargs.items() if k in ARCHITECTURE_ARGS}
    options = {k: v for k, v in kwargs.items() if k in RUNTIME_OPTIONS}
    if file_args is None:
        architecture = {**(bare_args or {}), **architecture}
        if not architecture:
            raise ValueError(
                f"{path} is a bare state dict: it holds the weights but not the encoder's architecture. Pass the "
                "arguments it was built with, e.g. SASwinEncoder.from_pretrained(path, feature_size=12, ...) "
                "(bundles: --encoder_args \"{'feature_size': 12}\"), as in the config that wrote it."
            )
        encoder = SASwinEncoder(**architecture, **options)
    else:
        contradicted = _args_differences(file_args, encoder_args_with_defaults(**{**file_args, **architecture}))
        if contradicted:
            raise ValueError(
                f"{path} holds an encoder with other architecture arguments than those passed: {contradicted} "
                "(file vs passed). Leave them out: the file says which encoder it is."
            )
        encoder = SASwinEncoder(**file_args, **options)
    _load_state(encoder, path, file_args, state, strict)
    return encoder


def make_encoder(
    encoder: SASwinEncoder | str | os.PathLike | Mapping[str, Any] | None = None,
    encoder_args: Mapping[str, Any] | None = None,
    **options: Any,
) -> SASwinEncoder:
    """The encoder a downstream network is given, as :class:`SAClassifier` and :class:`SASwinUNETR` take it.

    Args:
        encoder: an :class:`SASwinEncoder` (used as it is); a path to an encoder file (weights loaded strictly,
            architecture from the file, see :meth:`SASwinEncoder.from_pretrained`); a mapping of constructor
            arguments, or None for the defaults (from scratch).
        encoder_args: constructor arguments used when ``encoder`` is None, or the architecture of a bare state
            dict at ``encoder`` (a self-describing file ignores them).
        options: training options (:data:`RUNTIME_OPTIONS`); None values are left out.

    Raises:
        ValueError: options for an encoder that is already built, or the errors of ``from_pretrained``.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(encoder, SASwinEncoder):
        if options:
            raise ValueError(f"options {sorted(options)} cannot change an encoder that is already built: set them on it.")
        return encoder
    if isinstance(encoder, (str, os.PathLike)):
        return _from_file(encoder, options, strict=True, bare_args=encoder_args)
    if encoder is not None and not isinstance(encoder, Mapping):
        raise TypeError(f"encoder must be an SASwinEncoder, a checkpoint path or a mapping of arguments, got {type(encoder).__name__}.")
    return SASwinEncoder(**{**dict(encoder_args or {} if encoder is None else encoder), **options})


def encoder_source(
    pretrained: bool | str,
    pretrained_path: str | os.PathLike | None,
    encoder_args: Mapping[str, Any] | None = None,
    weights: bool = True,
) -> str | dict[str, Any]:
    """A bundle's ``encoder`` from its keys: the ``pretrained_path`` checkpoint, or ``encoder_args`` from scratch.

    Args:
        pretrained: use the checkpoint (command-line text "true"/"false" is read as the bool it names).
        pretrained_path: the pretrain bundle's ``models/model.pt`` (weights and architecture).
        encoder_args: the architecture from scratch, or of a bare state dict (None: :class:`SASwinEncoder`'s defaults).
        weights: False gives the checkpoint's architecture only (evaluate / inference: the weights come from the
            fine-tuned model), as a mapping of arguments.

    Returns:
        the checkpoint path (``weights``), its architecture arguments (not ``weights``) or ``encoder_args``
        (``pretrained`` false): what ``encoder`` of :func:`make_encoder` takes.
    """
    if not as_bool(pretrained, "pretrained"):
        return dict(encoder_args or {})
    if pretrained_path is None:
        raise ValueError("pretrained=True needs pretrained_path (the pretrain bundle's models/model.pt).")
    if weights:
        return str(pretrained_path)
    file_args, _ = read_encoder_file(pretrained_path)
    return file_args if file_args is not None else dict(encoder_args or {})


def swin_unetr_state_dict(encoder_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``swinViT.*`` entries of an ``SASwinEncoder`` state dict, ready for ``SwinUNETR.load_state_dict(..., strict=False)``.

    Key names are MONAI's, so every ``swinViT`` key of a ``SwinUNETR`` with the same
    ``feature_size``, ``depths``, ``num_heads`` and ``patch_norm=True`` is matched. The mask token
    and the SA module have no counterpart in SwinUNETR and are left out.
    """
    return {k: v for k, v in encoder_state.items() if k.startswith("swinViT.")}
