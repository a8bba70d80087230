"""Stable Video Diffusion VAE: diffusers' `AutoencoderKLTemporalDecoder`, re-implemented.

Architecture (facts from diffusers 0.42 and Stability's sgm code; see REFERENCE.md section 2):
  - Encoder: a 2D image encoder run on every frame independently (frames folded into the batch),
    then `quant_conv` (1x1, 2z -> 2z). 8x spatial compression, none in time.
  - Decoder: 2D conv_in; a mid block and up blocks of spatio-temporal resnets (a 2D resnet per
    frame, then a resnet of (3, 1, 1) convolutions over the clip with group norm over T, blended by
    a learned `mix_factor`); one self-attention in the mid block (run only when
    layers_per_block >= 2); GN, SiLU, 2D conv_out; then a (3, 1, 1) Conv3d `time_conv_out` in pixel
    space. The decoder is not causal: every output frame depends on every latent frame of the clip.

The module tree and parameter names equal diffusers' exactly, so a diffusers safetensors loads
strictly with no renaming. The original Stability single-file layout, its detection and the
conversions between layouts are in `svd_layouts.py`.

Layouts inside this file: "folded" activations are (B*T, C, H, W) with index b*T + t (what
diffusers passes around); "clip" activations are (B, C, T, H, W) for the temporal convolutions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..chunking import FrameLayout
from ..errors import CheckpointMismatchError, OptionError
from ..conv3d import Conv3d, conv_add_
from ..layers import Downsample2d, GroupNorm, Upsample2d, clip_to_folded, folded_to_clip, is_channels_last, self_attention
from ..tiling import Tiles
from .spec import Capabilities, FamilyModel, block_indices

__all__ = ["SVDConfig", "SVDVAE", "config_from_shapes"]

FAMILY = "svd"
DIFFUSERS_CLASS_NAME = "AutoencoderKLTemporalDecoder"
ENCODER_BLOCK_TYPE = "DownEncoderBlock2D"

# Epsilons, fixed by the architecture (not in diffusers' config).
SPATIAL_EPS = 1e-6  # every 2D group norm, attention norms, conv_norm_out
TEMPORAL_EPS = 1e-5  # the group norms of the (3, 1, 1) temporal resnets


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SVDConfig:
    """Architecture of an SVD temporal-decoder VAE. Defaults are the released SVD / SVD-XT VAE."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    force_upcast: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        if not self.block_out_channels:
            raise OptionError("SVDConfig: block_out_channels must name at least one block")
        if self.layers_per_block < 1:
            raise OptionError(f"SVDConfig: layers_per_block must be >= 1; got {self.layers_per_block}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise OptionError(
                    f"SVDConfig: block width {c} does not split into norm_num_groups={self.norm_num_groups} groups"
                )

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent along H and W: 2 ** (number of blocks - 1), 8 for the real model."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers_config(cls, config: Mapping[str, Any]) -> SVDConfig:
        """From a diffusers `AutoencoderKLTemporalDecoder` config.json dict.

        Keys starting with "_" and `sample_size` (unused by this model) are ignored; any other key
        this architecture does not have raises ValueError.
        """
        config = {k: v for k, v in config.items() if not k.startswith("_") and k != "sample_size"}
        block_types = config.pop("down_block_types", None)
        known = {f.name for f in dataclasses.fields(cls)} - {"norm_num_groups"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise OptionError(f"SVDConfig.from_diffusers_config: unknown key(s) {unknown} for {DIFFUSERS_CLASS_NAME}")
        made = cls(**config)
        if block_types is not None and list(block_types) != [ENCODER_BLOCK_TYPE] * len(made.block_out_channels):
            raise OptionError(
                f"SVDConfig.from_diffusers_config: down_block_types must be {len(made.block_out_channels)} x "
                f"{ENCODER_BLOCK_TYPE!r}; got {list(block_types)}"
            )
        return made

    def to_diffusers_config(self) -> dict[str, Any]:
        """The config.json dict diffusers' `AutoencoderKLTemporalDecoder.from_config` accepts."""
        if self.norm_num_groups != 32:
            raise OptionError(
                f"{DIFFUSERS_CLASS_NAME} hard-codes 32 norm groups; this config has {self.norm_num_groups}"
            )
        return {
            "_class_name": DIFFUSERS_CLASS_NAME,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "down_block_types": [ENCODER_BLOCK_TYPE] * len(self.block_out_channels),
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "latent_channels": self.latent_channels,
            "scaling_factor": self.scaling_factor,
            "force_upcast": self.force_upcast,
        }


# --------------------------------------------------------------------------------------------
# Blocks (module and parameter names follow diffusers so state_dict keys match)
# --------------------------------------------------------------------------------------------


class ResnetBlock2D(nn.Module):
    """Pre-norm 2D resnet on (N, C_in, H, W) -> (N, C_out, H, W); a 1x1 shortcut when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float = SPATIAL_EPS):
        super().__init__()
        self.norm1 = GroupNorm(in_channels, groups, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm(out_channels, groups, eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        """x is consumed: without a shortcut conv, its memory holds the output."""
        h = self.conv1(self.norm1(x, silu=True))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return conv_add_(skip, self.norm2(h, silu=True), self.conv2)  # skip + conv2(...), one fused pass

    def tiled(self, x: Tensor, tiles: Tiles) -> Tensor:
        """forward tile by tile (`Tiles.resnet`); x is consumed."""
        stats1 = tiles.stats(self.norm1, x)

        def first(x_w: Tensor) -> Tensor:
            return self.conv1(tiles.normalize(self.norm1, stats1, x_w, silu=True))

        def second(h_w: Tensor, x_w: Tensor, stats) -> Tensor:
            skip = x_w if self.conv_shortcut is None else self.conv_shortcut(x_w)
            return self.conv2(tiles.normalize(self.norm2, stats, h_w, silu=True)).add_(skip)

        return tiles.resnet(x, self.norm2, first, second, identity=self.conv_shortcut is None)


class TemporalResBlock(nn.Module):
    """Resnet of (3, 1, 1) convolutions over a clip (B, C, T, H, W); group norm statistics over
    (C/G, T, H, W). Zero-padded in time at both ends (not causal)."""

    def __init__(self, channels: int, groups: int, eps: float = TEMPORAL_EPS):
        super().__init__()
        self.norm1 = GroupNorm(channels, groups, eps)
        self.conv1 = Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        self.norm2 = GroupNorm(channels, groups, eps)
        self.conv2 = Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, clip: Tensor) -> Tensor:
        h = self.conv1(self.norm1(clip, silu=True))
        h = self.conv2(self.norm2(h, silu=True))
        return clip + h

    def tiled(self, clip: Tensor, tiles: Tiles) -> Tensor:
        """forward tile by tile: the convs reach no neighbour in space, the norms see the whole clip."""
        h = tiles.norm_map(self.norm1, self.conv1, clip, halo=0)
        stats = tiles.stats(self.norm2, h)
        return tiles.map(lambda h_w, x_w: self.conv2(tiles.normalize(self.norm2, stats, h_w, silu=True)).add_(x_w),
                         h, clip, halo=0, out=h)


class TimeMixer(nn.Module):
    """Learned blend: (1 - sigmoid(m)) * spatial + sigmoid(m) * temporal (diffusers' AlphaBlender,
    merge_strategy "learned" with switch_spatial_to_temporal_mix)."""

    def __init__(self):
        super().__init__()
        self.mix_factor = nn.Parameter(torch.zeros(1))

    def forward(self, spatial: Tensor, temporal: Tensor) -> Tensor:
        weight = torch.sigmoid(self.mix_factor).to(spatial.dtype)  # share of the temporal path
        return torch.lerp(spatial, temporal, weight)


class SpatioTemporalResBlock(nn.Module):
    """A 2D resnet on each frame, then a temporal resnet over the clip, blended by `time_mixer`.

    Folded (B*T, C_in, H, W) -> folded (B*T, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.spatial_res_block = ResnetBlock2D(in_channels, out_channels, groups, SPATIAL_EPS)
        self.temporal_res_block = TemporalResBlock(out_channels, groups, TEMPORAL_EPS)
        self.time_mixer = TimeMixer()

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        """x is consumed (its memory may hold the output).

        The mix of spatial s and temporal s + h is s + m * h (m the mixer's share): for
        channels-last frames, whose clip is a view of the same memory, that is one fused conv-add
        into s; otherwise the two paths and the blend as diffusers writes them."""
        spatial = self.spatial_res_block(x)  # (B*T, C, H, W)
        clip = folded_to_clip(spatial, num_frames)  # (B, C, T, H, W): a view when channels-last
        if is_channels_last(clip):
            temporal = self.temporal_res_block
            h = temporal.conv1(temporal.norm1(clip, silu=True))
            share = torch.sigmoid(self.time_mixer.mix_factor)
            mixed = conv_add_(clip, temporal.norm2(h, silu=True), temporal.conv2, scale=share)  # into spatial
            return clip_to_folded(mixed)
        return self.time_mixer(spatial, clip_to_folded(self.temporal_res_block(clip)))  # spatial's layout

    def tiled(self, x: Tensor, num_frames: int, tiles: Tiles) -> Tensor:
        spatial = self.spatial_res_block.tiled(x, tiles)
        # a strided clip view of the folded frames (no copy): the temporal block reads it tile by tile
        temporal = self.temporal_res_block.tiled(folded_to_clip(spatial, num_frames, contiguous=False), tiles)
        return tiles.map(self.time_mixer, spatial, clip_to_folded(temporal), halo=0, out=spatial)


class Attention(nn.Module):
    """Single-head self-attention over the H*W positions of each image, with a pre group norm and a
    residual: (N, C, H, W) -> (N, C, H, W). Projections are Linear, as in diffusers."""

    def __init__(self, channels: int, groups: int, eps: float = SPATIAL_EPS):
        super().__init__()
        self.group_norm = GroupNorm(channels, groups, eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: Tensor) -> Tensor:
        projections = [(p.weight, p.bias) for p in (self.to_q, self.to_k, self.to_v, self.to_out[0])]
        return self_attention(x, self.group_norm(x), projections, causal=False)


class EncoderDownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(num_layers)
        )
        self.downsamplers = nn.ModuleList([Downsample2d(out_channels)]) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x

    def tiled(self, x: Tensor, tiles: Tiles) -> Tensor:
        for resnet in self.resnets:
            x = resnet.tiled(x, tiles)
        if self.downsamplers is not None:
            x = self.downsamplers[0].tiled(x, tiles)
        return x


class EncoderMidBlock(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock2D(channels, channels, groups) for _ in range(2))
        self.attentions = nn.ModuleList([Attention(channels, groups)])

    def forward(self, x: Tensor) -> Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))

    def tiled(self, x: Tensor, tiles: Tiles) -> Tensor:
        """The resnets tile by tile; the attention on the whole (lowest-resolution) images."""
        return self.resnets[1].tiled(self.attentions[0](self.resnets[0].tiled(x, tiles)), tiles)


