"""Step-Video-T2V video VAE, v1 and v2, as one config-driven implementation.

Layout inside the model: (B, C, T, H, W), channels-first, so convolutions run without permutes.
The public (B, T, C, H, W) layout is handled by `videovae.api`; this module sees one chunk at a time
(at most 17 frames / `latents_per_chunk` latent frames).

v1: z = 16, 8x spatial, 17 frames -> 5 latents, group-norm statistics over the whole chunk.
v2: z = 64, 16x spatial, 17 frames -> 3 latents (a 2x2x2 pixel-unshuffle "patchify" tail), group-norm
    statistics per frame (causal in time).
Checkpoint keys equal this module's parameter names except `decoder.conv_out.{weight,bias}`, which
the model holds as `decoder.conv_out.conv.*` (see `checkpoint_to_module_key`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..chunking import FrameLayout
from ..errors import OptionError
from ..frame_stream import ConvFrames, FrameChain, NormConvFrames, PerFrame, join_frames, weight_format
from ..layers import (
    CausalAttention,
    CausalConv3d,
    Downsample2d,
    GroupNorm,
    Upsample2d,
    add_upsampled_,
    channel_group_mean,
    pad_time_front,
    pixel_shuffle_3d,
    pixel_unshuffle_3d,
    upsample2x_conv,
)
from ..tiling import Tiles
from .spec import Capabilities, FamilyModel, FamilySpec, block_indices

FAMILY = "stepvideo"
FRAMES_PER_CHUNK = 17
NUM_GROUPS = 32


@dataclass(frozen=True)
class StepVideoConfig:
    """Every structural fact of a Step-Video VAE; all of it can be read from checkpoint shapes.

    encoder_widths / decoder_widths: output width of each resolution level, level 0 first.
    encoder_blocks / decoder_blocks: residual blocks per level.
    encoder_temporal_levels: levels whose downsample is a stride-2 causal 3D conv (others are 2D).
    decoder_temporal_levels: levels whose upsample doubles time too (others are 2D nearest + conv).
    patch_channels: v2 only, channels after the 2x2x2 pixel-unshuffle tail (4 * z * 8 in the release).
    """

    version: int
    z_channels: int
    in_channels: int = 3
    out_channels: int = 3
    encoder_in_width: int = 32
    encoder_widths: tuple[int, ...] = (128, 256, 512, 512)
    encoder_blocks: int = 2
    encoder_temporal_levels: tuple[int, ...] = (1, 2)
    decoder_widths: tuple[int, ...] = (128, 256, 512, 512)
    decoder_blocks: int = 3
    decoder_temporal_levels: tuple[int, ...] = (2, 3)
    patch_channels: int | None = None
    eps: float = 1e-5

    def __post_init__(self):
        if self.version not in (1, 2):
            raise OptionError(f"Step-Video VAE version must be 1 or 2; got {self.version}")
        if self.version == 2 and not self.patch_channels:
            raise OptionError("Step-Video v2 needs patch_channels (4 * z * 8 in the released model)")

    @property
    def per_frame_norm(self) -> bool:
        """v2 normalises each frame on its own; v1 normalises over the whole chunk."""
        return self.version == 2

    @property
    def patch_factor(self) -> int:
        return 2 if self.version == 2 else 1

    @property
    def frame_layout(self) -> FrameLayout:
        time_factor = 2 ** len(self.encoder_temporal_levels) * self.patch_factor
        spatial_factor = 2 ** (len(self.encoder_widths) - 1) * self.patch_factor
        latents = (FRAMES_PER_CHUNK - 1) // time_factor + 1
        return FrameLayout(FRAMES_PER_CHUNK, latents, time_factor, spatial_factor)


def stepvideo_v1_config() -> StepVideoConfig:
    """The released `vae.safetensors` (258.8 M parameters)."""
    return StepVideoConfig(version=1, z_channels=16)


def stepvideo_v2_config() -> StepVideoConfig:
    """The released `vae_v2.safetensors` (498.8 M parameters)."""
    return StepVideoConfig(version=2, z_channels=64, patch_channels=4 * 64 * 8)


# ------------------------------------------------------------------------------------------------
# Blocks


class ResBlock3d(nn.Module):
    """norm1 -> SiLU -> causal conv1 -> norm2 -> SiLU -> causal conv2, plus a (1x1x1) shortcut.

    The SiLU and the zero front frames of each causal conv are fused into the norms.
    """

    def __init__(self, in_channels: int, out_channels: int, per_frame_norm: bool, eps: float):
        super().__init__()
        self.norm1 = GroupNorm(in_channels, NUM_GROUPS, eps, per_frame_norm)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.norm2 = GroupNorm(out_channels, NUM_GROUPS, eps, per_frame_norm)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        if in_channels != out_channels:
            self.nin_shortcut = CausalConv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, T, H, W) -> (B, C_out, T, H, W)."""
        pad = self.conv1.time_pad
        h = self.conv1(self.norm1(x, silu=True, front_pad=pad), padded=True)
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        h = self.norm2(h, silu=True, front_pad=pad)
        return self.conv2(h, padded=True, residual=shortcut)

    def tiled(self, x: Tensor, tiles: Tiles) -> Tensor:
        """forward tile by tile (`Tiles.resnet`); x is consumed."""
        pad = self.conv2.time_pad
        stats1 = tiles.stats(self.norm1, x)

        def first(x_w: Tensor) -> Tensor:
            return self.conv1(tiles.normalize(self.norm1, stats1, x_w, silu=True, front_pad=pad), padded=True)

        def second(h_w: Tensor, x_w: Tensor, stats) -> Tensor:
            shortcut = self.nin_shortcut(x_w) if hasattr(self, "nin_shortcut") else x_w
            normed = tiles.normalize(self.norm2, stats, h_w, silu=True, front_pad=pad)
            return self.conv2(normed, padded=True, residual=shortcut)

        return tiles.resnet(x, self.norm2, first, second, identity=not hasattr(self, "nin_shortcut"))

    def frames(self) -> "_ResBlockFrames":
        """This block over a stream of frames (per-frame norms only: v2)."""
        return _ResBlockFrames(self)


