"""The posterior an encoder returns: a diagonal Gaussian over latents (B, T_lat, z, h, w)."""

from __future__ import annotations

import torch
from torch import Tensor

from .chunking import PadRecord

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class LatentDistribution:
    """Diagonal Gaussian N(mean, exp(logvar)) over latents (B, T_lat, z, h, w).

    logvar is clamped to [-30, 20]. `record` remembers the frames and size of the video it came from
    (after the frame policy), so `VideoVAE.decode(dist)` gives that exact shape back.
    """

    def __init__(self, mean: Tensor, logvar: Tensor, record: PadRecord | None = None):
        self.mean = mean
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        self.record = record

    @classmethod
    def from_moments(cls, moments: Tensor, record: PadRecord | None = None) -> "LatentDistribution":
        """moments: (B, T_lat, 2z, h, w), mean first."""
        mean, logvar = moments.chunk(2, dim=2)
        return cls(mean, logvar, record)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> Tensor:
        return torch.exp(self.logvar)

    @property
    def num_frames(self) -> int | None:
        """Frames of the video these latents encode (None when unknown)."""
        return self.record.frames if self.record else None

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(H, W) of the video these latents encode (None when unknown)."""
        return self.record.frame_size if self.record else None

    @property
    def shape(self) -> torch.Size:
        return self.mean.shape

    def mode(self) -> Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """mean + std * eps, eps ~ N(0, 1) drawn from `generator` (on its device) or the global RNG."""
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=torch.float32)
        return (self.mean.float() + self.std.float() * eps.to(self.mean.device)).to(self.mean.dtype)

    def __repr__(self) -> str:
        return f"LatentDistribution(shape={tuple(self.mean.shape)}, dtype={self.mean.dtype}, num_frames={self.num_frames})"
