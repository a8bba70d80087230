"""Building blocks shared by the families, and the layout helpers. Every norm goes through
`videovae_kernels.group_norm`."""

from __future__ import annotations

from fractions import Fraction

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from videovae import winograd
from videovae.conv3d import Conv3d, conv3d
from videovae_kernels import group_norm


class GroupNorm(nn.Module):
    """Group norm whose parameters load from `nn.GroupNorm` keys (weight, bias), run by the fused op.

    per_frame: statistics over (C/G, H, W) for each frame (causal in time) instead of the whole clip.
    forward(x, silu=..., front_pad=...) exposes the fusions the models use; see
    `videovae_kernels.group_norm`.
    """

    def __init__(self, num_channels: int, num_groups: int = 32, eps: float = 1e-5, per_frame: bool = False):
        super().__init__()
        self.num_groups, self.eps, self.per_frame = num_groups, eps, per_frame
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor, *, silu: bool = False, front_pad: int = 0):
        per_frame = self.per_frame and x.ndim == 5
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, per_frame=per_frame, silu=silu, front_pad=front_pad)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, groups={self.num_groups}, eps={self.eps}, per_frame={self.per_frame}"


def pad_time_front(x: Tensor, frames: int) -> Tensor:
    """x: (B, C, T, H, W) -> (B, C, frames + T, H, W) with `frames` zero frames in front."""
    if frames == 0:
        return x
    out = torch.empty((x.shape[0], x.shape[1], frames + x.shape[2], *x.shape[3:]),
                      dtype=x.dtype, device=x.device, memory_format=_memory_format_of(x))
    out[:, :, :frames].zero_()
    out[:, :, frames:].copy_(x)
    return out


def _memory_format_of(x: Tensor) -> torch.memory_format:
    return torch.channels_last_3d if x.ndim == 5 and is_channels_last(x) else torch.contiguous_format


