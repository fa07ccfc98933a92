"""Swin stages that train faster than MONAI's forward, on MONAI's own modules and weights.

MONAI's ``BasicLayer`` / ``SwinTransformerBlock`` / ``WindowAttention`` hold the parameters; only the
order of the computation changes, so every parameter name (and ``SwinUNETR.load_state_dict``) stays
MONAI's. Four things make MONAI's forward slow on a CPU (profile of the pretraining step), and the
masked inputs of pretraining allow a fifth:

1. **Window attention.** Each (window, head) is a tiny matrix product (64 tokens, head dim 3-24),
   so ``q @ k^T``, the bias add, the softmax and ``attn @ v`` stream the (windows, heads, n, n)
   attention matrices through memory several times (134 MB per block at stage 1 of the default
   step). :func:`window_attention` runs them
   - without autograd: PyTorch's ``scaled_dot_product_attention`` (its fused CPU kernel never
     writes the matrices), with the relative position bias and the shift mask as the additive mask;
   - with autograd on CUDA: the same SDPA call (its kernels differentiate the additive mask);
   - with autograd on CPU: MONAI's explicit formula over chunks of windows small enough that the
     attention matrices of a chunk stay in the L2 cache (PyTorch's fused CPU kernel cannot give the
     gradient of the relative position bias, and falls back to the unfused formula), as an autograd
     function that keeps no attention matrix: its backward recomputes each chunk's softmax
     (:class:`_RecomputedWindowAttention`). With attention dropout in training, plain autograd over
     the same chunks.
2. **Denormal attention weights.** MONAI's shift mask adds -100, which leaves weights of e^-100
   (denormal floats) that slow every product with the attention matrix about 30x; :func:`shift_mask`
   uses -inf (weights exactly 0).
3. **Window partition / reverse copies.** MONAI rolls, partitions, reverses and rolls back the
   whole feature map in every block. :func:`swin_stage` instead keeps the residual stream of a
   stage in *window order* (the tokens of each window contiguous): norms, MLP, residuals and drop
   path are per token, so an unshifted block needs no copy and a shifted block one gather from
   one window order to the other; the patch merging at the end of the stage is folded into one
   last gather. The shift mask and the orders are built once per grid, not per forward.
4. **The bias of every linear layer.** ``F.linear`` on CPU writes the bias into the output and reads it
   back in the product, which doubles the cost of the stages' tall, thin products; the qkv, projection
   and MLP layers run :func:`~dagman_components.networks.fused_linear.fused_linear` (oneDNN's linear, the
   bias fused, and the MLP's GELU too when no gradient is kept).

5. **Windows of mask tokens.** A masked input (the student's 70 % of 16^3-voxel units, the noisy teacher's
   70 % patch dropout) holds the same mask token in every masked position, so most stage-1 windows hold only
   copies of one token, whose block output is the same in every such window of a sample.
   :func:`swin_stage_with_uniform_tokens` computes those windows once per sample
   (:func:`_block_on_mixed_windows`), up to the SA stage (``SASwinEncoder(skip_mask_windows=True)``).

The arithmetic per token and per window is MONAI's (same formula, same order of additions); the
fused kernel differs from it by float rounding only (tests: outputs and input gradients within 1e-5).
Hooks on a block or its ``attn.softmax`` (the attention analyses) make :func:`swin_stage` run MONAI's
own forward for that stage, so they fire as before.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import MLPBlock
from monai.networks.nets.swin_unetr import (
    BasicLayer,
    PatchMerging,
    SwinTransformerBlock,
    WindowAttention,
    compute_mask,
    get_window_size,
    window_partition,
)
from torch.utils import checkpoint

from .fused_linear import fused_linear

__all__ = [
    "ATTENTION_CHUNK_BYTES",
    "relative_position_bias",
    "shift_mask",
    "swin_stage",
    "swin_stage_with_uniform_tokens",
    "UNIFORM_WINDOW_MIN_FRACTION",
    "uses_monai_forward",
    "window_attention",
    "window_order",
]

#: bytes of fp32 attention matrices computed at once by the CPU training path: a chunk of windows
#: whose (chunk, heads, n, n) scores fit the L2 cache (2 MB per core on the machines we measured)
ATTENTION_CHUNK_BYTES = 4 * 2**20


def relative_position_bias(attn: WindowAttention, n: int) -> torch.Tensor:
    """(heads, n, n) relative position bias of ``attn`` for windows of ``n`` tokens, as MONAI's forward builds it."""
    index = attn.relative_position_index[:n, :n].reshape(-1)  # type: ignore[index]
    # contiguous: a permuted bias would hand its strides on to every mask built from it
    return attn.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1).contiguous()