class Encoder(nn.Module):
    """Per-image encoder: (N, in_channels, H, W) -> (N, 2z, H/f, W/f), f = 2 ** (blocks - 1)."""

    def __init__(self, cfg: SVDConfig):
        super().__init__()
        widths, groups = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            EncoderDownBlock(widths[max(i - 1, 0)], w, cfg.layers_per_block, groups, downsample=i < len(widths) - 1)
            for i, w in enumerate(widths)
        )
        self.mid_block = EncoderMidBlock(widths[-1], groups)
        self.conv_norm_out = GroupNorm(widths[-1], groups, SPATIAL_EPS)
        self.conv_out = nn.Conv2d(widths[-1], 2 * cfg.latent_channels, 3, padding=1)
        self.channels_last = True

    def forward(self, x: Tensor, tiles: Tiles | None = None) -> Tensor:
        if tiles is not None:
            return self._tiled(x, tiles)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        return self.conv_out(self.conv_norm_out(h, silu=True)).contiguous()

    def _tiled(self, x: Tensor, tiles: Tiles) -> Tensor:
        h = tiles.map(self.conv_in, x, halo=1)
        for block in self.down_blocks:
            h = block.tiled(h, tiles)
        h = self.mid_block.tiled(h, tiles)
        return tiles.norm_map(self.conv_norm_out, self.conv_out, h)


