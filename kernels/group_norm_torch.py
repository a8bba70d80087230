"""PyTorch reference of the fused group norm: the CPU path and the ground truth for the Triton kernels.

Semantics (shared with `group_norm_triton.py`, dispatched by `group_norm.py`):

    s = x + residual                              (only when `residual` is given)
    y = (s - mean) / sqrt(var + eps) * weight + bias
    y = silu(y)                                   (only when `silu`)
    out[:, :, front_pad:] = y;  out[:, :, :front_pad] = 0

Statistics are taken per (batch, group), over (C/G, T, H, W) ("per clip") or, with `per_frame`,
per (batch, group, frame) over (C/G, H, W). They accumulate in float32 whatever the input dtype;
the output has the input's dtype and memory format (contiguous or channels-last-3d).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def group_norm_torch(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float = 1e-5,
    *,
    per_frame: bool = False,
    silu: bool = False,
    residual: Tensor | None = None,
    front_pad: int = 0,
) -> Tensor | tuple[Tensor, Tensor]:
    """Fused group norm on x: (B, C, T, H, W) or (N, C, H, W). Returns y, or (y, x + residual)."""
    summed = None
    if residual is not None:
        summed = x + residual
        x = summed

    # x5: (B, C, T, H, W); a 4D input is one frame: (N, C, 1, H, W).
    x5 = x if x.ndim == 5 else x.unsqueeze(2)
    B, C, T, H, W = x5.shape
    G = num_groups

    # Statistics in float32; a float32 input is read in place, a 16-bit one is upcast once.
    xf = x5 if x5.dtype == torch.float32 else x5.float()
    # grouped: (B, G, C/G, T, H*W); a view for contiguous and channels-last-3d strides alike.
    grouped = xf.unflatten(1, (G, C // G)).flatten(4)
    reduce_dims = (2, 4) if per_frame else (2, 3, 4)
    var, mean = torch.var_mean(grouped, dim=reduce_dims, correction=0, keepdim=True)
    rstd = torch.rsqrt(var + eps)  # (B, G, 1, T or 1, 1)

    # Fold the affine into one scale and shift per (b, c[, t]): y = x * scale + shift.
    w = weight.float().view(1, G, C // G, 1, 1) if weight is not None else 1.0
    b = bias.float().view(1, G, C // G, 1, 1) if bias is not None else 0.0
    scale = rstd * w  # (B, G, C/G, T or 1, 1)
    shift = b - mean * scale
    # back to (B, C, T or 1, 1, 1) to broadcast over x5
    scale = scale.flatten(1, 2).unsqueeze(-1)
    shift = shift.flatten(1, 2).unsqueeze(-1)

    memory_format = (
        torch.channels_last_3d
        if x5.dim() == 5 and x5.is_contiguous(memory_format=torch.channels_last_3d) and not x5.is_contiguous()
        else torch.contiguous_format
    )
    out = torch.empty((B, C, T + front_pad, H, W), dtype=x.dtype, device=x.device, memory_format=memory_format)
    if front_pad:
        out[:, :, :front_pad].zero_()
    body = out[:, :, front_pad:]
    torch.addcmul(shift, x5, scale, out=body) if body.dtype == torch.float32 else body.copy_(
        torch.addcmul(shift, xf, scale)
    )
    if silu:
        F.silu(body, inplace=True)

    if x.ndim == 4:
        out = out.squeeze(2)
    return out if summed is None else (out, summed)
