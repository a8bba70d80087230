"""Writing video files on PyAV, atomically and streaming (`videovae.video` reads them).

    with VideoWriter("out.mp4", fps, width, height) as writer:
        writer.write(frames)                                  # (1, t, 3, H, W) or (t, 3, H, W)

Writing is atomic (`videovae.atomic_write.atomic_output`): the file appears complete at its name when the
writer closes without an exception, and nothing is left behind otherwise. Encoder choice:
  - lossy (default): H.264 (libx264, CRF `quality`, default 18) in .mp4/.mov/.mkv/.avi, falling back
    to MPEG-4 part 2 when the av wheel lacks libx264; VP9 (libvpx-vp9) in .webm. H.264 4:2:0 needs an
    even width and height, so odd sizes are encoded as yuv444p (High 4:4:4 profile: exact size, but
    some hardware players refuse it) rather than padded.
  - lossless=True: RGB stored exactly (uint8 frames round-trip bit for bit): FFV1 (bgr0) in
    .mkv/.avi/.nut, libx264rgb at qp 0 in .mp4/.mov, VP9 lossless (gbrp) in .webm.
YUV output is converted with BT.709 limited-range coefficients and tagged as such, except in .avi
and .nut, which cannot store the tags: there BT.601, what readers assume for untagged video.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType, TracebackType

import av
import av.error
import numpy as np
import torch
from av.video.reformatter import (
    ColorPrimaries,
    ColorRange,
    Colorspace,
    ColorTrc,
    VideoReformatter,
)

from .errors import (
    NonFiniteInputError,
    OptionError,
    OutputPathError,
    StateError,
    UsageError,
    VideoDTypeError,
    VideoLayoutError,
)
from .atomic_write import atomic_output, check_output_path

__all__ = ["VideoWriter", "check_video_extension"]

PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------------------------------------
# writing

# Container format (FFmpeg muxer name) for each output extension.
_MUXERS = MappingProxyType({
    ".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm",
    ".avi": "avi", ".nut": "nut",
})
# Muxers that drop colour tags: readers then assume BT.601 (FFmpeg's default for untagged YUV), so
# YUV is written with BT.601 coefficients there, BT.709 elsewhere.
_UNTAGGED_MUXERS = frozenset({"avi", "nut"})
# Encoders tried in order when `codec` is None, per muxer and mode.
_LOSSY_CODECS = MappingProxyType({"webm": ("libvpx-vp9",)})
_LOSSY_DEFAULT = ("libx264", "mpeg4")
_LOSSLESS_CODECS = MappingProxyType({
    "mp4": ("libx264rgb",), "mov": ("libx264rgb", "ffv1"), "webm": ("libvpx-vp9",),
})
_LOSSLESS_DEFAULT = ("ffv1", "libx264rgb")
# Encoders that are lossless by construction, and options that make others lossless.
_INTRINSICALLY_LOSSLESS = frozenset({"ffv1", "utvideo", "png", "rawvideo", "huffyuv", "ffvhuff"})
_LOSSLESS_OPTIONS = MappingProxyType({
    "libx264rgb": {"qp": "0"},
    "libx264": {"qp": "0"},
    "libx265": {"x265-params": "lossless=1:log-level=error"},
    "libvpx-vp9": {"lossless": "1"},
})
_RGB_PIX_FMTS = ("bgr0", "rgb24", "gbrp", "bgr24")
_DEFAULT_QUALITY = 18


@dataclass(frozen=True)
class _Encoder:
    """What VideoWriter hands to PyAV: encoder name, pixel format, codec options."""

    codec: str
    pix_fmt: str
    options: Mapping[str, str] = field(default_factory=dict)
    bt601: bool = False  # YUV coefficients: BT.601 (for muxers without colour tags) or BT.709

    @property
    def is_rgb(self) -> bool:
        return self.pix_fmt in _RGB_PIX_FMTS


def check_video_extension(path: str | os.PathLike) -> None:
    """OptionError, before any work, when videos cannot be written under `path`'s extension."""
    _muxer_for(Path(path))


