"""Triton kernels of the fused group norm: GN (+ residual add before it) (+ affine) (+ SiLU) (+ output
written behind `front_pad` zero frames). The semantics are exactly those of `group_norm_torch.py`;
`group_norm.py` validates arguments and dispatches here for CUDA tensors (or on CPU under
`TRITON_INTERPRET=1`, which must be set before this module is imported).

Work split
----------
A *unit* is one set of elements that shares statistics: (batch, group) per clip, or (batch, group,
frame) with `per_frame`. Units are numbered with the group fastest: u = (b * F + f) * G + g, where
F = T per frame and F = 1 per clip. Inside a unit an element is addressed by its channel within the
group c in [0, C/G) and its flattened position s in [0, S), S = H*W per frame or T*H*W per clip.
(T, H, W) flatten to one stride for contiguous and channels-last-3d tensors alike (and for slices
along T), so an element's offset is

    b*stride_b + (g*C/G + c)*stride_c + f*stride_t + s*stride_s        (all int64)

A *tile* is [BLOCK_U units, BLOCK_C channels, BLOCK_S positions]: large units are split over many
tiles (many programs per group), small units are packed several per tile. Three launches:

1. `_gn_stats_kernel`: one program per tile; (adds the residual and stores the sum;) writes each
   unit's tile partials count / mean / M2 (sum of squared deviations from the tile mean), in fp32.
2. `_gn_combine_kernel`: per unit, combines its tile partials with Chan's parallel formula (stable at
   any mean/std ratio, unlike sum and sum of squares) into mean and 1/sqrt(var + eps).
3. `_gn_apply_kernel`: same tiles as 1; y = x*scale + shift with scale = rstd*weight,
   shift = bias - mean*scale; SiLU; stores into the output body, behind the zero front frames.

Every load is converted to fp32 at once (the interpreter computes bf16 arithmetic wrongly) and all
arithmetic and statistics are fp32; stores round to the tensor's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

from .group_norm_torch import GroupNormSpec, NormResult, group_norm_differentiable, output_memory_format

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Elements per program. On a GPU, 4096 keeps ~16 fp32 values per thread at 8 warps (untuned: no
# GPU was available when this was written). The interpreter costs ~2 ms per program, so it takes
# far bigger tiles.
GPU_TILE = 4096
INTERPRETER_TILE = 1 << 16
MAX_GRID = 2**31 - 1


# --------------------------------------------------------------------------------------------
# Index arithmetic, shared by both tile kernels (and probed directly by the int64 test).
# --------------------------------------------------------------------------------------------
@triton.jit
def _tile_coords(
    pid,             # int32 program id: tile index in [0, n_unit_blocks * tiles_per_unit)
    n_units,         # number of units (B*G*F)
    G,               # groups
    F,               # frames per batch that own statistics: T per frame, 1 per clip
    CG,              # channels per group, C/G
    S,               # positions per unit: H*W per frame, T*H*W per clip
    tiles_per_unit,  # tiles_c * tiles_s
    tiles_s,         # tiles along the positions, cdiv(S, BLOCK_S)
    BLOCK_U: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """This tile's unit/channel/position index vectors (int64) and their masks.

    Returns u, b, g, f (each (BLOCK_U,)), c (BLOCK_C,), s (BLOCK_S,), part (scalar: the tile's index
    within its units, where the stats kernel stores partials), and the masks u_ok, c_ok, s_ok.
    """
    pid = tl.cast(pid, tl.int64)
    unit_block = pid // tl.cast(tiles_per_unit, tl.int64)
    part = pid % tl.cast(tiles_per_unit, tl.int64)
    tile_c = part // tl.cast(tiles_s, tl.int64)
    tile_s = part % tl.cast(tiles_s, tl.int64)
    u = unit_block * BLOCK_U + tl.arange(0, BLOCK_U).to(tl.int64)
    c = tile_c * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    s = tile_s * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    g = u % tl.cast(G, tl.int64)
    bf = u // tl.cast(G, tl.int64)
    f = bf % tl.cast(F, tl.int64)
    b = bf // tl.cast(F, tl.int64)
    return u, b, g, f, c, s, part, u < n_units, c < CG, s < S


@triton.jit
def _tile_offsets(
    b, g, f,          # (BLOCK_U,) int64 batch, group, frame of each unit in the tile
    c,                # (BLOCK_C,) int64 channel within the group
    s,                # (BLOCK_S,) int64 flattened position within the unit
    CG,               # channels per group
    stride_b, stride_c, stride_t, stride_s,  # element strides of the tensor (stride_s: flattened positions)
):
    """(BLOCK_U, BLOCK_C, BLOCK_S) int64 element offsets of the tile in one tensor."""
    sb = tl.cast(stride_b, tl.int64)
    sc = tl.cast(stride_c, tl.int64)
    st = tl.cast(stride_t, tl.int64)
    ss = tl.cast(stride_s, tl.int64)
    unit_base = b * sb + g * tl.cast(CG, tl.int64) * sc + f * st
    return unit_base[:, None, None] + (c * sc)[None, :, None] + (s * ss)[None, None, :]


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
@triton.jit
def _gn_stats_kernel(
    x_ptr,     # input x: (B, C, T, H, W) read through x's strides; fp32, bf16 or fp16
    r_ptr,     # residual, shaped like x, same dtype (only read when HAS_RESIDUAL; else any pointer)
    sum_ptr,   # output x + residual, shaped like x, x's dtype (only written when HAS_RESIDUAL)
    cnt_ptr,   # (n_units, tiles_per_unit) fp32 out: elements of the unit this tile holds
    mean_ptr,  # (n_units, tiles_per_unit) fp32 out: their mean
    m2_ptr,    # (n_units, tiles_per_unit) fp32 out: their sum of squared deviations from that mean
    n_units, G, F, CG, S, tiles_per_unit, tiles_s,  # the work split (see _tile_coords)
    x_sb, x_sc, x_st, x_ss,  # strides of x: batch, channel, frame, flattened position
    r_sb, r_sc, r_st, r_ss,  # strides of the residual
    o_sb, o_sc, o_st, o_ss,  # strides of the sum output
    HAS_RESIDUAL: tl.constexpr,  # add r to x (statistics are of the sum as stored, like the reference)
    BLOCK_U: tl.constexpr,       # units per tile (power of 2)
    BLOCK_C: tl.constexpr,       # channels per tile (power of 2)
    BLOCK_S: tl.constexpr,       # positions per tile (power of 2)
):
    u, b, g, f, c, s, part, u_ok, c_ok, s_ok = _tile_coords(
        tl.program_id(0), n_units, G, F, CG, S, tiles_per_unit, tiles_s, BLOCK_U, BLOCK_C, BLOCK_S)
    mask = u_ok[:, None, None] & c_ok[None, :, None] & s_ok[None, None, :]
    v = tl.load(x_ptr + _tile_offsets(b, g, f, c, s, CG, x_sb, x_sc, x_st, x_ss), mask=mask, other=0.0)
    v = v.to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + _tile_offsets(b, g, f, c, s, CG, r_sb, r_sc, r_st, r_ss), mask=mask, other=0.0)
        total = (v + r.to(tl.float32)).to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + _tile_offsets(b, g, f, c, s, CG, o_sb, o_sc, o_st, o_ss), total, mask=mask)
        v = total.to(tl.float32)

    # Valid elements per unit in this tile (the same for every unit of the tile): exact in fp32.
    n_c = tl.minimum(CG - tl.min(c, axis=0), BLOCK_C)  # c, s: this tile's runs of channels, positions
    n_s = tl.minimum(S - tl.min(s, axis=0), BLOCK_S)
    n = (n_c * n_s).to(tl.float32)
    mean = tl.sum(tl.sum(v, axis=2), axis=1) / n                           # (BLOCK_U,)
    dev = tl.where(mask, v - mean[:, None, None], 0.0)
    m2 = tl.sum(tl.sum(dev * dev, axis=2), axis=1)                         # (BLOCK_U,)

    p = u * tl.cast(tiles_per_unit, tl.int64) + part
    tl.store(cnt_ptr + p, tl.zeros([BLOCK_U], tl.float32) + n, mask=u_ok)
    tl.store(mean_ptr + p, mean, mask=u_ok)
    tl.store(m2_ptr + p, m2, mask=u_ok)


@triton.jit
def _gn_combine_kernel(
    cnt_ptr,    # (n_units, n_parts) fp32: per-tile element counts (from _gn_stats_kernel)
    mean_ptr,   # (n_units, n_parts) fp32: per-tile means
    m2_ptr,     # (n_units, n_parts) fp32: per-tile M2
    unit_mean_ptr,  # (n_units,) fp32 out: the unit's mean
    unit_rstd_ptr,  # (n_units,) fp32 out: the unit's 1 / sqrt(biased variance + eps)
    n_units,    # units
    n_parts,    # tile partials per unit
    eps,        # fp32 epsilon added to the variance
    BLOCK_U: tl.constexpr,  # units per program (power of 2)
    BLOCK_P: tl.constexpr,  # partials combined per loop step (power of 2)
):
    u = tl.cast(tl.program_id(0), tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U).to(tl.int64)
    u_ok = u < n_units
    n = tl.zeros([BLOCK_U], tl.float32)
    mean = tl.zeros([BLOCK_U], tl.float32)
    m2 = tl.zeros([BLOCK_U], tl.float32)
    for p0 in range(0, n_parts, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
        mask = u_ok[:, None] & (p < n_parts)[None, :]
        offs = u[:, None] * tl.cast(n_parts, tl.int64) + p[None, :]
        cn = tl.load(cnt_ptr + offs, mask=mask, other=0.0)
        cm = tl.load(mean_ptr + offs, mask=mask, other=0.0)
        c2 = tl.load(m2_ptr + offs, mask=mask, other=0.0)
        # This block of partials at once: M2 = sum M2_i + sum n_i (mean_i - mean_block)^2.
        n_blk = tl.sum(cn, axis=1)
        mean_blk = tl.sum(cn * cm, axis=1) / tl.maximum(n_blk, 1.0)
        d = cm - mean_blk[:, None]
        m2_blk = tl.sum(c2, axis=1) + tl.sum(cn * d * d, axis=1)
        # Chan et al.: merge the running (n, mean, m2) with the block's.
        n_new = n + n_blk
        delta = mean_blk - mean
        frac = n_blk / tl.maximum(n_new, 1.0)
        mean = mean + delta * frac
        m2 = m2 + m2_blk + delta * delta * n * frac
        n = n_new
    var = m2 / tl.maximum(n, 1.0)
    tl.store(unit_mean_ptr + u, mean, mask=u_ok)
    tl.store(unit_rstd_ptr + u, tl.rsqrt(var + eps), mask=u_ok)


@triton.jit
def _gn_apply_kernel(
    x_ptr,          # input: x, or x + residual as stored by _gn_stats_kernel; (B, C, T, H, W) via strides
    out_ptr,        # output body (B, C, T, H, W) via strides: the frames after the zero front pad
    unit_mean_ptr,  # (n_units,) fp32 unit means
    unit_rstd_ptr,  # (n_units,) fp32 unit 1/sqrt(var + eps)
    w_ptr,          # (C,) weight, any float dtype (only read when HAS_WEIGHT)
    b_ptr,          # (C,) bias, any float dtype (only read when HAS_BIAS)
    n_units, G, F, CG, S, tiles_per_unit, tiles_s,  # the work split (see _tile_coords)
    x_sb, x_sc, x_st, x_ss,  # strides of the input
    o_sb, o_sc, o_st, o_ss,  # strides of the output body
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    APPLY_SILU: tl.constexpr,    # y = y * sigmoid(y) after the affine
    BLOCK_U: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,  # tile shape (powers of 2)
):
    u, b, g, f, c, s, part, u_ok, c_ok, s_ok = _tile_coords(
        tl.program_id(0), n_units, G, F, CG, S, tiles_per_unit, tiles_s, BLOCK_U, BLOCK_C, BLOCK_S)
    mask = u_ok[:, None, None] & c_ok[None, :, None] & s_ok[None, None, :]
    v = tl.load(x_ptr + _tile_offsets(b, g, f, c, s, CG, x_sb, x_sc, x_st, x_ss), mask=mask, other=0.0)
    v = v.to(tl.float32)

    mean = tl.load(unit_mean_ptr + u, mask=u_ok, other=0.0)
    rstd = tl.load(unit_rstd_ptr + u, mask=u_ok, other=0.0)
    # Fold normalisation and affine into one scale and shift per (unit, channel).
    scale = rstd[:, None] + tl.zeros([BLOCK_U, BLOCK_C], tl.float32)      # (BLOCK_U, BLOCK_C)
    ch = g[:, None] * tl.cast(CG, tl.int64) + c[None, :]                  # absolute channel
    ch_ok = u_ok[:, None] & c_ok[None, :]
    if HAS_WEIGHT:
        scale = scale * tl.load(w_ptr + ch, mask=ch_ok, other=1.0).to(tl.float32)
    shift = -mean[:, None] * scale
    if HAS_BIAS:
        shift = shift + tl.load(b_ptr + ch, mask=ch_ok, other=0.0).to(tl.float32)
    y = v * scale[:, :, None] + shift[:, :, None]
    if APPLY_SILU:
        y = y * tl.sigmoid(y)
    tl.store(out_ptr + _tile_offsets(b, g, f, c, s, CG, o_sb, o_sc, o_st, o_ss),
             y.to(out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------
def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


def tile_shape(n_units: int, cg: int, s: int, tile: int) -> tuple[int, int, int]:
    """(BLOCK_U, BLOCK_C, BLOCK_S) for `tile` elements per program: a whole group's channels first,
    then as many positions as fit, then several units when a unit is smaller than the tile."""
    block_c = min(_pow2(cg), tile)
    block_s = min(_pow2(s), max(1, tile // block_c))
    block_u = min(_pow2(n_units), max(1, tile // (block_c * block_s)))
    return block_u, block_c, block_s


def _flat_stride(t: Tensor, dims: tuple[int, ...]) -> int | None:
    """The stride of `dims` flattened into one index, or None when they do not flatten (size-1
    dims are ignored)."""
    kept = [(t.shape[d], t.stride(d)) for d in dims if t.shape[d] != 1]
    if not kept:
        return 1
    for (_, outer), (n_inner, inner) in zip(kept, kept[1:]):
        if outer != inner * n_inner:
            return None
    return kept[-1][1]


def _strides(t: Tensor, flat_dims: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(batch, channel, frame, flattened position) strides of a 5D tensor whose `flat_dims` flatten."""
    ss = _flat_stride(t, flat_dims)
    assert ss is not None, "caller makes the tensor flatten first"
    return t.stride(0), t.stride(1), t.stride(2), ss