class DecoderMidBlock(nn.Module):
    """layers_per_block spatio-temporal resnets; the one attention runs before the second resnet,
    so with layers_per_block == 1 it is stored (diffusers keeps its keys) but never run."""

    def __init__(self, channels: int, num_layers: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList(SpatioTemporalResBlock(channels, channels, groups) for _ in range(num_layers))
        self.attentions = nn.ModuleList([Attention(channels, groups)])

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        x = self.resnets[0](x, num_frames)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attention(x), num_frames)
        return x

    def tiled(self, x: Tensor, num_frames: int, tiles: Tiles) -> Tensor:
        """The resnets tile by tile; the attention on the whole (lowest-resolution) images."""
        x = self.resnets[0].tiled(x, num_frames, tiles)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet.tiled(attention(x), num_frames, tiles)
        return x


class DecoderUpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            SpatioTemporalResBlock(in_channels if i == 0 else out_channels, out_channels, groups)
            for i in range(num_layers)
        )
        if upsample:  # absent on the last block, as in diffusers (no `upsamplers` key at all)
            self.upsamplers = nn.ModuleList([Upsample2d(out_channels)])
        else:
            self.upsamplers = None

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, num_frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x

    def tiled(self, x: Tensor, num_frames: int, tiles: Tiles) -> Tensor:
        for resnet in self.resnets:
            x = resnet.tiled(x, num_frames, tiles)
        if self.upsamplers is not None:
            x = self.upsamplers[0].tiled(x, tiles)
        return x