def _muxer_for(path: Path) -> str:
    muxer = _MUXERS.get(path.suffix.lower())
    if muxer is None:
        raise OptionError(
            f"cannot write {str(path)!r}: unknown video extension {path.suffix!r}; use one of "
            f"{', '.join(sorted(_MUXERS))}"
        )
    return muxer


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except (av.error.FFmpegError, ValueError):  # UnknownCodecError is a ValueError
        return False
    return True


def _pick_codec(muxer: str, lossless: bool) -> str:
    table, default = (_LOSSLESS_CODECS, _LOSSLESS_DEFAULT) if lossless else (_LOSSY_CODECS, _LOSSY_DEFAULT)
    candidates = table.get(muxer, default)
    for name in candidates:
        if _has_encoder(name):
            return name
    raise OptionError(
        f"this av wheel has none of the encoders {', '.join(candidates)} for a "
        f"{'lossless' if lossless else 'lossy'} {muxer} file; pass codec=... or use another extension"
    )


def _pick_pix_fmt(codec: str, width: int, height: int, lossless: bool) -> str:
    """An RGB format for lossless output; yuv420p when the size allows it (even, or an encoder
    that accepts odd sizes), else yuv444p; else the encoder's first format."""
    supported = [f.name for f in (av.codec.Codec(codec, "w").video_formats or ())]
    if lossless:
        for name in _RGB_PIX_FMTS:
            if name in supported:
                return name
        raise OptionError(
            f"encoder {codec!r} cannot store RGB frames exactly; for lossless output use ffv1 "
            "(.mkv) or libx264rgb (.mp4)"
        )
    odd = width % 2 == 1 or height % 2 == 1
    needs_even_420 = codec in ("libx264", "libx265", "libvpx-vp9", "libsvtav1")
    if "yuv420p" in supported and not (odd and needs_even_420):
        return "yuv420p"
    if "yuv444p" in supported:
        return "yuv444p"
    if not supported:
        raise OptionError(f"encoder {codec!r} does not list its pixel formats; choose another codec")
    return supported[0]


def _quality_options(codec: str, quality: int) -> dict[str, str]:
    """CRF-like `quality` (0 best .. 51 worst) as the encoder's own options."""
    if codec == "libx264":
        return {"crf": str(quality)}
    if codec == "libx265":
        return {"crf": str(quality), "x265-params": "log-level=error"}
    if codec == "libvpx-vp9":  # CRF range 0..63; b=0 selects constant-quality mode
        return {"crf": str(round(quality * 63 / 51)), "b": "0"}
    if codec == "mpeg4":
        # Fixed quantiser 1..31 (linear step size; 2 is near-transparent, like CRF 18). CRF is
        # logarithmic (+6 doubles the step), so quantiser = 2 * 2 ** ((quality - 18) / 6).
        quantiser = min(31, max(1, round(2 * 2 ** ((quality - 18) / 6))))
        return {"qmin": str(quantiser), "qmax": str(quantiser)}
    return {}


def _choose_encoder(
    muxer: str, width: int, height: int, codec: str | None, quality: int | None, lossless: bool,
    options: Mapping[str, str] | None,
) -> _Encoder:
    name = codec or _pick_codec(muxer, lossless)
    if not _has_encoder(name):
        raise OptionError(f"this av wheel has no encoder {name!r}; pass codec=None to pick one")
    if lossless and name not in _INTRINSICALLY_LOSSLESS and name not in _LOSSLESS_OPTIONS:
        raise OptionError(
            f"videovae does not know a lossless mode for encoder {name!r}; use ffv1 (.mkv) or "
            "libx264rgb (.mp4)"
        )
    if lossless:
        chosen = dict(_LOSSLESS_OPTIONS.get(name, {}))
    else:
        chosen = _quality_options(name, _DEFAULT_QUALITY if quality is None else quality)
    chosen.update(options or {})
    pix_fmt = _pick_pix_fmt(name, width, height, lossless)
    return _Encoder(name, pix_fmt, MappingProxyType(chosen), bt601=muxer in _UNTAGGED_MUXERS)