class _ResBlockFrames:
    """A `ResBlock3d` frame by frame: the held frames of its two causal convs."""

    def __init__(self, block: ResBlock3d):
        self.block = block
        self.conv1, self.conv2 = ConvFrames(block.conv1), ConvFrames(block.conv2)

    def push(self, x: Tensor) -> Tensor:
        b = self.block
        h = self.conv1.push(b.norm1(x, silu=True))
        shortcut = b.nin_shortcut(x) if hasattr(b, "nin_shortcut") else x
        return self.conv2.push(b.norm2(h, silu=True), residual=shortcut)

    def flush(self) -> None:
        self.conv1.flush()
        self.conv2.flush()


def norm_conv_tiled(tiles: Tiles, norm: GroupNorm, conv: CausalConv3d, x: Tensor) -> Tensor:
    """conv(silu(norm(x))) tile by tile: x (B, C, T, H, W)."""
    return tiles.norm_map(norm, lambda normed: conv(normed, padded=True), x, front_pad=conv.time_pad)


class MidBlock(nn.Module):
    """block_1 -> causal attention -> block_2 (keys `mid.block_1`, `mid.attn_1`, `mid.block_2`)."""

    def __init__(self, channels: int, per_frame_norm: bool, eps: float):
        super().__init__()
        self.block_1 = ResBlock3d(channels, channels, per_frame_norm, eps)
        self.attn_1 = CausalAttention(channels, per_frame_norm)
        self.block_2 = ResBlock3d(channels, channels, per_frame_norm, eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))

    def tiled(self, x: Tensor, tiles: Tiles) -> Tensor:
        """The blocks tile by tile; the attention on the whole (lowest-resolution) activation."""
        return self.block_2.tiled(self.attn_1(self.block_1.tiled(x, tiles)), tiles)


