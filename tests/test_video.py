"""videovae.video and videovae.atomic_write: probing, chunked reading, atomic writing, error messages.

Test videos are synthesised here (a scrolling gradient with a moving square) and encoded with PyAV
into io.BytesIO, as PyAV's own tests do, then saved to a tmp folder.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from videovae.errors import (
    OutputPathError,
    VideoDTypeError,
    VideoFileError,
    VideoFileNotFoundError,
    VideoLayoutError,
)
from videovae.atomic_write import atomic_output
from videovae.metrics import psnr
from videovae.video import VideoInfo, probe, read_chunks, read_video
from videovae.video_write import VideoWriter

T, H, W = 40, 72, 100  # frames, height, width of the test video
FPS = 30


def moving_frames(frames: int = T, height: int = H, width: int = W) -> np.ndarray:
    """(frames, height, width, 3) uint8: smooth colour waves scrolling right and down, and a grey
    square moving down-right, so every frame differs from its neighbours. Smooth colour (sharp edges
    in luma only) keeps 4:2:0 chroma subsampling from dominating the lossy-codec error."""
    x = np.arange(width)[None, :] / width  # (1, W)
    y = np.arange(height)[:, None] / height  # (H, 1)
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        phase = 2 * np.pi * t / frames
        video[t, :, :, 0] = 128 + 100 * np.sin(2 * np.pi * x + phase) * np.ones_like(y)
        video[t, :, :, 1] = 128 + 100 * np.sin(2 * np.pi * y + 2 * phase) * np.ones_like(x)
        video[t, :, :, 2] = 128 + 60 * np.cos(2 * np.pi * (x + y) - phase)
        top, left = (2 * t) % (height - 12), (3 * t) % (width - 12)
        video[t, top : top + 12, left : left + 12] = 255 if t % 2 else 0
    return video


def to_tensor(video: np.ndarray) -> torch.Tensor:
    """(t, H, W, 3) uint8 -> (t, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(video).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) in [-1, 1] -> same shape uint8."""
    return ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def encode_with_av(
    video: np.ndarray, muxer: str, codec: str, pix_fmt: str, rotation: int = 0,
    options: dict[str, str] | None = None,
) -> bytes:
    """(t, H, W, 3) uint8 -> the bytes of a video encoded by PyAV directly (not by videovae)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=muxer) as container:
        stream = container.add_stream(codec, rate=FPS, options=options or {})
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], pix_fmt
        stream.time_base = Fraction(1, FPS)
        if rotation:
            stream.set_display_rotation(rotation)
        for index, image in enumerate(video):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return moving_frames()


@pytest.fixture(scope="module")
def videos(tmp_path_factory, source) -> dict[str, Path]:
    """{"mp4": H.264 in MP4 (lossy), "mkv": FFV1 bgr0 in MKV (lossless)}."""
    folder = tmp_path_factory.mktemp("videos")
    paths = {"mp4": folder / "moving.mp4", "mkv": folder / "moving.mkv"}
    paths["mp4"].write_bytes(encode_with_av(source, "mp4", "libx264", "yuv420p", options={"crf": "18"}))
    paths["mkv"].write_bytes(encode_with_av(source, "matroska", "ffv1", "bgr0"))
    return paths


# ---------------------------------------------------------------------------------------------
# probe


def test_probe_reports_the_stream_facts(videos):
    info = probe(videos["mp4"])
    assert isinstance(info, VideoInfo)
    assert info.fps == Fraction(FPS) and info.fps_float == 30.0
    assert info.frame_count == T
    assert (info.width, info.height) == (W, H)
    assert info.rotation == 0
    assert info.pix_fmt == "yuv420p"
    assert info.codec == "h264"
    assert "mp4" in info.container
    assert info.duration == pytest.approx(T / FPS, abs=1e-3)
    with pytest.raises(AttributeError):
        info.width = 1  # frozen


def test_probe_frame_count_is_none_when_the_container_does_not_store_it(videos):
    info = probe(videos["mkv"])
    assert info.frame_count is None  # Matroska stores a duration, not a frame count
    assert info.codec == "ffv1"
    assert info.duration == pytest.approx(T / FPS, abs=1e-2)


