"""Checks at the public boundary: videos are (B, T, C, H, W) floats in [-1, 1], latents
(B, T_lat, z, h, w). Each failure raises a videovae error that names the problem and the fix."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .errors import (
    InputRangeWarning,
    OptionError,
    LatentMismatchError,
    NonFiniteInputError,
    NonFiniteOutputError,
    UsageError,
    VideoDTypeError,
    VideoLayoutError,
)


def _check_tensor(x: object, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise VideoDTypeError(f"{what} must be a torch.Tensor; got {type(x).__name__}")
    if x.is_complex() or not (x.is_floating_point()):
        hint = " (for uint8 frames use x.float() / 127.5 - 1)" if x.dtype == torch.uint8 else ""
        raise VideoDTypeError(f"{what} must be a real floating-point tensor; got {x.dtype}{hint}")
    if x.is_meta:
        raise VideoDTypeError(f"{what} is on the meta device and holds no data; pass a tensor on cpu or cuda")
    return x


def _nonfinite_counts(x: Tensor) -> tuple[int, int] | None:
    """(NaN count, Inf count) of x, or None when every value is finite (one pass in that case)."""
    if bool(torch.isfinite(x).all()):
        return None
    return int(torch.isnan(x).sum()), int(torch.isinf(x).sum())


def _check_finite(x: Tensor, what: str) -> None:
    if (counts := _nonfinite_counts(x)) is not None:
        raise NonFiniteInputError(
            f"{what} holds {counts[0]} NaN and {counts[1]} Inf values; clean it first (e.g. torch.nan_to_num(x).clamp(-1, 1))"
        )


def _check_filled(x: Tensor, what: str, dims: tuple[str, ...], message: str) -> Tensor:
    """No dim of x is empty (the message names the empty ones) and every value is finite."""
    empty = [name for name, n in zip(dims, x.shape) if n == 0]
    if empty:
        raise VideoLayoutError(message.format(shape=tuple(x.shape), empty=", ".join(empty)))
    _check_finite(x, what)
    return x


def check_video(video: object, channels: int) -> Tensor:
    """Validate video: (B, T, C, H, W) with C == channels; return it unchanged."""
    x = _check_tensor(video, "video")
    shape = tuple(x.shape)
    if x.ndim != 5:
        hint = " (one clip? add the batch dim: x.unsqueeze(0))" if x.ndim == 4 and x.shape[1] == channels else ""
        raise VideoLayoutError(f"video must be 5D (B, T, C, H, W); got {x.ndim}D {shape}{hint}")
    if x.shape[2] != channels and x.shape[1] == channels:
        raise VideoLayoutError(
            f"got {shape}: this looks like (B, C, T, H, W); videovae takes (B, T, C, H, W). "
            "Use x.permute(0, 2, 1, 3, 4) (einops: 'b c t h w -> b t c h w')"
        )
    if x.shape[2] != channels:
        raise VideoLayoutError(f"video must have {channels} channels at dim 2 of (B, T, C, H, W); got {shape}")
    return _check_filled(x, "video", ("B", "T", "C", "H", "W"),
                         "video {shape} is empty along {empty}; every dim of (B, T, C, H, W) must be >= 1")


def check_latents(latents: object, channels: int) -> Tensor:
    """Validate latents: (B, T_lat, z, h, w) with z == channels; return them unchanged."""
    z = _check_tensor(latents, "latents")
    shape = tuple(z.shape)
    if z.ndim != 5:
        raise VideoLayoutError(f"latents must be 5D (B, T_lat, z, h, w); got {z.ndim}D {shape}")
    if z.shape[2] != channels and z.shape[1] == channels:
        raise VideoLayoutError(
            f"latents {shape} look like (B, z, T_lat, h, w); videovae takes (B, T_lat, z, h, w). Use z.permute(0, 2, 1, 3, 4)"
        )
    if z.shape[2] != channels:
        raise LatentMismatchError(
            f"latents {shape} have {z.shape[2]} channels at dim 2; this model's latents have {channels}. "
            "Were they encoded by another model?"
        )
    return _check_filled(z, "latents", ("B", "T_lat", "z", "h", "w"), "latents {shape} are empty along {empty}")


def check_num_frames(num_frames: object) -> int | None:
    """`num_frames` of decode: None or an int >= 1 (not a bool, float or string)."""
    if num_frames is None:
        return None
    if isinstance(num_frames, bool) or not isinstance(num_frames, int):
        raise UsageError(f"num_frames must be an int >= 1 or None; got {num_frames!r} ({type(num_frames).__name__})")
    if num_frames < 1:
        raise VideoLayoutError(f"num_frames must be >= 1; got {num_frames}")
    return num_frames


def check_video_shape(shape: object, channels: int) -> tuple[int, int, int, int, int]:
    """A (B, T, C, H, W) shape of positive ints with C == channels (for `latent_shape`)."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise UsageError(f"video_shape must be a (B, T, C, H, W) tuple; got {shape!r}") from None
    if len(dims) != 5 or any(isinstance(n, bool) or not isinstance(n, int) for n in dims):
        raise VideoLayoutError(f"video_shape must be 5 ints (B, T, C, H, W); got {dims!r}")
    if any(n < 1 for n in dims):
        raise VideoLayoutError(f"video_shape {dims} has a dim < 1; every dim of (B, T, C, H, W) must be >= 1")
    if dims[2] != channels:
        raise VideoLayoutError(f"video_shape {dims} has {dims[2]} channels at dim 2; this model takes {channels}")
    return dims