class Downsample3d(nn.Module):
    """Causal 3x3x3 conv with stride 2 in (t, h, w)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, T, H, W) -> (B, C, ceil(T / 2), ceil(H / 2), ceil(W / 2))."""
        return self.conv(x)

    def tiled(self, x: Tensor, tiles: Tiles) -> Tensor:
        return tiles.map(self.conv, x, halo=2, scale=Fraction(1, 2))

    def frames(self) -> ConvFrames:
        return ConvFrames(self.conv)


class UpsampleResBlock(nn.Module):
    """The residual block of a 3D upsample, on u = nearest_x2(x) in (t, h, w):
    silu(norm2(conv2(silu(norm1(conv1 u)))) + u) + u.

    (The residual is added twice, as in the released model: parity needs it.)
    by_phases (default): conv1 runs as eight 2x2x2 convs on x (`layers.upsample2x_conv`, 3.4x fewer
    multiply-adds) and u is added by broadcasting, never materialised; False runs the plain path.
    """

    def __init__(self, channels: int, per_frame_norm: bool, eps: float):
        super().__init__()
        self.conv1 = CausalConv3d(channels, channels)
        self.norm1 = GroupNorm(channels, NUM_GROUPS, eps, per_frame_norm)
        self.conv2 = CausalConv3d(channels, channels)
        self.norm2 = GroupNorm(channels, NUM_GROUPS, eps, per_frame_norm)
        self.by_phases = True

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, T, H, W), before upsampling -> (B, C, 2T, 2H, 2W)."""
        if self.by_phases:
            h = upsample2x_conv(x, self.conv1.conv.weight, self.conv1.conv.bias, time=True)
        else:
            u = F.interpolate(x, scale_factor=2, mode="nearest")
            h = self.conv1(u)
        h = self.conv2(self.norm1(h, silu=True, front_pad=self.conv2.time_pad), padded=True)
        h = self.norm2(h)
        if self.by_phases:
            return add_upsampled_(F.silu(add_upsampled_(h, x, time=True), inplace=True), x, time=True)
        return F.silu(h.add_(u), inplace=True).add_(u)

    def tiled(self, x: Tensor, tiles: Tiles) -> Tensor:
        """forward, tile by tile: three stages over the upsampled size, split at the norms."""
        def first(x_w: Tensor) -> Tensor:
            if self.by_phases:
                return upsample2x_conv(x_w, self.conv1.conv.weight, self.conv1.conv.bias, time=True)
            return self.conv1(F.interpolate(x_w, scale_factor=2, mode="nearest"))

        h = tiles.map(first, x, halo=1, scale=2)
        h = norm_conv_tiled(tiles, self.norm1, self.conv2, h)
        stats = tiles.stats(self.norm2, h)

        def last(h_w: Tensor, x_w: Tensor) -> Tensor:  # h_w: the tile, x_w: its low-res input
            h_w = tiles.normalize(self.norm2, stats, h_w)
            return add_upsampled_(F.silu(add_upsampled_(h_w, x_w, time=True), inplace=True), x_w, time=True)

        return tiles.map(last, h, x, halo=0, out=h)

    def frames(self) -> "_UpsampleFrames":
        return _UpsampleFrames(self)


class _UpsampleFrames:
    """An `UpsampleResBlock` frame by frame: the low-res frame before the next ones (conv1 on the
    upsampled frames reads two of them, phase by phase) and conv2's held frames. Always by phases:
    the plain path gives the same frames up to float rounding."""

    def __init__(self, block: UpsampleResBlock):
        self.block = block
        self.conv2 = ConvFrames(block.conv2)
        self._before: Tensor | None = None  # (B, C, 1, H, W); zeros in front of a chunk

    def push(self, x: Tensor) -> list[Tensor]:
        """x: (B, C, t, H, W) -> 2t frames (B, C, 1, 2H, 2W), each its own tensor."""
        b = self.block
        with_before = join_frames(self._before, x, 1, weight_format(b.conv1.conv.weight))
        self._before = x[:, :, -1:].clone()
        h = upsample2x_conv(with_before, b.conv1.conv.weight, b.conv1.conv.bias, time=True, history=True)
        del with_before
        normed = [b.norm1(frame, silu=True) for frame in h.split(1, dim=2)]  # one storage each: conv2 holds them
        del h
        out = []
        for t, frame in enumerate(normed):
            low = x[:, :, t // 2 : t // 2 + 1]  # nearest x2 in time: output frame t is input frame t // 2
            h_t = b.norm2(self.conv2.push(frame))
            out.append(add_upsampled_(F.silu(add_upsampled_(h_t, low, time=False), inplace=True), low, time=False))
        return out

    def flush(self) -> None:
        self._before = None
        self.conv2.flush()


class Upsample3d(nn.Module):
    """Nearest x2 in (t, h, w) and `UpsampleResBlock` (keys `upsample.conv3d.*`)."""

    def __init__(self, channels: int, per_frame_norm: bool, eps: float):
        super().__init__()
        self.conv3d = UpsampleResBlock(channels, per_frame_norm, eps)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, T, H, W) -> (B, C, 2T, 2H, 2W)."""
        return self.conv3d(x)

    def tiled(self, x: Tensor, tiles: Tiles) -> Tensor:
        return self.conv3d.tiled(x, tiles)

    def frames(self) -> _UpsampleFrames:
        return self.conv3d.frames()