def test_probe_reads_the_display_rotation(tmp_path, source):
    path = tmp_path / "rotated.mp4"
    path.write_bytes(encode_with_av(source[:3], "mp4", "libx264", "yuv420p", rotation=90))
    assert probe(path).rotation == 90


def test_probe_reads_color_tags_written_by_videowriter(tmp_path, source):
    path = tmp_path / "tagged.mp4"
    with VideoWriter(path, FPS, W, H) as writer:
        writer.write(to_tensor(source[:3]))
    info = probe(path)
    assert (info.color_range, info.color_space, info.color_primaries, info.color_trc) == (
        "tv", "bt709", "bt709", "bt709",
    )


# ---------------------------------------------------------------------------------------------
# reading


def test_read_chunks_yields_every_frame_in_order(videos, source):
    chunks = list(read_chunks(videos["mkv"], 17))
    assert [c.shape for c in chunks] == [(1, 17, 3, H, W), (1, 17, 3, H, W), (1, 6, 3, H, W)]
    assert all(c.dtype == torch.float32 for c in chunks)
    video = torch.cat(chunks, dim=1)[0]  # (T, 3, H, W)
    assert video.min() >= -1.0 and video.max() <= 1.0
    assert video.min() == -1.0 and video.max() == 1.0  # the source spans 0..255
    assert torch.equal(to_uint8(video), to_uint8(to_tensor(source)))  # lossless file: exact


def test_read_chunks_start_frame_and_max_frames(videos, source):
    expected = to_uint8(to_tensor(source))
    chunks = list(read_chunks(videos["mkv"], 5, start_frame=5, max_frames=12))
    assert [c.shape[1] for c in chunks] == [5, 5, 2]
    assert torch.equal(to_uint8(torch.cat(chunks, dim=1)[0]), expected[5:17])

    tail = torch.cat(list(read_chunks(videos["mkv"], 16, start_frame=30)), dim=1)[0]
    assert torch.equal(to_uint8(tail), expected[30:])
    past_end = torch.cat(list(read_chunks(videos["mkv"], 16, start_frame=35, max_frames=100)), dim=1)
    assert past_end.shape[1] == 5


def test_read_chunks_start_frame_past_the_end_says_how_many_frames_there_are(videos):
    with pytest.raises(ValueError, match="40 frames"):
        list(read_chunks(videos["mkv"], 8, start_frame=40))


def test_read_chunks_is_lazy_and_checks_arguments_at_the_call(videos):
    chunks = read_chunks(videos["mp4"], 4, dtype=torch.bfloat16)
    first = next(chunks)
    assert first.shape == (1, 4, 3, H, W) and first.dtype == torch.bfloat16
    chunks.close()  # closes the container early
    with pytest.raises(ValueError, match="chunk_frames"):
        read_chunks(videos["mp4"], 0)
    with pytest.raises(ValueError, match="max_frames"):
        read_chunks(videos["mp4"], 4, max_frames=0)
    with pytest.raises(VideoDTypeError):
        read_chunks(videos["mp4"], 4, dtype=torch.uint8)


def test_read_video_returns_the_clip_and_its_info(videos):
    video, info = read_video(videos["mp4"], max_frames=10)
    assert video.shape == (1, 10, 3, H, W)
    assert info.frame_count == T


# ---------------------------------------------------------------------------------------------
# writing


@pytest.mark.parametrize("name", ["lossless.mkv", "lossless.mp4"])
def test_lossless_writer_round_trips_uint8_frames_exactly(tmp_path, source, name):
    frames = to_tensor(source)  # (T, 3, H, W)
    path = tmp_path / name
    with VideoWriter(path, FPS, W, H, lossless=True) as writer:
        writer.write(frames[:17].unsqueeze(0))  # (1, t, 3, H, W)
        writer.write(frames[17:])  # (t, 3, H, W)
    video, info = read_video(path)
    assert torch.equal(to_uint8(video[0]), to_uint8(frames))
    assert info.fps == FPS and (info.width, info.height) == (W, H)


