"""Frame plans: which lengths and sizes a family round-trips exactly, and the pad/trim/strict policies
that bring any video to one (the state that crosses chunks lives in `videovae.chunk_state`).

A family describes its temporal structure with a `FrameLayout`; everything here is arithmetic on
it, so no frame count or crop length is written anywhere else.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from .errors import FramePolicyError

PolicyName = Literal["pad", "trim", "strict"]
POLICY_NAMES: tuple[str, ...] = get_args(PolicyName)


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

    @property
    def text(self) -> str:
        """How latent files record it: "time=pad,space=pad"."""
        return f"time={self.time},space={self.space}"

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
