"""Whole video files through a VideoVAE, streaming: reconstruct (with metrics and a side-by-side
comparison), encode to latents, decode latents, and a synthetic sample video. Memory does not grow
with the video's length: `read_chunks` -> `reconstruct_stream` -> `VideoWriter`, one chunk at a time.
The command line (`videovae.cli`) is a thin layer over these functions.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from .camera import CameraPath
from .compute_dtype import dtype_name
from .errors import OptionError

ERROR_GAIN = 4.0  # the comparison's third panel shows |original - reconstruction| * ERROR_GAIN



def _finite_or_none(value: float) -> float | None:
    """JSON has no inf/nan: identical frames (PSNR inf) and missing SSIM are written as null."""
    return value if math.isfinite(value) else None


def _plan(vae, frames: int | None, height: int, width: int, policy):
    """The (frames, height, width) a reconstruction of this video has under `policy`; frames None
    when the container does not say. Raises FramePolicyError now, before any work, for a `strict`
    policy the video violates; `trim` warns later, from the stream."""
    import torch

    from .chunking import FramePolicy, apply_policy

    time_policy = policy.time if frames is not None else "pad"
    probe = torch.empty((1, frames or 1, 1, height, width), device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, record = apply_policy(probe, vae.frame_layout, FramePolicy(time=time_policy, space=policy.space))
    return (record.frames if frames is not None else None), record.height, record.width


def _frames_to_read(info, start_frame: int, max_frames: int | None) -> int | None:
    """Frames a run will read (None when the container does not store its frame count)."""
    if info.frame_count is None:
        return max_frames
    if start_frame >= info.frame_count:
        raise OptionError(
            f"--start-frame {start_frame} is past the end of {info.path!r}, which has "
            f"{info.frame_count} frames"
        )
    left = info.frame_count - start_frame
    return left if max_frames is None else min(left, max_frames)


# -- the streaming cores -----------------------------------------------------------------------


def _take(fifo: deque, frames: int):
    """Pop exactly `frames` frames off a FIFO of (1, t, 3, H, W) pieces (splitting the last one)."""
    import torch

    taken, count = [], 0
    while count < frames:
        piece = fifo.popleft()
        need = frames - count
        if piece.shape[1] > need:
            fifo.appendleft(piece[:, need:])
            piece = piece[:, :need]
        taken.append(piece)
        count += piece.shape[1]
    return torch.cat(taken, dim=1) if len(taken) > 1 else taken[0]


def reconstruct_pairs(
    vae, path: str | Path, *, policy=None, start_frame: int = 0, max_frames: int | None = None, stream_options: dict | None = None
) -> Iterator[tuple]:
    """Stream the video file at `path` through `vae.reconstruct_stream`; yield (original,
    reconstruction) pairs of pieces (1, t, 3, H, W) in [-1, 1] (the reconstruction unclamped), in
    order. Holds one chunk (plus the pieces read but not yet reconstructed) in memory.
    stream_options: chunk_frames/overlap for a family that decodes whole clips (default: its
    declared window), tile (exact spatial tiles; default untiled).

    The reconstruction's pieces are not aligned with the pieces read, so the originals wait in a
    FIFO until their reconstruction arrives. A `trim` policy drops trailing frames and crops rows
    and columns: the originals are cut to match.
    """
    from .engine import read_frames
    from .video import read_chunks

    originals: deque = deque()  # pieces read, not yet paired: (1, t, 3, H, W)

    def tap():
        for piece in read_chunks(path, read_frames(vae.model), start_frame=start_frame, max_frames=max_frames):
            originals.append(piece)
            yield piece

    for reconstruction in vae.reconstruct_stream(tap(), policy, **(stream_options or {})):
        _, t, _, H, W = reconstruction.shape
        yield _take(originals, t)[..., :H, :W], reconstruction


def _side_by_side(original, reconstruction):
    """(1, t, 3, H, W) pair -> (1, t, 3, H, 3W): original | reconstruction | |error| * ERROR_GAIN,
    the error panel black where they agree (both clamped to [-1, 1] first)."""
    import torch

    error = (reconstruction - original).abs().mul_(ERROR_GAIN).clamp_(max=2.0).sub_(1.0)  # [0, 2] -> [-1, 1]
    return torch.cat([original, reconstruction, error], dim=-1)


def run_reconstruct(
    vae,
    src: Path,
    out: Path,
    *,
    checkpoint: Path,
    checkpoint_sha256: str,
    load_seconds: float,
    compare: Path | None = None,
    metrics_json: Path | None = None,
    policy=None,
    start_frame: int = 0,
    max_frames: int | None = None,
    quality: int | None = None,
    lossless: bool = False,
    progress: bool = True,
    stream_options: dict | None = None,
) -> dict:
    """Reconstruct the video file `src` into `out` (and the comparison `compare`), streaming; score
    every frame; write `metrics_json`. Returns the report that the JSON holds.

    Output fps, size and rotation are the input's (after a `trim` policy, the trimmed size).
    PSNR/SSIM compare the input frames with the reconstruction clamped to [-1, 1], before video
    encoding. stream_options: chunk_frames/overlap for a family that decodes whole clips (default:
    the family's declared window, so memory stays flat in the length), tile (exact spatial tiles,
    counted on the progress line). Outputs appear only when the whole stream succeeded: the videos are published when
    it ends, the JSON after them; an exception before then deletes every unfinished output.
    """
    from .chunking import FramePolicy
    from .atomic_write import atomic_output
    from .metrics import SSIM_WINDOW, RunningMetrics
    from .progress import Progress
    from .version import __version__
    from .video import probe
    from .video_write import VideoWriter

    started = time.perf_counter()
    policy = FramePolicy.coerce(policy)
    info = probe(src)
    total = _frames_to_read(info, start_frame, max_frames)
    frames_out, height, width = _plan(vae, total, info.height, info.width, policy)
    tiling = {k: v for k, v in (stream_options or {}).items() if k in ("tile", "max_memory")}
    tile_note = tiles_text(vae, height, width, frames=frames_out, ops=("encode", "decode"), **tiling)  # a bad tile fails here
    metrics = RunningMetrics(compute_ssim=min(height, width) >= SSIM_WINDOW)
    writer_options = dict(quality=quality, lossless=lossless, rotation=info.rotation)
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(VideoWriter(out, info.fps, width, height, **writer_options))
        side = None
        if compare is not None:
            side = stack.enter_context(VideoWriter(compare, info.fps, 3 * width, height, **writer_options))
        bar = stack.enter_context(Progress(total, label="reconstruct", enabled=progress))
        bar.postfix = tile_note
        for original, reconstruction in reconstruct_pairs(
            vae, src, policy=policy, start_frame=start_frame, max_frames=max_frames, stream_options=stream_options
        ):
            reconstruction = reconstruction.clamp(-1.0, 1.0)
            metrics.update(original, reconstruction)
            writer.write(reconstruction)
            if side is not None:
                side.write(_side_by_side(original, reconstruction))
            bar.update(reconstruction.shape[1])
        work_seconds = time.perf_counter() - started
        # The ExitStack closes (publishes) the comparison, then the reconstruction.
    frames = metrics.frames
    summary = metrics.summary()
    report = {
        "videovae_version": __version__,
        "input": {
            "path": str(src), "frames": frames, "start_frame": start_frame, "fps": str(info.fps),
            "fps_float": info.fps_float, "width": info.width, "height": info.height, "codec": info.codec,
        },
        "output": {
            "path": str(out), "frames": frames, "fps": str(info.fps), "width": width, "height": height,
            "compare": None if compare is None else str(compare), "lossless": lossless,
            "quality": None if lossless else (18 if quality is None else quality),
        },
        "checkpoint": {
            "path": str(checkpoint), "sha256": checkpoint_sha256, "family": vae.family,
            "version": vae.version, "dtype": dtype_name(vae.dtype),
            "stored_dtype": None if vae.stored_dtype is None else dtype_name(vae.stored_dtype), "device": str(vae.device),
        },
        "policy": policy.text,
        "latent_shape": list(vae.latent_shape((1, frames, 3, height, width), "pad")[1:]),  # (T_lat, z, h, w)
        "timings": {
            "load_seconds": round(load_seconds, 4),
            "reconstruct_seconds": round(work_seconds, 4),
            "frames_per_second": round(frames / work_seconds, 4) if work_seconds > 0 else None,
        },
        "metrics": {k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in summary.items()},
        "metrics_note": "PSNR (dB, data range 2) and SSIM of the input frames vs the reconstruction clamped "
        "to [-1, 1], before video encoding; null PSNR = identical frames",
        "per_frame": [
            {
                "frame": start_frame + i,
                "psnr": _finite_or_none(p),
                "ssim": _finite_or_none(metrics.ssim_values[i]) if metrics.ssim_values else None,
            }
            for i, p in enumerate(metrics.psnr_values)
        ],
    }
    if frames_out is not None and frames != frames_out:
        warnings.warn(f"{src}: expected {frames_out} frames from the container's count, reconstructed {frames}")
    if metrics_json is not None:
        with atomic_output(metrics_json) as tmp:
            tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report


def encode_file(
    vae, src: Path, *, policy=None, start_frame: int = 0, max_frames: int | None = None, progress: bool = True,
    tile=None, max_memory=None,
):
    """Encode the video file `src`, streaming, one chunk in memory at a time: an EncodedVideo with
    mean and logvar (T_lat, z, h, w), and the frames and size those latents decode back to.
    tile, max_memory: exact spatial tiles (`VideoVAE.encode`), counted on the progress line."""
    from .chunking import FramePolicy
    from .engine import encode_video, read_frames
    from .progress import Progress
    from .video import probe, read_chunks

    policy = FramePolicy.coerce(policy)
    info = probe(src)
    total = _frames_to_read(info, start_frame, max_frames)
    frames_out, height, width = _plan(vae, total, info.height, info.width, policy)  # a strict policy fails here, before any work
    tile_note = tiles_text(vae, height, width, frames=frames_out, ops=("encode",), tile=tile, max_memory=max_memory)  # a bad tile too
    encoder = vae.chunk_encoder(policy, tile=tile, max_memory=max_memory)
    pieces = read_chunks(src, read_frames(vae.model), start_frame=start_frame, max_frames=max_frames)
    with Progress(total, label="encode", enabled=progress) as bar:
        bar.postfix = tile_note
        return encode_video(encoder, pieces, on_chunk=bar.update)


def tiles_text(vae, height: int, width: int, *, frames: int, ops=("decode",), tile=None, max_memory=None) -> str:
    """'16 tiles per chunk' for the progress line (and 'frame by frame' where a budget's plan
    streams frames through a chunk), or '' for one tile (untiled). With max_memory, the plans of
    `ops` for a chunk of (at most) `frames` frames are made here, so that a budget below the
    minimum fails before any work; the count is the finest plan's."""
    streamed = False
    if max_memory is None:
        count = vae.tile_count(tile, height, width)
    else:
        chunk = min(frames, vae.frames_per_chunk or frames)
        plans = [vae.memory_plan(op, height, width, max_memory, frames=chunk) for op in ops]
        count = max(vae.tile_count(plan.tile, height, width) for plan in plans)
        streamed = any(plan.stream for plan in plans)
    notes = [f"{count} tiles per chunk"] * (count > 1) + ["frame by frame"] * streamed
    return ", ".join(notes)


