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
strictly with no renaming. `original_to_diffusers` / `diffusers_to_original` convert the original
Stability single-file layout (renames, plus the attention Linear [C, C] <-> 1x1 conv [C, C, 1, 1]).

Layouts inside this file: "folded" activations are (B*T, C, H, W) with index b*T + t (what
diffusers passes around); "clip" activations are (B, C, T, H, W) for the temporal convolutions.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from videovae.chunking import FrameLayout
from videovae.errors import CheckpointMismatchError, LatentMismatchError, VideoLayoutError
from videovae.layers import GroupNorm

__all__ = [
    "SVDConfig",
    "SVDAutoencoder",
    "config_from_shapes",
    "original_to_diffusers",
    "diffusers_to_original",
    "detect_svd_layout",
]

FAMILY = "svd"
DIFFUSERS_CLASS_NAME = "AutoencoderKLTemporalDecoder"
ENCODER_BLOCK_TYPE = "DownEncoderBlock2D"
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamp

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
            raise ValueError("SVDConfig: block_out_channels must name at least one block")
        if self.layers_per_block < 1:
            raise ValueError(f"SVDConfig: layers_per_block must be >= 1; got {self.layers_per_block}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(
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
            raise ValueError(f"SVDConfig.from_diffusers_config: unknown key(s) {unknown} for {DIFFUSERS_CLASS_NAME}")
        made = cls(**config)
        if block_types is not None and list(block_types) != [ENCODER_BLOCK_TYPE] * len(made.block_out_channels):
            raise ValueError(
                f"SVDConfig.from_diffusers_config: down_block_types must be {len(made.block_out_channels)} x "
                f"{ENCODER_BLOCK_TYPE!r}; got {list(block_types)}"
            )
        return made

    def to_diffusers_config(self) -> dict[str, Any]:
        """The config.json dict diffusers' `AutoencoderKLTemporalDecoder.from_config` accepts."""
        if self.norm_num_groups != 32:
            raise ValueError(
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
# Layout helpers
# --------------------------------------------------------------------------------------------


def frames_to_batch(x: Tensor) -> Tensor:
    """(B, T, C, H, W) -> folded (B*T, C, H, W), index b*T + t. A view for a contiguous input."""
    return rearrange(x, "b t c h w -> (b t) c h w")


def batch_to_frames(x: Tensor, num_frames: int) -> Tensor:
    """Folded (B*T, C, H, W) -> (B, T, C, H, W). A view."""
    return rearrange(x, "(b t) c h w -> b t c h w", t=num_frames)


def folded_to_clip(x: Tensor, num_frames: int) -> Tensor:
    """Folded (B*T, C, H, W) -> contiguous (B, C, T, H, W), the layout Conv3d and the kernels take.

    One copy: the fused group norm is specified for contiguous / channels-last-3d clips only.
    """
    return rearrange(x, "(b t) c h w -> b c t h w", t=num_frames).contiguous()


def clip_to_folded(x: Tensor) -> Tensor:
    """(B, C, T, H, W) -> folded (B*T, C, H, W). A strided view, not a copy."""
    return rearrange(x, "b c t h w -> (b t) c h w")


def folded_to_clip_view(x: Tensor, num_frames: int) -> Tensor:
    """Folded (B*T, C, H, W) -> (B, C, T, H, W) as a strided view (no copy), for outputs whose
    consumer transposes back to (B, T, C, H, W)."""
    return rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)


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
        h = self.conv1(self.norm1(x, silu=True))
        h = self.conv2(self.norm2(h, silu=True))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class TemporalResBlock(nn.Module):
    """Resnet of (3, 1, 1) convolutions over a clip (B, C, T, H, W); group norm statistics over
    (C/G, T, H, W). Zero-padded in time at both ends (not causal)."""

    def __init__(self, channels: int, groups: int, eps: float = TEMPORAL_EPS):
        super().__init__()
        self.norm1 = GroupNorm(channels, groups, eps)
        self.conv1 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        self.norm2 = GroupNorm(channels, groups, eps)
        self.conv2 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, clip: Tensor) -> Tensor:
        h = self.conv1(self.norm1(clip, silu=True))
        h = self.conv2(self.norm2(h, silu=True))
        return clip + h


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
        spatial = self.spatial_res_block(x)  # (B*T, C, H, W)
        temporal = self.temporal_res_block(folded_to_clip(spatial, num_frames))  # (B, C, T, H, W)
        return self.time_mixer(spatial, clip_to_folded(temporal))  # (B*T, C, H, W), spatial's layout


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
        height = x.shape[-2]
        tokens = rearrange(self.group_norm(x), "n c h w -> n (h w) c")  # (N, L, C)
        attended = F.scaled_dot_product_attention(self.to_q(tokens), self.to_k(tokens), self.to_v(tokens))
        out = rearrange(self.to_out[0](attended), "n (h w) c -> n c h w", h=height)
        return out + x


