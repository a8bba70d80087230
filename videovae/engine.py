"""The execution engine: chunk encoder and decoder objects that own every piece of state crossing
chunks, for every family. `VideoVAE`'s one-shot calls push everything and flush; its streams, whole
files, dataset encoding and the benchmarks push piece by piece.

    encoder = ChunkEncoder(model, policy)
    for piece in pieces:                       # (B, t, C, H, W), any t >= 1
        for posterior in encoder.push(piece):  # one LatentDistribution per finished chunk
            ...
    for posterior in encoder.flush(): ...      # the last, padded or trimmed by the policy
    encoder.record                             # the PadRecord of the whole video so far

    decoder = ChunkDecoder(model)              # blend / window: as the family declares
    frames = decoder.push(z)                   # z: (B, t_lat, z, h, w) -> the frames final now (maybe 0)
    frames = decoder.flush()                   # the rest

A family model sees one chunk at a time, channels-first (`FamilyModel.encode_chunk`/`decode_chunk`).
What crosses chunks lives in the objects of `videovae.chunk_state`: the frames of an unfinished
chunk (Rechunker), the held frame of the seam blend (SeamBlender), overlapping decode windows
(WindowSplitter, OverlapBlender). With `tile`, each chunk runs tile by tile in space
(`videovae.tiling`): exact, the same numbers as untiled up to float rounding, in less memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from .chunk_state import OverlapBlender, Rechunker, SeamBlender, WindowSplitter, check_window
from .chunking import FramePolicy, PadRecord, apply_policy
from .distribution import LatentDistribution
from .errors import OptionError, VideoLayoutError
from .families.spec import FamilyModel
from .layers import channels_to_time, time_to_channels
from .memory_plan import MemoryPlan, parse_memory, plan_tiles
from .tiling import Tiles, blend_tiles, check_overlap, check_tile, parse_tile
from .validation import check_finite_output, check_latents, check_video, warn_if_out_of_range

Cast = Callable[[Tensor], Tensor]


def _same(x: Tensor) -> Tensor:
    return x


# Frames per piece a reader hands to a family that encodes whole clips at once (any length works).
WHOLE_CLIP_READ_FRAMES = 16


def encode_window(model: FamilyModel) -> int | None:
    """Frames encoded together: the family's chunk, or the window of a frame-independent encoder
    (None: the whole clip)."""
    return model.frame_layout.frames_per_chunk or model.capabilities.encode_window


def resolve_tile(model: FamilyModel, tile) -> tuple[int, int] | None:
    """A user's tile size (int, (h, w), "HxW" or None) checked against the model: full-resolution
    pixels, multiples of its spatial factor."""
    tile = parse_tile(tile)
    if tile is not None:
        check_tile(tile, model.frame_layout.spatial_factor)
    return tile


class TileChoice:
    """How each chunk is cut in space: untiled, a fixed tile (`tile`), or the plan that keeps a
    chunk under `max_memory` bytes (`videovae.memory_plan`), made once per chunk shape.

    op: "encode" or "decode". Give tile or max_memory, not both.
    overlap: with a tile, the approximate mode instead: diffusers' tiles, each run on its own and
        cross-faded over `overlap` pixels (`tiling.blend_tiles`); None (default): exact."""

    def __init__(self, model: FamilyModel, op: str, tile=None, max_memory=None, overlap: int | None = None):
        if tile is not None and max_memory is not None:
            raise OptionError("give tile or max_memory, not both: max_memory picks the tile itself")
        self.model, self.op = model, op
        self.tile = resolve_tile(model, tile)
        self.budget = parse_memory(max_memory) if max_memory is not None else None
        if overlap is not None:
            if self.tile is None:
                raise OptionError("tile_overlap is the approximate blended tiling: it needs a tile size")
            check_overlap(self.tile, overlap, model.frame_layout.spatial_factor)
        self.overlap = overlap
        self._plans: dict[tuple[int, ...], MemoryPlan] = {}

    def plan(self, shape: tuple[int, ...]) -> MemoryPlan | None:
        """The budget's plan for a chunk of channels-first `shape` (None without a budget)."""
        if self.budget is None:
            return None
        if shape not in self._plans:
            self._plans[shape] = plan_tiles(self.model, self.op, shape, self.budget)
        return self._plans[shape]

    def tile_for(self, shape: tuple[int, ...]) -> tuple[int, int] | None:
        plan = self.plan(shape)
        return plan.tile if plan is not None else self.tile

    def run(self, x: Tensor) -> Tensor:
        """The model's encode_chunk or decode_chunk of channels-first x, with this choice's tiles
        (or frame by frame, where the budget's plan streams)."""
        run = self.model.encode_chunk if self.op == "encode" else self.model.decode_chunk
        plan = self.plan(tuple(x.shape))
        if plan is not None and plan.stream:
            return run(x, stream=True)
        tile = self.tile_for(tuple(x.shape))
        if tile is None:
            return run(x)
        s = self.model.frame_layout.spatial_factor
        if self.overlap is not None:  # tile and overlap are output pixels for a decoder, input ones for an encoder
            f = 1 if self.op == "encode" else s
            window = (tile[0] // f, tile[1] // f)
            stride = ((tile[0] - self.overlap) // f, (tile[1] - self.overlap) // f)
            return blend_tiles(run, x, window, stride, Fraction(1, s) if self.op == "encode" else s)
        size = x.shape[-2:] if self.op == "encode" else (x.shape[-2] * s, x.shape[-1] * s)
        return run(x, Tiles(tuple(size), tile, s))


def read_frames(model: FamilyModel) -> int:
    """Frames per piece to read from a video file for this model: one encode window."""
    return encode_window(model) or WHOLE_CLIP_READ_FRAMES


class ChunkEncoder:
    """Encodes a video pushed as pieces (B, t, C, H, W), one chunk at a time (see the module doc).

    The frame policy applies to the whole length: only the piece left at `flush` is padded or
    trimmed in time. Holds at most one chunk of frames.
    """

    def __init__(self, model: FamilyModel, policy: FramePolicy | str | None = None, *, cast: Cast = _same, tile=None,
                 max_memory=None, tile_overlap: int | None = None):
        self.model = model
        self.policy = FramePolicy.coerce(policy)
        self.tiles = TileChoice(model, "encode", tile, max_memory, tile_overlap)
        self.cast = cast  # input -> the model's dtype and device
        self._chunks = Rechunker(encode_window(model))
        self._warned = False
        self._pushed = 0  # frames pushed so far
        self._record: PadRecord | None = None

    @property
    def record(self) -> PadRecord | None:
        """What the policy did to the frames encoded so far (None before the first chunk)."""
        return self._record

    def push(self, piece: Tensor, *, last: bool = False) -> list[LatentDistribution]:
        """piece: (B, t, C, H, W) -> a posterior for each chunk it completes (possibly none).

        last=True says that this piece ends the video: the policy is then checked against the whole
        length before anything is encoded (a strict policy fails before the work, not after it)."""
        piece = check_video(piece, self.model.config.in_channels)
        self._warned = self._warned or warn_if_out_of_range(piece)  # one warning per video
        self._pushed += piece.shape[1]
        if last and "strict" in (self.policy.time, self.policy.space):  # pad and trim never fail
            _, _, _, H, W = piece.shape
            apply_policy(torch.empty((1, self._pushed, 1, H, W), device="meta"), self.model.frame_layout, self.policy)
        return [self._encode(chunk) for chunk in self._chunks.push(piece)]

    def flush(self) -> list[LatentDistribution]:
        """The posterior of the last, unfinished chunk (none if the video ended on a chunk boundary)."""
        done = [self._encode(chunk) for chunk in self._chunks.flush()]
        if self._record is None:
            raise VideoLayoutError("the video is empty: no frames were pushed to the encoder")
        return done

    def _encode(self, chunk: Tensor) -> LatentDistribution:
        before = self._record.padded_frames if self._record else 0
        x, record = apply_policy(self.cast(chunk), self.model.frame_layout, self.policy, frames_before=before)
        moments = check_finite_output(self._encode_chunk(x), "encoder")
        self._record = record if self._record is None else _extend(self._record, record)
        return LatentDistribution.from_moments(moments.to(device=chunk.device, dtype=chunk.dtype), record)

    def _encode_chunk(self, x: Tensor) -> Tensor:
        """x: (B, T, C, H, W), one exact chunk in the model's dtype -> moments (B, T_lat, 2z, h, w)."""
        return channels_to_time(self.tiles.run(time_to_channels(x)))


def _extend(whole: PadRecord, chunk: PadRecord) -> PadRecord:
    return PadRecord(
        frames=whole.frames + chunk.frames, height=chunk.height, width=chunk.width,
        padded_frames=whole.padded_frames + chunk.padded_frames,
        padded_height=chunk.padded_height, padded_width=chunk.padded_width,
    )


def resolve_blend(model: FamilyModel, blend: bool | None) -> bool:
    """The seam blend to apply: the family's reference behaviour by default; refused where the
    family has no seams to blend."""
    if blend is None:
        return model.capabilities.seam_blend
    if blend and not model.capabilities.seam_blend:
        raise OptionError(
            f"blend applies to families that decode chunks of their own and blend their seams (stepvideo); "
            f"{model.family} has no such seams: leave blend unset (its long clips are decoded in overlapping "
            "windows, see chunk_frames/overlap)"
        )
    return bool(blend)


def resolve_window(model: FamilyModel, chunk_frames: int | None, overlap: int, *, stream: bool) -> tuple[int, int] | None:
    """(latent frames, overlap) of overlapping decode windows, or None for the family's own chunks or
    the whole clip. Streams of a whole-clip family default to its declared window (bounded memory);
    one-shot decodes to the whole clip (the reference behaviour)."""
    layout = model.frame_layout
    if chunk_frames is None:
        if overlap:
            raise OptionError(f"overlap={overlap} needs chunk_frames (the latent frames of each window)")
        return model.capabilities.stream_window if stream else None
    if layout.frames_per_chunk is not None or layout.time_factor != 1:
        raise OptionError(
            f"chunk_frames/overlap apply to families that decode the whole clip at once (svd); {model.family} "
            f"decodes its own chunks of {layout.latents_per_chunk} latent frames: leave them unset"
        )
    check_window(chunk_frames, overlap)
    return chunk_frames, overlap


class ChunkDecoder:
    """Decodes latents pushed as pieces (B, t_lat, z, h, w) (see the module doc).

    blend: the seam blend between the family's chunks (None: the family's default; see resolve_blend).
    window: (latent frames, overlap) to decode a whole-clip family in cross-faded windows (see
        `resolve_window`); None decodes the family's chunks, or gathers the whole clip.
    num_frames: cut the output after this many frames.
    tile: decode each chunk tile by tile, tiles of (height, width) output pixels (exact).
    max_memory: or let the tiles be planned to keep each chunk under this many bytes (`TileChoice`).
    tile_overlap: with tile, diffusers' approximate blended tiles instead of exact ones (`TileChoice`).
    Outputs come back in the latents' dtype and on their device.
    """

    def __init__(self, model: FamilyModel, *, blend: bool | None = None, window: tuple[int, int] | None = None,
                 num_frames: int | None = None, cast: Cast = _same, tile=None, max_memory=None,
                 tile_overlap: int | None = None):
        self.model = model
        self.tiles = TileChoice(model, "decode", tile, max_memory, tile_overlap)
        self.cast = cast
        self.num_frames = num_frames
        self.blend = resolve_blend(model, blend)
        self._seams = SeamBlender() if self.blend else None
        if window is not None:
            window = resolve_window(model, *window, stream=False)  # refused for families with chunks of their own
            self._windows, self._blender = WindowSplitter(*window), OverlapBlender()
        else:
            self._chunks = Rechunker(model.frame_layout.latents_per_chunk)
            self._windows = None
        self._like: Tensor | None = None
        self.emitted = 0

    @property
    def started(self) -> bool:
        return self._like is not None

    def push(self, z: Tensor) -> Tensor:
        """z: (B, t_lat, z, h, w) -> the frames (B, t, C, H, W) that are final now (t may be 0)."""
        z = check_latents(z, self.model.latent_channels)
        self._like = z
        if self._windows is not None:
            return self._emit([self._blender.push(start, self._decode(w)) for start, w in self._windows.push(z)])
        return self._emit([self._seamed(self._decode(chunk)) for chunk in self._chunks.push(z)])

    def flush(self) -> Tensor:
        """The frames still held: the last chunk or window, the frame held for the seam blend."""
        if self._like is None:
            raise VideoLayoutError("no latents were pushed to the decoder")
        if self._windows is not None:
            done = [self._blender.push(start, self._decode(w)) for start, w in self._windows.flush()]
            done.append(self._blender.flush())
        else:
            done = [self._seamed(self._decode(chunk)) for chunk in self._chunks.flush()]
            held = self._seams.flush() if self._seams else None
            done += [held] if held is not None else []
        return self._emit(done)

    def _seamed(self, frames: Tensor) -> Tensor:
        return self._seams.push(frames) if self._seams else frames

    def _decode(self, z: Tensor) -> Tensor:
        return check_finite_output(self._decode_chunk(self.cast(z)), "decoder")

    def _decode_chunk(self, z: Tensor) -> Tensor:
        """z: (B, T_lat, z, h, w), one chunk or window in the model's dtype -> (B, T, C, H, W)."""
        return channels_to_time(self.tiles.run(time_to_channels(z)))

    def _emit(self, pieces: list[Tensor]) -> Tensor:
        like = self._like
        pieces = [p for p in pieces if p.shape[1]]
        if not pieces:
            B, _, _, h, w = like.shape
            s = self.model.frame_layout.spatial_factor
            return like.new_empty((B, 0, self.model.config.out_channels, h * s, w * s))
        frames = _cat_time(pieces)
        if self.num_frames is not None:
            frames = frames[:, : max(self.num_frames - self.emitted, 0)]
        self.emitted += frames.shape[1]
        return frames.to(device=like.device, dtype=like.dtype)


def _cat_time(pieces: list[Tensor]) -> Tensor:
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)


class ChunkReconstructor:
    """Encode then decode a video pushed as pieces (B, t, C, H, W), holding one chunk (plus one frame,
    or one decode window) in memory: push returns the reconstructed frames that are final now,
    cropped to the frames and size the policy kept."""

    def __init__(self, encoder: ChunkEncoder, decoder: ChunkDecoder):
        self.encoder, self.decoder = encoder, decoder
        self.emitted = 0

    def push(self, piece: Tensor) -> Tensor:
        return self._crop([self.decoder.push(posterior.mode()) for posterior in self.encoder.push(piece)], piece)

    def flush(self) -> Tensor:
        pieces = [self.decoder.push(posterior.mode()) for posterior in self.encoder.flush()]
        return self._crop(pieces + [self.decoder.flush()], None)

    def _crop(self, pieces: list[Tensor], piece: Tensor | None) -> Tensor:
        # Padding only ever extends the last chunk, so every frame up to the record's is a real one.
        record = self.encoder.record
        if not pieces:
            return piece[:, :0] if record is None else piece[:, :0, :, : record.height, : record.width]
        frames = _cat_time(pieces)
        frames = frames[:, : record.frames - self.emitted, :, : record.height, : record.width]
        self.emitted += frames.shape[1]
        return frames


@dataclass(frozen=True)
class EncodedVideo:
    """The latents of one video (batch index 0): mean and logvar (T_lat, z, h, w), and the frames and
    (height, width) they decode back to."""

    mean: Tensor
    logvar: Tensor
    frames: int
    frame_size: tuple[int, int]


def encode_video(encoder: ChunkEncoder, pieces: Iterable[Tensor], on_chunk: Callable[[int], None] | None = None) -> EncodedVideo:
    """Push every piece (1, t, C, H, W) of one video through `encoder`: the one encode-to-latents path
    of latent files and dataset encoding. on_chunk(frames) is called after each encoded chunk."""
    means, logvars = [], []

    def keep(posteriors: list[LatentDistribution]) -> None:
        for posterior in posteriors:
            means.append(posterior.mean[0])      # (t_lat, z, h, w)
            logvars.append(posterior.logvar[0])
            if on_chunk is not None:
                on_chunk(posterior.record.frames)

    for piece in pieces:
        keep(encoder.push(piece))
    keep(encoder.flush())
    record = encoder.record
    return EncodedVideo(torch.cat(means), torch.cat(logvars), record.frames, record.frame_size)
