"""oneDNN's fused linear against ``nn.Linear``: same outputs and gradients, and it runs only where it should."""

import pytest
import torch
import torch.nn as nn

import dagman_components.networks.fused_linear as fused_module
from dagman_components.networks.fused_linear import FUSED_LINEAR_MIN_ROWS, fused_linear, fused_linear_available

pytestmark = pytest.mark.skipif(not fused_linear_available(), reason="this PyTorch has no oneDNN fused linear")

TOLERANCE = 1e-5


@pytest.fixture
def kernel_calls(monkeypatch):
    """How many times the oneDNN kernel ran (the activation names passed to it)."""
    calls = []
    original = fused_module._pointwise

    def counting(x, weight, bias, activation):
        calls.append(activation)
        return original(x, weight, bias, activation)

    monkeypatch.setattr(fused_module, "_pointwise", counting)
    return calls


def layer(in_features=12, out_features=36, bias=True):
    torch.manual_seed(0)
    return nn.Linear(in_features, out_features, bias=bias)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_outputs_and_all_gradients_equal_nn_linear(kernel_calls, bias):
    linear = layer(bias=bias)
    x = torch.randn(2, FUSED_LINEAR_MIN_ROWS // 2, 12)
    grad_out = torch.randn(2, FUSED_LINEAR_MIN_ROWS // 2, 36)
    results = []
    for fused in (True, False):
        linear.zero_grad()
        xi = x.clone().requires_grad_(True)
        out = fused_linear(linear, xi) if fused else linear(xi)
        out.backward(grad_out)
        grads = [xi.grad, linear.weight.grad] + ([linear.bias.grad] if bias else [])
        results.append((out.detach(), [g.clone() for g in grads]))
    assert kernel_calls == ["none"]
    (fast, fast_grads), (reference, reference_grads) = results
    assert fast.shape == reference.shape
    assert torch.allclose(fast, reference, atol=TOLERANCE, rtol=0)
    for a, b in zip(fast_grads, reference_grads):
        # parameter gradients sum over every row: relative to their scale
        assert torch.allclose(a, b, atol=TOLERANCE * float(b.abs().max()), rtol=0)


def test_gelu_is_fused_without_gradient_and_applied_after_with_it(kernel_calls):
    linear = layer()
    x = torch.randn(FUSED_LINEAR_MIN_ROWS, 12)
    reference = nn.GELU()(linear(x)).detach()
    with torch.no_grad():
        no_grad = fused_linear(linear, x, nn.GELU())
    with_grad = fused_linear(linear, x, nn.GELU())
    assert kernel_calls == ["gelu", "none"]
    assert torch.allclose(no_grad, reference, atol=TOLERANCE, rtol=0)
    assert torch.allclose(with_grad, reference, atol=TOLERANCE, rtol=0) and with_grad.requires_grad


def test_tanh_gelu_is_not_fused(kernel_calls):
    linear = layer()
    x = torch.randn(FUSED_LINEAR_MIN_ROWS, 12)
    with torch.no_grad():
        out = fused_linear(linear, x, nn.GELU(approximate="tanh"))
        reference = nn.GELU(approximate="tanh")(linear(x))
    assert kernel_calls == ["none"]
    assert torch.allclose(out, reference, atol=TOLERANCE, rtol=0)


def test_non_contiguous_input(kernel_calls):
    linear = layer()
    x = torch.randn(12, FUSED_LINEAR_MIN_ROWS).t()
    assert not x.is_contiguous()
    assert torch.allclose(fused_linear(linear, x), linear(x), atol=TOLERANCE, rtol=0)
    assert kernel_calls == ["none"]


def test_module_runs_itself_when_few_rows_hooked_autocast_or_another_dtype(kernel_calls):
    linear = layer()
    few = torch.randn(FUSED_LINEAR_MIN_ROWS - 1, 12)
    assert torch.equal(fused_linear(linear, few), linear(few))
    many = torch.randn(FUSED_LINEAR_MIN_ROWS, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_linear(linear, many).dtype == torch.bfloat16
    assert fused_linear(layer().double(), many.double()).dtype == torch.float64
    seen = []
    linear.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    fused_linear(linear, many)
    assert seen == [many.shape[:-1] + (36,)]
    assert kernel_calls == []
