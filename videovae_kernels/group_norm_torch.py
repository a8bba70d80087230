"""PyTorch reference of the fused group norm: the CPU path and the ground truth for the Triton kernels.

Semantics (shared with `group_norm_triton.py`, dispatched by `group_norm.py`):

    s = x + residual                              (only when `residual` is given)
    y = (s - mean) / sqrt(var + eps) * weight + bias
    y = silu(y)                                   (only when `silu`)
    out[:, :, front_pad:] = y;  out[:, :, :front_pad] = 0

Statistics are taken per (batch, group), over (C/G, T, H, W) ("per clip") or, with `per_frame`,
per (batch, group, frame) over (C/G, H, W). They accumulate in float32 whatever the input dtype,
and so does the rest of the arithmetic (affine and SiLU included), rounded once to the output dtype;
the output has the input's dtype and memory format (contiguous or channels-last-3d).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

NormResult = Tensor | tuple[Tensor, Tensor]  # y, or (y, x + residual)


@dataclass(frozen=True)
class GroupNormSpec:
    """What the fused op computes, besides its tensors (the semantics above): `num_groups` groups,
    `eps`, statistics per frame or per clip, SiLU after the affine, `front_pad` zero frames in front
    of the output. Every backend takes (x, weight, bias, spec, residual)."""

    num_groups: int
    eps: float = 1e-5
    per_frame: bool = False
    silu: bool = False
    front_pad: int = 0


def output_memory_format(x5: Tensor) -> torch.memory_format:
    """The output's memory format for a 5D input: channels-last-3d when x5 is (and is not also plain
    contiguous, as size-1 dims can make it), else contiguous. Shared with the Triton path."""
    if x5.is_contiguous(memory_format=torch.channels_last_3d) and not x5.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


def _group_stat(t: Tensor, G: int, per_frame: bool, reduce) -> Tensor:
    """sum over each group's channels of `reduce(t, dims)` over positions, for t: (B, C, T, H, W).

    `reduce` must be additive over positions (a sum, a squared norm). Per channel it reduces a view
    whose reduced dims are innermost (contiguous layout) or outer with the channels innermost
    (channels-last-3d), the reductions PyTorch vectorises. Returns
    (B, G, 1, F, 1, 1) float32, F = T per frame, 1 per clip.
    """
    B, C, T = t.shape[:3]
    if t.stride(1) == 1 and C > 1:  # channels innermost: channels-last-3d, also behind a front pad
        p = t.permute(0, 2, 3, 4, 1)                        # (B, T, H, W, C) view
        per_c = reduce(p, (2, 3) if per_frame else (1, 2, 3))  # (B, T, C) or (B, C)
        per_c = per_c.transpose(1, 2) if per_frame else per_c.unsqueeze(-1)
    else:
        per_c = reduce(t, (3, 4) if per_frame else (2, 3, 4))  # (B, C, T) or (B, C)
        per_c = per_c if per_frame else per_c.unsqueeze(-1)
    # per_c: (B, C, F) -> (B, G, 1, F, 1, 1)
    return per_c.unflatten(1, (G, C // G)).sum(2, keepdim=True)[..., None, None]


def group_norm_torch(x: Tensor, weight: Tensor | None, bias: Tensor | None, spec: GroupNormSpec,
                     residual: Tensor | None = None) -> NormResult:
    """Fused group norm on x: (B, C, T, H, W) or (N, C, H, W). Returns y, or (y, x + residual).

    Under torch.compile this runs `group_norm_functional` instead (Dynamo refuses the in-place
    writes into views below; Inductor fuses the functional form itself).
    """
    num_groups, eps, per_frame, silu, front_pad = spec.num_groups, spec.eps, spec.per_frame, spec.silu, spec.front_pad
    if torch.compiler.is_compiling():
        return group_norm_functional(x, weight, bias, spec, residual)
    summed = None
    if residual is not None:
        summed = x + residual
        x = summed

    # x5: (B, C, T, H, W); a 4D input is one frame: (N, C, 1, H, W).
    x5 = x if x.ndim == 5 else x.unsqueeze(2)
    B, C, T, H, W = x5.shape
    G = num_groups

    Cg = C // G
    out = torch.empty((B, C, T + front_pad, H, W), dtype=x.dtype, device=x.device, memory_format=output_memory_format(x5))
    if front_pad:
        out[:, :, :front_pad].zero_()
    body = out[:, :, front_pad:]
    # d: the float32 work buffer, which ends up holding y. For a float32 input it is the output
    # itself; a 16-bit input is upcast once into it (and y is rounded once into the output at the end).
    d = body if x5.dtype == torch.float32 else x5.float()
    src = x5 if d is body else d
    # (B, G, C/G, T, H, W) view of d: unflatten is a view for every stride pattern.
    d6 = d.unflatten(1, (G, Cg))
    n = Cg * H * W * (1 if per_frame else T)

    # Two-pass statistics in float32 (stable at any mean/std; torch.var_mean is ~20x slower on CPU):
    # mean0, then d = x - mean0, then the sum of d^2 and the small rounding residue mean(d). Each
    # reduction runs per channel first (fast for both layouts), then over the group's channels.
    mean0 = _group_stat(src, G, per_frame, lambda t, dims: t.sum(dim=dims)) / n        # (B, G, 1, F, 1, 1)
    torch.sub(src.unflatten(1, (G, Cg)), mean0, out=d6)
    mean_d = _group_stat(d, G, per_frame, lambda t, dims: t.sum(dim=dims)) / n         # ~1e-7 * |mean0|
    m2 = _group_stat(d, G, per_frame, lambda t, dims: torch.linalg.vector_norm(t, dim=dims).square_())
    var = m2 / n - mean_d.square()
    rstd = torch.rsqrt(var + eps)  # (B, G, 1, T or 1, 1, 1)

    # Fold the affine into one scale and shift per (b, c[, t]): y = d * scale + shift.
    w = weight.float().view(1, G, Cg, 1, 1, 1) if weight is not None else 1.0
    b = bias.float().view(1, G, Cg, 1, 1, 1) if bias is not None else 0.0
    scale = rstd * w   # (B, G, C/G or 1, T or 1, 1, 1)
    shift = b - mean_d * scale
    torch.addcmul(shift, d6, scale, out=d6)  # in place
    if silu:
        F.silu(d, inplace=True)
    if d is not body:
        body.copy_(d)

    if x.ndim == 4:
        out = out.squeeze(2)
    return out if summed is None else (out, summed)


def group_norm_functional(x: Tensor, weight: Tensor | None, bias: Tensor | None, spec: GroupNormSpec,
                          residual: Tensor | None = None) -> NormResult:
    """The same op without in-place writes into views, for torch.compile (float32 statistics)."""
    num_groups, eps, per_frame, silu, front_pad = spec.num_groups, spec.eps, spec.per_frame, spec.silu, spec.front_pad
    summed = x + residual if residual is not None else None
    x = summed if summed is not None else x
    x5 = x if x.ndim == 5 else x.unsqueeze(2)
    B, C, T, H, W = x5.shape
    G = num_groups
    grouped = x5.float().unflatten(1, (G, C // G))  # (B, G, C/G, T, H, W)
    dims = (2, 4, 5) if per_frame else (2, 3, 4, 5)
    var, mean = torch.var_mean(grouped, dim=dims, correction=0, keepdim=True)
    y = (grouped - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.float().view(1, G, C // G, 1, 1, 1)
    if bias is not None:
        y = y + bias.float().view(1, G, C // G, 1, 1, 1)
    y = y.flatten(1, 2)
    if silu:
        y = F.silu(y)
    y = y.to(x.dtype)
    if front_pad:
        y = F.pad(y, (0, 0, 0, 0, front_pad, 0))
    if output_memory_format(x5) == torch.channels_last_3d:
        y = y.contiguous(memory_format=torch.channels_last_3d)
    if x.ndim == 4:
        y = y.squeeze(2)
    return y if summed is None else (y, summed)


def native_group_norm_view(x: Tensor, per_frame: bool) -> Tensor | None:
    """A view of x on which PyTorch's native F.group_norm computes this op's statistics, or None.

    x: (B, C, T, H, W). Per clip: x itself when contiguous or channels-last-3d (native has a
    channels-last kernel: 9x faster than the reference's reductions over outer dims). Per frame:
    (B*T, C, H, W), a view only for channels-last-3d x (a channels-last 2D batch of frames). 4D
    input: x itself.
    """
    dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last_3d)
    if x.ndim == 4 or (not per_frame and dense):
        return x
    if per_frame and x.is_contiguous(memory_format=torch.channels_last_3d):
        return x.transpose(1, 2).flatten(0, 1)  # (B*T, C, H, W), channels-last strides
    return None


def group_norm_cpu(x: Tensor, weight: Tensor | None, bias: Tensor | None, spec: GroupNormSpec,
                   residual: Tensor | None = None) -> NormResult:
    """The lean CPU path the dispatcher runs: `group_norm_torch`, except for 16-bit inputs whose
    layout PyTorch's native group norm can read in place, for per-frame statistics of
    channels-last-3d inputs (a free channels-last 2D view, where the reference's reductions are slow),
    and for float32 without front padding (native is one fused pass; with padding the reference
    writes straight into the padded buffer, which native cannot). Native CPU group norm accumulates 16-bit
    inputs in float32 (Welford moments) and rounds the affine result once; SiLU then runs in place
    on the rounded values (the reference applies it before rounding: within 1 ulp of it). This
    avoids the reference's full float32 copy of 16-bit activations (~4x faster here)."""
    num_groups, eps, per_frame, silu, front_pad = spec.num_groups, spec.eps, spec.per_frame, spec.silu, spec.front_pad
    view = None
    channels_last_frames = per_frame and x.ndim == 5 and output_memory_format(x) == torch.channels_last_3d
    no_pad_float32 = x.dtype == torch.float32 and front_pad == 0
    wanted = x.dtype in (torch.bfloat16, torch.float16) or channels_last_frames or no_pad_float32
    if wanted and not torch.compiler.is_compiling():
        summed = x + residual if residual is not None else None
        source = summed if summed is not None else x
        view = native_group_norm_view(source, per_frame)
    if view is None:
        return group_norm_torch(x, weight, bias, spec, residual)
    y = F.group_norm(view, num_groups, weight, bias, eps)
    if silu:
        F.silu(y, inplace=True)
    if source.ndim == 5 and per_frame:
        y = y.unflatten(0, (source.shape[0], source.shape[2])).transpose(1, 2)  # back to (B, C, T, H, W)
    if front_pad:
        B, C, T, H, W = source.shape
        out = torch.empty((B, C, front_pad + T, H, W), dtype=y.dtype, device=y.device, memory_format=output_memory_format(source))
        out[:, :, :front_pad].zero_()
        out[:, :, front_pad:].copy_(y)
        y = out
    return y if summed is None else (y, summed)


def group_norm_differentiable(x: Tensor, weight: Tensor | None, bias: Tensor | None, spec: GroupNormSpec,
                              residual: Tensor | None = None) -> NormResult:
    """The same op from out-of-place PyTorch ops only, so autograd differentiates it: the path taken
    whenever a gradient is needed (training). Native `F.group_norm` (one fused pass forward and
    backward on CPU and CUDA), on frames folded into the batch for per-frame statistics."""
    num_groups, eps, per_frame, silu, front_pad = spec.num_groups, spec.eps, spec.per_frame, spec.silu, spec.front_pad
    summed = x + residual if residual is not None else None
    source = summed if summed is not None else x
    x5 = source if source.ndim == 5 else source.unsqueeze(2)
    B, C, T, H, W = x5.shape
    if per_frame and T > 1:
        frames = x5.transpose(1, 2).reshape(B * T, C, H, W)  # (B*T, C, H, W)
        y = F.group_norm(frames, num_groups, weight, bias, eps).view(B, T, C, H, W).transpose(1, 2)
    else:
        y = F.group_norm(x5, num_groups, weight, bias, eps)
    if silu:
        y = F.silu(y)
    if front_pad:
        y = F.pad(y, (0, 0, 0, 0, front_pad, 0))
    y = y.contiguous(memory_format=output_memory_format(x5))
    if source.ndim == 4:
        y = y.squeeze(2)
    return y if summed is None else (y, summed)