def _flattenable(t: Tensor, flat_dims: tuple[int, ...]) -> Tensor:
    """t itself when its positions flatten to one stride (contiguous, channels-last-3d, slices along
    T), else a contiguous copy (one extra pass over memory; the kernels need one position stride)."""
    return t if _flat_stride(t, flat_dims) is not None else t.contiguous()


def _is_interpreted() -> bool:
    """Whether the kernels were built for the Triton interpreter (TRITON_INTERPRET=1 at import)."""
    return isinstance(_gn_stats_kernel, InterpretedFunction)


def _check_supported(x: Tensor, weight: Tensor | None, bias: Tensor | None, residual: Tensor | None) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"group_norm_triton supports float32, bfloat16 and float16; got {x.dtype} "
                        "(use VIDEOVAE_KERNELS=torch for other dtypes)")
    if not x.is_cuda and not _is_interpreted():
        raise RuntimeError(f"group_norm_triton needs a CUDA tensor (got one on {x.device}), or TRITON_INTERPRET=1 "
                           "set before videovae_kernels.group_norm_triton is first imported")
    for name, t in (("weight", weight), ("bias", bias), ("residual", residual)):
        if t is not None and t.device != x.device:
            raise ValueError(f"group_norm_triton: {name} is on {t.device} but x is on {x.device}")
    if residual is not None and residual.dtype != x.dtype:
        raise TypeError(f"group_norm_triton: residual dtype {residual.dtype} differs from x's {x.dtype}; cast one of them")


