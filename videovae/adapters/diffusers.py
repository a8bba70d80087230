"""diffusers-compatible faces over a loaded `VideoVAE`, so it can be the `vae` of a diffusers pipeline.

Two layouts, one module each; both register the VideoVAE as the submodule `vae` (shared weights,
`.to()` moves and casts it) and work for every family:

  SVDFace    the AutoencoderKLTemporalDecoder face StableVideoDiffusionPipeline uses: images and
             latents with frames folded into the batch, (B*T, C, H, W) and (B*T, z, h, w);
             `decode(z, num_frames=T)` decodes each run of T latents as one clip.
  VideoFace  the 5D face of CogVideoX / HunyuanVideo / Wan / LTX-style pipelines: videos
             (B, C, T, H, W) and latents (B, z, T_lat, h, w).

Inputs are cast to the VAE's dtype and device (an fp16 VAE takes fp32 latents); outputs come back in
the input's dtype, as everywhere in videovae. Latents are raw (unscaled): pipelines apply
`config.scaling_factor` themselves. diffusers is not imported here.
"""

from __future__ import annotations

import os
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..api import VideoVAE
from ..errors import OptionError, UsageError, VideoLayoutError
from ..engine import TileChoice, resolve_tile

# diffusers' tile size when a pipeline calls enable_tiling() with no arguments (Wan, HunyuanVideo)
DEFAULT_TILE = 256
# the tiling arguments of diffusers' video VAEs (Wan, HunyuanVideo, CogVideoX, LTX): videovae's
# tiles are exact, so the strides and overlaps that set their cross-fades change nothing here,
# unless enable_tiling(exact=False) asks for diffusers' blended tiles
_TILE_OVERLAP_ARGUMENTS = (
    "tile_sample_stride_height", "tile_sample_stride_width", "tile_sample_stride_num_frames",
    "tile_sample_min_num_frames", "tile_overlap_factor_height", "tile_overlap_factor_width",
)


class FaceConfig(dict):
    """A read-only dict with attribute access, like diffusers' FrozenDict: `config.scaling_factor`
    and `config.get("scaling_factor")` both work."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no key {name!r}") from None

    def _read_only(self, *args, **kwargs):
        raise UsageError("the face's config is read-only; it describes the wrapped VideoVAE")

    def __reduce__(self):
        return (type(self), (dict(self),))

    __setitem__ = __delitem__ = __setattr__ = update = pop = popitem = setdefault = clear = _read_only  # type: ignore


class DiagonalGaussian:
    """diffusers' DiagonalGaussianDistribution over latents of any layout: mean, logvar (clamped to
    [-30, 20] by the encoder), std, var, mode(), sample(generator), kl()."""

    def __init__(self, mean: Tensor, logvar: Tensor):
        self.mean, self.logvar = mean, logvar
        self.std = torch.exp(0.5 * logvar)
        self.var = torch.exp(logvar)
        self.deterministic = False

    @property
    def parameters(self) -> Tensor:
        """mean and logvar concatenated along the channel axis (dim 1), as diffusers stores them."""
        return torch.cat([self.mean, self.logvar], dim=1)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """mean + std * eps, eps drawn like diffusers' randn_tensor: on the generator's device, in the
        mean's dtype, then moved to the mean's device."""
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self, other: "DiagonalGaussian | None" = None) -> Tensor:
        """KL divergence to N(0, 1) (or to `other`), summed over all but the batch dim."""
        dims = list(range(1, self.mean.ndim))
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=dims,
        )


class _Output:
    """A diffusers-style output: its fields by name, or by index (`out[0]`), or as `to_tuple()`."""

    def __getitem__(self, index: int):
        return self.to_tuple()[index]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))


@dataclass
class EncoderOutput(_Output):
    """`.latent_dist`, or `out[0]`, as diffusers' AutoencoderKLOutput."""

    latent_dist: DiagonalGaussian


@dataclass
class DecoderOutput(_Output):
    """`.sample`, or `out[0]`, as diffusers' DecoderOutput."""

    sample: Tensor


def _block_out_channels(vae: VideoVAE) -> tuple[int, ...]:
    """Widths whose count n gives pipelines' scale factor 2 ** (n - 1) = the spatial compression: the
    model's own (SVD) when that count fits, else the encoder widths padded or cut to n (only the
    length means anything to a pipeline)."""
    spatial = vae.spatial_compression
    if spatial & (spatial - 1):
        raise OptionError(f"spatial compression {spatial} is not a power of two; diffusers pipelines cannot express it")
    n = spatial.bit_length()
    config = vae.config
    for name in ("block_out_channels", "encoder_widths"):
        widths = tuple(getattr(config, name, ()) or ())
        if len(widths) == n:
            return widths
    widths = tuple(getattr(config, "encoder_widths", ()) or ()) or (128,)
    return (widths + widths[-1:] * n)[:n]


