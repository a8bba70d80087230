"""3D convolution on CPU through oneDNN, whatever the input size.

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


def conv3d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0) -> Tensor:
    """F.conv3d(x, weight, bias, stride, padding) (dilation 1, one group), oneDNN on CPU float32."""
    if (
        not torch.compiler.is_compiling()  # first: Dynamo refuses to trace the availability check
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and torch.backends.mkldnn.is_available()
    ):
        return torch.mkldnn_convolution(x, weight, bias, _triple(padding), _triple(stride), (1, 1, 1), 1)
    return F.conv3d(x, weight, bias, stride, padding)


class Conv3d(nn.Conv3d):
    """nn.Conv3d (same parameters and keys) whose forward is `conv3d`."""

    def forward(self, x: Tensor) -> Tensor:
        if self.groups != 1 or self.dilation != (1, 1, 1) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        return conv3d(x, self.weight, self.bias, self.stride, self.padding)
