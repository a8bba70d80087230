"""Exact spatial tiling: a network run tile by tile gives the untiled result up to float rounding.

A model runs in stages, each stage one spatially local step (a conv, an upsampling conv, a norm
applied with given statistics then a conv) over a stored whole activation:

    tiles = Tiles((H, W), tile=(256, 256), align=8)         # the grid, in full-resolution pixels
    stats = tiles.stats(norm, x)                            # group-norm statistics of all of x (float32)
    h = tiles.map(lambda w: conv(tiles.normalize(norm, stats, w, silu=True)), x, halo=1)

`map` runs its function on each tile's window, the tile plus `halo` rows and columns of its
neighbours (what the local step reads beyond the tile), and keeps the tile's part of the result.
Where a window ends inside the frame the function pads it with zeros that the real frame does not
have, but only the halo's outputs see them, and those are cut away. So the grid changes where work
happens, never the result: the statistics are those of the whole activation, taken in two passes
about the global mean (as `nn.GroupNorm` does, and DistVAE across GPUs), and what needs the whole
frame (attention, at the lowest resolution) runs on the whole activation.

The grid is fixed at full resolution and divided by each activation's own factor, so that every
level of the network sees the same tiles; tile sides are multiples of the model's spatial factor.
The time axis is never tiled: causal convs keep their whole chunk. (Where every norm is per frame,
Step-Video v2, frames can instead stream through the chunk one at a time: `videovae.frame_stream`.)

What tiling saves: a stage holds its input, its output and one window's workspace, where the
untiled step also holds the normalised copy, the padded copy and the conv's own buffers of the
whole activation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor
from torch.nn import functional as F

from .errors import OptionError, StateError, VideoLayoutError
from .layers import GroupNorm, pad_time_front


def parse_tile(tile) -> tuple[int, int] | None:
    """A tile size as given by a user: 256, (256, 384), "256" or "256x384" (height x width) ->
    (height, width), or None for no tiling. Refuses non-positive sizes and other forms."""
    if tile is None:
        return None
    if isinstance(tile, str):
        parts = tile.lower().split("x")
        try:
            sizes = tuple(int(p) for p in parts)
        except ValueError:
            sizes = ()
        if len(sizes) not in (1, 2):
            raise OptionError(f"tile {tile!r} is not a size: give HxW in pixels, such as 256x256, or one number")
    elif isinstance(tile, int) and not isinstance(tile, bool):
        sizes = (tile,)
    elif isinstance(tile, Sequence) and len(tile) == 2 and all(isinstance(s, int) and not isinstance(s, bool) for s in tile):
        sizes = tuple(tile)
    else:
        raise OptionError(f"tile must be an int, (height, width) or 'HxW'; got {tile!r}")
    height, width = sizes if len(sizes) == 2 else sizes * 2
    if height < 1 or width < 1:
        raise OptionError(f"tile sizes must be positive; got {height}x{width} (height x width)")
    return height, width


def tile_arg(text: str) -> tuple[int, int]:
    """The argparse type of --tile HxW (or one number for a square): (height, width)."""
    import argparse

    try:
        return parse_tile(text)
    except OptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def check_tile(tile: tuple[int, int], align: int) -> None:
    """A tile's sides must be multiples of the model's spatial factor, so that every level's
    activation divides on the same grid (a halo has no minimum: it is read from the neighbours)."""
    height, width = tile
    if height % align or width % align:
        def near(n):
            below = n // align * align
            return f"{align}" if below == 0 else f"{below} or {below + align}"
        raise OptionError(
            f"tile {height}x{width} is not a multiple of this model's spatial factor {align}: "
            f"use a height of {near(height)} and a width of {near(width)}"
        )


@dataclass(frozen=True)
class NormStats:
    """Group-norm statistics of a whole activation: mean and 1/std, float32, shaped to broadcast
    over x viewed as (B, G, C/G, F, 1, 1) with F = T per frame, 1 per clip."""

    mean: Tensor
    rstd: Tensor


class Tiles:
    """The tile grid of one clip whose full-resolution frames are `size` = (H, W) pixels.

    tile: (height, width) in full-resolution pixels, multiples of `align` (the model's spatial
    factor); the last row and column of tiles take what is left. An activation of the network of
    size (H / f, W / f) is cut at the same places divided by f.
    """

    def __init__(self, size: tuple[int, int], tile: tuple[int, int], align: int):
        check_tile(tile, align)
        self.size = size
        self.tile = (min(tile[0], size[0]), min(tile[1], size[1]))

    @property
    def count(self) -> int:
        return len(self._cuts(0, self.size[0])) * len(self._cuts(1, self.size[1]))

    def _cuts(self, axis: int, length: int) -> list[tuple[int, int]]:
        """[(start, stop)] along `axis` of an activation `length` long."""
        full = self.size[axis]
        factor = Fraction(full, length)
        edges = [Fraction(e) / factor for e in range(0, full, self.tile[axis])] + [Fraction(length)]
        if any(e.denominator != 1 for e in edges):
            raise VideoLayoutError(
                f"an activation {length} pixels long does not divide on tiles of {self.tile} over {self.size}: "
                "tiled frames must have sides that are multiples of the model's spatial factor (the API pads them)"
            )
        return [(int(a), int(b)) for a, b in zip(edges, edges[1:])]

    def map(self, fn: Callable[..., Tensor], x: Tensor, *others: Tensor, halo: int, scale: Fraction | int = 1,
            out: Tensor | None = None) -> Tensor:
        """fn over each tile's window of x: (..., H, W) -> the result (..., H * scale, W * scale).

        halo: rows/columns of neighbours each window adds on every side (in x's pixels; a multiple
            of 1 / scale when scale < 1, so that a strided step keeps the global grid).
        others: more inputs given to fn, sliced to the same window at their own resolution (a
            residual, an input to upsample-and-add); they are read, never written.
        out: where to write the result (by default a new tensor); it may be x itself when fn reads
            x only at the positions it writes (a residual added in place): windows then read
            already written neighbours, but only in the halo whose outputs are cut away.
        """
        for place, core in self._cores(fn, x, others, halo, Fraction(scale)):
            if out is None:
                H, W = x.shape[-2:]
                out = core.new_empty((*core.shape[:-2], int(H * scale), int(W * scale)))
            out[place] = core
            del core
        return out

    def _cores(self, fn, x: Tensor, others, halo: int, scale: Fraction):
        """(where in the output, fn's result there) for each tile, computed on its window."""
        if scale < 1 and (halo % scale.denominator):
            raise StateError(f"halo {halo} must be a multiple of the stride {scale.denominator}")
        H, W = x.shape[-2:]
        for y0, y1 in self._cuts(0, H):
            for x0, x1 in self._cuts(1, W):
                wy0, wy1, wx0, wx1 = max(0, y0 - halo), min(H, y1 + halo), max(0, x0 - halo), min(W, x1 + halo)
                y = fn(*[_window(t, H, (wy0, wy1, wx0, wx1)) for t in (x, *others)])
                oy, ox = int((y0 - wy0) * scale), int((x0 - wx0) * scale)
                core = y[..., oy : oy + int((y1 - y0) * scale), ox : ox + int((x1 - x0) * scale)]
                place = (Ellipsis, slice(int(y0 * scale), int(y1 * scale)), slice(int(x0 * scale), int(x1 * scale)))
                del y
                yield place, core

    def stats(self, norm: GroupNorm, x: Tensor, fn: Callable[..., Tensor] | None = None, *others: Tensor,
              halo: int = 0) -> NormStats:
        """The statistics `norm` takes of the whole of x: a clip (B, C, T, H, W) (per clip or per
        frame, as the norm says) or images (N, C, H, W), in float32, in one pass over the tiles:
        each tile's count, mean and sum of squared deviations, combined about the global mean with
        Chan's formula (stable where a sum of squares is not: a mean of 1000 with a std of 1 loses
        half its digits in E[x^2] - E[x]^2). The variance is divided by the count, as nn.GroupNorm
        does.

        With fn: the statistics of fn(x, *others) (as `map` would compute it, never stored whole):
        for an activation that is cheaper to compute twice than to keep."""
        tiles = (core for _, core in self._cores(fn, x, others, halo, Fraction(1))) if fn is not None else (
            x[..., y0:y1, x0:x1] for y0, y1 in self._cuts(0, x.shape[-2]) for x0, x1 in self._cuts(1, x.shape[-1])
        )
        count = mean = m2 = None
        for tile in tiles:
            per_frame = norm.per_frame and tile.ndim == 5
            dims = tuple(d for d in range(2, tile.ndim + 1) if not (per_frame and d == 3))  # of (B, G, C/G, ...)
            grouped = _grouped(tile, norm.num_groups)
            n = grouped[0, 0].numel() // (grouped.shape[3] if per_frame else 1)
            var_t, mean_t = torch.var_mean(grouped, dim=dims, correction=0, keepdim=True)
            if count is None:
                count, mean, m2 = n, mean_t, var_t * n
                continue
            delta = mean_t - mean
            total = count + n
            mean = mean + delta * (n / total)
            m2 = m2 + var_t * n + delta.square() * (count * n / total)
            count = total
        return NormStats(mean, torch.rsqrt(m2 / count + norm.eps))

    def norm_map(self, norm: GroupNorm, fn: Callable[[Tensor], Tensor], x: Tensor, *, halo: int = 1,
                 silu: bool = True, front_pad: int = 0) -> Tensor:
        """fn(norm(x, silu=..., front_pad=...)) tile by tile, with the whole of x's statistics: the
        usual norm -> SiLU -> conv step (fn the conv, halo its reach)."""
        stats = self.stats(norm, x)
        return self.map(lambda w: fn(self.normalize(norm, stats, w, silu=silu, front_pad=front_pad)), x, halo=halo)

    def resnet(self, x: Tensor, norm2: GroupNorm, first: Callable[[Tensor], Tensor],
               second: Callable[[Tensor, Tensor, NormStats], Tensor], *, identity: bool) -> Tensor:
        """A residual block, tile by tile: h = first(x) (norm1 -> conv1 on a window), then
        second(h, x, norm2's statistics of h) (norm2 -> conv2 plus the shortcut of x). x is consumed.

        identity shortcut: h is stored and the sum written over x, so x and h live at once. A 1x1
        shortcut (a block that narrows the width, a decoder's largest moment) would keep x, h and
        the output; so h is not stored but computed once for its statistics and again, window by
        window, for conv2 (one more conv1; x and the output only)."""
        if identity:
            h = self.map(first, x, halo=1)
            stats = self.stats(norm2, h)
            return self.map(lambda h_w, x_w: second(h_w, x_w, stats), h, x, halo=1, out=x)
        stats = self.stats(norm2, x, first, halo=1)
        return self.map(lambda x_w: second(first(x_w), x_w, stats), x, halo=2)

    @staticmethod
    def normalize(norm: GroupNorm, stats: NormStats, x: Tensor, *, silu: bool = False, front_pad: int = 0) -> Tensor:
        """norm(x, silu=..., front_pad=...) of a window x: (B, C, T, h, w) or (N, C, h, w) of the
        activation that `stats` describe: the arithmetic in float32, rounded once to x's dtype.

        One affine per channel (and frame), y = x * scale + shift, written into the padded output
        in one pass, then SiLU in place."""
        C, G = x.shape[1], norm.num_groups
        lead = (1,) * (x.ndim - 2)
        scale = stats.rstd * norm.weight.float().view(1, G, C // G, *lead)  # (B, G, C/G, F, 1, 1)
        shift = norm.bias.float().view(1, G, C // G, *lead) - stats.mean * scale
        scale, shift = scale.flatten(1, 2), shift.flatten(1, 2)  # per channel: (B, C, F, 1, 1)
        if x.dtype != torch.float32 or (torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad)):
            # 16-bit (the float32 arithmetic, then one rounding) or under autograd: out-of-place
            y = torch.addcmul(shift, x.float(), scale)
            y = F.silu(y, inplace=True) if silu else y
            return pad_time_front(y.to(x.dtype), front_pad)
        out = x.new_empty((*x.shape[:2], front_pad + x.shape[2], *x.shape[3:])) if front_pad else torch.empty_like(x)
        if front_pad:
            out[:, :, :front_pad].zero_()
        body = out[:, :, front_pad:]
        torch.addcmul(shift, x, scale, out=body)
        if silu:
            F.silu(body, inplace=True)
        return out


def _grouped(x: Tensor, groups: int) -> Tensor:
    """x: (B, C, ...) -> float32 (B, G, C/G, ...)."""
    return x.float().unflatten(1, (groups, x.shape[1] // groups))


def _window(t: Tensor, H: int, box: tuple[int, int, int, int]) -> Tensor:
    """t's part of the window box = (y0, y1, x0, x1), given in an activation of height H; t may be
    at another resolution (sliced at its own scale)."""
    r = Fraction(t.shape[-2], H)
    y0, y1, x0, x1 = (int(b * r) for b in box)
    return t[..., y0:y1, x0:x1]


# ------------------------------------------------------------------------------------------------
# The approximate mode: diffusers' overlapping tiles, cross-faded


def check_overlap(tile: tuple[int, int], overlap: int, align: int) -> None:
    """Blended tiles overlap by `overlap` pixels: a multiple of the spatial factor, less than the tile."""
    if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 0:
        raise OptionError(f"tile_overlap must be a non-negative int (pixels); got {overlap!r}")
    if overlap % align:
        raise OptionError(f"tile_overlap {overlap} is not a multiple of this model's spatial factor {align}")
    if overlap >= min(tile):
        raise OptionError(f"tile_overlap {overlap} must be smaller than the tile {tile[0]}x{tile[1]}")


def blend_tiles(fn: Callable[[Tensor], Tensor], x: Tensor, tile: tuple[int, int], stride: tuple[int, int],
                scale: Fraction | int) -> Tensor:
    """diffusers' tiled encode/decode: fn on overlapping windows of x, each on its own (its norms
    take the window's statistics), cross-faded linearly where they overlap. Approximate.

    x: (B, C, T, H, W); tile, stride: window size and step in x's pixels; scale: fn's output size
    per input pixel (the spatial factor for a decoder, its inverse for an encoder). Each output
    tile is blended with its upper and left neighbours over (tile - stride) * scale rows / columns
    and cut to stride * scale; one row of tiles is held at a time.
    """
    H, W = x.shape[-2:]
    out_tile = (int(tile[0] * scale), int(tile[1] * scale))
    out_stride = (int(stride[0] * scale), int(stride[1] * scale))
    extent = (out_tile[0] - out_stride[0], out_tile[1] - out_stride[1])
    rows, above = [], None
    for top in range(0, H, stride[0]):
        row = [fn(x[..., top : top + tile[0], left : left + tile[1]]) for left in range(0, W, stride[1])]
        kept = []
        for j, current in enumerate(row):
            if above is not None:
                current = _fade(above[j], current, extent[0], dim=-2)
            if j > 0:
                current = _fade(row[j - 1], current, extent[1], dim=-1)
            row[j] = current
            kept.append(current[..., : out_stride[0], : out_stride[1]])
        rows.append(torch.cat(kept, dim=-1))
        above = row
    return torch.cat(rows, dim=-2)[..., : int(H * scale), : int(W * scale)]


def _fade(before: Tensor, after: Tensor, extent: int, dim: int) -> Tensor:
    """after with its first `extent` rows (dim -2) or columns (dim -1) faded in linearly from the
    last ones of before (diffusers' blend_v / blend_h)."""
    extent = min(extent, before.shape[dim], after.shape[dim])
    if extent == 0:
        return after
    ramp = torch.arange(extent, device=after.device, dtype=torch.float32) / extent  # 0 .. (extent-1)/extent
    shape = [1] * after.ndim
    shape[dim] = extent
    ramp = ramp.view(shape).to(after.dtype)
    head = after.narrow(dim, 0, extent)
    tail = before.narrow(dim, before.shape[dim] - extent, extent)
    faded = tail * (1 - ramp) + head * ramp
    return torch.cat([faded, after.narrow(dim, extent, after.shape[dim] - extent)], dim=dim)
