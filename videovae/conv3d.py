"""3D convolution on CPU through oneDNN, whatever the input size; and convolutions fused with an add.

PyTorch picks its backend for a float32 CPU conv with a heuristic written for 2D: an input whose
B * C * T * H is at most 20480 goes to the slow reference kernel (`slow_conv3d`), "for some case,
native is faster". For 3D it is not: a (1, 64, 4, 65, 65) input with a 1x3x3 kernel takes 39 ms there
against 8 ms in oneDNN, and a (1, 128, 7, 17, 17) one with 3x3x3 18 against 6 ms (AVX-512, 2
threads). Such inputs are everywhere in a video VAE: frame-convs of Winograd, few-frame latents,
tiles. `conv3d` calls oneDNN directly where it can (same kernels as for large inputs, so the same
numbers up to float rounding) and F.conv3d elsewhere: on GPUs, in 16-bit, under autograd and
under torch.compile.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


def _onednn_ok(x: Tensor, weight: Tensor) -> bool:
    """Whether oneDNN can run this float32 CPU convolution directly (no autograd, not compiling)."""
    return (
        not torch.compiler.is_compiling()  # first: Dynamo refuses to trace the availability check
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and torch.backends.mkldnn.is_available()
    )


def conv3d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0) -> Tensor:
    """F.conv3d(x, weight, bias, stride, padding) (dilation 1, one group), oneDNN on CPU float32."""
    if _onednn_ok(x, weight):
        return torch.mkldnn_convolution(x, weight, bias, _triple(padding), _triple(stride), (1, 1, 1), 1)
    return F.conv3d(x, weight, bias, stride, padding)


def conv_add_(out: Tensor, x: Tensor, conv: nn.Conv2d | nn.Conv3d, scale: Tensor | None = None) -> Tensor:
    """out + scale * conv(x), written into out, which it returns (under autograd: a new tensor,
    out unchanged, as autograd may need it). conv: a stride-1, zero-padded, one-group Conv2d or
    Conv3d; scale: a one-element tensor, or None for 1.

    On CPU in float32 without autograd, when out has the layout oneDNN writes for x (both
    channels-last, or both contiguous), this is one oneDNN convolution with a fused add: no
    output tensor is allocated and the sum costs no extra pass (a 3x3 conv of 64 channels at
    8x128x128 takes 45 ms this way against 56 ms alone and 60 ms with the add, 2 AVX-512 cores).
    Elsewhere it is the plain conv and add_, which equal it up to float rounding.
    """
    weight, bias = conv.weight, conv.bias
    if scale is not None:  # scale * conv(x; w, b) = conv(x; scale * w, scale * b)
        weight = weight * scale.to(weight.dtype)
        bias = None if bias is None else bias * scale.to(bias.dtype)
    fused = (
        _onednn_ok(x, weight)
        and not (torch.is_grad_enabled() and out.requires_grad)
        and out.dtype == torch.float32
        and out.shape[:1] + out.shape[2:] == x.shape[:1] + x.shape[2:]
        and _dense_like(out, x)
        and conv.groups == 1 and set(conv.stride) == {1} and set(conv.dilation) == {1}
        and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
    )
    if fused:
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            out, x, weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation), 1, "add", None, None, [], None
        )
    y = conv._conv_forward(x, weight, bias) if isinstance(conv, nn.Conv2d) else F.conv3d(x, weight, bias, conv.stride, conv.padding)
    if torch.is_grad_enabled() and (out.requires_grad or y.requires_grad):
        return out + y
    return out.add_(y)


def _dense_like(out: Tensor, x: Tensor) -> bool:
    """Both dense channels-last (2D or 3D), or both plain contiguous."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}[x.ndim]
    if x.is_contiguous(memory_format=fmt) and not x.is_contiguous():
        return out.is_contiguous(memory_format=fmt)
    return x.is_contiguous() and out.is_contiguous()


class Conv3d(nn.Conv3d):
    """nn.Conv3d (same parameters and keys) whose forward is `conv3d`."""

    def forward(self, x: Tensor) -> Tensor:
        if self.groups != 1 or self.dilation != (1, 1, 1) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        return conv3d(x, self.weight, self.bias, self.stride, self.padding)