class Downsample2D(nn.Module):
    """Pad right and bottom by one, then a stride-2 3x3 conv: (N, C, H, W) -> (N, C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2D(nn.Module):
    """Nearest x2, then a 3x3 conv: (N, C, H, W) -> (N, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EncoderDownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(num_layers)
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class EncoderMidBlock(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock2D(channels, channels, groups) for _ in range(2))
        self.attentions = nn.ModuleList([Attention(channels, groups)])

    def forward(self, x: Tensor) -> Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


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

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        return self.conv_out(self.conv_norm_out(h, silu=True))


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


class DecoderUpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            SpatioTemporalResBlock(in_channels if i == 0 else out_channels, out_channels, groups)
            for i in range(num_layers)
        )
        if upsample:  # absent on the last block, as in diffusers (no `upsamplers` key at all)
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels)])
        else:
            self.upsamplers = None

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, num_frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
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
        self.time_conv_out = nn.Conv3d(cfg.out_channels, cfg.out_channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, z: Tensor, num_frames: int) -> Tensor:
        h = self.mid_block(self.conv_in(z), num_frames)
        for block in self.up_blocks:
            h = block(h, num_frames)
        h = self.conv_out(self.conv_norm_out(h, silu=True))  # (B*T, out, H, W)
        clip = self.time_conv_out(folded_to_clip(h, num_frames))  # (B, out, T, H, W)
        return clip_to_folded(clip)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class SVDAutoencoder(nn.Module):
    """The SVD VAE. state_dict keys equal diffusers' `AutoencoderKLTemporalDecoder` keys.

    Build on the meta device and load with `load_state_dict(sd, assign=True)` to avoid a second copy
    of the weights; a strict load raises `CheckpointMismatchError` listing missing, unexpected and
    mis-shaped keys.
    """

    def __init__(self, config: SVDConfig = SVDConfig()):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = TemporalDecoder(config)
        self.quant_conv = nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1)

    def encode_frames(self, x: Tensor) -> Tensor:
        """Frames (N, in_channels, H, W) in [-1, 1] -> moments (N, 2z, H/f, W/f), f = 8 for SVD.

        Every frame is encoded on its own. mean = moments[:, :z], logvar = moments[:, z:] (clamp it to
        [-30, 20] as diffusers does; see `LOGVAR_RANGE`).
        """
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise VideoLayoutError(
                f"SVDAutoencoder.encode_frames takes frames (N, {self.config.in_channels}, H, W); got "
                f"{tuple(x.shape)}. Fold a video (B, T, C, H, W) into (B*T, C, H, W) first"
            )
        return self.quant_conv(self.encoder(x))

    def decode_clip(self, z: Tensor) -> Tensor:
        """Latents (B, T, z, h, w) -> frames (B, T, out_channels, h*f, w*f), raw latent scale (no
        1/scaling_factor applied). The temporal layers mix all T frames of each clip."""
        z_ch = self.config.latent_channels
        if z.ndim != 5:
            raise VideoLayoutError(
                f"SVDAutoencoder.decode_clip takes latents (B, T, {z_ch}, h, w); got a {z.ndim}D tensor "
                f"{tuple(z.shape)}"
            )
        if z.shape[2] != z_ch:
            raise LatentMismatchError(
                f"SVDAutoencoder.decode_clip takes latents (B, T, {z_ch}, h, w); got {tuple(z.shape)} "
                f"with {z.shape[2]} channels at dim 2"
            )
        num_frames = z.shape[1]
        frames = self.decoder(frames_to_batch(z), num_frames)  # (B*T, out, H, W)
        return batch_to_frames(frames, num_frames).contiguous()

    # -- the family interface of videovae.api.VideoVAE (channels-first clips) ---------------------

    family = FAMILY
    version = None

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def frame_layout(self) -> FrameLayout:
        """No temporal compression, no chunks of its own; H and W multiples of the spatial factor."""
        return FrameLayout(
            frames_per_chunk=None, latents_per_chunk=None, time_factor=1, spatial_factor=self.config.spatial_compression
        )

    def encode_chunk(self, x: Tensor) -> Tensor:
        """x: (B, C, T, H, W) -> moments (B, 2z, T, h, w); every frame is encoded on its own."""
        num_frames = x.shape[2]
        moments = self.encode_frames(clip_to_folded(x))  # (B*T, 2z, h, w)
        return folded_to_clip_view(moments, num_frames)  # (B, 2z, T, h, w)

    def decode_chunk(self, z: Tensor) -> Tensor:
        """z: (B, z, T, h, w) -> frames (B, C, T, H, W); the temporal layers mix all T frames."""
        num_frames = z.shape[2]
        frames = self.decoder(clip_to_folded(z), num_frames)  # (B*T, C, H, W)
        return folded_to_clip_view(frames, num_frames)  # (B, C, T, H, W)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """nn.Module.load_state_dict, but a strict load checks names and shapes first and raises
        `CheckpointMismatchError` listing every problem."""
        if strict:
            expected = {name: tuple(t.shape) for name, t in self.state_dict().items()}
            _check_keys(expected, {name: tuple(t.shape) for name, t in state_dict.items()}, self.config)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


# --------------------------------------------------------------------------------------------
# Config from shapes, key checks
# --------------------------------------------------------------------------------------------

_DIFFUSERS_SENTINELS = (
    "encoder.conv_in.weight", "decoder.conv_in.weight", "decoder.time_conv_out.weight", "quant_conv.weight",
)
_ORIGINAL_SENTINEL = "first_stage_model.decoder.conv_out.time_mix_conv.weight"


def _indices(keys: Iterable[str], pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (one group) at the start of keys."""
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return sorted(found)