def _as_fps(fps: Fraction | int | float) -> Fraction:
    """fps as an exact fraction; floats snap to the nearest ratio with denominator <= 1001, so
    29.97002997 becomes 30000/1001."""
    rate = Fraction(fps).limit_denominator(1001) if isinstance(fps, float) else Fraction(fps)
    if rate <= 0:
        raise OptionError(f"fps must be positive, got {fps!r}")
    return rate


def _frames_to_uint8(frames: torch.Tensor, width: int, height: int) -> np.ndarray:
    """(1, t, 3, H, W) or (t, 3, H, W) float in [-1, 1] -> (t, H, W, 3) uint8 (clamped, rounded)."""
    if not isinstance(frames, torch.Tensor):
        raise UsageError(f"write() takes a torch.Tensor, got {type(frames).__name__}")
    if frames.ndim == 5:
        if frames.shape[0] != 1:
            raise VideoLayoutError(
                f"write() takes one clip, (1, t, 3, H, W) or (t, 3, H, W); got batch size "
                f"{frames.shape[0]} in {tuple(frames.shape)}: write each clip to its own file"
            )
        frames = frames[0]  # (t, 3, H, W)
    if frames.ndim != 4 or frames.shape[1] != 3 or tuple(frames.shape[2:]) != (height, width):
        raise VideoLayoutError(
            f"write() takes (1, t, 3, {height}, {width}) or (t, 3, {height}, {width}) RGB frames in "
            f"[-1, 1] (the writer's size); got {tuple(frames.shape)}"
        )
    if not frames.is_floating_point():
        raise VideoDTypeError(
            f"write() takes float frames in [-1, 1], got {frames.dtype}; for uint8 frames pass "
            "frames / 127.5 - 1"
        )
    if not bool(torch.isfinite(frames).all()):
        raise NonFiniteInputError("write() got frames holding NaN or Inf; check the decoder output")
    scaled = (frames.detach().to("cpu", torch.float32).clamp(-1.0, 1.0) + 1.0) * 127.5
    uint8 = scaled.round_().to(torch.uint8)  # (t, 3, H, W)
    return uint8.permute(0, 2, 3, 1).contiguous().numpy()  # (t, H, W, 3)


