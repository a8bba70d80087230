"""videovae's exceptions. Each subclasses the builtin that fits (ValueError, TypeError, OSError), so
callers that catch builtins keep working, and `VideoVAEError` catches them all. Messages name the
problem and the fix."""

from __future__ import annotations


class VideoVAEError(Exception):
    """Base of every error videovae raises on purpose."""


class OptionError(VideoVAEError, ValueError):
    """An argument or option has a value that cannot work (a chunk size, an overlap, a layout name,
    an fps, a codec); the message names the values that do."""


class UsageError(VideoVAEError, TypeError):
    """The API was called with an argument of the wrong type, or asked to change what is read-only."""


class StateError(VideoVAEError, RuntimeError):
    """An object was used in a state that does not allow it (a closed writer, an empty blender)."""


class NotSupportedError(VideoVAEError, NotImplementedError):
    """The request is valid but this version of videovae does not do it; the message says what does."""


class VideoLayoutError(VideoVAEError, ValueError):
    """A video or latent tensor has the wrong rank, layout, channel count or an empty dimension."""


class VideoDTypeError(VideoVAEError, TypeError):
    """A tensor's dtype cannot be encoded or decoded (integer, bool, complex)."""


class NonFiniteInputError(VideoVAEError, ValueError):
    """The input holds NaN or Inf values."""


class NonFiniteOutputError(VideoVAEError, FloatingPointError):
    """The model produced NaN or Inf from a finite input (an input far outside [-1, 1], or a 16-bit
    overflow); nothing is returned."""


class FramePolicyError(VideoVAEError, ValueError):
    """A `strict` frame policy was violated, or a policy name is unknown."""


class CheckpointError(VideoVAEError, OSError):
    """A checkpoint file cannot be read: not safetensors, truncated, or unreadable."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist."""


class CheckpointMismatchError(VideoVAEError, ValueError):
    """The checkpoint is readable but is not a model videovae can build (unknown family, or missing,
    unexpected or mis-shaped tensors)."""


class LatentMismatchError(VideoVAEError, ValueError):
    """Latents that do not fit the model (channel count, family, or size)."""


class VideoFileError(VideoVAEError, OSError):
    """A video file cannot be read: not a video, truncated or corrupt, or has no video stream."""


class VideoFileNotFoundError(VideoFileError, FileNotFoundError):
    """The video path does not exist."""


class OutputPathError(VideoVAEError, OSError):
    """An output cannot be written where asked: the folder is missing or not writable, the target is
    a folder, or writing failed part way (disk full)."""


class LatentFileError(VideoVAEError, OSError):
    """A latent file cannot be read: missing, not safetensors, or not written by videovae."""


class DatasetError(VideoVAEError, ValueError):
    """A dataset encoding job cannot start: no inputs, or a bad option."""


class DTypeFallbackWarning(UserWarning):
    """16-bit compute was asked for on a CPU where PyTorch has no fast 16-bit convolution: the model
    computes in float32 instead (or, for a model cast by hand, will be slow)."""


class InputRangeWarning(UserWarning):
    """A video's values are clearly outside [-1, 1] (0..255 frames, or unnormalised data)."""


__all__ = [name for name, value in list(globals().items()) if isinstance(value, type) and issubclass(value, Warning | VideoVAEError)]
