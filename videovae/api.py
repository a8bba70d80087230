"""VideoVAE: the public encode/decode module over (B, T, C, H, W) videos in [-1, 1].

It owns what every family shares: input validation, the dtype/device policy, the frame policy, the
chunk loop and the seam blend. A family model only sees one chunk, channels-first:
`encode_chunk(x: (B, C, T, H, W)) -> moments (B, 2z, T_lat, h, w)` and
`decode_chunk(z: (B, z, T_lat, h, w)) -> (B, C, T, H, W)`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from .chunking import (
    FrameLayout,
    FramePolicy,
    OverlapBlender,
    apply_policy,
    blend_seam,
    blend_seams,
    overlapped_windows,
    rechunk,
    undo,
)
from .distribution import LatentDistribution
from .compute_dtype import parse_dtype, resolve_compute_dtype, warn_if_slow
from .errors import OptionError, VideoLayoutError
from .layers import channels_to_time, time_to_channels
from .validation import (
    check_device,
    check_finite_output,
    check_latents,
    check_num_frames,
    check_video,
    check_video_shape,
    warn_if_out_of_range,
)


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

    def _to_model(self, x: Tensor) -> Tensor:
        dtype, device = self.dtype, self.device
        if not self.strict_dtype and self._slow_dtype_warned != dtype and warn_if_slow(dtype, device):
            self._slow_dtype_warned = dtype  # once per model and dtype: it was cast by hand, e.g. .to(bf16)
        return x.to(device=device, dtype=dtype)

    def encode_moments(self, video: Tensor) -> Tensor:
        """video: (B, T, C, H, W) of an exact length and size, model dtype -> moments (B, T_lat, 2z, h, w).

        Chunks of `frames_per_chunk` frames are encoded independently (no state crosses chunks).
        """
        step = self.frames_per_chunk or video.shape[1]
        moments = [channels_to_time(self.model.encode_chunk(time_to_channels(chunk))) for chunk in video.split(step, dim=1)]
        return torch.cat(moments, dim=1) if len(moments) > 1 else moments[0]

    def encode(self, video: Tensor, policy: FramePolicy | str | None = None) -> LatentDistribution:
        """Encode video: (B, T, C, H, W) in [-1, 1] -> LatentDistribution over (B, T_lat, z, h, w).

        policy: "pad" (default), "trim", "strict" or a FramePolicy, for lengths and sizes that do not
        round-trip exactly (see `exact_frame_counts` and `spatial_compression`).
        """
        x = check_video(video, self.in_channels)
        warn_if_out_of_range(x)
        x, record = apply_policy(self._to_model(x), self.frame_layout, FramePolicy.coerce(policy))
        moments = check_finite_output(self.encode_moments(x), "encoder")
        return LatentDistribution.from_moments(moments.to(device=video.device, dtype=video.dtype), record)

    def decode(
        self,
        latents: Tensor | LatentDistribution,
        num_frames: int | None = None,
        *,
        blend: bool = True,
        chunk_frames: int | None = None,
        overlap: int = 0,
    ) -> Tensor:
        """Decode latents: (B, T_lat, z, h, w) -> video (B, T, C, H, W), unclamped.

        latents: a tensor, or a LatentDistribution (its mode, cropped back to the frames and size of
            the video it was encoded from).
        num_frames: keep only the first `num_frames` decoded frames.
        blend: apply the seam blend between decoded chunks (the reference behaviour), default on.
        chunk_frames, overlap: for families that decode the whole clip at once (SVD), decode windows
            of `chunk_frames` latent frames overlapping by `overlap` and cross-fade them (bounded
            memory; see chunking.overlap_windows). Families with chunks of their own refuse them.
        """
        num_frames = check_num_frames(num_frames)  # before the work, not after it
        record = None
        if isinstance(latents, LatentDistribution):
            record, latents = latents.record, latents.mode()
        z = check_latents(latents, self.latent_channels)
        if chunk_frames is None:
            video = self.decode_frames(self._to_model(z), blend=blend)
        else:
            pieces = self._decode_overlapped([z], chunk_frames, overlap)
            video = torch.cat(list(pieces), dim=1)
        if record is not None:
            video = undo(video, record)
        if num_frames is not None:
            if not 1 <= num_frames <= video.shape[1]:
                raise VideoLayoutError(f"num_frames={num_frames}, but these latents decode to {video.shape[1]} frames")
            video = video[:, :num_frames]
        return video.to(device=z.device, dtype=z.dtype)

    def decode_frames(self, z: Tensor, *, blend: bool = True) -> Tensor:
        """z: (B, T_lat, z, h, w) in the model's dtype -> (B, T, C, H, W), chunk by chunk.

        Each chunk is written into one preallocated output, so peak memory is the output plus one chunk.
        """
        step = self.latent_frames_per_chunk or z.shape[1]
        out, position = None, 0
        for chunk in z.split(step, dim=1):
            frames = channels_to_time(self.model.decode_chunk(time_to_channels(chunk)))  # (B, t, C, H, W)
            if out is None:
                total = self.frame_layout.decoded_frames(z.shape[1])
                out = frames.new_empty((frames.shape[0], total, *frames.shape[2:]))
            out[:, position : position + frames.shape[1]] = frames
            position += frames.shape[1]
        if blend and self.frames_per_chunk:
            blend_seams(out, self.frames_per_chunk)
        return check_finite_output(out, "decoder")

    def _decode_overlapped(self, latents: Iterable[Tensor], chunk_frames: int, overlap: int) -> Iterator[Tensor]:
        """Pieces (B, t, C, H, W) of the cross-faded decode of latent pieces (B, t_lat, z, h, w)."""
        layout = self.frame_layout
        if layout.frames_per_chunk is not None or layout.time_factor != 1:
            raise OptionError(
                f"chunk_frames/overlap apply to families that decode the whole clip at once (svd); {self.family} "
                f"decodes its own chunks of {layout.latents_per_chunk} latent frames: leave them unset"
            )
        blender = OverlapBlender()
        for start, z in overlapped_windows(latents, chunk_frames, overlap):
            frames = check_finite_output(channels_to_time(self.model.decode_chunk(time_to_channels(self._to_model(z)))), "decoder")
            done = blender.push(start, frames)
            if done.shape[1]:
                yield done
        yield blender.finish()

    def reconstruct(
        self,
        video: Tensor,
        policy: FramePolicy | str | None = None,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Encode then decode video: (B, T, C, H, W) -> the same shape (after a `trim` policy, the trimmed one).

        Decodes the posterior mean, or a sample from it with `sample=True`.
        """
        posterior = self.encode(video, policy)
        z = posterior.sample(generator) if sample else posterior.mode()
        return undo(self.decode(z), posterior.record)

    # -- streaming: one chunk in memory at a time ---------------------------------------------------

    def encode_stream(
        self, frames: Iterable[Tensor], policy: FramePolicy | str | None = None
    ) -> Iterator[LatentDistribution]:
        """Encode a video given as pieces (B, t, C, H, W) (any t >= 1), one chunk at a time.

        Yields one LatentDistribution per encoded chunk (`frames_per_chunk` frames; the whole clip for
        families without chunking), each with a record of the frames and size it encodes. The
        concatenated latents equal `encode` of the whole video; the policy applies to the whole length.
        """
        policy = FramePolicy.coerce(policy)
        warned = False

        def checked(piece: Tensor) -> Tensor:
            nonlocal warned
            piece = check_video(piece, self.in_channels)
            warned = warned or warn_if_out_of_range(piece)  # one warning per call
            return piece

        pieces = (checked(piece) for piece in frames)
        encoded, template = 0, None
        for chunk in rechunk(pieces, self.frames_per_chunk):
            template = chunk
            x, record = apply_policy(self._to_model(chunk), self.frame_layout, policy, frames_before=encoded)
            encoded += chunk.shape[1]
            moments = check_finite_output(self.encode_moments(x), "encoder")
            yield LatentDistribution.from_moments(moments.to(device=chunk.device, dtype=chunk.dtype), record)
        if template is None:
            raise VideoLayoutError("encode_stream got no frames; the video is empty")

    def decode_stream(
        self,
        latents: Iterable[Tensor],
        num_frames: int | None = None,
        *,
        blend: bool = True,
        chunk_frames: int | None = None,
        overlap: int = 0,
    ) -> Iterator[Tensor]:
        """Decode latents given as pieces (B, t_lat, z, h, w), one decoder chunk at a time.

        Yields frame pieces (B, t, C, H, W) whose concatenation equals `decode` of all the latents
        (including the seam blend, for which the last frame of each chunk is held back until the
        next chunk is decoded), cut at `num_frames` when given. chunk_frames, overlap: as in `decode`
        (a family that decodes whole clips otherwise gathers the whole stream into one clip).
        """
        pieces = (check_latents(piece, self.latent_channels) for piece in latents)
        if chunk_frames is not None:
            first = next(pieces, None)  # outputs take its dtype and device
            if first is None:
                return
            emitted = 0
            for frames in self._decode_overlapped(itertools.chain([first], pieces), chunk_frames, overlap):
                frames = frames if num_frames is None else frames[:, : max(num_frames - emitted, 0)]
                emitted += frames.shape[1]
                yield frames.to(device=first.device, dtype=first.dtype)
            return
        held = None  # (B, 1, C, H, W): the last decoded frame, waiting for the next chunk's first
        emitted = 0
        blend = blend and self.frames_per_chunk is not None

        def emit(piece: Tensor, like: Tensor) -> Tensor:
            nonlocal emitted
            if num_frames is not None:
                piece = piece[:, : max(num_frames - emitted, 0)]
            emitted += piece.shape[1]
            return piece.to(device=like.device, dtype=like.dtype)

        for z in rechunk(pieces, self.latent_frames_per_chunk):
            frames = check_finite_output(channels_to_time(self.model.decode_chunk(time_to_channels(self._to_model(z)))), "decoder")
            if not blend:
                yield emit(frames, z)
                continue
            if held is not None:
                blend_seam(held[:, 0], frames[:, 0])
                frames = torch.cat([held, frames], dim=1)
            held = frames[:, -1:]
            yield emit(frames[:, :-1], z)
        if held is not None:
            yield emit(held, z)

    def reconstruct_stream(
        self, frames: Iterable[Tensor], policy: FramePolicy | str | None = None, *, blend: bool = True
    ) -> Iterator[Tensor]:
        """Reconstruct a video given as pieces (B, t, C, H, W); yields reconstructed pieces.

        Equals `reconstruct` of the whole video, holding one chunk (plus one frame) in memory, so a
        long video needs the memory of a short one.
        """
        seen = {"frames": 0, "size": None}

        def means() -> Iterator[Tensor]:
            for posterior in self.encode_stream(frames, policy):
                seen["frames"] += posterior.record.frames
                seen["size"] = posterior.record.frame_size
                yield posterior.mode()

        emitted = 0
        for piece in self.decode_stream(means(), blend=blend):
            # Padding only ever extends the last chunk, so every frame up to `seen` is a real one.
            H, W = seen["size"]
            piece = piece[:, : seen["frames"] - emitted, :, :H, :W]
            emitted += piece.shape[1]
            if piece.shape[1]:
                yield piece

    def to_channels_last(self, enabled: bool = True) -> "VideoVAE":
        """Store the 3D conv weights channels-last-3d (or back to contiguous): activations then flow
        channels-last through the convs and the fused norms, which is faster on some hardware."""
        fmt = torch.channels_last_3d if enabled else torch.contiguous_format
        with torch.no_grad():
            for p in self.model.parameters():
                if p.ndim == 5:
                    p.data = p.data.contiguous(memory_format=fmt)
        return self

    def compile_chunks(self, **compile_kwargs) -> "VideoVAE":
        """torch.compile the per-chunk encode and decode of this model only (fullgraph by default:
        the chunk bodies have no graph breaks). The chunk loop, policies and validation stay eager."""
        compile_kwargs.setdefault("fullgraph", True)
        self.model.encode_chunk = torch.compile(self.model.encode_chunk, **compile_kwargs)
        self.model.decode_chunk = torch.compile(self.model.decode_chunk, **compile_kwargs)
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