class VideoWriter:
    """Encode RGB frames in [-1, 1] to a video file, atomically.

        with VideoWriter("out.mp4", fps=30, width=100, height=72) as writer:
            writer.write(chunk)            # (1, t, 3, 72, 100) or (t, 3, 72, 100), any float dtype

    codec: encoder name, or None for the default of the extension (see the module docstring).
    quality: CRF-like 0 (best) .. 51 (worst), default 18; ignored when `lossless`.
    lossless: store the uint8-quantised RGB frames exactly.
    options: extra encoder options (strings), applied last.
    rotation: counter-clockwise degrees (multiple of 90) stored as the display matrix, so players
        turn the frames as `VideoInfo.rotation` says (pass `probe(src).rotation` to keep a phone
        video's orientation); the frames themselves are written as given.

    The output folder is checked at construction (`OutputPathError`). The file appears at `path`
    only when the writer closes without an exception (`close()` or leaving the `with` block);
    `abort()` or an exception in the block deletes everything written.
    """

    def __init__(
        self,
        path: PathLike,
        fps: Fraction | int | float,
        width: int,
        height: int,
        *,
        codec: str | None = None,
        quality: int | None = None,
        lossless: bool = False,
        options: Mapping[str, str] | None = None,
        rotation: int = 0,
    ) -> None:
        self.path = check_output_path(path)
        muxer = _muxer_for(self.path)
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            raise OptionError(f"width and height must be positive ints, got {width!r} x {height!r}")
        if quality is not None and not (isinstance(quality, int) and 0 <= quality <= 51):
            raise OptionError(f"quality is CRF-like, an int in 0 (best) .. 51 (worst); got {quality!r}")
        if rotation % 90 != 0:
            raise OptionError(f"rotation must be a multiple of 90 degrees, got {rotation!r}")
        self.fps = _as_fps(fps)
        self.width, self.height, self.rotation = width, height, rotation
        self.encoder = _choose_encoder(muxer, width, height, codec, quality, lossless, options)
        self.frames_written = 0
        self._reformatter = VideoReformatter()
        self._atomic = atomic_output(self.path)
        temp = self._atomic.__enter__()
        try:
            self._container = av.open(str(temp), mode="w", format=muxer)
            self._stream = self._add_stream()
        except BaseException as exc:
            self._discard(exc)
            raise

    def _add_stream(self) -> av.video.stream.VideoStream:
        enc = self.encoder
        try:
            stream = self._container.add_stream(enc.codec, rate=self.fps, options=dict(enc.options))
        except (av.error.FFmpegError, ValueError) as exc:
            raise OptionError(f"cannot write {str(self.path)!r} with encoder {enc.codec!r}: {exc}") from None
        stream.width, stream.height = self.width, self.height
        stream.pix_fmt = enc.pix_fmt
        stream.time_base = 1 / self.fps  # one tick per frame: frame i has pts i
        stream.codec_context.time_base = 1 / self.fps
        stream.thread_type = "AUTO"
        if self.rotation % 360:
            stream.set_display_rotation(self.rotation)
        context = stream.codec_context
        context.color_primaries = ColorPrimaries.SMPTE170M if enc.bt601 else ColorPrimaries.BT709
        context.color_trc = ColorTrc.SMPTE170M if enc.bt601 else ColorTrc.BT709
        # AVCOL_SPC_RGB = 0, AVCOL_SPC_BT709 = 1, AVCOL_SPC_SMPTE170M = 6
        context.colorspace = 0 if enc.is_rgb else 6 if enc.bt601 else 1
        context.color_range = ColorRange.JPEG if enc.is_rgb else ColorRange.MPEG
        return stream

    def write(self, frames: torch.Tensor) -> None:
        """Encode and mux (1, t, 3, H, W) or (t, 3, H, W) RGB frames in [-1, 1] (clamped, rounded to
        uint8)."""
        if self._container is None:
            raise StateError(f"VideoWriter for {str(self.path)!r} is closed")
        for image in _frames_to_uint8(frames, self.width, self.height):  # image: (H, W, 3) uint8
            frame = self._to_encoder_format(av.VideoFrame.from_ndarray(image, format="rgb24"))
            frame.pts = self.frames_written
            self._mux(self._stream.encode(frame))
            self.frames_written += 1

    def _to_encoder_format(self, rgb: av.VideoFrame) -> av.VideoFrame:
        if self.encoder.is_rgb:
            return self._reformatter.reformat(rgb, format=self.encoder.pix_fmt)
        return self._reformatter.reformat(
            rgb, format=self.encoder.pix_fmt,
            dst_colorspace=Colorspace.ITU601 if self.encoder.bt601 else Colorspace.ITU709,
            dst_color_range=ColorRange.MPEG,
        )

    def _mux(self, packets) -> None:
        try:
            self._container.mux(packets)
        except av.error.FFmpegError as exc:
            raise OutputPathError(f"writing {str(self.path)!r} failed: {exc}") from exc

    def close(self) -> None:
        """Flush the encoder, finish the file and move it to `path`. Idempotent."""
        if self._container is None:
            return
        try:
            if self.frames_written == 0:
                raise OptionError(f"no frames were written to {str(self.path)!r}; nothing to save")
            self._mux(self._stream.encode())  # flush: bare encode()
            self._container.close()
            self._container = None
        except BaseException as exc:
            self._discard(exc)
            raise
        self._atomic.__exit__(None, None, None)

    def abort(self) -> None:
        """Stop writing and delete the partial output; `path` is left untouched."""
        if self._container is not None:
            self._discard(RuntimeError("VideoWriter aborted"))

    def _discard(self, exc: BaseException) -> None:
        container, self._container = getattr(self, "_container", None), None
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()
        with contextlib.suppress(BaseException):  # re-raises `exc` after deleting the temp file
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)

    def __del__(self) -> None:
        # A writer dropped without close() must not leave its hidden temporary file behind.
        if getattr(self, "_container", None) is not None:
            with contextlib.suppress(Exception):
                self.abort()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
        else:
            self._discard(exc)