def _face_config(vae: VideoVAE, **extra: Any) -> FaceConfig:
    config = vae.config
    return FaceConfig(
        _class_name=extra.pop("_class_name"),
        videovae_family=vae.family,
        videovae_version=vae.version,
        in_channels=vae.in_channels,
        out_channels=getattr(config, "out_channels", vae.in_channels),
        latent_channels=vae.latent_channels,
        z_dim=vae.latent_channels,
        block_out_channels=_block_out_channels(vae),
        scaling_factor=float(getattr(config, "scaling_factor", 1.0)),
        shift_factor=None,
        latents_mean=None,
        latents_std=None,
        force_upcast=bool(getattr(config, "force_upcast", False)),
        spatial_compression_ratio=vae.spatial_compression,
        temporal_compression_ratio=vae.temporal_compression,
        scale_factor_spatial=vae.spatial_compression,
        scale_factor_temporal=vae.temporal_compression,
        **extra,
    )


class _Face(nn.Module):
    """What both faces share: the wrapped VideoVAE, dtype/device, slicing and tiling switches."""

    def __init__(self, vae: VideoVAE, class_name: str):
        super().__init__()
        if not isinstance(vae, VideoVAE):
            raise UsageError(f"{type(self).__name__} wraps a videovae.VideoVAE (videovae.load(path)); got {type(vae).__name__}")
        self.vae = vae
        self.config = _face_config(vae, _class_name=class_name)
        self.use_slicing = False
        self.use_tiling = False
        self.tile: tuple[int, int] | None = None
        self.tile_overlap: int | None = None  # blended (approximate) tiles, enable_tiling(exact=False)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        *,
        strict_dtype: bool = False,
    ):
        """A face over `videovae.load(path[/subfolder])`, as diffusers' `from_pretrained` is called:
        a checkpoint file, a diffusers model folder, or a pipeline folder with subfolder="vae".
        torch_dtype: float32 by default, as in diffusers (see `videovae.load` for 16-bit on CPUs)."""
        from ..api import load

        where = Path(path) / subfolder if subfolder else Path(path)
        return cls(load(where, device=device, dtype=torch_dtype, strict_dtype=strict_dtype))

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def spatial_compression_ratio(self) -> int:
        return self.vae.spatial_compression

    @property
    def temporal_compression_ratio(self) -> int:
        return self.vae.temporal_compression

    def enable_slicing(self) -> None:
        """Encode and decode one batch element at a time (same result, less memory)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self, tile_sample_min_height: int | None = None, tile_sample_min_width: int | None = None,
                      *, exact: bool = True, **overlaps: Any) -> None:
        """Encode and decode tile by tile in space, tiles of tile_sample_min_height x
        tile_sample_min_width pixels (default 256, diffusers' default; multiples of
        `spatial_compression_ratio`). Exact by default: the result equals the untiled one up to
        float rounding (`videovae.tiling`), so the strides and overlap factors diffusers' VAEs take
        (tile_sample_stride_height, ...) are accepted and change nothing.

        exact=False: diffusers' own approximate tiling instead, tiles run on their own and
        cross-faded over tile - tile_sample_stride_* pixels (default stride: 3/4 of the tile, as
        Wan and HunyuanVideo); both axes must overlap by the same amount."""
        unknown = sorted(set(overlaps) - set(_TILE_OVERLAP_ARGUMENTS))
        if unknown:
            raise OptionError(
                f"enable_tiling got unknown arguments {', '.join(unknown)}; it takes tile_sample_min_height, "
                f"tile_sample_min_width, exact and diffusers' {', '.join(_TILE_OVERLAP_ARGUMENTS)}"
            )
        tile = resolve_tile(self.vae.model, (tile_sample_min_height or DEFAULT_TILE, tile_sample_min_width or DEFAULT_TILE))
        overlap = None
        if not exact:
            strides = (overlaps.get("tile_sample_stride_height") or tile[0] * 3 // 4,
                       overlaps.get("tile_sample_stride_width") or tile[1] * 3 // 4)
            overlap_hw = {tile[0] - strides[0], tile[1] - strides[1]}
            if len(overlap_hw) != 1:
                raise OptionError(f"enable_tiling(exact=False): tiles {tile[0]}x{tile[1]} with strides {strides[0]}x{strides[1]} "
                                  "overlap differently in height and width; give strides with one overlap")
            overlap = overlap_hw.pop()
            TileChoice(self.vae.model, "decode", tile, overlap=overlap)  # refuses a bad overlap now
        self.tile, self.tile_overlap, self.use_tiling = tile, overlap, True

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def forward(
        self,
        sample: Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
        **decode_options: Any,
    ) -> DecoderOutput | tuple[Tensor]:
        """Encode, take the posterior's mode (or a sample from `generator`), decode; decode_options
        go to `decode` (SVDFace: num_frames, the clip length)."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict, **decode_options)

    def _slices(self, x: Tensor) -> list[Tensor]:
        """x whole, or one batch element at a time when slicing is on."""
        return list(x.split(1)) if self.use_slicing and x.shape[0] > 1 else [x]

    def _encode_video(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """video (B, T, C, H, W) -> mean, logvar (B, T_lat, z, h, w), in the input's dtype."""
        posteriors = [self.vae.encode(piece, **self._tiling) for piece in self._slices(video)]
        return torch.cat([p.mean for p in posteriors]), torch.cat([p.logvar for p in posteriors])

    def _decode_video(self, z: Tensor) -> Tensor:
        """z (B, T_lat, z, h, w) -> video (B, T, C, H, W), in z's dtype."""
        return torch.cat([self.vae.decode(piece, **self._tiling) for piece in self._slices(z)])

    @property
    def _tiling(self) -> dict:
        return {"tile": self.tile, "tile_overlap": self.tile_overlap} if self.use_tiling else {}


class SVDFace(_Face):
    """A VideoVAE as diffusers' AutoencoderKLTemporalDecoder, for StableVideoDiffusionPipeline.

    encode(x: (N, C, H, W)) encodes each image as a one-frame video; decode(z: (B*T, z, h, w),
    num_frames=T) decodes B clips of T latent frames -> (B*T_out, C, H, W) (T_out = T for SVD).
    """

    def __init__(self, vae: VideoVAE):
        super().__init__(vae, "AutoencoderKLTemporalDecoder")

    def encode(self, x: Tensor, return_dict: bool = True) -> EncoderOutput | tuple[DiagonalGaussian]:
        """Images x: (N, C, H, W) in [-1, 1] -> `.latent_dist` over (N, z, h, w)."""
        if not isinstance(x, Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise VideoLayoutError(
                f"SVDFace.encode takes images (N, C, H, W) (frames folded into the batch); got {shape}. "
                "For (B, C, T, H, W) videos use VideoFace"
            )
        mean, logvar = self._encode_video(x.unsqueeze(1))  # (N, 1, C, H, W): N one-frame videos
        if mean.shape[1] != 1:
            raise VideoLayoutError(f"{self.vae.family} encodes one image to {mean.shape[1]} latent frames")
        dist = DiagonalGaussian(mean[:, 0], logvar[:, 0])  # (N, z, h, w)
        return EncoderOutput(dist) if return_dict else (dist,)

    def decode(self, z: Tensor, num_frames: int = 1, return_dict: bool = True) -> DecoderOutput | tuple[Tensor]:
        """Latents z: (B*T, z, h, w), index b*T + t, T = num_frames -> frames (B*T_out, C, H, W)."""
        if not isinstance(z, Tensor) or z.ndim != 4:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise VideoLayoutError(f"SVDFace.decode takes latents (B*T, z, h, w) with T = num_frames; got {shape}")
        if num_frames < 1 or z.shape[0] % num_frames:
            raise VideoLayoutError(
                f"SVDFace.decode: {z.shape[0]} latent frames do not split into clips of num_frames={num_frames}"
            )
        clips = z.unflatten(0, (z.shape[0] // num_frames, num_frames))  # (B, T, z, h, w)
        frames = self._decode_video(clips).flatten(0, 1)  # (B*T_out, C, H, W)
        return DecoderOutput(frames) if return_dict else (frames,)

    def forward(self, sample: Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None, num_frames: int = 1) -> DecoderOutput | tuple[Tensor]:
        """As `_Face.forward`, decoding clips of `num_frames` (StableVideoDiffusionPipeline looks for
        num_frames in this signature)."""
        return super().forward(sample, sample_posterior, return_dict, generator, num_frames=num_frames)


class VideoFace(_Face):
    """A VideoVAE with the 5D face of CogVideoX / HunyuanVideo / Wan / LTX-style pipelines:
    videos (B, C, T, H, W) in [-1, 1], latents (B, z, T_lat, h, w)."""

    def __init__(self, vae: VideoVAE):
        super().__init__(vae, "VideoVAE")

    def encode(self, x: Tensor, return_dict: bool = True) -> EncoderOutput | tuple[DiagonalGaussian]:
        """x: (B, C, T, H, W) -> `.latent_dist` over (B, z, T_lat, h, w)."""
        _check_5d(x, "VideoFace.encode", "videos (B, C, T, H, W)")
        mean, logvar = self._encode_video(x.transpose(1, 2))  # (B, T_lat, z, h, w)
        dist = DiagonalGaussian(mean.transpose(1, 2), logvar.transpose(1, 2))
        return EncoderOutput(dist) if return_dict else (dist,)

    def decode(self, z: Tensor, return_dict: bool = True) -> DecoderOutput | tuple[Tensor]:
        """z: (B, z, T_lat, h, w) -> video (B, C, T, H, W)."""
        _check_5d(z, "VideoFace.decode", "latents (B, z, T_lat, h, w)")
        video = self._decode_video(z.transpose(1, 2)).transpose(1, 2)  # (B, C, T, H, W)
        return DecoderOutput(video) if return_dict else (video,)



def _check_5d(x: object, where: str, layout: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 5:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise VideoLayoutError(f"{where} takes {layout}; got {shape}")


__all__ = ["SVDFace", "VideoFace", "FaceConfig", "DiagonalGaussian"]
