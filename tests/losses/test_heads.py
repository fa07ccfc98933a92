"""The AMIP reconstruction head: a matrix product and one copy, equal to MONAI's 1x1x1 convolution + pixelshuffle."""

import pytest
import torch
import torch.nn.functional as F
from monai.networks.utils import pixelshuffle

from dagman_components.losses import ReconstructionHead


@pytest.mark.parametrize("out_channels, stride, grid", [(1, 4, (2, 3, 2)), (2, 2, (3, 2, 4))])
def test_reconstruction_equals_convolution_and_pixelshuffle(out_channels, stride, grid):
    torch.manual_seed(0)
    head = ReconstructionHead(in_channels=8, out_channels=out_channels, stride=stride)
    x = torch.randn(2, 8, *grid, requires_grad=True)
    reference_input = x.detach().clone().requires_grad_(True)

    out = head(x)
    reference = pixelshuffle(F.conv3d(reference_input, head.proj.weight, head.proj.bias), spatial_dims=3, scale_factor=stride)
    assert out.shape == (2, out_channels, *(g * stride for g in grid))
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)

    grad = torch.randn_like(out)
    weight_grad = torch.autograd.grad(out, (x, head.proj.weight), grad)
    reference_grad = torch.autograd.grad(reference, (reference_input, head.proj.weight), grad)
    for got, expected in zip(weight_grad, reference_grad):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_parameters_keep_the_convolution_layout():
    head = ReconstructionHead(in_channels=16, out_channels=1, stride=32)
    assert list(head.state_dict()) == ["proj.weight", "proj.bias"]
    assert head.proj.weight.shape == (32**3, 16, 1, 1, 1)