@functools.lru_cache(maxsize=64)
def shift_mask(
    grid: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """(num_windows, n, n) additive shift mask, MONAI's ``compute_mask`` with -inf where MONAI adds -100, cached per grid.

    MONAI's -100 leaves weights of about e^-100 = 4e-44 between tokens that are not neighbours: a
    denormal float, and every product with an attention matrix holding denormals runs about 30x slower
    on x86 (measured: 15 ms instead of 0.5 ms per (216, 64, 64) x (216, 64, 24) product). With -inf
    those weights are exactly 0; nothing else changes.
    """
    mask = compute_mask(list(grid), window, shift, device)
    return mask.masked_fill(mask < 0, float("-inf"))


@functools.lru_cache(maxsize=64)
def window_order(
    grid: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """(L,) row-major grid index of each token in the window order of a (shifted) block.

    Position ``w * n + i`` holds the ``i``-th token of window ``w`` after MONAI's roll by ``-shift``
    and ``window_partition``: built with MONAI's own functions, so the order is theirs by construction.
    """
    index = torch.arange(math.prod(grid), device=device, dtype=torch.float64).reshape(1, *grid, 1)
    if any(s > 0 for s in shift):
        index = torch.roll(index, shifts=tuple(-s for s in shift), dims=tuple(range(1, len(grid) + 1)))
    return window_partition(index, window).reshape(-1).long()


@functools.lru_cache(maxsize=64)
def _reorder(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Index ``p`` with ``x_target = x_source[:, p]`` for two orders of the same grid (tensors hash by identity)."""
    inverse = torch.empty_like(source)
    inverse[source] = torch.arange(source.numel(), device=source.device)
    return inverse[target]


#: MONAI's ``PatchMerging`` (v0.9 order) concatenates the 2x2x2 neighbours at these (d, h, w) offsets,
#: numbered d*4 + h*2 + w: (0,0,0), (1,0,0), (0,1,0), (0,0,1), (1,1,0), (1,0,1), (0,1,1), (1,1,1)
_PATCH_MERGING_OFFSETS = (0, 4, 2, 1, 6, 5, 3, 7)


@functools.lru_cache(maxsize=64)
def _merge_order(grid: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(L,) row-major grid index of each token in ``PatchMerging``'s output layout: merged tokens row-major, 8 neighbours each."""
    d, h, w = grid
    index = torch.arange(d * h * w, device=device).reshape(d // 2, 2, h // 2, 2, w // 2, 2)
    neighbours = index.permute(0, 2, 4, 1, 3, 5).reshape(-1, 8)
    return neighbours[:, list(_PATCH_MERGING_OFFSETS)].reshape(-1)


def _mergeable(merge: nn.Module | None, grid: tuple[int, ...]) -> bool:
    """True when ``merge`` is MONAI's 3D ``PatchMerging`` on an even grid with no hooks (hooks want its own forward)."""
    return (
        type(merge) is PatchMerging
        and len(grid) == 3
        and all(g % 2 == 0 for g in grid)
        and not (merge._forward_hooks or merge._forward_pre_hooks)
    )


def uses_monai_forward(layer: BasicLayer) -> bool:
    """True when :func:`swin_stage` must run MONAI's forward: Hyena blocks, or hooks on a block or inside it."""
    if getattr(layer, "use_hyena", False):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for block in layer.blocks for m in block.modules())


def _chunk_windows(num_windows: int, heads: int, n: int, mask_windows: int | None) -> int:
    """Windows per chunk: attention matrices of about :data:`ATTENTION_CHUNK_BYTES`, aligned to the shift mask's period."""
    per_window = heads * n * n * 4
    target = max(1, ATTENTION_CHUNK_BYTES // per_window)
    if mask_windows is None or mask_windows == num_windows:
        # no mask, or a mask row per window (one sample, or a selection of windows): any chunk lines up
        return min(target, num_windows)
    if target >= mask_windows:
        return mask_windows * (target // mask_windows)
    return max(d for d in range(1, target + 1) if mask_windows % d == 0)


def _split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(windows, n, 3 * heads * hd) -> q, k, v, each a (windows, heads, n, hd) view: MONAI's reshape and permute."""
    windows, n, channels = qkv.shape
    return qkv.view(windows, n, 3, heads, channels // (3 * heads)).permute(2, 0, 3, 1, 4).unbind(0)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(windows, heads, n, hd) -> (windows, n, heads * hd), MONAI's ``transpose(1, 2).reshape``."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


#: windows per fused attention call when each window has its own mask row (about one sample's at 96^3)
_SDPA_MASK_WINDOWS = 1024


def _sdpa(attn: WindowAttention, q, k, v, bias: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Fused attention -> (B*nW, n, C); ``bias`` (heads, n, n), ``mask`` (nW, n, n) or None; q, k, v (B*nW, heads, n, hd)."""
    dropout = attn.attn_drop.p if attn.training else 0.0
    if mask is None:
        return _merge_heads(
            F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0).to(q.dtype), dropout_p=dropout, scale=attn.scale)
        )
    # one additive mask per window of a sample, (nW, heads, n, n); samples run one call each, so the
    # mask never needs to be repeated over the batch (MONAI's path expands it to every window of every sample)
    per_window = mask.shape[0] == q.shape[0]
    # a mask row per window (one sample, or a selection of windows of several): the additive masks of
    # about one sample's windows at a time, not of the whole selection at once
    step = min(mask.shape[0], _SDPA_MASK_WINDOWS) if per_window else mask.shape[0]
    shared = None if per_window else (bias.unsqueeze(0) + mask.unsqueeze(1)).to(q.dtype)
    outputs = []
    for start, qs, ks, vs in zip(range(0, q.shape[0], step), q.split(step), k.split(step), v.split(step)):
        combined = shared if shared is not None else (bias.unsqueeze(0) + mask[start : start + step].unsqueeze(1)).to(q.dtype)
        outputs.append(
            _merge_heads(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=combined, dropout_p=dropout, scale=attn.scale))
        )
    return torch.cat(outputs)


def _explicit(attn: WindowAttention, q, k, v, bias: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """MONAI's explicit attention formula over chunks of windows (see :data:`ATTENTION_CHUNK_BYTES`) -> (B*nW, n, C).

    Plain autograd: every chunk's weights are kept for the backward (the path with attention dropout).
    """
    batch_windows, heads, n, _ = q.shape
    chunk, chunk_mask, plan = _chunk_plan(batch_windows, heads, n, mask)
    outputs = []
    # split, not slicing: the backward of a split is one concatenation, that of each slice a full-size zero tensor
    for (_, offset), qc, kc, vc in zip(plan, q.split(chunk), k.split(chunk), v.split(chunk)):
        weights = attn.attn_drop(_chunk_weights(qc, kc, bias, chunk_mask, offset, attn.scale))
        # heads merged per chunk, while it is in cache: the concatenation is then the only full-size copy
        outputs.append(_merge_heads(weights.to(vc.dtype) @ vc))
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


def _chunk_plan(batch_windows: int, heads: int, n: int, mask: torch.Tensor | None):
    """(chunk, mask repeated to the chunk or None, offsets): the windows of each chunk and its mask rows."""
    num_mask = None if mask is None else mask.shape[0]
    chunk = _chunk_windows(batch_windows, heads, n, num_mask)
    if mask is not None and chunk > num_mask:
        mask = mask.repeat(chunk // num_mask, 1, 1)
    starts = range(0, batch_windows, chunk)
    offsets = [0 if mask is None or chunk >= num_mask else start % num_mask for start in starts]
    return chunk, mask, list(zip(starts, offsets))


class _RecomputedWindowAttention(torch.autograd.Function):
    """MONAI's attention formula over L2-sized chunks of windows, keeping no attention matrix for the backward.

    The forward writes each chunk's output in place (heads merged); the backward recomputes the chunk's
    softmax from q, k, the bias and the mask, while it is in cache, and forms the gradients of q, k, v
    and the bias from it (FlashAttention's recomputation, per window chunk). MONAI's autograd keeps the
    (windows, heads, n, n) weights of every block until the backward (906 MB for stage 1 of a 96^3 /
    F=48 step of batch 2), each a fresh allocation whose pages the kernel must fault in.

    Inputs: qkv (B*nW, n, 3 * heads * hd), the qkv layer's output (q unscaled); the number of heads;
    bias (heads, n, n) float32; mask (nW, n, n) or None. Output: (B*nW, n, heads * hd).
    """

    @staticmethod
    def forward(ctx, qkv, heads, bias, mask, scale):  # type: ignore[override]
        q, k, v = _split_heads(qkv, heads)
        batch_windows, heads, n, head_dim = q.shape
        chunk, chunk_mask, plan = _chunk_plan(batch_windows, heads, n, mask)
        out = v.new_empty((batch_windows, n, heads * head_dim))  # a tuple: MONAI MetaTensors take no varargs
        for start, offset in plan:
            stop = min(start + chunk, batch_windows)
            weights = _chunk_weights(q[start:stop], k[start:stop], bias, chunk_mask, offset, scale)
            out[start:stop] = _merge_heads(weights.to(v.dtype) @ v[start:stop])
        ctx.save_for_backward(qkv, bias, mask if mask is not None else torch.empty(0))
        ctx.has_mask, ctx.scale, ctx.heads = mask is not None, scale, heads
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        qkv, bias, mask = ctx.saved_tensors
        mask = mask if ctx.has_mask else None
        scale = ctx.scale
        q, k, v = _split_heads(qkv, ctx.heads)
        batch_windows, heads, n, head_dim = q.shape
        chunk, chunk_mask, plan = _chunk_plan(batch_windows, heads, n, mask)
        # the gradients written straight into the qkv layer's output layout: no stack of the three and
        # no copy back through the reshape of the heads (two full-size copies of autograd's route)
        grad_qkv = qkv.new_empty(qkv.shape)
        grad_q, grad_k, grad_v = _split_heads(grad_qkv, heads)
        grad_bias = torch.zeros_like(bias, dtype=torch.float32)
        grad_heads = grad_out.view(batch_windows, n, heads, head_dim).transpose(1, 2)  # (B*nW, heads, n, hd)
        for start, offset in plan:
            stop = min(start + chunk, batch_windows)
            # strided views of the qkv layout: one copy each per chunk, not one per product they enter
            qc, kc, vc = q[start:stop].contiguous(), k[start:stop].contiguous(), v[start:stop].contiguous()
            go = grad_heads[start:stop].to(v.dtype).contiguous()
            weights = _chunk_weights(qc, kc, bias, chunk_mask, offset, scale)  # float32 under bf16 too
            grad_v[start:stop] = weights.to(v.dtype).transpose(-2, -1) @ go
            grad_weights = (go @ vc.transpose(-2, -1)).float()
            # softmax backward, dS = W * (dW - sum_j dW_j W_j): the fused kernel autograd's softmax uses
            grad_scores = torch._softmax_backward_data(grad_weights, weights, -1, weights.dtype)
            grad_bias += grad_scores.sum(dim=0)
            grad_scores = grad_scores.to(q.dtype)
            grad_q[start:stop] = (grad_scores @ kc) * scale
            grad_k[start:stop] = grad_scores.transpose(-2, -1) @ (qc * scale)
        return grad_qkv, None, grad_bias.to(bias.dtype), None, None


def _chunk_weights(qc, kc, bias: torch.Tensor, mask: torch.Tensor | None, offset: int, scale: float) -> torch.Tensor:
    """Softmax attention weights (chunk, heads, n, n) of one chunk, MONAI's formula (float32 when the bias is)."""
    scores = (qc * scale) @ kc.transpose(-2, -1) + bias
    if mask is not None:
        # the mask needs no gradient: in place, the scores are this chunk's own temporary
        scores = scores.add_(mask[offset : offset + qc.shape[0]].unsqueeze(1))
    return scores.softmax(dim=-1)


def window_attention(
    attn: WindowAttention, x: torch.Tensor, mask: torch.Tensor | None = None, fused: bool | None = None
) -> torch.Tensor:
    """``attn``'s forward on windows ``x`` (B*nW, n, C) with shift mask ``mask`` (nW, n, n) or None -> (B*nW, n, C).

    Args:
        attn: MONAI's module, whose parameters are used.
        x: the windows' tokens, windows of one sample consecutive (``window_partition``'s order).
        mask: MONAI's shift mask of one sample's windows, or None for an unshifted block.
        fused: True: ``scaled_dot_product_attention``; False: MONAI's explicit formula in L2-sized chunks
            of windows; None (default): fused when no gradient is needed or off the CPU (module docstring).

    The softmax runs in float32 under bf16 autocast: the float32 bias promotes the scores, as in MONAI.
    """
    batch_windows, n, c = x.shape
    heads = attn.num_heads
    qkv = fused_linear(attn.qkv, x).reshape(batch_windows, n, 3 * c)
    bias = relative_position_bias(attn, n)
    if fused is None:
        fused = x.device.type != "cpu" or not torch.is_grad_enabled()
        if not fused and not (attn.training and attn.attn_drop.p > 0):
            out = _RecomputedWindowAttention.apply(qkv, heads, bias, mask, attn.scale)
            return attn.proj_drop(fused_linear(attn.proj, out))
    q, k, v = _split_heads(qkv, heads)
    out = (_sdpa if fused else _explicit)(attn, q, k, v, bias, mask)
    return attn.proj_drop(fused_linear(attn.proj, out))


def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MONAI ``MLPBlock`` forward with :func:`fused_linear` products; any other (or hooked) module is called."""
    if type(mlp) is not MLPBlock or mlp._forward_hooks or mlp._forward_pre_hooks:
        return mlp(x)
    hidden = mlp.drop1(fused_linear(mlp.linear1, x, mlp.fn))
    return mlp.drop2(fused_linear(mlp.linear2, hidden))


def _block(
    block: SwinTransformerBlock,
    x: torch.Tensor,
    n: int,
    mask: torch.Tensor | None,
    rows_of_sample: torch.Tensor | None = None,
    batch: int = 0,
) -> torch.Tensor:
    """One Swin block on the residual stream ``x`` (B, L, C) in the block's window order.

    With ``rows_of_sample`` (R,), ``x`` is (R, n, C), a selection of windows of ``batch`` samples (``mask``:
    (R, n, n) or None), and drop path draws MONAI's per-sample factors for the ``batch`` samples and gives
    row ``r`` those of sample ``rows_of_sample[r]``: the random stream and the factors are those of the
    whole (B, L, C) stream.
    """

    def attention_part(tokens: torch.Tensor) -> torch.Tensor:
        normed = block.norm1(tokens)
        return window_attention(block.attn, normed.view(-1, n, normed.shape[-1]), mask).view_as(tokens)

    def mlp_part(tokens: torch.Tensor) -> torch.Tensor:
        return _mlp(block.mlp, block.norm2(tokens))

    checkpointed = block.use_checkpoint and torch.is_grad_enabled()

    def residual(part, tokens: torch.Tensor) -> torch.Tensor:
        update = checkpoint.checkpoint(part, tokens, use_reentrant=False) if checkpointed else part(tokens)
        if rows_of_sample is None:
            return tokens + block.drop_path(update)
        if isinstance(block.drop_path, nn.Identity):
            return tokens + update
        # MONAI's module draws the (batch, 1, 1) per-sample factors, as on the whole stream
        scale = block.drop_path(tokens.new_ones((batch, 1, 1)))
        return tokens + update * scale[rows_of_sample]

    x = residual(attention_part, x)
    return residual(mlp_part, x)


def _block_geometry(
    block: SwinTransformerBlock, grid: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    window, shift = get_window_size(grid, block.window_size, block.shift_size)
    return tuple(window), tuple(shift)


def _block_on_mixed_windows(
    block: SwinTransformerBlock, x: torch.Tensor, n: int, mask: torch.Tensor | None, uniform: torch.Tensor
) -> torch.Tensor:
    """:func:`_block` computing each sample's uniform windows once: ``x`` (B, L, C) -> (B, L, C).

    ``uniform`` (B, nW) marks the windows whose tokens all hold one value shared by every such window of
    the sample. Attention among equal tokens returns their common value transformed (whatever the weights,
    so whatever the relative position bias and the shift mask), and norms, MLP, residuals and drop path are
    per token: every uniform window of a sample has the same output. The block runs on the mixed windows
    and one uniform window per sample, and the others copy it; autograd sums their gradients into it.
    """
    b, length, c = x.shape
    num_windows = length // n
    first_uniform = uniform & (uniform.cumsum(1) == 1)
    computed = (~uniform | first_uniform).reshape(-1)
    rows = computed.nonzero().squeeze(1)  # (R,) windows that run, in (B * nW) order
    position = computed.cumsum(0).sub_(1).view(b, num_windows)  # each computed window's row in the selection
    representative = (position * first_uniform).sum(1, keepdim=True)  # (B, 1) row of the sample's uniform window
    source = torch.where(uniform, representative, position).reshape(-1)
    windows = x.reshape(b * num_windows, n, c).index_select(0, rows)
    window_mask = None if mask is None else mask.index_select(0, rows % num_windows)
    out = _block(block, windows, n, window_mask, rows_of_sample=rows // num_windows, batch=b)
    return out.index_select(0, source).view(b, length, c)


#: fraction of a block's windows that must be uniform for :func:`_block_on_mixed_windows` to pay for its two gathers
UNIFORM_WINDOW_MIN_FRACTION = 0.1


def swin_stage(layer: BasicLayer, x: torch.Tensor) -> torch.Tensor:
    """MONAI ``BasicLayer`` forward on channels-last ``x`` (B, D, H, W, C) -> channels-last (B, D', H', W', C').

    Same result as ``layer(x.permute(0, 4, 1, 2, 3))`` (then permuted back), with the stage's residual
    stream in window order (module docstring). Grids that MONAI pads (not a multiple of the window)
    and hooked stages (:func:`uses_monai_forward`) run MONAI's own forward. MONAI's ``PatchMerging``
    becomes one gather into its concatenation order followed by its own ``norm`` and ``reduction``;
    any other (or hooked) ``downsample`` module is called on the (B, D, H, W, C) map as MONAI does.
    """
    return swin_stage_with_uniform_tokens(layer, x, None)[0]


def swin_stage_with_uniform_tokens(
    layer: BasicLayer, x: torch.Tensor, uniform: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`swin_stage` that computes windows of identical tokens once per sample.

    Args:
        layer: MONAI's stage.
        x: channels-last input (B, D, H, W, C).
        uniform: (B, D, H, W) bool, True where a token holds a value shared by all the sample's True tokens
            (the mask token of a masked input), or None (plain :func:`swin_stage`).

    Returns:
        the stage's channels-last output, and the output tokens (B, D', H', W') that still share one value
        per sample (None when none do, or when MONAI's forward ran): the next stage's ``uniform``.

    In each block, windows whose tokens are all uniform (70 % of stage 1's unshifted windows at the papers'
    mask ratio of 16^3-voxel units) are computed once per sample (:func:`_block_on_mixed_windows`), when
    they are at least :data:`UNIFORM_WINDOW_MIN_FRACTION` of the windows. Same outputs and gradients as
    :func:`swin_stage` up to float rounding.
    """
    b, *spatial, c = x.shape
    grid = tuple(int(s) for s in spatial)
    geometry = [_block_geometry(block, grid) for block in layer.blocks]
    padded = any(g % w for window, _ in geometry for g, w in zip(grid, window))
    if padded or uses_monai_forward(layer):
        return layer(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1), None
    # a window covering the whole grid is the row-major order itself
    spatial = (grid, grid, (0,) * len(grid))
    current = spatial
    # the residual stream keeps the parameters' dtype: float32 under autocast, where only the
    # matrix products run in bf16 (MONAI's forward carries the patch embedding's bf16 through the stage)
    tokens = x.reshape(b, -1, c).to(layer.blocks[0].norm1.weight.dtype)
    flags = None if uniform is None else uniform.reshape(b, -1)
    for block, (window, shift) in zip(layer.blocks, geometry):
        if (grid, window, shift) != current:
            order = _reorder(window_order(*current, x.device), window_order(grid, window, shift, x.device))
            tokens = tokens[:, order]
            flags = None if flags is None else flags[:, order]
            current = (grid, window, shift)
        mask = shift_mask(grid, window, shift, x.device) if any(s > 0 for s in shift) else None
        n = math.prod(window)
        if flags is None:
            tokens = _block(block, tokens, n, mask)
            continue
        windows_uniform = flags.view(b, -1, n).all(-1)  # (B, nW)
        fraction = float(windows_uniform.float().mean())
        if fraction >= UNIFORM_WINDOW_MIN_FRACTION:
            tokens = _block_on_mixed_windows(block, tokens, n, mask, windows_uniform)
        else:
            tokens = _block(block, tokens, n, mask)
        flags = windows_uniform.repeat_interleave(n, dim=1) if fraction > 0 else None
    merge = layer.downsample
    if _mergeable(merge, grid):
        # one gather from window order straight into the merged layout, instead of MONAI's reverse
        # copies and its eight strided slices (whose backward writes eight zero-filled full-size maps)
        order = _reorder(window_order(*current, x.device), _merge_order(grid, x.device))
        merged = tokens[:, order].view(b, *(g // 2 for g in grid), 8 * c)
        merged_flags = None if flags is None else flags[:, order].view(b, *(g // 2 for g in grid), 8).all(-1)
        return merge.reduction(merge.norm(merged)), _any_or_none(merged_flags)
    if current != spatial:
        order = _reorder(window_order(*current, x.device), window_order(*spatial, x.device))
        tokens = tokens[:, order]
        flags = None if flags is None else flags[:, order]
    out = tokens.view(b, *grid, c)
    if merge is None:
        return out, _any_or_none(None if flags is None else flags.view(b, *grid))
    # a hooked or other downsample module: its output tokens are not tracked
    return merge(out), None


def _any_or_none(flags: torch.Tensor | None) -> torch.Tensor | None:
    return flags if flags is not None and bool(flags.any()) else None