# Values past this are not a [-1, 1] video (a little overshoot from resampling is normal).
RANGE_SLACK = 1.5


def warn_if_out_of_range(x: Tensor, what: str = "video") -> bool:
    """One InputRangeWarning (returns True) when x's values are clearly outside [-1, 1]."""
    low, high = (v.item() for v in torch.aminmax(x.detach()))
    if -RANGE_SLACK <= low and high <= RANGE_SLACK:
        return False
    if low >= 0 and high > RANGE_SLACK:
        cause = "it looks like 0..255 frames: use x / 127.5 - 1 (0..1 frames: x * 2 - 1)"
    else:
        cause = "normalise it to [-1, 1] first"
    warnings.warn(f"{what} values span [{low:.4g}, {high:.4g}], but videovae takes [-1, 1]; {cause}", InputRangeWarning, stacklevel=3)
    return True


def check_finite_output(t: Tensor, what: str) -> Tensor:
    """Raise NonFiniteOutputError when the model produced NaN or Inf; return t otherwise."""
    if (counts := _nonfinite_counts(t)) is not None:
        raise NonFiniteOutputError(
            f"the {what} produced {counts[0]} NaN and {counts[1]} Inf values from a finite input: the input is far outside "
            "[-1, 1], or a 16-bit dtype overflowed (load with dtype='fp32')"
        )
    return t


def check_device(device: torch.device | str | None) -> torch.device:
    """A device the weights can really live on; OptionError (before the file is read) otherwise."""
    if device is None:
        return torch.device("cpu")
    try:
        place = torch.device(device)
    except (RuntimeError, TypeError):
        raise OptionError(f"device {device!r} is not a device torch knows; use cpu, cuda or cuda:N") from None
    if place.type == "meta":
        raise OptionError("device='meta' holds no data, so no weights can be loaded there; use cpu or cuda")
    if place.type == "cpu":
        return place
    backend = getattr(torch, place.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise OptionError(
            f"device {str(place)!r}: {place.type.upper()} is not available on this machine "
            f"(torch.{place.type}.is_available() is False); use device='cpu'"
        )
    count = getattr(backend, "device_count", lambda: 1)()
    if place.index is not None and place.index >= count:
        raise OptionError(f"device {str(place)!r}: this machine has {count} {place.type} device(s), numbered 0..{count - 1}")
    return place
