"""``nn.Linear`` with its bias (and a GELU) fused into the matrix product, for the CPU stages.

On CPU, ``F.linear`` with a bias is ``addmm``: it first writes the bias into every row of the (M, N)
output and then runs the product with ``beta=1``, which reads that output back. For the Swin stages'
tall, thin products (M = tokens, up to 442,368 rows at 96^3; K, N = 12-384 channels) the product is
bound by memory, and the bias costs as much as the product itself (measured, one thread of a
Sapphire Rapids core, fp32: (442368, 48) x (48, 192) in 247 ms by ``F.linear``, 120 ms by oneDNN's
linear with the bias as a fused epilogue, 123 ms by ``torch.mm`` without a bias; the outputs bitwise
equal). :func:`fused_linear` runs oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``, the
kernel ``torch.compile``'s CPU backend emits for a linear) for those products, as an autograd
function whose backward is ``F.linear``'s (two ``mm`` and a sum); with no gradient to keep it can
also fuse the GELU of an MLP's first layer.

The module's parameters are used as they are (the weights stay MONAI's). Anything else runs the
module itself: CUDA, bf16/fp16 or autocast (whose own kernels already fuse), ``torch.compile``,
fewer than :data:`FUSED_LINEAR_MIN_ROWS` rows (where the bias costs little next to the product), a
module with hooks, or a PyTorch without the oneDNN op.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn

__all__ = ["FUSED_LINEAR_MIN_ROWS", "fused_linear", "fused_linear_available"]

#: rows from which the fused kernel clearly wins (measured fp32, one thread of an otherwise idle core:
#: 1.15-1.22x at 8,192-16,384 rows with K=96, N=288; 1.03-1.06x at 4,352-6,912 rows; 0.96-0.98x at 868-2,048 rows)
FUSED_LINEAR_MIN_ROWS = 16384


@functools.cache
def fused_linear_available() -> bool:
    """True when this PyTorch has oneDNN's fused linear (``torch.ops.mkldnn._linear_pointwise``) usable on CPU."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "none" if activation == "gelu" else "")


class _FusedBiasLinear(torch.autograd.Function):
    """y = x W^T + b on (M, K) rows by oneDNN; the backward is ``F.linear``'s."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _pointwise(x, weight, bias, "none")

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad_x = grad_out.mm(weight) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            # the same (N, K) product in the orientation whose output has fewer rows: 1.3-1.5x faster
            # when N > K over 55,296-442,368 rows (measured, one thread)
            grad_weight = x.t().mm(grad_out).t() if weight.shape[0] > weight.shape[1] else grad_out.t().mm(x)
        grad_bias = grad_out.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def _fusable(linear: nn.Module, x: torch.Tensor) -> bool:
    if type(linear) is not nn.Linear or linear._forward_hooks or linear._forward_pre_hooks:
        return False
    if x.device.type != "cpu" or x.dtype != torch.float32 or linear.weight.dtype != torch.float32:
        return False
    if torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling():
        return False
    return x.numel() // max(x.shape[-1], 1) >= FUSED_LINEAR_MIN_ROWS and fused_linear_available()


def _is_exact_gelu(activation: nn.Module | None) -> bool:
    return type(activation) is nn.GELU and activation.approximate == "none"


def fused_linear(linear: nn.Module, x: torch.Tensor, activation: nn.Module | None = None) -> torch.Tensor:
    """``activation(linear(x))`` for ``x`` (..., K) -> (..., N), the bias fused on CPU (module docstring).

    Args:
        linear: the ``nn.Linear`` whose parameters are used (a subclass or a hooked module is called as is).
        x: the input, any leading shape.
        activation: a module applied to the output, or None. An exact ``nn.GELU`` is fused into the
            kernel when no gradient is needed (the teacher's passes); otherwise it is called on the output.
    """
    if not _fusable(linear, x):
        out = linear(x)
        return activation(out) if activation is not None else out
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or linear.weight.requires_grad)
    if not needs_grad and _is_exact_gelu(activation):
        return _pointwise(rows, linear.weight, linear.bias, "gelu").view(*x.shape[:-1], -1)
    if needs_grad:
        out = _FusedBiasLinear.apply(rows, linear.weight, linear.bias)
    else:
        out = _pointwise(rows, linear.weight, linear.bias, "none")
    out = out.view(*x.shape[:-1], -1)
    return activation(out) if activation is not None else out