class TemporalDecoder(nn.Module):
    """Folded latents (B*T, z, h, w) of clips of T frames -> folded frames (B*T, out, h*f, w*f)."""

    def __init__(self, cfg: SVDConfig):
        super().__init__()
        widths, groups = cfg.block_out_channels[::-1], cfg.norm_num_groups  # deepest first
        self.conv_in = nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1)
        self.mid_block = DecoderMidBlock(widths[0], cfg.layers_per_block, groups)
        self.up_blocks = nn.ModuleList(
            DecoderUpBlock(widths[max(i - 1, 0)], w, cfg.layers_per_block + 1, groups, upsample=i < len(widths) - 1)
            for i, w in enumerate(widths)
        )
        self.conv_norm_out = GroupNorm(widths[-1], groups, SPATIAL_EPS)
        self.conv_out = nn.Conv2d(widths[-1], cfg.out_channels, 3, padding=1)
        self.time_conv_out = Conv3d(cfg.out_channels, cfg.out_channels, (3, 1, 1), padding=(1, 0, 0))
        self.channels_last = True

    def forward(self, z: Tensor, num_frames: int, tiles: Tiles | None = None) -> Tensor:
        """channels_last (default): the activations are channels-last from conv_in to conv_out (the
        layout oneDNN's convolutions run fastest in, and the folded frames and the clips of the
        temporal blocks are then views of one another: no copy between them); the output is
        contiguous either way."""
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        if tiles is not None:
            return self._tiled(z, num_frames, tiles)
        h = self.mid_block(self.conv_in(z), num_frames)
        for block in self.up_blocks:
            h = block(h, num_frames)
        h = self.conv_out(self.conv_norm_out(h, silu=True))  # (B*T, out, H, W)
        clip = self.time_conv_out(folded_to_clip(h, num_frames))  # (B, out, T, H, W)
        return clip_to_folded(clip.contiguous())

    def _tiled(self, z: Tensor, num_frames: int, tiles: Tiles) -> Tensor:
        h = self.mid_block.tiled(tiles.map(self.conv_in, z, halo=1), num_frames, tiles)
        for block in self.up_blocks:
            h = block.tiled(h, num_frames, tiles)
        h = tiles.norm_map(self.conv_norm_out, self.conv_out, h)  # (B*T, out, H, W)
        clip = tiles.map(self.time_conv_out, folded_to_clip(h, num_frames), halo=0)  # (3, 1, 1): no reach in space
        return clip_to_folded(clip)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class SVDVAE(FamilyModel):
    """The SVD VAE, channels-first clips: the family's model for `videovae.api`. state_dict keys
    equal diffusers' `AutoencoderKLTemporalDecoder` keys.

    Every frame is encoded on its own; the decoder's temporal layers mix all frames of the clip it
    is given, so a long video is decoded in overlapping windows (`capabilities.stream_window`).
    """

    family = FAMILY
    version = 1  # the one released SVD VAE (SVD and SVD-XT share it)
    capabilities = Capabilities(stream_window=(16, 4), encode_window=16)

    def __init__(self, config: SVDConfig = SVDConfig()):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = TemporalDecoder(config)
        self.quant_conv = nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1)

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def frame_layout(self) -> FrameLayout:
        """No temporal compression, no chunks of its own; H and W multiples of the spatial factor."""
        return FrameLayout(
            frames_per_chunk=None, latents_per_chunk=None, time_factor=1, spatial_factor=self.config.spatial_compression
        )

    def encode_chunk(self, x: Tensor, tiles: Tiles | None = None) -> Tensor:
        """x: (B, C, T, H, W) -> moments (B, 2z, T, h, w), raw latent scale; every frame on its own."""
        num_frames = x.shape[2]
        moments = self.quant_conv(self.encoder(clip_to_folded(x), tiles))  # (B*T, 2z, h, w)
        return folded_to_clip(moments, num_frames, contiguous=False)

    def decode_chunk(self, z: Tensor, tiles: Tiles | None = None) -> Tensor:
        """z: (B, z, T, h, w), raw latent scale -> frames (B, C, T, H, W); the temporal layers mix
        all T frames."""
        num_frames = z.shape[2]
        frames = self.decoder(clip_to_folded(z), num_frames, tiles)  # (B*T, C, H, W)
        return folded_to_clip(frames, num_frames, contiguous=False)


# --------------------------------------------------------------------------------------------
# Config from shapes, key checks
# --------------------------------------------------------------------------------------------