class CausalConv3d(nn.Module):
    """A 3D convolution that is causal in time: each output frame sees only input frames up to its own.

    Time is zero-padded at the front by (kernel_t - 1) frames; H and W are zero-padded symmetrically
    by the conv itself. `forward(x, padded=True)` takes an input whose front padding is already in
    place (written by a fused norm with `front_pad`), so no pad copy is made. The front frames are
    always zeros: large float32 3x3x3 convs use that, and Winograd tiles along time
    (`videovae.winograd`), unless `winograd` is set to False.
    Parameters live in `.conv` (checkpoint keys `<name>.conv.weight`, `<name>.conv.bias`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.time_pad = kernel_size - 1
        self.winograd = True
        self.conv = Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=(0, kernel_size // 2, kernel_size // 2))

    def forward(self, x: Tensor, *, padded: bool = False, residual: Tensor | None = None) -> Tensor:
        """x: (B, C_in, T, H, W), or (B, C_in, time_pad + T, H, W) when padded -> (B, C_out, T', H', W')."""
        if not padded:
            x = pad_time_front(x, self.time_pad)
        if _weight_bound(self.conv, x):
            out = conv3d_as_matmul(F.pad(x, (1, 1, 1, 1)) if self.conv.padding[1] else x, self.conv.weight, self.conv.bias)
        elif self.winograd and winograd.worth_it(x, self.conv.weight, self.conv.stride):
            return winograd.causal_conv3d_winograd(x, self.conv.weight, self.conv.bias, residual)
        else:
            out = self.conv(x)
        if residual is not None:
            out.add_(residual)
        return out


# Below this many output positions per sample, a conv with a large weight is bound by re-laying-out
# its weight (oneDNN does it at every call on CPU), not by arithmetic: a plain matmul is faster
# there (Step-Video v2's decoder head, 2048 -> 4096 channels on 3x6x6: 2x).
_MATMUL_MAX_POSITIONS = 256
_MATMUL_MIN_WEIGHT = 1 << 24


def _weight_bound(conv: nn.Conv3d, x: Tensor) -> bool:
    if x.is_cuda or conv.stride != (1, 1, 1) or conv.weight.numel() < _MATMUL_MIN_WEIGHT:
        return False
    if torch.compiler.is_compiling():
        return False
    T, H, W = x.shape[2:]
    positions = (T - conv.kernel_size[0] + 1) * H * W  # H/W keep their size (padding k // 2)
    return positions <= _MATMUL_MAX_POSITIONS


def conv3d_as_matmul(xp: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A stride-1 3D conv as one matmul over gathered patches (im2col).

    xp: (B, C_in, T + kt - 1, H + kh - 1, W + kw - 1), already padded; weight (C_out, C_in, kt, kh, kw)
    -> (B, C_out, T, H, W). Exact up to float summation order.
    """
    B, C, Tp, Hp, Wp = xp.shape
    O, _, kt, kh, kw = weight.shape
    T, H, W = Tp - kt + 1, Hp - kh + 1, Wp - kw + 1
    sB, sC, sT, sH, sW = xp.stride()
    # patches: (B, C, kt, kh, kw, T, H, W) view -> (B, C * kt * kh * kw, T * H * W) copy
    patches = xp.as_strided((B, C, kt, kh, kw, T, H, W), (sB, sC, sT, sH, sW, sT, sH, sW))
    out = torch.matmul(weight.reshape(O, -1), patches.reshape(B, C * kt * kh * kw, T * H * W))
    if bias is not None:
        out.add_(bias.view(1, O, 1))
    return out.view(B, O, T, H, W)


def conv_per_frame(x: Tensor, conv: nn.Conv2d, padding: tuple[int, int] = (0, 0)) -> Tensor:
    """Apply a 2D conv to every frame of x: (B, C, T, H, W), as a (1, kh, kw) 3D conv (no fold copy).

    A single frame goes through conv2d: PyTorch runs a one-frame conv3d with its slow reference
    kernel on CPU."""
    if x.shape[2] == 1:
        return F.conv2d(x[:, :, 0], conv.weight, conv.bias, stride=conv.stride, padding=padding).unsqueeze(2)
    weight = conv.weight.unsqueeze(2)  # (C_out, C_in, 1, kh, kw)
    return conv3d(x, weight, conv.bias, stride=(1, *conv.stride), padding=(0, *padding))


def pixel_unshuffle_3d(x: Tensor, factor: int) -> Tensor:
    """x: (B, C, T, H, W) with T, H, W divisible by factor -> (B, C * factor^3, T/f, H/f, W/f).

    Output channel c * f^3 + (ft * f + fh) * f + fw holds input (c, t * f + ft, h * f + fh, w * f + fw).
    """
    return rearrange(x, "b c (t ft) (h fh) (w fw) -> b (c ft fh fw) t h w", ft=factor, fh=factor, fw=factor)


def pixel_shuffle_3d(x: Tensor, factor: int) -> Tensor:
    """Inverse of `pixel_unshuffle_3d`: x: (B, C * f^3, T, H, W) -> (B, C, T * f, H * f, W * f)."""
    return rearrange(x, "b (c ft fh fw) t h w -> b c (t ft) (h fh) (w fw)", ft=factor, fh=factor, fw=factor)


def channel_group_mean(x: Tensor, out_channels: int) -> Tensor:
    """x: (B, C, ...) -> (B, out_channels, ...): mean over consecutive groups of C / out_channels channels."""
    return x.unflatten(1, (out_channels, x.shape[1] // out_channels)).mean(dim=2)


def self_attention(x: Tensor, normed: Tensor, projections, *, causal: bool) -> Tensor:
    """Single-head self-attention over every position of x: (N, C, *positions), in raster order,
    plus the residual x. normed: the pre-norm of x; projections: ((weight (C, C), bias) of q, k, v
    and the output); causal: causal at token level (Step-Video), else full (SVD's per-image one).

    The result is written over the projected tokens and viewed back, so it is channels-last in memory.
    """
    tokens = normed.flatten(2).transpose(1, 2)  # (N, L, C)
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = projections
    q, k, v = F.linear(tokens, wq, bq), F.linear(tokens, wk, bk), F.linear(tokens, wv, bv)
    # (N, 1, L, C): with a head dim, PyTorch's CPU SDPA takes its flash kernel (memory O(L));
    # without one, the math path materialises the (L, L) scores (5 GB at 20k tokens, 7x slower)
    attended = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), is_causal=causal)
    attended = F.linear(attended.squeeze(1), wo, bo)  # (N, L, C)
    return attended.transpose(1, 2).view(x.shape).add_(x)


class CausalAttention(nn.Module):
    """Step-Video's attention: `self_attention` over all (t, h, w) tokens of a chunk, causal at token
    level. q, k, v, proj_out are 1x1x1 convs (keys `<name>.conv.weight`), run as linears.
    """

    def __init__(self, channels: int, per_frame_norm: bool):
        super().__init__()
        self.norm = GroupNorm(channels, per_frame=per_frame_norm)
        self.q = CausalConv3d(channels, channels, kernel_size=1)
        self.k = CausalConv3d(channels, channels, kernel_size=1)
        self.v = CausalConv3d(channels, channels, kernel_size=1)
        self.proj_out = CausalConv3d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, T, H, W) -> same shape."""
        projections = [(p.conv.weight.flatten(1), p.conv.bias) for p in (self.q, self.k, self.v, self.proj_out)]
        return self_attention(x, self.norm(x), projections, causal=True)


class Downsample2d(nn.Module):
    """Zero-pad one row at the bottom and one column at the right, then a 3x3 stride-2 conv on each
    frame: (N, C, H, W) or (B, C, T, H, W) -> (..., H // 2, W // 2). Keys `conv.*`."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x) if x.ndim == 4 else conv_per_frame(x, self.conv)

    def tiled(self, x: Tensor, tiles) -> Tensor:
        """forward tile by tile (`videovae.tiling.Tiles`)."""
        return tiles.map(self, x, halo=2, scale=Fraction(1, 2))


class Upsample2d(nn.Module):
    """Nearest x2 in (h, w), then a 3x3 conv on each frame: (N, C, H, W) or (B, C, T, H, W) ->
    (..., 2H, 2W). Keys `conv.*`.

    by_phases (default): the same result computed as four 2x2 convs on the low-res input
    (`upsample2x_conv`), 2.25x fewer multiply-adds; False runs the plain upsample + conv.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.by_phases = True

    def forward(self, x: Tensor) -> Tensor:
        if self.by_phases:
            return upsample2x_conv(x, self.conv.weight.unsqueeze(2), self.conv.bias, time=False)
        if x.ndim == 4:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return conv_per_frame(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"), self.conv, padding=(1, 1))

    def tiled(self, x: Tensor, tiles) -> Tensor:
        """forward tile by tile (`videovae.tiling.Tiles`)."""
        return tiles.map(self, x, halo=1, scale=2)


# ------------------------------------------------------------------------------------------------
# Layouts. The public layout is (B, T, C, H, W); families compute on clips (B, C, T, H, W), and
# per-image layers on folded frames (B*T, C, H, W), index b*T + t.


def time_to_channels(x: Tensor) -> Tensor:
    """(B, T, C, H, W) -> clip (B, C, T, H, W), a view."""
    return x.transpose(1, 2)


def channels_to_time(x: Tensor) -> Tensor:
    """Clip (B, C, T, H, W) -> (B, T, C, H, W), a view."""
    return x.transpose(1, 2)


def clip_to_folded(x: Tensor) -> Tensor:
    """Clip (B, C, T, H, W) -> folded (B*T, C, H, W). A strided view, not a copy."""
    return rearrange(x, "b c t h w -> (b t) c h w")


def folded_to_clip(x: Tensor, num_frames: int, *, contiguous: bool = True) -> Tensor:
    """Folded (B*T, C, H, W) -> clip (B, C, T, H, W): a dense clip (what Conv3d and the fused norm
    take), or with contiguous=False a strided view (for an output whose consumer transposes back to
    (B, T, C, H, W)). Channels-last frames give a channels-last-3d clip, which is the same memory:
    a view, no copy; other frames are copied into a contiguous clip."""
    clip = rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)
    if not contiguous:
        return clip
    return clip.contiguous(memory_format=torch.channels_last_3d if is_channels_last(x) else torch.contiguous_format)


def is_channels_last(x: Tensor) -> bool:
    """True for a channels-last (N, C, H, W) or channels-last-3d (B, C, T, H, W) tensor that is not
    also plain contiguous (as size-1 dims can make it)."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.ndim)
    return fmt is not None and not x.is_contiguous() and x.is_contiguous(memory_format=fmt)


# ------------------------------------------------------------------------------------------------
# Nearest x2 upsampling followed by a 3-tap convolution, computed on the low-resolution input.
#
# Upsampling by 2 (nearest) and then convolving with a 3-tap kernel gives, on each output phase
# (even or odd index), a 2-tap convolution of the low-resolution input whose taps are sums of the
# original ones. Per axis, phase p uses the low-res window starting at `_WINDOW_START[mode][p]`
# (relative to the output's low-res index) with taps `_PHASE_TAPS[mode][p] @ (w0, w1, w2)`:
#   "same"   (zero pad 1 both sides):  even: w0 x[i-1] + (w1+w2) x[i];   odd: (w0+w1) x[i] + w2 x[i+1]
#   "causal" (zero pad 2 in front):    even: (w0+w1) x[t-1] + w2 x[t];   odd: w0 x[t-1] + (w1+w2) x[t]
# In 3D that is 8 convolutions with 2x2x2 kernels instead of one 3x3x3 on 8x the voxels: 27/8 = 3.4x
# fewer multiply-adds, and the upsampled tensor is never materialised. Exact up to float rounding.

_PHASE_TAPS = {
    "same": (((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))),
    "causal": (((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)), ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0))),
}


def _phase_kernels(weight: Tensor, time_upsampled: bool) -> list[tuple[tuple[int, int, int], Tensor]]:
    """weight: (C_out, C_in, kt, 3, 3) -> [((pt, ph, pw), kernel (C_out, C_in, kt', 2, 2))] per phase."""
    taps = {mode: weight.new_tensor(_PHASE_TAPS[mode]) for mode in _PHASE_TAPS}  # (phase, 2, 3)
    phases_t = (0, 1) if time_upsampled else (0,)
    kernels = []
    for pt in phases_t:
        for ph in (0, 1):
            for pw in (0, 1):
                mh, mw = taps["same"][ph], taps["same"][pw]
                if time_upsampled:
                    k = torch.einsum("ai,bj,dk,ocijk->ocabd", taps["causal"][pt], mh, mw, weight)
                else:
                    k = torch.einsum("bj,dk,ocijk->ocibd", mh, mw, weight)
                kernels.append(((pt, ph, pw), k))
    return kernels


def upsample2x_conv(x: Tensor, weight: Tensor, bias: Tensor | None, *, time: bool, history: bool = False) -> Tensor:
    """Nearest x2 upsampling then a zero-padded conv, computed phase by phase on the low-res input.

    x: (B, C_in, T, H, W), or with time=False also images (N, C_in, H, W).
    time=True:  x2 in (t, h, w), then a causal 3x3x3 conv (2 zero frames in front, H/W padded by 1);
                weight (C_out, C_in, 3, 3, 3) -> (B, C_out, 2T, 2H, 2W).
    time=False: x2 in (h, w), then a per-frame 3x3 conv (H/W padded by 1);
                weight (C_out, C_in, 1, 3, 3) -> (B, C_out, T, 2H, 2W) (or (N, C_out, 2H, 2W)).
    history (time=True only): x's first frame is the low-res frame before the T that follow it
        (a frame stream's state) instead of the zero frame in front: -> (B, C_out, 2 (T_x - 1), 2H, 2W).
    """
    image = x.ndim == 4
    clip = x.unsqueeze(2) if image else x  # (B, C_in, T, H, W)
    B, _, T, H, W = clip.shape
    T -= history
    C_out = weight.shape[0]
    # Low-res zero padding: one frame in front (causal) and one row/column on each side.
    xp = F.pad(clip, (1, 1, 1, 1, 1 if time and not history else 0, 0))
    pt_count = 2 if time else 1
    # (B, C_out, T, pt, H, 2, W, 2): the phases interleave on the view below; channels-last in
    # memory for a channels-last input, so that the output keeps the input's layout.
    if is_channels_last(clip):
        out = x.new_empty((B, T, pt_count, H, 2, W, 2, C_out)).permute(0, 7, 1, 2, 3, 4, 5, 6)
    else:
        out = x.new_empty((B, C_out, T, pt_count, H, 2, W, 2))
    for (pt, ph, pw), kernel in _phase_kernels(weight, time):
        window = xp[:, :, :, ph : ph + H + 1, pw : pw + W + 1]  # phase ph starts at low-res row i-1+ph
        if image:  # conv2d: a one-frame conv3d runs PyTorch's slow reference kernel on CPU
            out[:, :, 0, pt, :, ph, :, pw] = F.conv2d(window[:, :, 0], kernel[:, :, 0], bias)
        else:
            out[:, :, :, pt, :, ph, :, pw] = conv3d(window, kernel, bias)
    out = out.view(B, C_out, T * pt_count, 2 * H, 2 * W)
    return out[:, :, 0] if image else out


def add_upsampled_(h: Tensor, x: Tensor, *, time: bool) -> Tensor:
    """h += nearest_x2(x) in place, without materialising the upsampled x.

    h: (B, C, 2T or T, 2H, 2W), contiguous or channels-last-3d; x: (B, C, T, H, W), any layout.
    """
    B, C, T, H, W = x.shape
    pt = 2 if time else 1
    if is_channels_last(h):  # split the dims of the (B, T, H, W, C) memory
        h.permute(0, 2, 3, 4, 1).view(B, T, pt, H, 2, W, 2, C).add_(x.permute(0, 2, 3, 4, 1).reshape(B, T, 1, H, 1, W, 1, C))
    else:
        h.view(B, C, T, pt, H, 2, W, 2).add_(x.reshape(B, C, T, 1, H, 1, W, 1))
    return h
