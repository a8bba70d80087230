"""videovae.conv3d: oneDNN for every float32 CPU conv3d, the same numbers as F.conv3d; conv_add_."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from videovae.conv3d import Conv3d, conv3d, conv_add_


@pytest.mark.parametrize("shape, kernel, stride, padding", [
    ((1, 16, 4, 9, 9), (8, 16, 1, 3, 3), 1, (0, 1, 1)),     # B*C*T*H under PyTorch's 20480 threshold
    ((2, 8, 5, 7, 6), (4, 8, 3, 3, 3), 2, (0, 1, 1)),       # strided, batch 2
    ((1, 4, 6, 5, 5), (4, 4, 3, 1, 1), 1, (1, 0, 0)),       # SVD's temporal (3, 1, 1)
])
def test_conv3d_equals_the_reference(shape, kernel, stride, padding):
    torch.manual_seed(0)
    x, w, b = torch.randn(shape), torch.randn(kernel), torch.randn(kernel[0])
    with torch.no_grad():
        torch.testing.assert_close(conv3d(x, w, b, stride, padding), F.conv3d(x, w, b, stride, padding), rtol=1e-5, atol=1e-5)
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        torch.testing.assert_close(conv3d(x_cl, w, None, stride, padding), F.conv3d(x, w, None, stride, padding), rtol=1e-5, atol=1e-5)


def test_under_autograd_the_gradient_flows():
    torch.manual_seed(0)
    conv = Conv3d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 3, 5, 5, requires_grad=True)
    conv(x).square().sum().backward()
    reference = torch.nn.Conv3d(4, 4, 3, padding=1)
    reference.load_state_dict(conv.state_dict())
    x2 = x.detach().clone().requires_grad_(True)
    reference(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(conv.weight.grad, reference.weight.grad)


def test_the_module_keeps_nn_conv3d_keys():
    assert set(Conv3d(2, 3, 3).state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("conv, shape, layout", [
    (torch.nn.Conv2d(6, 5, 3, padding=1), (3, 6, 7, 9), torch.channels_last),
    (torch.nn.Conv2d(6, 5, 3, padding=1), (3, 6, 7, 9), torch.contiguous_format),
    (Conv3d(6, 5, (3, 1, 1), padding=(1, 0, 0)), (2, 6, 4, 5, 7), torch.channels_last_3d),
    (Conv3d(6, 5, (3, 1, 1), padding=(1, 0, 0)), (2, 6, 4, 5, 7), torch.contiguous_format),
])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_conv_add_writes_out_plus_the_scaled_conv_into_out(conv, shape, layout, scale):
    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=layout)
    out = torch.randn((shape[0], 5, *shape[2:])).contiguous(memory_format=layout)
    share = None if scale is None else torch.tensor([scale])
    with torch.no_grad():
        expected = out + (1.0 if scale is None else scale) * conv(x)
        result = conv_add_(out, x, conv, scale=share)
    assert result.data_ptr() == out.data_ptr()
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)


def test_conv_add_with_other_layouts_or_under_autograd_is_the_plain_sum():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    out = torch.randn(2, 4, 6, 6)  # contiguous: not the layout oneDNN writes for x
    with torch.no_grad():
        expected = out + conv(x)
        torch.testing.assert_close(conv_add_(out, x, conv), expected, rtol=1e-5, atol=1e-5)
    skip = torch.randn(2, 4, 6, 6, requires_grad=True)
    kept = skip.detach().clone()
    y = conv_add_(skip, x, conv)  # out of place: autograd may need skip
    assert y.data_ptr() != skip.data_ptr() and torch.equal(skip.detach(), kept)
    y.sum().backward()
    assert torch.equal(skip.grad, torch.ones_like(skip)) and conv.weight.grad is not None
