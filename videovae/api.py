"""VideoVAE: the public encode/decode module over (B, T, C, H, W) videos in [-1, 1].

It owns what every family shares: input validation and the dtype/device policy; the chunk loop, the
frame policy and the seam blend run in `videovae.engine`, whose push/flush objects the one-shot calls
and the streams share. A family model only sees one chunk, channels-first:
`encode_chunk(x: (B, C, T, H, W)) -> moments (B, 2z, T_lat, h, w)` and
`decode_chunk(z: (B, z, T_lat, h, w)) -> (B, C, T, H, W)`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from .chunking import FrameLayout, FramePolicy, apply_policy, undo
from .distribution import LatentDistribution
from .compute_dtype import parse_dtype, resolve_compute_dtype, warn_if_slow
from .engine import ChunkDecoder, ChunkEncoder, ChunkReconstructor, TileChoice, resolve_tile, resolve_window
from .errors import OptionError, VideoLayoutError
from .memory_plan import MemoryPlan
from .tiling import Tiles
from .validation import check_device, check_latents, check_num_frames, check_video_shape


class VideoVAE(nn.Module):
    """A video autoencoder with one interface for every family.

    Videos are (B, T, C, H, W) in [-1, 1]; latents are (B, T_lat, z, h, w). Inputs of any float dtype
    and device are cast to the model's dtype and device on entry; outputs come back in the input's
    dtype and on its device. Build one with `videovae.load(path)`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        source: str | None = None,
        stored_dtype: torch.dtype | None = None,
        strict_dtype: bool = False,
    ):
        super().__init__()
        self.model = model
        self.source = source
        self.stored_dtype = stored_dtype  # the checkpoint's floating dtype (None: not loaded from a file)
        self.strict_dtype = strict_dtype  # compute in a slow 16-bit CPU dtype without a warning
        self._slow_dtype_warned: torch.dtype | None = None

    # -- facts ---------------------------------------------------------------------------------

    @property
    def family(self) -> str:
        return self.model.family

    @property
    def version(self) -> int | None:
        return getattr(self.model, "version", None)

    @property
    def config(self):
        return self.model.config

    @property
    def frame_layout(self) -> FrameLayout:
        return self.model.frame_layout

    @property
    def in_channels(self) -> int:
        return self.model.config.in_channels

    @property
    def latent_channels(self) -> int:
        return self.model.latent_channels

    @property
    def spatial_compression(self) -> int:
        return self.frame_layout.spatial_factor

    @property
    def temporal_compression(self) -> int:
        return self.frame_layout.time_factor

    @property
    def frames_per_chunk(self) -> int | None:
        """Frames encoded together (None: the whole clip)."""
        return self.frame_layout.frames_per_chunk

    @property
    def latent_frames_per_chunk(self) -> int | None:
        """Latent frames decoded together (None: the whole clip)."""
        return self.frame_layout.latents_per_chunk

    @property
    def exact_frame_counts(self) -> str:
        """Which frame counts round-trip to the same length, in words."""
        return self.frame_layout.describe_exact()

    def is_exact(self, frames: int) -> bool:
        """Whether `frames` frames round-trip to the same length without padding."""
        return self.frame_layout.is_exact(frames)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def latent_shape(self, video_shape: tuple[int, ...], policy: FramePolicy | str | None = None) -> tuple[int, ...]:
        """(B, T_lat, z, h, w) that `encode` gives for a (B, T, C, H, W) video under `policy`."""
        B, T, _, H, W = check_video_shape(video_shape, self.in_channels)
        probe = torch.empty((1, T, 1, H, W), device="meta")
        _, record = apply_policy(probe, self.frame_layout, FramePolicy.coerce(policy))
        s = self.spatial_compression
        return (B, self.frame_layout.latent_frames(record.padded_frames), self.latent_channels,
                record.padded_height // s, record.padded_width // s)

    def extra_repr(self) -> str:
        stored = f", stored_dtype={self.stored_dtype}" if self.stored_dtype not in (None, self.dtype) else ""
        return f"family={self.family}, version={self.version}, z={self.latent_channels}, dtype={self.dtype}{stored}"

    # -- encode / decode -------------------------------------------------------------------------

    def tile_count(self, tile, height: int, width: int) -> int:
        """Tiles per chunk that `tile` (as in `encode`) cuts frames of height x width pixels into,
        after the frame policy pads them to the spatial factor: 1 for tile=None."""
        tile = resolve_tile(self.model, tile)
        if tile is None:
            return 1
        s = self.spatial_compression
        return Tiles((-(-height // s) * s, -(-width // s) * s), tile, s).count

    def memory_plan(self, op: str, height: int, width: int, max_memory, *, frames: int | None = None,
                    batch: int = 1) -> MemoryPlan:
        """The tile plan `encode` or `decode` (op) would use under `max_memory` for one chunk of
        frames of height x width pixels (padded to the spatial factor; `frames`: the chunk's frames,
        default a whole chunk): its tile, the peak it needs and the smallest budget exact tiling
        meets. Raises OptionError naming that minimum when `max_memory` is below it."""
        if op not in ("encode", "decode"):
            raise OptionError(f"op must be 'encode' or 'decode'; got {op!r}")
        layout, s = self.frame_layout, self.spatial_compression
        H, W = -(-height // s) * s, -(-width // s) * s
        T = frames or layout.frames_per_chunk or self.model.capabilities.encode_window or 17
        if op == "encode":
            shape = (batch, self.in_channels, T, H, W)
        else:
            shape = (batch, self.latent_channels, layout.latent_frames(T), H // s, W // s)
        return TileChoice(self.model, op, max_memory=max_memory).plan(shape)

    def _to_model(self, x: Tensor) -> Tensor:
        dtype, device = self.dtype, self.device
        if not self.strict_dtype and self._slow_dtype_warned != dtype and warn_if_slow(dtype, device):
            self._slow_dtype_warned = dtype  # once per model and dtype: it was cast by hand, e.g. .to(bf16)
        return x.to(device=device, dtype=dtype)

    def chunk_encoder(
        self, policy: FramePolicy | str | None = None, *, tile=None, max_memory=None, tile_overlap: int | None = None
    ) -> ChunkEncoder:
        """The streaming encoder of this model (`videovae.engine.ChunkEncoder`): push frame pieces,
        get a posterior per chunk, flush at the end. tile, max_memory, tile_overlap: as in `encode`."""
        return ChunkEncoder(self.model, policy, cast=self._to_model, tile=tile, max_memory=max_memory,
                            tile_overlap=tile_overlap)

    def chunk_decoder(
        self,
        num_frames: int | None = None,
        *,
        blend: bool | None = None,
        chunk_frames: int | None = None,
        overlap: int = 0,
        stream: bool = True,
        tile=None,
        max_memory=None,
        tile_overlap: int | None = None,
    ) -> ChunkDecoder:
        """The streaming decoder of this model (`videovae.engine.ChunkDecoder`); the options as in
        `decode`. stream=True gives a whole-clip family (SVD) its declared overlapping windows by
        default, so memory stays bounded; stream=False decodes its whole clip at once."""
        window = resolve_window(self.model, chunk_frames, overlap, stream=stream)
        return ChunkDecoder(self.model, blend=blend, window=window, num_frames=check_num_frames(num_frames),
                            cast=self._to_model, tile=tile, max_memory=max_memory, tile_overlap=tile_overlap)

    def encode(
        self, video: Tensor, policy: FramePolicy | str | None = None, *, tile=None, max_memory=None,
        tile_overlap: int | None = None,
    ) -> LatentDistribution:
        """Encode video: (B, T, C, H, W) in [-1, 1] -> LatentDistribution over (B, T_lat, z, h, w).

        policy: "pad" (default), "trim", "strict" or a FramePolicy, for lengths and sizes that do not
        round-trip exactly (see `exact_frame_counts` and `spatial_compression`).
        tile: run each chunk tile by tile in space, tiles of 256, (height, width) or "HxW" pixels,
            multiples of `spatial_compression`: the same latents up to float rounding, in less
            memory (`videovae.tiling`). None (default): untiled.
        max_memory: instead of a tile, a budget ("4GB", "512MiB" or bytes) for the memory one chunk
            allocates (its output included, the weights not): the fastest exact tile plan within it
            (`videovae.memory_plan`, also `memory_plan()`); an OptionError names the smallest budget
            that works when this one is below it.
        tile_overlap: with tile, the approximate mode of diffusers' tiled VAEs instead: each tile is
            encoded on its own (its own group-norm statistics) with this many pixels of overlap with
            its neighbours, cross-faded linearly. Faster where many tiles share halos, not exact:
            tone and seams can differ (measured by benchmarks/bench_tiling.py). None: exact.
        Chunks of `frames_per_chunk` frames are encoded independently (no state crosses chunks).
        """
        encoder = self.chunk_encoder(policy, tile=tile, max_memory=max_memory, tile_overlap=tile_overlap)
        posteriors = encoder.push(video, last=True) + encoder.flush()  # last: a strict policy fails first
        mean = torch.cat([p.mean for p in posteriors], dim=1) if len(posteriors) > 1 else posteriors[0].mean
        logvar = torch.cat([p.logvar for p in posteriors], dim=1) if len(posteriors) > 1 else posteriors[0].logvar
        return LatentDistribution(mean, logvar, encoder.record)

    def decode(
        self,
        latents: Tensor | LatentDistribution,
        num_frames: int | None = None,
        *,
        blend: bool | None = None,
        chunk_frames: int | None = None,
        overlap: int = 0,
        tile=None,
        max_memory=None,
        tile_overlap: int | None = None,
    ) -> Tensor:
        """Decode latents: (B, T_lat, z, h, w) -> video (B, T, C, H, W), unclamped.

        latents: a tensor, or a LatentDistribution (its mode, cropped back to the frames and size of
            the video it was encoded from).
        num_frames: keep only the first `num_frames` decoded frames.
        blend: the seam blend between decoded chunks of a family that has them (Step-Video; the
            reference behaviour, on by default); refused for a family without seams (SVD).
        chunk_frames, overlap: for families that decode the whole clip at once (SVD), decode windows
            of `chunk_frames` latent frames overlapping by `overlap` and cross-fade them (bounded
            memory; see chunk_state.overlap_windows). Families with chunks of their own refuse them.
        tile: decode tile by tile in space, tiles of that many output pixels (as in `encode`): exact.
        max_memory: a budget per chunk instead of a tile; tile_overlap: blended, approximate tiles (as in `encode`).
        Peak memory is the output plus one chunk (or window).
        """
        num_frames = check_num_frames(num_frames)  # before the work, not after it
        record = None
        if isinstance(latents, LatentDistribution):
            record, latents = latents.record, latents.mode()
        z = check_latents(latents, self.latent_channels)
        decoder = self.chunk_decoder(blend=blend, chunk_frames=chunk_frames, overlap=overlap, stream=False, tile=tile,
                                     max_memory=max_memory, tile_overlap=tile_overlap)
        step = chunk_frames or self.latent_frames_per_chunk or z.shape[1]
        total = self.frame_layout.decoded_frames(z.shape[1])
        video, position = None, 0
        for piece in _push_all(decoder, z, step):
            if video is None:
                video = piece.new_empty((piece.shape[0], total, *piece.shape[2:]))
            video[:, position : position + piece.shape[1]] = piece
            position += piece.shape[1]
        if record is not None:
            video = undo(video, record)
        if num_frames is not None:
            if not 1 <= num_frames <= video.shape[1]:
                raise VideoLayoutError(f"num_frames={num_frames}, but these latents decode to {video.shape[1]} frames")
            video = video[:, :num_frames]
        return video

    def reconstruct(
        self,
        video: Tensor,
        policy: FramePolicy | str | None = None,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
        tile=None,
        max_memory=None,
        tile_overlap: int | None = None,
    ) -> Tensor:
        """Encode then decode video: (B, T, C, H, W) -> the same shape (after a `trim` policy, the trimmed one).

        Decodes the posterior mean, or a sample from it with `sample=True`; tile, max_memory, tile_overlap: as in `encode`.
        """
        posterior = self.encode(video, policy, tile=tile, max_memory=max_memory, tile_overlap=tile_overlap)
        z = posterior.sample(generator) if sample else posterior.mode()
        return undo(self.decode(z, tile=tile, max_memory=max_memory, tile_overlap=tile_overlap), posterior.record)

    # -- streaming: one chunk in memory at a time ---------------------------------------------------

    def encode_stream(
        self, frames: Iterable[Tensor], policy: FramePolicy | str | None = None, *, tile=None, max_memory=None,
        tile_overlap: int | None = None,
    ) -> Iterator[LatentDistribution]:
        """Encode a video given as pieces (B, t, C, H, W) (any t >= 1), one chunk at a time.

        Yields one LatentDistribution per encoded chunk (`frames_per_chunk` frames, or the family's
        encode window), each with a record of the frames and size it encodes. The concatenated
        latents equal `encode` of the whole video; the policy applies to the whole length.
        """
        encoder = self.chunk_encoder(policy, tile=tile, max_memory=max_memory, tile_overlap=tile_overlap)
        for piece in frames:
            yield from encoder.push(piece)
        yield from encoder.flush()

    def decode_stream(
        self,
        latents: Iterable[Tensor],
        num_frames: int | None = None,
        *,
        blend: bool | None = None,
        chunk_frames: int | None = None,
        overlap: int = 0,
        tile=None,
        max_memory=None,
        tile_overlap: int | None = None,
    ) -> Iterator[Tensor]:
        """Decode latents given as pieces (B, t_lat, z, h, w), one decoder chunk at a time.

        Yields frame pieces (B, t, C, H, W) whose concatenation equals `decode` of all the latents
        (including the seam blend, for which the last frame of each chunk is held back until the
        next chunk is decoded), cut at `num_frames` when given. chunk_frames, overlap: as in `decode`;
        a whole-clip family (SVD) decodes in its declared windows (`capabilities.stream_window`) by default.
        """
        decoder = self.chunk_decoder(num_frames, blend=blend, chunk_frames=chunk_frames, overlap=overlap, tile=tile,
                                     max_memory=max_memory, tile_overlap=tile_overlap)
        for z in latents:
            frames = decoder.push(z)
            if frames.shape[1]:
                yield frames
        if decoder.started:
            yield decoder.flush()

    def reconstruct_stream(
        self,
        frames: Iterable[Tensor],
        policy: FramePolicy | str | None = None,
        *,
        blend: bool | None = None,
        chunk_frames: int | None = None,
        overlap: int = 0,
        tile=None,
        max_memory=None,
        tile_overlap: int | None = None,
    ) -> Iterator[Tensor]:
        """Reconstruct a video given as pieces (B, t, C, H, W); yields reconstructed pieces.

        Equals `reconstruct` of the whole video (for a whole-clip family, decoded in its declared
        windows unless chunk_frames is given), holding one chunk (plus one frame, or one window) in
        memory, so a long video needs the memory of a short one.
        """
        tiling = dict(tile=tile, max_memory=max_memory, tile_overlap=tile_overlap)
        decoder = self.chunk_decoder(blend=blend, chunk_frames=chunk_frames, overlap=overlap, **tiling)
        engine = ChunkReconstructor(self.chunk_encoder(policy, **tiling), decoder)
        for piece in frames:
            out = engine.push(piece)
            if out.shape[1]:
                yield out
        out = engine.flush()
        if out.shape[1]:
            yield out

    def fast_paths(
        self,
        *,
        winograd: bool | None = None,
        phase_split: bool | None = None,
        channels_last: bool | None = None,
        compile: bool | dict | None = None,
    ) -> "VideoVAE":
        """The one switch for the speed paths; None leaves one as it is. Returns self.

        winograd, phase_split, channels_last: the family's exact fast paths (`FamilyModel.fast_paths`):
            Winograd and phase-split upsampling on by default; channels-last activations on by
            default for SVD (its CPU convs run fastest so), off for Step-Video (3D conv weights
            stored channels-last-3d: faster on some hardware).
        compile: torch.compile the per-chunk encode and decode (True: fullgraph, the chunk bodies
            have no graph breaks; a dict: torch.compile's keyword arguments); False goes back to
            eager. The chunk loop, policies and validation stay eager. Off by default.
        """
        self.model.fast_paths(winograd=winograd, phase_split=phase_split, channels_last=channels_last)
        if compile is not None:
            for name in ("encode_chunk", "decode_chunk"):
                self.model.__dict__.pop(name, None)  # back to the class's eager method
                if compile:
                    options = {"fullgraph": True, **(compile if isinstance(compile, dict) else {})}
                    setattr(self.model, name, torch.compile(getattr(self.model, name), **options))
        return self

    def forward(self, video: Tensor, policy: FramePolicy | str | None = None) -> Tensor:
        return self.reconstruct(video, policy)


def load(
    path: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    strict_dtype: bool = False,
) -> VideoVAE:
    """Load a video VAE checkpoint (safetensors) of any supported family, detected from its keys.

    device: where the weights live (default CPU).
    dtype: the weights' and compute dtype: float32 by default, whatever the file stores (16-bit files
        load into float32 exactly, and give the reference's numbers); "bf16" / "fp16" or a torch dtype
        on request; "file" keeps the file's dtype. On a CPU without fast 16-bit convolutions a 16-bit
        request computes in float32 instead, with one DTypeFallbackWarning (see
        `videovae.compute_dtype`); strict_dtype=True forces the dtype asked for.
    Every width, channel and block count is read from tensor shapes; no config is needed.
    """
    from .checkpoints import load_model, read_header, stored_float_dtype

    parse_dtype(dtype, allow_file=True)  # a bad name fails before the file is read
    place = check_device(device)
    header = read_header(path)
    stored = stored_float_dtype(header)
    compute = resolve_compute_dtype(dtype, stored, place, strict=strict_dtype)
    model, _ = load_model(path, device=place, dtype=compute, header=header)
    return VideoVAE(model, source=str(Path(header.path)), stored_dtype=stored, strict_dtype=strict_dtype)


def _push_all(decoder: ChunkDecoder, z: Tensor, step: int) -> Iterator[Tensor]:
    """The frame pieces of decoding z (B, T_lat, ...) pushed `step` latent frames at a time, then flushed."""
    for chunk in z.split(step, dim=1):
        frames = decoder.push(chunk)
        if frames.shape[1]:
            yield frames
    yield decoder.flush()