def frames_of(module: nn.Module):
    """A module's frame-stream stage: its own (`frames()`), or the module itself applied to each
    frame (the 2D down- and upsamplings)."""
    return module.frames() if hasattr(module, "frames") else PerFrame(module)


def check_streams(cfg: "StepVideoConfig") -> None:
    if not cfg.per_frame_norm:
        raise OptionError(
            "frames stream through a chunk only where every norm is per frame (Step-Video v2); "
            "this v1 model normalises over the whole chunk: use spatial tiles (tile= or max_memory=)"
        )


class Level(nn.Module):
    """One resolution level: `block.{i}` residual blocks and an optional `downsample` / `upsample`."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)


# ------------------------------------------------------------------------------------------------
# Encoder and decoder


class Encoder(nn.Module):
    def __init__(self, cfg: StepVideoConfig):
        super().__init__()
        self.cfg = cfg
        norm = dict(per_frame_norm=cfg.per_frame_norm, eps=cfg.eps)
        self.conv_in = CausalConv3d(cfg.in_channels, cfg.encoder_in_width)
        self.down = nn.ModuleList()
        width = cfg.encoder_in_width
        last = len(cfg.encoder_widths) - 1
        for i, out_width in enumerate(cfg.encoder_widths):
            blocks = []
            for _ in range(cfg.encoder_blocks):
                blocks.append(ResBlock3d(width, out_width, **norm))
                width = out_width
            level = Level(blocks)
            if i != last:
                level.downsample = Downsample3d(width) if i in cfg.encoder_temporal_levels else Downsample2d(width)
            self.down.append(level)
        self.mid = MidBlock(width, **norm)
        self.norm_out = GroupNorm(width, NUM_GROUPS, cfg.eps, cfg.per_frame_norm)
        moments = 2 * cfg.z_channels
        if cfg.version == 2:
            P = cfg.patch_channels
            self.conv_patchify = _PatchifyConv(width, P // 8)
            self.conv_out = CausalConv3d(P, moments)
        else:
            self.conv_out = CausalConv3d(width, moments)

    def forward(self, x: Tensor, tiles: Tiles | None = None, *, stream: bool = False) -> Tensor:
        """x: (B, C, T, H, W), one chunk -> moments (B, 2z, T_lat, h, w); tile by tile with `tiles`,
        frame by frame through the levels with `stream` (v2; the mid block and tail then run on the
        lowest-resolution activation, whole)."""
        if tiles is not None:
            return self._tiled(x, tiles)
        if stream:
            h = self._levels_streamed(x)
        else:
            h = self.conv_in(x)
            for level in self.down:
                for block in level.block:
                    h = block(h)
                if hasattr(level, "downsample"):
                    h = level.downsample(h)
        h = self.mid(h)
        if self.cfg.version == 1:
            return self.conv_out(self.norm_out(h, silu=True, front_pad=self.conv_out.time_pad), padded=True)
        return self._patchify_tail(self.norm_out(h, silu=True))

    def _levels_streamed(self, x: Tensor) -> Tensor:
        """conv_in and the levels, one input frame at a time: x (B, C, T, H, W) -> the mid block's input."""
        check_streams(self.cfg)
        stages = [ConvFrames(self.conv_in)]
        for level in self.down:
            stages += [frames_of(block) for block in level.block]
            if hasattr(level, "downsample"):
                stages.append(frames_of(level.downsample))
        chain = FrameChain(stages)
        out = [frame for t in range(x.shape[2]) for frame in chain.push(x[:, :, t : t + 1])]
        return torch.cat(out, dim=2)

    def _patchify_tail(self, h: Tensor) -> Tensor:
        """v2: normed h (B, C, T, H, W) -> patchify to (B, P, (T + 1) / 2, H / 2, W / 2) -> moments."""
        shortcut = channel_group_mean(pixel_unshuffle_3d(pad_time_front(h, 1), 2), self.cfg.patch_channels)
        h = self.conv_patchify(h).add_(shortcut)
        return self.conv_out(h, residual=channel_group_mean(h, 2 * self.cfg.z_channels))

    def _tiled(self, x: Tensor, tiles: Tiles) -> Tensor:
        h = tiles.map(self.conv_in, x, halo=1)
        for level in self.down:
            for block in level.block:
                h = block.tiled(h, tiles)
            if hasattr(level, "downsample"):
                h = level.downsample.tiled(h, tiles)
        h = self.mid.tiled(h, tiles)
        if self.cfg.version == 1:
            return norm_conv_tiled(tiles, self.norm_out, self.conv_out, h)
        stats = tiles.stats(self.norm_out, h)
        # two 3x3 convs, the second at half size: 3 pixels of halo, rounded to the stride
        return tiles.map(lambda w: self._patchify_tail(tiles.normalize(self.norm_out, stats, w, silu=True)),
                         h, halo=4, scale=Fraction(1, 2))