def group_norm_triton(x: Tensor, weight: Tensor | None, bias: Tensor | None, spec: GroupNormSpec,
                      residual: Tensor | None = None, *, tile: int | None = None) -> NormResult:
    """Fused group norm on x: (B, C, T, H, W) (contiguous or channels-last-3d) or (N, C, H, W).

    Same arguments, semantics and return values as `group_norm_torch` (arguments are assumed
    checked by `group_norm.check_group_norm_args`). `tile`: elements per program, a power of 2
    (default: 4096 on a GPU, 65536 under the interpreter); tests pass small tiles to split groups
    over many programs. Returns y, or (y, x + residual).
    """
    num_groups, eps, per_frame, silu, front_pad = spec.num_groups, spec.eps, spec.per_frame, spec.silu, spec.front_pad
    _check_supported(x, weight, bias, residual)
    tile = tile or (INTERPRETER_TILE if _is_interpreted() else GPU_TILE)
    if tile & (tile - 1):
        raise ValueError(f"group_norm_triton: tile must be a power of 2; got {tile}")

    # x5: (B, C, T, H, W); a 4D input is one frame: (N, C, 1, H, W).
    x5 = x if x.ndim == 5 else x.unsqueeze(2)
    r5 = None if residual is None else (residual if residual.ndim == 5 else residual.unsqueeze(2))
    B, C, T, H, W = x5.shape
    G = num_groups
    CG = C // G
    F = T if per_frame else 1
    S = H * W if per_frame else T * H * W
    flat_dims = (3, 4) if per_frame else (2, 3, 4)
    memory_format = output_memory_format(x5)  # decided before any copy, as the reference does
    x5 = _flattenable(x5, flat_dims)

    out = torch.empty((B, C, T + front_pad, H, W), dtype=x.dtype, device=x.device, memory_format=memory_format)
    if front_pad:
        out[:, :, :front_pad].zero_()
    body = out[:, :, front_pad:]  # (B, C, T, H, W) view: the kernels write here
    summed5 = None
    if r5 is not None:
        r5 = _flattenable(r5, flat_dims)
        summed5 = torch.empty((B, C, T, H, W), dtype=x.dtype, device=x.device, memory_format=memory_format)

    def finish(t5: Tensor) -> Tensor:
        return t5 if x.ndim == 5 else t5.squeeze(2)

    if x5.numel() == 0:
        return finish(out) if summed5 is None else (finish(out), finish(summed5))

    n_units = B * G * F
    block_u, block_c, block_s = tile_shape(n_units, CG, S, tile)
    tiles_s = triton.cdiv(S, block_s)
    tiles_per_unit = triton.cdiv(CG, block_c) * tiles_s
    n_programs = triton.cdiv(n_units, block_u) * tiles_per_unit
    if n_programs > MAX_GRID:
        raise ValueError(f"group_norm_triton: {n_programs} programs exceed the grid limit {MAX_GRID}; use a larger tile")
    num_warps = 8 if block_u * block_c * block_s >= 4096 else 4

    dev = x.device
    cnt = torch.empty((n_units, tiles_per_unit), dtype=torch.float32, device=dev)
    part_mean = torch.empty_like(cnt)
    part_m2 = torch.empty_like(cnt)
    unit_mean = torch.empty(n_units, dtype=torch.float32, device=dev)
    unit_rstd = torch.empty_like(unit_mean)

    x_strides = _strides(x5, flat_dims)
    split = (n_units, G, F, CG, S, tiles_per_unit, tiles_s)
    if summed5 is not None:
        r_strides, s_strides = _strides(r5, flat_dims), _strides(summed5, flat_dims)
    _gn_stats_kernel[(n_programs,)](
        x5, x5 if r5 is None else r5, x5 if summed5 is None else summed5,
        cnt, part_mean, part_m2, *split,
        *x_strides, *(x_strides if r5 is None else r_strides), *(x_strides if summed5 is None else s_strides),
        HAS_RESIDUAL=r5 is not None, BLOCK_U=block_u, BLOCK_C=block_c, BLOCK_S=block_s, num_warps=num_warps,
    )

    # The combine reads a unit's partials BLOCK_P at a time, tile/16 partials per program and step
    # (256 on a GPU; tests with small tiles make it loop).
    combine_block = max(16, tile // 16)
    block_p = min(_pow2(tiles_per_unit), combine_block)
    block_uc = min(_pow2(n_units), max(1, combine_block // block_p))
    _gn_combine_kernel[(triton.cdiv(n_units, block_uc),)](
        cnt, part_mean, part_m2, unit_mean, unit_rstd, n_units, tiles_per_unit, float(eps),
        BLOCK_U=block_uc, BLOCK_P=block_p, num_warps=4,
    )

    src = x5 if summed5 is None else summed5
    _gn_apply_kernel[(n_programs,)](
        src, body, unit_mean, unit_rstd,
        x5 if weight is None else weight.contiguous(), x5 if bias is None else bias.contiguous(),
        *split, *_strides(src, flat_dims), *_strides(body, flat_dims),
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, APPLY_SILU=bool(silu),
        BLOCK_U=block_u, BLOCK_C=block_c, BLOCK_S=block_s, num_warps=num_warps,
    )
    return finish(out) if summed5 is None else (finish(out), finish(summed5))


class _GroupNormTritonFunction(torch.autograd.Function):
    """The Triton forward with the PyTorch reference's backward.

    Forward runs the kernels and saves only the inputs (no statistics, no output: the memory of
    activation checkpointing). Backward recomputes `group_norm_differentiable` on them and lets
    autograd differentiate it, so the gradients are plain PyTorch's.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, residual, spec):
        ctx.save_for_backward(x, weight, bias, residual)
        ctx.spec = spec
        out = group_norm_triton(x, weight, bias, spec, residual)
        if residual is None:
            return out, None
        return out

    @staticmethod
    def backward(ctx, grad_y, grad_summed):
        inputs = [None if t is None else t.detach().requires_grad_(need)
                  for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad[:4])]
        x, weight, bias, residual = inputs
        with torch.enable_grad():
            result = group_norm_differentiable(x, weight, bias, ctx.spec, residual)
        outputs = (result, None) if residual is None else result
        pairs = [(o, g) for o, g in zip(outputs, (grad_y, grad_summed)) if o is not None and g is not None]
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True))
        input_grads = [next(grads) if t is not None and t.requires_grad else None for t in inputs]
        return (*input_grads, None)


def group_norm_triton_autograd(x: Tensor, weight: Tensor | None, bias: Tensor | None, spec: GroupNormSpec,
                               residual: Tensor | None = None) -> NormResult:
    """`group_norm_triton` that autograd differentiates (see `_GroupNormTritonFunction`)."""
    result = _GroupNormTritonFunction.apply(x, weight, bias, residual, spec)
    return result[0] if residual is None else result