DIFFUSERS_SENTINELS = (
    "encoder.conv_in.weight", "decoder.conv_in.weight", "decoder.time_conv_out.weight", "quant_conv.weight",
)
ORIGINAL_SENTINEL = "first_stage_model.decoder.conv_out.time_mix_conv.weight"


def config_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> SVDConfig:
    """The SVDConfig of a diffusers-layout state dict, from its key names and tensor shapes.

    shapes: {key: shape}. scaling_factor and force_upcast are not in the weights: the released
    model's values are used. Raises CheckpointMismatchError when the keys are not this layout.
    """
    missing = [k for k in DIFFUSERS_SENTINELS if k not in shapes]
    if missing:
        hint = ""
        if ORIGINAL_SENTINEL in shapes:
            hint = "; these are Stability's original key names: convert with original_to_diffusers first"
        elif "conv_in.weight" in shapes and len(shapes["conv_in.weight"]) == 4 and shapes["conv_in.weight"][1] == 8:
            hint = "; conv_in takes 8 channels: this looks like an SVD UNet, not its VAE"
        raise CheckpointMismatchError(
            f"not an SVD VAE ({DIFFUSERS_CLASS_NAME}) state dict in diffusers layout: missing {missing}{hint}"
        )
    down = block_indices(shapes, "encoder.down_blocks")
    up = block_indices(shapes, "decoder.up_blocks")
    if not down or down != list(range(len(down))) or up != down:
        raise CheckpointMismatchError(
            f"SVD VAE: encoder down blocks {down} and decoder up blocks {up} must both be 0..n-1"
        )
    try:
        widths = tuple(shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] for i in down)
    except KeyError as e:
        raise CheckpointMismatchError(f"SVD VAE: missing {e.args[0]} needed to read the block widths") from None
    layers = block_indices(shapes, "encoder.down_blocks.0.resnets")
    up_layers = block_indices(shapes, "decoder.up_blocks.0.resnets")
    if len(up_layers) != len(layers) + 1:
        raise CheckpointMismatchError(
            f"SVD VAE: encoder blocks have {len(layers)} resnets, so decoder up blocks need {len(layers) + 1}; "
            f"got {len(up_layers)}"
        )
    latent = shapes["decoder.conv_in.weight"][1]
    enc_out = shapes.get("encoder.conv_out.weight", (None,))[0]
    if enc_out != 2 * latent:
        raise CheckpointMismatchError(
            f"SVD VAE: encoder.conv_out gives {enc_out} channels but the decoder takes {latent} latent channels "
            f"(expected {2 * latent} = mean + logvar)"
        )
    return SVDConfig(
        in_channels=shapes["encoder.conv_in.weight"][1],
        out_channels=shapes["decoder.time_conv_out.weight"][0],
        block_out_channels=widths,
        layers_per_block=len(layers),
        latent_channels=latent,
    )


def config_with_diffusers_json(cfg: SVDConfig, data: Mapping[str, Any], source: str = "config.json") -> SVDConfig:
    """cfg (read from the weights' shapes) completed by a diffusers config.json: its scaling_factor and
    force_upcast, which the weights do not hold. Raises CheckpointMismatchError when the file is the
    config of another class or describes another architecture than the weights."""
    class_name = data.get("_class_name", DIFFUSERS_CLASS_NAME)
    if class_name != DIFFUSERS_CLASS_NAME:
        raise CheckpointMismatchError(
            f"{source} is the config of a {class_name}, but the weights beside it are an SVD VAE "
            f"({DIFFUSERS_CLASS_NAME}); move the weights file or that config.json"
        )
    try:
        declared = SVDConfig.from_diffusers_config(data)
    except (TypeError, ValueError) as e:
        raise CheckpointMismatchError(f"{source}: {e}") from None
    structural = [f.name for f in dataclasses.fields(SVDConfig) if f.name not in ("scaling_factor", "force_upcast")]
    differ = [f"{n}: config.json {getattr(declared, n)} vs weights {getattr(cfg, n)}"
              for n in structural if getattr(declared, n) != getattr(cfg, n)]
    if differ:
        raise CheckpointMismatchError(f"{source} does not describe the weights beside it: " + "; ".join(differ))
    return dataclasses.replace(cfg, scaling_factor=declared.scaling_factor, force_upcast=declared.force_upcast)


def describe(cfg: SVDConfig) -> str:
    return (
        f"SVD VAE ({DIFFUSERS_CLASS_NAME}, blocks {cfg.block_out_channels} x {cfg.layers_per_block} layers, "
        f"z={cfg.latent_channels}, {cfg.spatial_compression}x spatial)"
    )