def decode_pieces(vae, mean, meta, *, checkpoint_sha256: str | None = None, stream_options: dict | None = None) -> Iterator:
    """Decode latents `mean` (T_lat, z, h, w) described by `meta` (LatentFileMeta), streaming:
    returns an iterator of frame pieces (1, t, 3, H, W), cut to meta.frames and cropped to
    meta.height x meta.width. Raises LatentMismatchError at the call, before any decoding, when
    the latents do not fit `vae` or disagree with their own metadata."""
    from .engine import read_frames
    from .errors import LatentMismatchError
    from .latent_files import check_latents_fit

    check_latents_fit(meta, vae, checkpoint_sha256=checkpoint_sha256)
    T_lat, _, h, w = mean.shape
    s = vae.spatial_compression
    decodable = vae.frame_layout.decoded_frames(T_lat)
    expected = vae.latent_shape((1, meta.frames, vae.in_channels, meta.height, meta.width))  # what encode gives
    if expected[1] != T_lat or (math.ceil(meta.height / s), math.ceil(meta.width / s)) != (h, w) or not 1 <= meta.frames <= decodable:
        raise LatentMismatchError(
            f"the latents ({T_lat}, {mean.shape[1]}, {h}, {w}) decode to {decodable} frames of "
            f"{w * s}x{h * s}, but the file says {meta.frames} frames of {meta.width}x{meta.height}; "
            "the file is inconsistent, re-encode the video"
        )
    z = mean.unsqueeze(0)  # (1, T_lat, z, h, w)
    step = vae.latent_frames_per_chunk or read_frames(vae.model)
    pieces = vae.decode_stream(iter(z.split(step, dim=1)), num_frames=meta.frames, **(stream_options or {}))
    return (piece[..., : meta.height, : meta.width] for piece in pieces)


# The demo's camera move: a slow pan to the right and down while zooming in and turning slightly.
DEMO_CAMERA = CameraPath(centre=((0.3, 0.35), (0.65, 0.55)), zoom=(0.85, 0.6), angle=(-0.04, 0.04), gain=(1.0, 1.05))


def write_sample_video(path: Path, frames: int = 51, height: int = 96, width: int = 128, fps: int = 24) -> Path:
    """Write the demo clip to `path` (H.264, CRF 18): a virtual camera (`videovae.camera`) moving over
    a photograph that the shipped model never saw in training."""
    from .camera import render
    from .registry import demo_photo
    from .video_write import VideoWriter

    clip = render(demo_photo(), DEMO_CAMERA, frames, height, width)  # (T, 3, H, W)
    with VideoWriter(path, fps, width, height) as writer:
        for piece in clip.split(16):
            writer.write(piece.unsqueeze(0))
    return path