@pytest.mark.parametrize("fps", [Fraction(FPS), Fraction(30000, 1001)])
def test_lossy_writer_keeps_fps_frame_count_and_quality(tmp_path, source, fps):
    frames = to_tensor(source)
    path = tmp_path / "lossy.mp4"
    with VideoWriter(path, fps, W, H) as writer:
        writer.write(frames)
        assert writer.encoder.codec in ("libx264", "mpeg4")
    video, info = read_video(path)
    assert info.fps == fps and info.frame_count == T
    assert video.shape == (1, T, 3, H, W)
    assert psnr(video[0], frames).min() > 30.0


@pytest.mark.parametrize("name, codec", [("v.avi", "mpeg4"), ("v.mkv", "mpeg4"), ("v.webm", None)])
def test_other_encoders_and_containers_keep_quality_and_colour(tmp_path, source, name, codec):
    """mpeg4 is the fallback when the wheel lacks libx264; .avi cannot store colour tags, so the
    writer must use the coefficients a reader assumes for untagged video (a mismatch costs ~8 dB)."""
    frames = to_tensor(source)
    path = tmp_path / name
    with VideoWriter(path, FPS, W, H, codec=codec) as writer:
        writer.write(frames)
    video, info = read_video(path)
    assert video.shape == (1, T, 3, H, W) and info.fps == FPS
    assert psnr(video[0], frames).min() > 30.0


def test_float_fps_snaps_to_the_ntsc_fraction(tmp_path, source):
    path = tmp_path / "ntsc.mp4"
    with VideoWriter(path, 30000 / 1001, W, H) as writer:
        writer.write(to_tensor(source[:4]))
    assert probe(path).fps == Fraction(30000, 1001)


@pytest.mark.parametrize("name, lossless", [("odd.mp4", False), ("odd.mkv", True)])
def test_odd_sizes_round_trip_their_size(tmp_path, name, lossless):
    width, height = 72, 101
    frames = to_tensor(moving_frames(6, height, width))
    path = tmp_path / name
    with VideoWriter(path, FPS, width, height, lossless=lossless) as writer:
        writer.write(frames)
    info = probe(path)
    assert (info.width, info.height) == (width, height)
    video, _ = read_video(path)
    assert video.shape == (1, 6, 3, height, width)
    if lossless:
        assert torch.equal(to_uint8(video[0]), to_uint8(frames))
    else:
        assert psnr(video[0], frames).min() > 30.0


def test_writer_rotation_is_stored_as_display_matrix(tmp_path, source):
    path = tmp_path / "turned.mp4"
    with VideoWriter(path, FPS, W, H, rotation=90) as writer:
        writer.write(to_tensor(source[:2]))
    assert probe(path).rotation == 90


def test_writer_clamps_out_of_range_values(tmp_path):
    frames = torch.full((2, 3, 16, 16), 3.0)
    frames[1] = -7.0
    path = tmp_path / "clamped.mkv"
    with VideoWriter(path, FPS, 16, 16, lossless=True) as writer:
        writer.write(frames)
    video, _ = read_video(path)
    assert torch.equal(video[0, 0], torch.ones(3, 16, 16))
    assert torch.equal(video[0, 1], -torch.ones(3, 16, 16))


def test_writer_rejects_wrong_layouts_and_dtypes(tmp_path):
    with VideoWriter(tmp_path / "v.mp4", FPS, W, H) as writer:
        with pytest.raises(VideoLayoutError, match=r"\(t, 3, 72, 100\)"):
            writer.write(torch.zeros(4, H, W, 3))  # channels last
        with pytest.raises(VideoLayoutError, match="batch size 2"):
            writer.write(torch.zeros(2, 4, 3, H, W))
        with pytest.raises(VideoDTypeError):
            writer.write(torch.zeros(4, 3, H, W, dtype=torch.uint8))
        writer.write(torch.zeros(1, 3, H, W))
    with pytest.raises(ValueError, match="extension"):
        VideoWriter(tmp_path / "v.xyz", FPS, W, H)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