class _PatchifyConv(nn.Module):
    """Causal conv C -> P / 8, then one zero front frame and a 2x2x2 pixel-unshuffle to P channels
    (keys `conv_patchify.conv.conv.*`)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return pixel_unshuffle_3d(pad_time_front(self.conv(x), 1), 2)


class _UnpatchifyConv(nn.Module):
    """Causal conv P -> 8 C, a 2x2x2 pixel shuffle to C channels, first frame dropped
    (keys `conv_unpatchify.conv.conv.*`)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels * 8)

    def forward(self, x: Tensor) -> Tensor:
        return pixel_shuffle_3d(self.conv(x), 2)[:, :, 1:]


class Decoder(nn.Module):
    def __init__(self, cfg: StepVideoConfig):
        super().__init__()
        self.cfg = cfg
        norm = dict(per_frame_norm=cfg.per_frame_norm, eps=cfg.eps)
        width = cfg.decoder_widths[-1]
        if cfg.version == 2:
            P = cfg.patch_channels
            self.conv_in = CausalConv3d(cfg.z_channels, P)
            self.conv_unpatchify = _UnpatchifyConv(P, width)
        else:
            self.conv_in = CausalConv3d(cfg.z_channels, width)
        self.mid = MidBlock(width, **norm)
        levels = []
        for i in reversed(range(len(cfg.decoder_widths))):
            out_width = cfg.decoder_widths[i]
            blocks = []
            for _ in range(cfg.decoder_blocks):
                blocks.append(ResBlock3d(width, out_width, **norm))
                width = out_width
            level = Level(blocks)
            if i != 0:
                level.upsample = Upsample3d(width, **norm) if i in cfg.decoder_temporal_levels else Upsample2d(width)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = GroupNorm(width, NUM_GROUPS, cfg.eps, cfg.per_frame_norm)
        self.conv_out = CausalConv3d(width, cfg.out_channels)
        # Frames the causal temporal upsampling adds in front of each chunk; dropped at the end.
        self.crop_frames = 2 ** len(cfg.decoder_temporal_levels) - 1

    def forward(self, z: Tensor, tiles: Tiles | None = None, *, stream: bool = False) -> Tensor:
        """z: (B, z, L, h, w), one chunk -> (B, C_out, time_factor * (L - 1) + 1, H, W); tile by
        tile with `tiles`; with `stream` (v2), the head and mid block on the whole lowest-resolution
        activation, then frame by frame through the levels."""
        if tiles is not None:
            return self._tiled(z, tiles)
        if stream:
            check_streams(self.cfg)
            return self._levels_streamed(self.mid(self._head(z)))
        h = self._head(z)
        h = self.mid(h)
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        h = self.conv_out(self.norm_out(h, silu=True, front_pad=self.conv_out.time_pad), padded=True)
        return h[:, :, self.crop_frames:]

    def _levels_streamed(self, h: Tensor) -> Tensor:
        """The levels and the tail, one frame of h (B, C, T, h, w) at a time, written into the output
        as they come (the front `crop_frames` dropped)."""
        stages = []
        for level in reversed(self.up):
            stages += [frames_of(block) for block in level.block]
            if hasattr(level, "upsample"):
                stages.append(frames_of(level.upsample))
        stages.append(NormConvFrames(self.norm_out, self.conv_out))
        chain = FrameChain(stages)
        frames = h.shape[2] * 2 ** len(self.cfg.decoder_temporal_levels) - self.crop_frames
        out, index = None, -self.crop_frames
        for t in range(h.shape[2]):
            for frame in chain.push(h[:, :, t : t + 1]):
                if out is None:
                    B, C, _, H, W = frame.shape
                    out = frame.new_empty((B, C, frames, H, W))
                if index >= 0:
                    out[:, :, index] = frame[:, :, 0]
                index += 1
        return out

    def _head(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        if self.cfg.version == 2:
            P, width = self.cfg.patch_channels, self.cfg.decoder_widths[-1]
            h = h.add_(z.repeat_interleave(P // self.cfg.z_channels, dim=1))
            shortcut = pixel_shuffle_3d(h.repeat_interleave(width * 8 // P, dim=1), 2)[:, :, 1:]
            h = self.conv_unpatchify(h).add_(shortcut)
        return h

    def _tiled(self, z: Tensor, tiles: Tiles) -> Tensor:
        # v2's head: two 3x3 convs at the latent size, then a 2x pixel shuffle
        h = tiles.map(self._head, z, halo=2, scale=2 if self.cfg.version == 2 else 1)
        h = self.mid.tiled(h, tiles)
        for level in reversed(self.up):
            for block in level.block:
                h = block.tiled(h, tiles)
            if hasattr(level, "upsample"):
                h = level.upsample.tiled(h, tiles)
        h = norm_conv_tiled(tiles, self.norm_out, self.conv_out, h)
        return h[:, :, self.crop_frames:]


class StepVideoVAE(FamilyModel):
    """Encoder and decoder of one chunk, channels-first: the family's model for `videovae.api`."""

    family = FAMILY
    capabilities = Capabilities(seam_blend=True)

    def __init__(self, cfg: StepVideoConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @property
    def version(self) -> int:
        return self.config.version

    @property
    def latent_channels(self) -> int:
        return self.config.z_channels

    @property
    def frame_layout(self) -> FrameLayout:
        return self.config.frame_layout

    @property
    def streams_frames(self) -> bool:
        """v2 normalises per frame and is causal throughout: its chunks can stream frame by frame."""
        return self.config.per_frame_norm

    def encode_chunk(self, x: Tensor, tiles: Tiles | None = None, *, stream: bool = False) -> Tensor:
        """x: (B, C, T, H, W), T exact and <= 17 -> moments (B, 2z, T_lat, h, w)."""
        return self.encoder(x, tiles, stream=stream)

    def decode_chunk(self, z: Tensor, tiles: Tiles | None = None, *, stream: bool = False) -> Tensor:
        """z: (B, z, L, h, w), L <= latents_per_chunk -> (B, C, T, H, W)."""
        return self.decoder(z, tiles, stream=stream)


# ------------------------------------------------------------------------------------------------
# Checkpoint keys and config from shapes

_DECODER_CONV_OUT = re.compile(r"^decoder\.conv_out\.(weight|bias)$")
SENTINEL_KEYS = ("encoder.conv_in.conv.weight", "decoder.conv_in.conv.weight", "encoder.mid.attn_1.q.conv.weight")


def checkpoint_to_module_key(key: str) -> str:
    """The released files store the decoder output conv as `decoder.conv_out.*`."""
    return _DECODER_CONV_OUT.sub(r"decoder.conv_out.conv.\1", key)


def module_to_checkpoint_key(key: str) -> str:
    return key.replace("decoder.conv_out.conv.", "decoder.conv_out.")


def looks_like(keys: set[str]) -> bool:
    return all(k in keys for k in SENTINEL_KEYS)


def config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> StepVideoConfig:
    """Read every width, z, level and block count from module-key shapes (no hand-written config)."""

    enc_levels, dec_levels = block_indices(shapes, "encoder.down"), block_indices(shapes, "decoder.up")
    version = 2 if "encoder.conv_patchify.conv.conv.weight" in shapes else 1
    conv_in = shapes["encoder.conv_in.conv.weight"]  # (width, in_channels, 3, 3, 3)
    z2 = shapes["encoder.conv_out.conv.weight"][0]   # (2z, C or P, 3, 3, 3)
    return StepVideoConfig(
        version=version,
        z_channels=z2 // 2,
        in_channels=conv_in[1],
        out_channels=shapes["decoder.conv_out.conv.weight"][0],
        encoder_in_width=conv_in[0],
        encoder_widths=tuple(shapes[f"encoder.down.{i}.block.0.conv1.conv.weight"][0] for i in enc_levels),
        encoder_blocks=len(block_indices(shapes, "encoder.down.0.block")),
        encoder_temporal_levels=tuple(i for i in enc_levels if f"encoder.down.{i}.downsample.conv.conv.weight" in shapes),
        decoder_widths=tuple(shapes[f"decoder.up.{i}.block.0.conv1.conv.weight"][0] for i in dec_levels),
        decoder_blocks=len(block_indices(shapes, "decoder.up.0.block")),
        decoder_temporal_levels=tuple(i for i in dec_levels if f"decoder.up.{i}.upsample.conv3d.conv1.conv.weight" in shapes),
        patch_channels=shapes["encoder.conv_out.conv.weight"][1] if version == 2 else None,
    )


def describe(cfg: StepVideoConfig) -> str:
    return f"Step-Video VAE v{cfg.version} (z={cfg.z_channels}, {cfg.frame_layout.spatial_factor}x spatial)"


def _module_state(tensors):
    return {checkpoint_to_module_key(k): v for k, v in tensors.items()}


def _file_state(state):
    return {module_to_checkpoint_key(k): v for k, v in state.items()}


SPEC = FamilySpec(
    name=FAMILY,
    looks_like=looks_like,
    expects=f"a Step-Video VAE ({', '.join(SENTINEL_KEYS)})",
    config_from_shapes=config_from_shapes,
    build=StepVideoVAE,
    describe=describe,
    module_state=_module_state,
    file_state=_file_state,
)