def config_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> SVDConfig:
    """The SVDConfig of a diffusers-layout state dict, from its key names and tensor shapes.

    shapes: {key: shape}. scaling_factor and force_upcast are not in the weights: the released
    model's values are used. Raises CheckpointMismatchError when the keys are not this layout.
    """
    missing = [k for k in _DIFFUSERS_SENTINELS if k not in shapes]
    if missing:
        hint = ""
        if _ORIGINAL_SENTINEL in shapes:
            hint = "; these are Stability's original key names: convert with original_to_diffusers first"
        elif "conv_in.weight" in shapes and len(shapes["conv_in.weight"]) == 4 and shapes["conv_in.weight"][1] == 8:
            hint = "; conv_in takes 8 channels: this looks like an SVD UNet, not its VAE"
        raise CheckpointMismatchError(
            f"not an SVD VAE ({DIFFUSERS_CLASS_NAME}) state dict in diffusers layout: missing {missing}{hint}"
        )
    down = _indices(shapes, r"encoder\.down_blocks\.(\d+)\.")
    up = _indices(shapes, r"decoder\.up_blocks\.(\d+)\.")
    if not down or down != list(range(len(down))) or up != down:
        raise CheckpointMismatchError(
            f"SVD VAE: encoder down blocks {down} and decoder up blocks {up} must both be 0..n-1"
        )
    try:
        widths = tuple(shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] for i in down)
    except KeyError as e:
        raise CheckpointMismatchError(f"SVD VAE: missing {e.args[0]} needed to read the block widths") from None
    layers = _indices(shapes, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")
    up_layers = _indices(shapes, r"decoder\.up_blocks\.0\.resnets\.(\d+)\.")
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


def _expected_shapes(cfg: SVDConfig) -> dict[str, tuple[int, ...]]:
    """{key: shape} of SVDAutoencoder(cfg), built on the meta device (no memory)."""
    with torch.device("meta"):
        model = SVDAutoencoder(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _check_keys(
    expected: Mapping[str, tuple[int, ...]],
    got: Mapping[str, tuple[int, ...]],
    cfg: SVDConfig,
    layout: str = "diffusers",
) -> None:
    """Raise CheckpointMismatchError listing missing, unexpected and mis-shaped keys, if any."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(got) if tuple(expected[k]) != tuple(got[k]))
    if not (missing or unexpected or misshaped):
        return

    def listing(title: str, names: list[str], show=lambda k: k) -> str:
        more = f", ... ({len(names) - 12} more)" if len(names) > 12 else ""
        return f"\n  {len(names)} {title}: " + ", ".join(show(k) for k in names[:12]) + more

    message = f"SVD VAE ({DIFFUSERS_CLASS_NAME}, {layout} layout, config {cfg}) does not match the state dict:"
    if missing:
        message += listing("missing", missing)
    if unexpected:
        message += listing("unexpected", unexpected)
    if misshaped:
        message += listing("mis-shaped", misshaped, lambda k: f"{k} {tuple(got[k])} (expected {tuple(expected[k])})")
    if any(k.startswith(("first_stage_model.", "conditioner.")) for k in unexpected):
        message += "\n  (original Stability key names: convert with original_to_diffusers)"
    raise CheckpointMismatchError(message)


def _check_diffusers_state_dict(sd: Mapping[str, Tensor]) -> SVDConfig:
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    cfg = config_from_shapes(shapes)
    _check_keys(_expected_shapes(cfg), shapes, cfg)
    return cfg


# --------------------------------------------------------------------------------------------
# Key maps: diffusers <-> Stability's original single-file layout
# --------------------------------------------------------------------------------------------

DECODER_PREFIX = "first_stage_model.decoder."
COND_ENCODER_PREFIX = "conditioner.embedders.3.encoder."  # holds encoder.* and quant_conv.*
FIRST_STAGE_PREFIX = "first_stage_model."  # holds encoder.* with quant_conv folded into conv_out

# Sub-module renames inside one block, diffusers -> original; the parameter name is kept.
_ENCODER_RESNET = {
    "norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut",
}
_DECODER_RESNET = {
    "spatial_res_block.norm1": "norm1",
    "spatial_res_block.conv1": "conv1",
    "spatial_res_block.norm2": "norm2",
    "spatial_res_block.conv2": "conv2",
    "spatial_res_block.conv_shortcut": "nin_shortcut",
    "temporal_res_block.norm1": "time_stack.in_layers.0",
    "temporal_res_block.conv1": "time_stack.in_layers.2",
    "temporal_res_block.norm2": "time_stack.out_layers.0",
    "temporal_res_block.conv2": "time_stack.out_layers.3",
    "time_mixer": "",  # time_mixer.mix_factor -> mix_factor
}
_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_ATTENTION_LINEARS = ("to_q", "to_k", "to_v", "to_out.0")
_TOP = {
    "conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out", "time_conv_out": "conv_out.time_mix_conv",
}


def _split(name: str) -> tuple[str, str]:
    """'a.b.weight' -> ('a.b', 'weight'); 'mix_factor' -> ('', 'mix_factor')."""
    module, _, param = name.rpartition(".")
    return module, param


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _rename_in_block(rest: str, table: Mapping[str, str]) -> str | None:
    module, param = _split(rest)
    return _join(table[module], param) if module in table else None


def _to_original_name(name: str, num_blocks: int) -> str | None:
    """One diffusers name relative to encoder./decoder. (e.g. 'mid_block.resnets.0.conv1.weight')
    -> its original name relative to the same module, or None if it has no counterpart."""
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name):
        new = _rename_in_block(m[3], _ENCODER_RESNET)
        return new and f"down.{m[1]}.block.{m[2]}.{new}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.(conv\.\w+)", name):
        return f"down.{m[1]}.downsample.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name):
        new = _rename_in_block(m[3], _DECODER_RESNET)
        return new and f"up.{num_blocks - 1 - int(m[1])}.block.{m[2]}.{new}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(conv\.\w+)", name):
        return f"up.{num_blocks - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", name):
        new = _rename_in_block(m[2], {**_ENCODER_RESNET, **_DECODER_RESNET})
        return new and f"mid.block_{int(m[1]) + 1}.{new}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name):
        new = _rename_in_block(m[1], _ATTENTION)
        return new and f"mid.attn_1.{new}"
    return _rename_in_block(name, _TOP)


def _to_diffusers_name(name: str, num_blocks: int, decoder: bool) -> str | None:
    """Inverse of `_to_original_name` for a name relative to the decoder (decoder=True) or the
    encoder; None if it has no counterpart there."""
    resnet = {v: k for k, v in (_DECODER_RESNET if decoder else _ENCODER_RESNET).items()}
    top = {v: k for k, v in _TOP.items() if decoder or k != "time_conv_out"}
    blocks, block_kind = ("up", "up_blocks") if decoder else ("down", "down_blocks")
    sampler = "upsample" if decoder else "downsample"
    index = (lambda i: num_blocks - 1 - int(i)) if decoder else int  # up blocks run deepest first

    if m := re.fullmatch(rf"{blocks}\.(\d+)\.block\.(\d+)\.(.+)", name):
        new = _rename_in_block(m[3], resnet)
        return new and f"{block_kind}.{index(m[1])}.resnets.{m[2]}.{new}"
    if m := re.fullmatch(rf"{blocks}\.(\d+)\.{sampler}\.(conv\.\w+)", name):
        return f"{block_kind}.{index(m[1])}.{sampler}rs.0.{m[2]}"
    if m := re.fullmatch(r"mid\.block_(\d+)\.(.+)", name):
        new = _rename_in_block(m[2], resnet)
        return new and f"mid_block.resnets.{int(m[1]) - 1}.{new}"
    if m := re.fullmatch(r"mid\.attn_1\.(.+)", name):
        new = _rename_in_block(m[1], {v: k for k, v in _ATTENTION.items()})
        return new and f"mid_block.attentions.0.{new}"
    return _rename_in_block(name, top)


def _is_attention_linear_weight(diffusers_name: str) -> bool:
    module, param = _split(diffusers_name)
    return param == "weight" and module.startswith("mid_block.attentions.0.") and module.endswith(_ATTENTION_LINEARS)


def _group_to_diffusers(
    sd: Mapping[str, Tensor], prefix: str, new_prefix: str, rename: Callable[[str], str | None], unmatched: list[str]
) -> dict[str, Tensor]:
    """The keys of sd under `prefix`, renamed by `rename` and put under `new_prefix`; attention 1x1
    conv weights [C, C, 1, 1] become Linear weights [C, C] (a view). Names it cannot map go to
    `unmatched`."""
    out = {}
    for key, tensor in sd.items():
        if not key.startswith(prefix):
            continue
        new = rename(key[len(prefix):])
        if new is None:
            unmatched.append(key)
            continue
        if _is_attention_linear_weight(new) and tensor.ndim == 4:
            tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])  # [C, C, 1, 1] -> [C, C]
        out[new_prefix + new] = tensor
    return out


def _group_blocks(keys: Iterable[str], prefix: str, pattern: str) -> int:
    return len(_indices((k[len(prefix):] for k in keys if k.startswith(prefix)), pattern))


def detect_svd_layout(keys: Iterable[str]) -> Literal["diffusers", "original"] | None:
    """'diffusers' (AutoencoderKLTemporalDecoder names), 'original' (Stability's single-file names:
    a full SVD checkpoint or its VAE subset), or None (not an SVD VAE), from sentinel key names."""
    keys = set(keys)
    if "decoder.time_conv_out.weight" in keys and "decoder.conv_in.weight" in keys:
        return "diffusers"
    if _ORIGINAL_SENTINEL in keys:
        return "original"
    return None


def original_to_diffusers(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original-layout state dict -> diffusers layout (the same tensors, renamed; the attention 1x1
    conv weights [C, C, 1, 1] become Linear weights [C, C]).

    Reads the decoder from `first_stage_model.decoder.*` and the encoder from
    `conditioner.embedders.3.encoder.{encoder,quant_conv}.*` (the conditioning-frame encoder; used
    when present, bit-exact) or else from `first_stage_model.encoder.*`, whose conv_out already
    contains the quant_conv, with an identity `quant_conv`. Keys outside those groups (the UNet,
    other conditioners) are ignored. Raises CheckpointMismatchError on unmatched, missing or
    mis-shaped keys.
    """
    keys = list(sd)
    if not any(k.startswith(DECODER_PREFIX) for k in keys):
        raise CheckpointMismatchError(
            f"original-layout SVD VAE: no {DECODER_PREFIX}* keys (detected layout: {detect_svd_layout(keys)})"
        )
    num_blocks = _group_blocks(keys, DECODER_PREFIX, r"up\.(\d+)\.")
    unmatched: list[str] = []
    out = _group_to_diffusers(
        sd, DECODER_PREFIX, "decoder.", lambda n: _to_diffusers_name(n, num_blocks, decoder=True), unmatched
    )
    cond_encoder = COND_ENCODER_PREFIX + "encoder."
    if any(k.startswith(cond_encoder) for k in keys):
        encoder_prefix, quant_prefix = cond_encoder, COND_ENCODER_PREFIX + "quant_conv."
    else:
        encoder_prefix, quant_prefix = FIRST_STAGE_PREFIX + "encoder.", FIRST_STAGE_PREFIX + "quant_conv."
    encoder_blocks = _group_blocks(keys, encoder_prefix, r"down\.(\d+)\.")
    out |= _group_to_diffusers(
        sd, encoder_prefix, "encoder.", lambda n: _to_diffusers_name(n, encoder_blocks, decoder=False), unmatched
    )
    quant = {k[len(quant_prefix):]: v for k, v in sd.items() if k.startswith(quant_prefix)}
    if quant:
        out |= {f"quant_conv.{name}": t for name, t in quant.items()}
    elif encoder_prefix.startswith(FIRST_STAGE_PREFIX) and "encoder.conv_out.weight" in out:
        # sgm's first-stage encoder has no quant_conv: it is folded into conv_out. Identity here.
        w = out["encoder.conv_out.weight"]
        out["quant_conv.weight"] = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)[:, :, None, None]
        out["quant_conv.bias"] = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    if unmatched:
        raise CheckpointMismatchError(
            f"original-layout SVD VAE: {len(unmatched)} key(s) with no diffusers counterpart: {sorted(unmatched)[:12]}"
        )
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    try:
        cfg = config_from_shapes(shapes)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"original-layout SVD VAE, after renaming: {e}") from None
    _check_keys(_expected_shapes(cfg), shapes, cfg, layout="original (renamed to diffusers)")
    return out


