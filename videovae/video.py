"""Reading video files on PyAV, streaming: a long video is never held whole in memory.

    info = probe("in.mp4")                                   # VideoInfo: fps, size, frames, ...
    for chunk in read_chunks("in.mp4", chunk_frames=17):     # chunk: (1, t<=17, 3, H, W) in [-1, 1]
        ...

Writing lives in `videovae.video_write` (VideoWriter).

Frames are RGB at the file's coded size. Reading does not apply the display rotation (phone videos
come out sideways); `VideoInfo.rotation` says by how much a player would turn them.

Reading converts with the file's own tags (BT.601 when untagged, as FFmpeg does).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType

import av
import av.error
import numpy as np
import torch
from av.video.reformatter import (
    ColorPrimaries,
    ColorTrc,
    VideoReformatter,
)

from .errors import (
    OptionError,
    VideoDTypeError,
    VideoFileError,
    VideoFileNotFoundError,
)

__all__ = ["VideoInfo", "probe", "read_chunks", "read_video"]

PathLike = str | os.PathLike[str]

# ---------------------------------------------------------------------------------------------
# probe


@dataclass(frozen=True)
class VideoInfo:
    """Facts about a file's first video stream.

    fps: frame rate as an exact fraction (30000/1001 for NTSC); `fps_float` as a float.
    frame_count: from the container header; None when the container does not store it (MKV, WebM).
    width, height: coded frame size in pixels (what `read_chunks` returns).
    rotation: counter-clockwise degrees a player turns the frames by (display matrix), 0 if none.
    pix_fmt: decoded pixel format ("yuv420p", ...).
    color_range / color_space / color_primaries / color_trc: FFmpeg names ("tv", "bt709", ...), or
        None when the file leaves them unspecified.
    codec: decoder name ("h264", "ffv1", ...); container: demuxer name ("mov,mp4,m4a,3gp,3g2,mj2").
    duration: seconds, or None when unknown.
    """

    path: str
    fps: Fraction
    frame_count: int | None
    width: int
    height: int
    rotation: int
    pix_fmt: str
    color_range: str | None
    color_space: str | None
    color_primaries: str | None
    color_trc: str | None
    codec: str
    container: str
    duration: float | None

    @property
    def fps_float(self) -> float:
        return float(self.fps)


# FFmpeg's AVColorRange / AVColorSpace numbers -> FFmpeg's names (libavutil/pixfmt.h). 2 and 0 are
# "unspecified" for the space and range and map to None.
_COLOR_RANGE_NAMES = MappingProxyType({1: "tv", 2: "pc"})
_COLOR_SPACE_NAMES = MappingProxyType({
    0: "gbr", 1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "ycgco",
    9: "bt2020nc", 10: "bt2020c", 11: "smpte2085", 12: "chroma-derived-nc",
    13: "chroma-derived-c", 14: "ictcp",
})


def _enum_name(enum: type, value: int) -> str | None:
    """Lower-case name of `value` in one of PyAV's color enums; None for unspecified."""
    if value == 2:  # AVCOL_PRI_UNSPECIFIED == AVCOL_TRC_UNSPECIFIED == 2
        return None
    try:
        return enum(value).name.lower()
    except ValueError:
        return str(value)


def probe(path: PathLike) -> VideoInfo:
    """Read a video file's facts (`VideoInfo`). Decodes the first frame (for the rotation and the
    color tags, and to prove the stream is decodable). Raises `VideoFileNotFoundError` /
    `VideoFileError` with a one-line message for a missing, non-video or corrupt file."""
    with _open_video(path) as (container, stream):
        first = next(_decoded_frames(path, container, stream), None)
        if first is None:
            raise VideoFileError(f"cannot read {str(path)!r}: its video stream has no decodable frames")
        return VideoInfo(
            path=str(path),
            fps=_stream_fps(path, stream),
            frame_count=stream.frames or None,
            width=first.width,
            height=first.height,
            rotation=int(first.rotation),
            pix_fmt=first.format.name,
            color_range=_COLOR_RANGE_NAMES.get(first.color_range),
            color_space=_COLOR_SPACE_NAMES.get(first.colorspace),
            color_primaries=_enum_name(ColorPrimaries, first.color_primaries),
            color_trc=_enum_name(ColorTrc, first.color_trc),
            codec=stream.codec_context.name,
            container=container.format.name,
            duration=_duration_seconds(container, stream),
        )