# ---------------------------------------------------------------------------------------------
# atomic output


def test_exception_while_writing_leaves_nothing_behind(tmp_path, source):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path, FPS, W, H) as writer:
            writer.write(to_tensor(source[:5]))
            assert len(list(tmp_path.iterdir())) == 1  # the hidden temporary file
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path, source):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with VideoWriter(path, FPS, W, H) as writer:
            writer.write(to_tensor(source[:2]))
            raise RuntimeError("boom")
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_a_writer_dropped_without_close_leaves_nothing(tmp_path, source):
    writer = VideoWriter(tmp_path / "dropped.mp4", FPS, W, H)
    writer.write(to_tensor(source[:2]))
    del writer
    assert list(tmp_path.iterdir()) == []


def test_closing_without_frames_raises_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        with VideoWriter(tmp_path / "empty.mp4", FPS, W, H):
            pass
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folder_fails_before_any_work(tmp_path):
    folder = tmp_path / "not_there"
    with pytest.raises(OutputPathError, match="does not exist") as caught:
        VideoWriter(folder / "out.mp4", FPS, W, H)
    assert str(folder) in str(caught.value)
    assert isinstance(caught.value, OSError)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder_is_named(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    try:
        with pytest.raises(OutputPathError, match="not writable"):
            VideoWriter(folder / "out.mp4", FPS, W, H)
    finally:
        folder.chmod(0o700)


def test_atomic_output_renames_on_success_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "latents.safetensors"
    with atomic_output(target) as temp:
        assert temp.parent == tmp_path and temp.name.startswith(".")
        assert temp.suffix == ".safetensors"
        temp.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data"
    assert [p.name for p in tmp_path.iterdir()] == ["latents.safetensors"]

    with pytest.raises(KeyError):
        with atomic_output(target, suffix=".tmp") as temp:
            assert temp.suffix == ".tmp"
            temp.write_bytes(b"half")
            raise KeyError("interrupted")
    assert target.read_bytes() == b"data"
    assert [p.name for p in tmp_path.iterdir()] == ["latents.safetensors"]

    with pytest.raises(OutputPathError, match="folder"):
        with atomic_output(tmp_path):
            pass


# ---------------------------------------------------------------------------------------------
# unreadable inputs: one-line videovae errors naming the path


def assert_one_line_naming(error: BaseException, path: Path) -> None:
    message = str(error)
    assert "\n" not in message and str(path) in message


def test_missing_file(tmp_path):
    path = tmp_path / "missing.mp4"
    for read in (probe, lambda p: read_chunks(p, 8), read_video):
        with pytest.raises(VideoFileNotFoundError, match="not found") as caught:
            read(path)
        assert isinstance(caught.value, FileNotFoundError)
        assert_one_line_naming(caught.value, path)


def test_text_file_is_not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("these are notes, not a video\n" * 20)
    for read in (probe, lambda p: list(read_chunks(p, 8))):
        with pytest.raises(VideoFileError, match="not a video") as caught:
            read(path)
        assert_one_line_naming(caught.value, path)


def test_truncated_mp4_is_reported_as_truncated(tmp_path, videos):
    data = videos["mp4"].read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * 0.3)])
    for read in (probe, lambda p: list(read_chunks(p, 8))):
        with pytest.raises(VideoFileError, match="truncated") as caught:
            read(path)
        assert isinstance(caught.value, OSError)
        assert_one_line_naming(caught.value, path)


def test_truncated_mkv_warns_about_missing_frames(tmp_path, videos):
    data = videos["mkv"].read_bytes()
    path = tmp_path / "cut.mkv"
    path.write_bytes(data[: int(len(data) * 0.5)])
    with pytest.warns(UserWarning, match="truncated"):
        frames = sum(chunk.shape[1] for chunk in read_chunks(path, 8))
    assert 0 < frames < T


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(VideoFileError, match="empty"):
        probe(path)