def diffusers_to_original(sd: Mapping[str, Tensor], encoder_prefix: str = COND_ENCODER_PREFIX) -> dict[str, Tensor]:
    """Diffusers-layout state dict -> original layout (renames; attention Linear [C, C] weights
    become 1x1 conv weights [C, C, 1, 1]).

    The decoder goes to `first_stage_model.decoder.*`. The encoder goes to
    `{encoder_prefix}encoder.*` and `{encoder_prefix}quant_conv.*`; with
    encoder_prefix="first_stage_model." (sgm's first-stage model, which has no quant_conv) the
    quant_conv is folded into encoder.conv_out instead (W' = Q @ W, b' = Q @ b + b_q: arithmetic,
    exact only when Q is the identity). Raises CheckpointMismatchError if sd is not a complete
    diffusers-layout SVD VAE.
    """
    cfg = _check_diffusers_state_dict(sd)
    num_blocks = len(cfg.block_out_channels)
    if encoder_prefix and not encoder_prefix.endswith("."):
        encoder_prefix += "."

    out: dict[str, Tensor] = {}
    for key, tensor in sd.items():
        module, _, name = key.partition(".")
        if module == "quant_conv":
            continue
        new_prefix = DECODER_PREFIX if module == "decoder" else f"{encoder_prefix}encoder."
        if _is_attention_linear_weight(name):
            tensor = tensor.reshape(*tensor.shape, 1, 1)  # [C, C] -> [C, C, 1, 1]; a view
        out[new_prefix + _to_original_name(name, num_blocks)] = tensor
    if encoder_prefix == FIRST_STAGE_PREFIX:
        q_w, q_b = sd["quant_conv.weight"].flatten(1), sd["quant_conv.bias"]  # (2z, 2z), (2z,)
        w, b = sd["encoder.conv_out.weight"], sd["encoder.conv_out.bias"]  # (2z, C, 3, 3), (2z,)
        out[f"{encoder_prefix}encoder.conv_out.weight"] = torch.einsum("om,mchw->ochw", q_w, w)
        out[f"{encoder_prefix}encoder.conv_out.bias"] = q_w @ b + q_b
    else:
        out[f"{encoder_prefix}quant_conv.weight"] = sd["quant_conv.weight"]
        out[f"{encoder_prefix}quant_conv.bias"] = sd["quant_conv.bias"]
    return out


