"""Causal 3x3x3 convolution with Winograd's minimal filtering along time.

A stride-1 conv with 3 time taps computes each output frame from 3 "frame-convs" (one 2D 3x3 conv
of one input frame over all channels). Winograd's F(m, 3) (Lavin & Gray, 2016), applied along time
only, computes m consecutive output frames from m + 2 frame-convs of linear combinations of the
m + 2 input frames they read:

    y = A^T [ (G w) * (B^T d) ]        d: m + 2 input frames, w: the 3 time taps, y: m output frames

The spatial 3x3 stays a oneDNN conv (the fastest conv on CPU), so only the frame-convs change: each
of the m + 2 products is a conv with a (C_out, C_in, 1, 3, 3) kernel `G w`, over the frames `B^T d`.
The causal zero frames in front make the first output frame one frame-conv (its taps 0 and 1 read
zeros). F(4, 3) over a 17-frame chunk: 1 + 4 x 6 = 25 frame-convs instead of 51.

The transforms are exact in exact arithmetic; in float32 the error is a few 1e-6 on unit-scale
outputs (see tests/test_winograd.py). They cost memory traffic (the B^T d frames, the m + 2 conv
outputs and the weight combinations), so the dispatch (`worth_it`) keeps this path to float32 and
float64 convs that are large in channels and positions, on CPU, without autograd (under
torch.compile, a functional form of the same sums that Inductor fuses): cuDNN has its
own algorithms, and 16-bit formats would lose precision in the combinations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType

import torch
from einops import rearrange
from torch import Tensor
from torch.nn import functional as F

from .conv3d import conv3d
from .errors import OptionError

Matrix = tuple[tuple[Fraction, ...], ...]


def winograd_matrices(m: int, points: tuple[Fraction, ...]) -> tuple[Matrix, Matrix, Matrix]:
    """Exact (A^T, G, B^T) of F(m, 3) from m + 1 finite interpolation points plus the point at infinity.

    For a correlation y_i = sum_k w_k d_{i+k} (i < m, k < 3): y = A^T [(G w) * (B^T d)].
    A^T (m x a) evaluates the output polynomial, G (a x 3) the filter, B^T (a x a) is the transposed
    inverse Vandermonde matrix (a = m + 2). Rows of B^T are scaled to integers (the scale moves into
    G), so the transforms on activations use small integers and the fractions live in the weights.
    """
    a = m + 2
    if len(points) != a - 1 or len(set(points)) != len(points):
        raise OptionError(f"F({m}, 3) needs {a - 1} distinct finite points, got {points}")

    def evaluation(n: int) -> list[list[Fraction]]:  # (a x n): rows evaluate a length-n polynomial
        rows = [[Fraction(p) ** k for k in range(n)] for p in points]
        return rows + [[Fraction(int(k == n - 1)) for k in range(n)]]  # infinity: leading coefficient

    inverse = _inverse(evaluation(a))
    BT = [list(col) for col in zip(*inverse)]
    G = evaluation(3)
    for i in range(a):
        scale = math.lcm(*(v.denominator for v in BT[i]))
        BT[i] = [v * scale for v in BT[i]]
        G[i] = [v / scale for v in G[i]]
    AT = [list(col) for col in zip(*evaluation(m))]
    return tuple(map(tuple, AT)), tuple(map(tuple, G)), tuple(map(tuple, BT))


def _inverse(M: list[list[Fraction]]) -> list[list[Fraction]]:
    """Gauss-Jordan inverse over the rationals (tiny matrices)."""
    n = len(M)
    A = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(M)]
    for c in range(n):
        p = next(r for r in range(c, n) if A[r][c] != 0)
        A[c], A[p] = A[p], A[c]
        A[c] = [v / A[c][c] for v in A[c]]
        for r in range(n):
            if r != c and A[r][c] != 0:
                A[r] = [x - A[r][c] * y for x, y in zip(A[r], A[c])]
    return [row[n:] for row in A]


# The usual points, smallest magnitudes first: the larger m, the larger the transform coefficients
# (F(4, 3) uses up to 8 in A^T and 1/24 in G) and the rounding error.
_POINTS = {2: (0, 1, -1), 3: (0, 1, -1, 2), 4: (0, 1, -1, 2, -2)}
TRANSFORMS = MappingProxyType(
    {m: winograd_matrices(m, tuple(Fraction(p) for p in pts)) for m, pts in _POINTS.items()}
)


@dataclass(frozen=True)
class TimeTiling:
    """How T output frames are split: `head` frames computed directly (0 or 1), then tiles.

    segments: (first output frame, m, tile count) for F(m, 3) tiles of m consecutive outputs.
    frame_convs: the number of per-frame 2D convs this costs (3 * T for the plain conv).
    """

    head: int
    segments: tuple[tuple[int, int, int], ...]
    frame_convs: int


def plan_time_tiles(T: int) -> TimeTiling:
    """The tiling of T >= 1 output frames (front-padded by two zero frames) with the fewest frame-convs.

    Output 0 reads two zero frames, so computing it directly costs one frame-conv. The rest is covered
    by F(m, 3) tiles (m + 2 each) of one size, and at most one smaller tile for the remainder; a
    single leftover frame is a direct 3-tap conv (3 frame-convs, written as F(1, 3)).
    Ties go to smaller tiles, whose transforms are cheaper and more accurate.
    """
    if T < 1:
        raise OptionError(f"T must be >= 1, got {T}")
    best: TimeTiling | None = None
    for head in (0, 1):
        rest = T - head
        for m in sorted(TRANSFORMS):
            n, rem = divmod(rest, m)
            segments = [(head, m, n)] if n else []
            if rem:
                segments.append((head + n * m, rem, 1))
            cost = head + sum(mm + 2 for _, mm, nn in segments for _ in range(nn))
            if best is None or cost < best.frame_convs:
                best = TimeTiling(head, tuple(segments), cost)
    return best


def worth_it(x: Tensor, weight: Tensor, stride: tuple[int, ...]) -> bool:
    """Whether the Winograd path beats oneDNN's direct conv for this call (measured on CPU).

    x: (B, C_in, 2 + T, H, W), front-padded; weight (C_out, C_in, 3, 3, 3). The transforms add
    traffic in proportion to C_in + C_out per position, the saved frame-convs C_in * C_out; the weight
    combinations cost C_in * C_out regardless of positions. Below these sizes the plain conv wins.
    """
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False  # the transforms write into preallocated buffers (out=), which autograd refuses
    if tuple(weight.shape[2:]) != (3, 3, 3) or tuple(stride) != (1, 1, 1):
        return False
    C_out, C_in = weight.shape[:2]
    T = x.shape[2] - 2
    return min(C_in, C_out) >= 64 and T >= 4 and T * x.shape[3] * x.shape[4] >= 4096


def causal_conv3d_winograd(xp: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None = None) -> Tensor:
    """The causal 3x3x3 conv of `CausalConv3d`, by Winograd tiles along time.

    xp: (B, C_in, 2 + T, H, W) whose two front frames are zeros (the causal padding); H and W are
    zero-padded by 1 here, as the plain conv does. weight (C_out, C_in, 3, 3, 3), bias (C_out,).
    residual: optional (B, C_out, T, H, W) added to the result. -> (B, C_out, T, H, W), in xp's
    memory format. Equals the plain conv up to float rounding.
    """
    B, _, Tp, H, W = xp.shape
    T = Tp - 2
    C_out = weight.shape[0]
    channels_last = not xp.is_contiguous() and xp.is_contiguous(memory_format=torch.channels_last_3d)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    tiling = plan_time_tiles(T)
    if torch.compiler.is_compiling():  # dynamo refuses out= into strided views: the same sums, functional
        y = torch.cat(_pieces_functional(xp, weight, bias, tiling), dim=2)
        y = y if residual is None else y + residual
        return y.contiguous(memory_format=fmt)
    out = torch.empty((B, C_out, T, H, W), dtype=xp.dtype, device=xp.device, memory_format=fmt)
    if tiling.head:  # output 0 = tap 2 on input frame 0 (padded frame 2); taps 0 and 1 read zeros
        first = frame_conv(xp[:, :, 2:3], weight[:, :, 2:3], bias)
        if residual is not None:
            first.add_(residual[:, :, 0:1])
        out[:, :, 0:1] = first
    for start, m, n in tiling.segments:
        _tiles(xp, weight, bias, residual, out, start, m, n, fmt)
    return out


def _tiles(xp: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None,
           out: Tensor, start: int, m: int, n: int, fmt: torch.memory_format) -> None:
    """Writes out[:, :, start : start + m * n] from n F(m, 3) tiles; tile j reads padded frames
    start + m * j ... start + m * j + m + 1 (output t reads padded frames t, t + 1, t + 2)."""
    B, C_in, _, H, W = xp.shape
    if m == 1:  # one leftover frame: the plain 3-tap conv
        y = conv3d(xp[:, :, start : start + 3], weight, bias, padding=(0, 1, 1))
        if residual is not None:
            y.add_(residual[:, :, start : start + 1])
        out[:, :, start : start + 1] = y
        return
    AT, G, BT = TRANSFORMS[m]
    a = m + 2
    d, taps, bias_at = _tile_operands(xp, weight, start, m, n)
    products = []
    for i in range(a):
        frames = torch.empty((B, C_in, n, H, W), dtype=xp.dtype, device=xp.device, memory_format=fmt)
        frames = _combine(BT[i], d, frames)  # (B, C_in, n, H, W): B^T row i over every tile
        kernel = _combine(G[i], taps, weight.new_empty(taps[0].shape))  # (C_out, C_in, 1, 3, 3)
        products.append(frame_conv(frames, kernel, bias if i == bias_at else None))
        del frames, kernel
    for r in range(m):
        rows = out[:, :, start + r : start + r + m * (n - 1) + 1 : m]  # (B, C_out, n, H, W)
        coefficients, terms = list(AT[r]), products
        if residual is not None:
            coefficients = [Fraction(1)] + coefficients
            terms = [residual[:, :, start + r : start + r + m * (n - 1) + 1 : m]] + products
        _combine(coefficients, terms, rows)


def _tile_operands(xp: Tensor, weight: Tensor, start: int, m: int, n: int) -> tuple[list[Tensor], list[Tensor], int]:
    """d[k]: (B, C_in, n, H, W) views, padded frame start + m * j + k of every tile j (k < m + 2);
    taps[k]: (C_out, C_in, 1, 3, 3) views of the weight's time tap k; bias_at: the product that
    carries the bias (point 1, which every output row of A^T sums with weight 1)."""
    d = [xp[:, :, start + k : start + k + m * (n - 1) + 1 : m] for k in range(m + 2)]
    taps = [weight[:, :, k : k + 1] for k in range(3)]
    AT = TRANSFORMS[m][0]
    bias_at = next(i for i in range(m + 2) if all(row[i] == 1 for row in AT))
    return d, taps, bias_at


def _pieces_functional(xp: Tensor, weight: Tensor, bias: Tensor | None, tiling: TimeTiling) -> list[Tensor]:
    """The Winograd computation without writes into views (for torch.compile, which fuses the sums):
    the output in consecutive pieces along time, each (B, C_out, frames, H, W)."""
    pieces = [frame_conv(xp[:, :, 2:3], weight[:, :, 2:3], bias)] if tiling.head else []
    for start, m, n in tiling.segments:
        if m == 1:
            pieces.append(conv3d(xp[:, :, start : start + 3], weight, bias, padding=(0, 1, 1)))
            continue
        AT, G, BT = TRANSFORMS[m]
        d, taps, bias_at = _tile_operands(xp, weight, start, m, n)
        products = [
            frame_conv(_linear(BT[i], d), _linear(G[i], taps), bias if i == bias_at else None) for i in range(m + 2)
        ]
        rows = [_linear(AT[r], products) for r in range(m)]  # row r: output frames start + m * j + r
        pieces.append(rearrange(torch.stack(rows), "r b c n h w -> b c (n r) h w"))
    return pieces


def _linear(coefficients, terms: list[Tensor]) -> Tensor:
    """sum_k coefficients[k] * terms[k], as a new tensor."""
    return sum(float(c) * t for c, t in zip(coefficients, terms) if c != 0)


def frame_conv(x: Tensor, kernel: Tensor, bias: Tensor | None) -> Tensor:
    """A 3x3 conv of every frame, zero-padded in H and W: x (B, C_in, T, H, W), kernel
    (C_out, C_in, 1, 3, 3) -> (B, C_out, T, H, W). One frame goes through conv2d: PyTorch sends a
    one-frame conv3d to its slow reference kernel on CPU (10x slower than oneDNN)."""
    if x.shape[2] == 1:
        return F.conv2d(x[:, :, 0], kernel[:, :, 0], bias, padding=1).unsqueeze(2)
    return conv3d(x, kernel, bias, padding=(0, 1, 1))


def _combine(coefficients, terms: list[Tensor], out: Tensor) -> Tensor:
    """out = sum_k coefficients[k] * terms[k] (zero coefficients skipped), in as few passes as we can:
    a unit coefficient goes first so the first op reads two terms."""
    pairs = [(float(c), t) for c, t in zip(coefficients, terms) if c != 0]
    pairs.sort(key=lambda p: p[0] != 1.0)  # stable: a 1 first if there is one
    (c0, t0), rest = pairs[0], pairs[1:]
    if c0 == 1.0 and rest:
        (c1, t1), rest = rest[0], rest[1:]
        torch.add(t0, t1, alpha=c1, out=out)
    else:
        torch.mul(t0, c0, out=out)
    for c, t in rest:
        out.add_(t, alpha=c)
    return out
