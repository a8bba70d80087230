"""Frame plans: which lengths and sizes a family round-trips exactly, the pad/trim/strict policies
that bring any video to one, and the seam blend between decoded chunks.

A family describes its temporal structure with a `FrameLayout`; everything here is arithmetic on
it, so no frame count or crop length is written anywhere else.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .errors import FramePolicyError, OptionError

PolicyName = Literal["pad", "trim", "strict"]
POLICY_NAMES: tuple[str, ...] = ("pad", "trim", "strict")


@dataclass(frozen=True)
class FrameLayout:
    """How a family maps frames to latents.

    frames_per_chunk: frames encoded independently as one chunk (None: the whole clip at once).
    latents_per_chunk: latent frames a full chunk becomes (= frames decoded together).
    time_factor: a chunk of L latent frames decodes to time_factor * (L - 1) + 1 frames; 1 means no
        temporal compression.
    spatial_factor: H and W must be multiples of this to round-trip.
    """

    frames_per_chunk: int | None
    latents_per_chunk: int | None
    time_factor: int
    spatial_factor: int

    def chunk_frames(self, latent_frames: int) -> int:
        """Frames decoded from a chunk of `latent_frames` latents."""
        return self.time_factor * (latent_frames - 1) + 1

    def chunk_latents(self, frames: int) -> int:
        """Latent frames encoded from a chunk of `frames` frames (frames must be exact)."""
        return (frames - 1) // self.time_factor + 1

    @property
    def exact_chunk_lengths(self) -> tuple[int, ...]:
        """Chunk lengths (1..frames_per_chunk) that round-trip to the same length."""
        if self.frames_per_chunk is None:
            return ()
        return tuple(self.chunk_frames(n) for n in range(1, self.latents_per_chunk + 1))

    def is_exact(self, frames: int) -> bool:
        """Whether a video of `frames` frames round-trips to the same length."""
        if frames < 1:
            return False
        if self.frames_per_chunk is None:
            return (frames - 1) % self.time_factor == 0
        remainder = frames % self.frames_per_chunk
        return remainder == 0 or remainder in self.exact_chunk_lengths

    def exact_at_or_above(self, frames: int) -> int:
        n = max(frames, 1)
        while not self.is_exact(n):
            n += 1
        return n

    def exact_at_or_below(self, frames: int) -> int | None:
        n = frames
        while n >= 1 and not self.is_exact(n):
            n -= 1
        return n if n >= 1 else None

    def latent_frames(self, frames: int) -> int:
        """Latent frames for an exact length `frames`."""
        if self.frames_per_chunk is None:
            return self.chunk_latents(frames)
        full, remainder = divmod(frames, self.frames_per_chunk)
        return full * self.latents_per_chunk + (self.chunk_latents(remainder) if remainder else 0)

    def decoded_frames(self, latent_frames: int) -> int:
        """Frames decoded from `latent_frames` latents, chunked as the family decodes them."""
        if self.latents_per_chunk is None:
            return self.chunk_frames(latent_frames)
        full, remainder = divmod(latent_frames, self.latents_per_chunk)
        return full * self.frames_per_chunk + (self.chunk_frames(remainder) if remainder else 0)

    def describe_exact(self) -> str:
        """Human description of the frame counts that round-trip exactly."""
        if self.frames_per_chunk is None:
            return "any frame count" if self.time_factor == 1 else f"{self.time_factor}k + 1 frames"
        rest = ", ".join(str(n) for n in self.exact_chunk_lengths if n != self.frames_per_chunk)
        return f"{self.frames_per_chunk}k + r frames with r in {{0, {rest}}}"


@dataclass(frozen=True)
class FramePolicy:
    """What to do with a video whose length or size does not round-trip exactly.

    time / space, each one of:
      pad    (default) replicate the last frame / last row and column up to the next exact length or
             multiple; outputs are trimmed back, so a reconstruction has the input's shape;
      trim   drop trailing frames / rows / columns down to the largest exact one, with a warning;
      strict raise FramePolicyError naming the nearest valid values.
    """

    time: PolicyName = "pad"
    space: PolicyName = "pad"

    def __post_init__(self):
        for axis, name in (("time", self.time), ("space", self.space)):
            if name not in POLICY_NAMES:
                raise FramePolicyError(f"unknown {axis} policy {name!r}; use one of {', '.join(POLICY_NAMES)}")

    @classmethod
    def coerce(cls, policy: "FramePolicy | str | None") -> "FramePolicy":
        """A FramePolicy from a policy, a name applied to both axes, or None (the default)."""
        if policy is None:
            return cls()
        if isinstance(policy, FramePolicy):
            return policy
        if isinstance(policy, str):
            return cls(time=policy, space=policy)
        raise FramePolicyError(f"policy must be a FramePolicy or one of {', '.join(POLICY_NAMES)}; got {policy!r}")


@dataclass(frozen=True)
class PadRecord:
    """What `apply_policy` did to a (B, T, C, H, W) video; `undo` consumes it.

    frames, height, width: the size to restore after decoding (after any trim).
    padded_frames, padded_height, padded_width: the size that was encoded.
    """

    frames: int
    height: int
    width: int
    padded_frames: int
    padded_height: int
    padded_width: int

    @property
    def frame_size(self) -> tuple[int, int]:
        return (self.height, self.width)


def _replicate_to(x: Tensor, dim: int, length: int) -> Tensor:
    """Extend `dim` of x to `length` by repeating its last entry (no copy when already that long)."""
    size = x.shape[dim]
    if length == size:
        return x
    index = torch.arange(length, device=x.device).clamp_(max=size - 1)
    return x.index_select(dim, index)


def _time_target(frames: int, layout: FrameLayout, policy: PolicyName) -> int:
    if layout.is_exact(frames):
        return frames
    below, above = layout.exact_at_or_below(frames), layout.exact_at_or_above(frames)
    if policy == "pad":
        return above
    if policy == "trim":
        warnings.warn(
            f"trim policy: {frames} frames do not round-trip ({layout.describe_exact()}); "
            f"dropping the last {frames - below} to encode {below}",
            stacklevel=4,
        )
        return below
    nearest = f"{below} or {above}" if below else f"{above}"
    raise FramePolicyError(
        f"strict policy: {frames} frames do not round-trip exactly ({layout.describe_exact()}); "
        f"the nearest valid frame counts are {nearest}. Pass policy='pad' to pad and trim back automatically"
    )


def _space_target(size: int, factor: int, axis: str, policy: PolicyName) -> int:
    if size % factor == 0:
        return size
    below, above = size - size % factor, size - size % factor + factor
    if policy == "pad":
        return above
    if policy == "trim":
        if below == 0:
            raise FramePolicyError(
                f"trim policy: {axis}={size} is smaller than the model's spatial factor {factor}; "
                "nothing would be left. Use policy='pad'"
            )
        warnings.warn(f"trim policy: cropping {axis} from {size} to {below} (a multiple of {factor})", stacklevel=4)
        return below
    valid = f"{below} or {above}" if below else f"{above}"
    raise FramePolicyError(
        f"strict policy: {axis}={size} is not a multiple of {factor}; the nearest valid sizes are {valid}. "
        "Pass policy='pad' to pad and crop back automatically"
    )


def apply_policy(
    video: Tensor, layout: FrameLayout, policy: FramePolicy, *, frames_before: int = 0
) -> tuple[Tensor, PadRecord]:
    """Bring video: (B, T, C, H, W) to a length and size that round-trip; return it and the record.

    frames_before: frames of the same video already encoded before this piece (streaming); the
    policy then applies to the whole length frames_before + T. It must be a multiple of the
    family's chunk length, so only this last piece is padded or trimmed.
    """
    _, T, _, H, W = video.shape
    T1 = _time_target(frames_before + T, layout, policy.time) - frames_before
    H1 = _space_target(H, layout.spatial_factor, "H", policy.space)
    W1 = _space_target(W, layout.spatial_factor, "W", policy.space)

    # Trims are views; pads replicate the last frame / row / column.
    video = video[:, : min(T, T1), :, : min(H, H1), : min(W, W1)]
    video = _replicate_to(video, 1, T1)
    video = _replicate_to(video, 3, H1)
    video = _replicate_to(video, 4, W1)
    record = PadRecord(
        frames=min(T, T1), height=min(H, H1), width=min(W, W1),
        padded_frames=T1, padded_height=H1, padded_width=W1,
    )
    return video, record


def undo(video: Tensor, record: PadRecord) -> Tensor:
    """Crop a decoded video: (B, T', C, H', W') back to the record's (frames, height, width)."""
    return video[:, : record.frames, :, : record.height, : record.width]


# Seam blend weights of the Step-Video reference decoder.
SEAM_KEEP = 0.6
SEAM_MIX = 1.0 - SEAM_KEEP


def blend_seam(last: Tensor, first: Tensor) -> None:
    """Blend, in place, the last frame of one decoded chunk with the first frame of the next.

    last, first: (B, C, H, W) (or any matching shapes). first' = 0.6 first + 0.4 last, then
    last' = 0.6 last + 0.4 first' (the second step uses the already blended first frame).
    """
    first.mul_(SEAM_KEEP).add_(last, alpha=SEAM_MIX)
    last.mul_(SEAM_KEEP).add_(first, alpha=SEAM_MIX)


def blend_seams(video: Tensor, chunk_frames: int) -> Tensor:
    """Blend in place every seam of video: (B, T, C, H, W) decoded in chunks of `chunk_frames`."""
    T = video.shape[1]
    last = video[:, chunk_frames - 1 : T - 1 : chunk_frames]   # (B, seams, C, H, W)
    first = video[:, chunk_frames:T:chunk_frames]              # (B, seams, C, H, W)
    if first.shape[1]:
        blend_seam(last, first)
    return video


def rechunk(pieces: Iterable[Tensor], size: int | None, dim: int = 1) -> Iterator[Tensor]:
    """Regroup a stream of tensors along `dim` into pieces of exactly `size` (the last may be shorter).

    size None gathers the whole stream into one piece. Holds at most one output piece at a time.
    """
    held: list[Tensor] = []
    count = 0
    for piece in pieces:
        while piece.shape[dim]:
            take = piece.shape[dim] if size is None else min(size - count, piece.shape[dim])
            held.append(piece.narrow(dim, 0, take))
            count += take
            piece = piece.narrow(dim, take, piece.shape[dim] - take)
            if size is not None and count == size:
                yield torch.cat(held, dim=dim) if len(held) > 1 else held[0]
                held, count = [], 0
    if held:
        yield torch.cat(held, dim=dim) if len(held) > 1 else held[0]


# -- overlapped decoding (families that decode the whole clip at once, e.g. SVD) -----------------
#
# A clip of `total` latent frames is decoded in windows of `chunk` latent frames that start every
# `chunk - overlap` frames. With overlap 0 this is plain chunking, the last chunk shorter: what
# StableVideoDiffusionPipeline does with decode_chunk_size. With overlap > 0 the last window is
# moved back to end at the clip's end, so every window has `chunk` frames of context (a short last
# window decodes visibly worse); it then overlaps its neighbour by more than `overlap`.
# Decoded windows are cross-faded: in a region where two windows overlap by K frames, the earlier one's
# weight falls (K, K-1, ..., 1) / (K + 1) while the later one's rises (1, ..., K) / (K + 1), so the
# weights sum to one. Only for families without temporal compression (frame t <-> latent t).


def _check_overlap(chunk: int, overlap: int) -> None:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise OptionError(f"chunk_frames must be an int >= 1 (latent frames decoded together); got {chunk!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < chunk:
        raise OptionError(
            f"overlap must be an int with 0 <= overlap < chunk_frames={chunk} (frames shared by neighbouring "
            f"windows); got {overlap!r}"
        )


def overlap_windows(total: int, chunk: int, overlap: int = 0) -> list[tuple[int, int]]:
    """[start, stop) of each decode window over `total` latent frames (see the section comment).

    overlap_windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]; overlap_windows(11, 4, 1) ==
    [(0, 4), (3, 7), (6, 10), (7, 11)]; overlap_windows(11, 4) == [(0, 4), (4, 8), (8, 11)]; a clip
    of at most `chunk` frames is one window.
    """
    _check_overlap(chunk, overlap)
    step = chunk - overlap
    windows, start = [], 0
    while start + chunk <= total:
        windows.append((start, start + chunk))
        start += step
    if not windows or windows[-1][1] < total:
        windows.append((max(0, total - chunk) if overlap else start, total))
    return windows


def crossfade_weights(length: int, front: int, back: int) -> Tensor:
    """Weights (length,) of one decoded window that overlaps the previous window by `front` frames
    and the next by `back`: linear ramps (j + 1) / (front + 1) up and (length - j) / (back + 1) down,
    1 in between."""
    j = torch.arange(length, dtype=torch.float64)
    up = (j + 1) / (front + 1)
    down = (length - j) / (back + 1)
    return torch.minimum(torch.minimum(up, down), torch.ones(())).float()


def overlapped_windows(pieces: Iterable[Tensor], chunk: int, overlap: int, dim: int = 1) -> Iterator[tuple[int, Tensor]]:
    """Regroup a stream of latent pieces along `dim` into the windows of `overlap_windows`, yielding
    (start, window). Holds at most two windows plus one piece of latents; the stream's length need
    not be known in advance."""
    _check_overlap(chunk, overlap)
    step = chunk - overlap
    held: Tensor | None = None  # latents [held_start, held_start + held.shape[dim])
    held_start, start, last_end = 0, 0, 0
    for piece in pieces:
        held = piece if held is None else torch.cat([held, piece], dim=dim)
        while held_start + held.shape[dim] >= start + chunk:
            yield start, held.narrow(dim, start - held_start, chunk)
            last_end = start + chunk
            # an end-aligned last window (overlap > 0) starts after this one's start, never before
            keep = start if overlap else start + step
            held, held_start = held.narrow(dim, keep - held_start, held_start + held.shape[dim] - keep), keep
            start += step
    if held is None:
        return
    total = held_start + held.shape[dim]
    if last_end < total:
        first = max(0, total - chunk) if overlap else start
        yield first, held.narrow(dim, first - held_start, total - first)


class OverlapBlender:
    """Cross-fades decoded windows (B, L, C, H, W), pushed in order with their start frame, into
    finished frames. Holds the last window until the next one is known (its weights depend on both
    neighbours) and the frames not yet finished; accumulates in float32.

        blender = OverlapBlender()
        for start, z in overlapped_windows(latents, chunk, overlap):
            done = blender.push(start, decode(z))   # frames before `start` are final
        done = blender.finish()
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._last: tuple[int, Tensor, int] | None = None  # (start, frames, front overlap)
        self._acc: Tensor | None = None  # weighted sums of frames [acc_start, ...), float32
        self._weight: Tensor | None = None  # (n,) summed weights of those frames
        self._acc_start = 0
        self._dtype: torch.dtype | None = None

    def _add(self, start: int, frames: Tensor, weights: Tensor) -> None:
        """Add frames * weights to the accumulator, which covers [acc_start, start + L)."""
        stop = start + frames.shape[1]
        if self._acc is None:
            self._acc = frames.new_zeros((frames.shape[0], 0, *frames.shape[2:]), dtype=torch.float32)
            self._weight = torch.zeros(0, device=frames.device)
            self._acc_start = start
        grow = stop - self._acc_start - self._acc.shape[1]
        if grow > 0:
            self._acc = torch.cat([self._acc, self._acc.new_zeros((self._acc.shape[0], grow, *self._acc.shape[2:]))], 1)
            self._weight = torch.cat([self._weight, self._weight.new_zeros(grow)])
        at = start - self._acc_start
        w = weights.to(frames.device)
        self._acc[:, at : at + frames.shape[1]] += frames.float() * w.view(1, -1, *([1] * (frames.ndim - 2)))
        self._weight[at : at + frames.shape[1]] += w

    def _take(self, stop: int | None) -> Tensor:
        """Finished frames [acc_start, stop) (all held frames for None), normalised; drops them."""
        if self._acc is None:
            raise OptionError("OverlapBlender: nothing was pushed")
        n = self._acc.shape[1] if stop is None else max(stop - self._acc_start, 0)
        w = self._weight[:n].view(1, -1, *([1] * (self._acc.ndim - 2)))
        done = (self._acc[:, :n] / w).to(self._dtype)
        self._acc, self._weight = self._acc[:, n:], self._weight[n:]
        self._acc_start += n
        return done

    def push(self, start: int, frames: Tensor) -> Tensor:
        """Take the decoded window starting at frame `start` (>= the previous window's start);
        return the frames before `start` that are now final (possibly none: shape[1] == 0)."""
        self._dtype = frames.dtype
        if self._last is None:
            self._last = (start, frames, 0)
            return frames[:, :0]
        last_start, last_frames, last_front = self._last
        last_stop = last_start + last_frames.shape[1]
        if not last_start <= start <= last_stop:
            raise OptionError(f"OverlapBlender: window at {start} does not follow the window [{last_start}, {last_stop})")
        back = last_stop - start
        self._add(last_start, last_frames, crossfade_weights(last_frames.shape[1], last_front, back))
        self._last = (start, frames, back)
        return self._take(start)

    def finish(self) -> Tensor:
        """The remaining frames, up to the end of the last window."""
        if self._last is None:
            raise OptionError("OverlapBlender: nothing was pushed")
        start, frames, front = self._last
        self._add(start, frames, crossfade_weights(frames.shape[1], front, 0))
        done = self._take(None)
        self.reset()
        return done