def _stream_fps(path: PathLike, stream: av.video.stream.VideoStream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise VideoFileError(f"cannot read {str(path)!r}: the video stream has no frame rate")
    return Fraction(rate)


def _duration_seconds(container: av.container.InputContainer, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


# ---------------------------------------------------------------------------------------------
# opening and decoding, with av errors turned into one-line videovae errors


def _check_readable(path: PathLike) -> Path:
    file = Path(path)
    if not file.exists():
        raise VideoFileNotFoundError(f"video file not found: {str(file)!r}; check the path")
    if file.is_dir():
        raise VideoFileError(f"cannot read {str(file)!r}: it is a folder, not a video file")
    return file


def _why_unopenable(file: Path) -> str:
    """Best guess, from the first bytes, at why FFmpeg could not open `file`."""
    with open(file, "rb") as handle:
        head = handle.read(12)
    if not head:
        return "the file is empty"
    looks_mp4 = head[4:8] == b"ftyp"
    looks_mkv = head[:4] == b"\x1a\x45\xdf\xa3"
    if looks_mp4 or looks_mkv:
        return "it looks like a truncated or corrupt video (the container's index is missing)"
    return "it is not a video file FFmpeg can read (unknown or corrupt format)"


@contextlib.contextmanager
def _open_video(path: PathLike) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """Open `path` and yield (container, first video stream) with threaded decoding; close on exit."""
    file = _check_readable(path)
    try:
        container = av.open(str(file), mode="r")
    except PermissionError:
        raise VideoFileError(f"cannot read {str(file)!r}: permission denied") from None
    except (av.error.FFmpegError, OSError, ValueError):
        raise VideoFileError(f"cannot read {str(file)!r}: {_why_unopenable(file)}") from None
    with container:
        if not container.streams.video:
            raise VideoFileError(f"cannot read {str(file)!r}: the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield container, stream


def _decoded_frames(path: PathLike, container, stream) -> Iterator[av.VideoFrame]:
    """container.decode(stream), with decoding errors raised as one-line `VideoFileError`s."""
    frames = container.decode(stream)
    decoded = 0
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except (av.error.FFmpegError, EOFError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise VideoFileError(
                f"cannot read {str(path)!r}: the file is corrupt or truncated; decoding failed after "
                f"{decoded} frames ({reason})"
            ) from None
        decoded += 1
        yield frame


# ---------------------------------------------------------------------------------------------
# reading


def read_chunks(
    path: PathLike,
    chunk_frames: int,
    *,
    start_frame: int = 0,
    max_frames: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Iterator[torch.Tensor]:
    """Yield the video's frames as (1, t, 3, H, W) RGB tensors in [-1, 1], t <= chunk_frames (only
    the last chunk is shorter), decoding lazily: one chunk is in memory at a time.

    start_frame: index of the first frame to return (frames before it are decoded and dropped, so
        the index is exact even without keyframes there). max_frames: stop after this many frames.
    Arguments are checked at the call, the file when iteration starts. Raises `ValueError` if
    `start_frame` is past the last frame.
    """
    _check_read_args(chunk_frames, start_frame, max_frames, dtype)
    _check_readable(path)
    stop_frame = None if max_frames is None else start_frame + max_frames
    return _iter_chunks(path, chunk_frames, start_frame, stop_frame, dtype)


def read_video(
    path: PathLike,
    *,
    start_frame: int = 0,
    max_frames: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, VideoInfo]:
    """Read a whole video (or `max_frames` of it from `start_frame`) into one (1, T, 3, H, W) tensor
    in [-1, 1], with its `VideoInfo`. For long videos prefer `read_chunks`."""
    info = probe(path)
    chunks = list(read_chunks(path, 64, start_frame=start_frame, max_frames=max_frames, dtype=dtype))
    return torch.cat(chunks, dim=1), info  # (1, T, 3, H, W)


def _check_read_args(chunk_frames: int, start_frame: int, max_frames: int | None, dtype) -> None:
    if not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise OptionError(f"chunk_frames must be an int >= 1, got {chunk_frames!r}")
    if not isinstance(start_frame, int) or start_frame < 0:
        raise OptionError(f"start_frame must be an int >= 0, got {start_frame!r}")
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise OptionError(f"max_frames must be None or an int >= 1, got {max_frames!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise VideoDTypeError(f"dtype must be a floating torch dtype (e.g. torch.float32), got {dtype!r}")


def _iter_chunks(
    path: PathLike, chunk_frames: int, start_frame: int, stop_frame: int | None, dtype: torch.dtype
) -> Iterator[torch.Tensor]:
    reformatter = VideoReformatter()
    images: list[np.ndarray] = []  # each (H, W, 3) uint8
    size: tuple[int, int] | None = None  # (width, height) of the first returned frame
    index = -1
    with _open_video(path) as (container, stream):
        for index, frame in enumerate(_decoded_frames(path, container, stream)):
            if index < start_frame:
                continue
            size = size or (frame.width, frame.height)
            images.append(_frame_to_rgb(reformatter, frame, size))
            if len(images) == chunk_frames:
                yield _images_to_tensor(images, dtype)
                images = []
            if stop_frame is not None and index + 1 >= stop_frame:
                break
        expected = _expected_frame_count(container, stream)
    if images:
        yield _images_to_tensor(images, dtype)
    decoded = index + 1
    if decoded == 0:
        raise VideoFileError(f"cannot read {str(path)!r}: its video stream has no decodable frames")
    if start_frame >= decoded:
        raise OptionError(
            f"start_frame={start_frame} is past the end of {str(path)!r}, which has {decoded} "
            f"frames; use a start_frame below {decoded}"
        )
    if stop_frame is None and expected is not None and decoded < expected:
        warnings.warn(
            f"{str(path)!r}: decoded {decoded} frames but the container promises about "
            f"{expected}; the file may be truncated",
            stacklevel=2,
        )


def _expected_frame_count(container, stream) -> int | None:
    """A lower bound on the frame count the container promises: the header's count, else 95% of
    duration x fps (containers such as MKV store only a duration, rounded); None when unknown."""
    if stream.frames:
        return stream.frames
    duration, rate = _duration_seconds(container, stream), stream.average_rate
    if duration is None or not rate:
        return None
    return int(0.95 * duration * float(rate))


def _frame_to_rgb(reformatter: VideoReformatter, frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    """Decoded frame -> (H, W, 3) uint8 RGB at `size` (width, height), honouring the frame's color
    range (full-range YUV would otherwise be read as limited range)."""
    rgb = reformatter.reformat(
        frame, width=size[0], height=size[1], format="rgb24", src_color_range=frame.color_range
    )
    return rgb.to_ndarray()


def _images_to_tensor(images: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
    """t x (H, W, 3) uint8 -> (1, t, 3, H, W) `dtype` in [-1, 1]."""
    uint8 = torch.from_numpy(np.stack(images))  # (t, H, W, 3)
    frames = uint8.permute(0, 3, 1, 2).to(torch.float32)  # (t, 3, H, W) in [0, 255]
    frames = frames.div_(127.5).sub_(1.0)  # [-1, 1]
    return frames.unsqueeze(0).to(dtype).contiguous()  # (1, t, 3, H, W)