# --------------------------------------------------------------------------------------------
# The family as videovae.checkpoints sees it: files in either layout -> a diffusers-layout model
# --------------------------------------------------------------------------------------------


def looks_like(keys: Iterable[str]) -> bool:
    """Whether a file's keys hold an SVD VAE, in the diffusers or the original layout."""
    return detect_svd_layout(keys) is not None


def file_keys(keys: Iterable[str]) -> list[str]:
    """The keys of a file that the VAE is read from: all of a diffusers-layout file; of an original
    (possibly full SVD) checkpoint, the decoder and the one encoder group `original_to_diffusers`
    uses, so the UNet and other conditioners are never read."""
    keys = list(keys)
    if detect_svd_layout(keys) != "original":
        return keys
    cond_encoder = COND_ENCODER_PREFIX + "encoder."
    if any(k.startswith(cond_encoder) for k in keys):
        prefixes = (DECODER_PREFIX, cond_encoder, COND_ENCODER_PREFIX + "quant_conv.")
    else:
        prefixes = (DECODER_PREFIX, FIRST_STAGE_PREFIX + "encoder.", FIRST_STAGE_PREFIX + "quant_conv.")
    return [k for k in keys if k.startswith(prefixes)]


def to_diffusers_state(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A file's tensors, in either layout -> the diffusers-layout state dict SVDAutoencoder loads."""
    return original_to_diffusers(sd) if detect_svd_layout(sd) == "original" else dict(sd)


def _meta(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def diffusers_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a file in either layout -> {diffusers key: shape}, without any tensor data."""
    vae_shapes = {k: shapes[k] for k in file_keys(shapes)}
    return {k: tuple(t.shape) for k, t in to_diffusers_state(_meta(vae_shapes)).items()}


def config_from_file_shapes(shapes: Mapping[str, tuple[int, ...]]) -> SVDConfig:
    """The SVDConfig of a file in either layout, from its key names and shapes alone."""
    return config_from_shapes(diffusers_shapes(shapes))


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


# --------------------------------------------------------------------------------------------
# Checkpoint files: diffusers layout <-> original layout
# --------------------------------------------------------------------------------------------

LAYOUTS = ("diffusers", "original")
DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def convert_layout(
    sd: Mapping[str, Tensor], layout: Literal["diffusers", "original"], *, encoder_prefix: str = COND_ENCODER_PREFIX
) -> dict[str, Tensor]:
    """An SVD VAE state dict in either layout -> the same tensors in `layout` (bit-exact: renames and
    the attention [C, C] <-> [C, C, 1, 1] reshapes only).

    To "original": the encoder goes under `encoder_prefix` (default the conditioning-frame encoder,
    `conditioner.embedders.3.encoder.`, which keeps its quant_conv; "first_stage_model." folds the
    quant_conv into conv_out, exact only for an identity quant_conv). To "diffusers": see
    `original_to_diffusers` (keys outside the VAE groups are left out). A state dict already in
    `layout` comes back unchanged (its VAE keys only; encoder_prefix applies to conversions from
    the diffusers layout). Raises CheckpointMismatchError for anything that is not a complete
    SVD VAE.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    found = detect_svd_layout(sd)
    if found is None:
        raise CheckpointMismatchError(
            f"not an SVD VAE state dict in either layout: no decoder.time_conv_out.weight (diffusers) and no "
            f"{_ORIGINAL_SENTINEL} (original) among its {len(sd)} keys"
        )
    if layout == "diffusers":
        out = to_diffusers_state(sd)
        if found == "diffusers":
            _check_diffusers_state_dict(out)
        return out
    if found == "original":
        original = {k: sd[k] for k in file_keys(sd)}
        original_to_diffusers(original)  # raises unless it is a complete VAE
        return original
    return diffusers_to_original(to_diffusers_state(sd), encoder_prefix)


def convert_svd_checkpoint(
    src: str | Path,
    dst: str | Path,
    layout: Literal["diffusers", "original"],
    *,
    dtype: torch.dtype | None = None,
    encoder_prefix: str = COND_ENCODER_PREFIX,
) -> dict[str, Any]:
    """Write the SVD VAE of checkpoint `src` (a safetensors file in either layout, or a diffusers
    folder) to `dst` in `layout`.

    dst: a .safetensors file; or, for layout "diffusers", a folder (any path without a .safetensors
    suffix), which gets diffusion_pytorch_model.safetensors and a config.json that diffusers'
    AutoencoderKLTemporalDecoder.from_pretrained reads (scaling_factor / force_upcast from a
    config.json beside `src`, else the released model's). dtype: cast floating tensors (None keeps
    them bit-exact). Only the VAE is written: a full SVD checkpoint's UNet and conditioners are left
    out (counted in the returned summary). Returns {"src", "dst", "from", "to", "tensors", "left_out"}.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from videovae.checkpoints import load_config_beside, read_header

    header = read_header(src)
    found = detect_svd_layout(header.shapes)
    if found is None:
        raise CheckpointMismatchError(
            f"{header.path} is not an SVD VAE checkpoint in the diffusers or the original layout "
            f"(no decoder.time_conv_out.weight and no {_ORIGINAL_SENTINEL})"
        )
    keys = file_keys(header.shapes)
    with safe_open(str(header.path), framework="pt", device="cpu") as f:
        sd = {k: f.get_tensor(k) for k in keys}
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    out = convert_layout(sd, layout, encoder_prefix=encoder_prefix)
    out = {k: v.contiguous() for k, v in out.items()}

    dst = Path(dst)
    weights = dst
    if layout == "diffusers" and dst.suffix != ".safetensors":
        dst.mkdir(parents=True, exist_ok=True)
        weights = dst / DIFFUSERS_WEIGHTS_NAME
        cfg = config_from_shapes({k: tuple(v.shape) for k, v in out.items()})
        beside = load_config_beside(header.path)
        if beside is not None:
            cfg = config_with_diffusers_json(cfg, beside, str(header.path.parent / "config.json"))
        config = {**cfg.to_diffusers_config(), "sample_size": beside.get("sample_size", 768) if beside else 768}
        (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    elif dst.suffix != ".safetensors":
        raise ValueError(f"dst must be a .safetensors file for layout {layout!r}; got {dst}")
    save_file(out, str(weights), metadata={"format": "pt"})
    return {
        "src": str(header.path), "dst": str(weights), "from": found, "to": layout,
        "tensors": len(out), "left_out": len(header.shapes) - len(keys),
    }
