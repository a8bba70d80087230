"""videovae.metrics: PSNR / SSIM against hand computations and an independent numpy SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from videovae.errors import VideoDTypeError, VideoLayoutError
from videovae.metrics import RunningMetrics, mean_psnr, mean_ssim, psnr, ssim


def smooth_frames(frames: int, height: int = 32, width: int = 40, seed: int = 0) -> torch.Tensor:
    """(frames, 3, height, width) in [-1, 1]: smooth structure plus mild texture, like video."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 3, height).view(1, 1, height, 1)
    x = torch.linspace(0, 4, width).view(1, 1, 1, width)
    phase = torch.rand(frames, 3, 1, 1, generator=generator) * 6
    base = 0.6 * torch.sin(x + phase) * torch.cos(y - phase)  # (frames, 3, H, W)
    return (base + 0.2 * torch.rand(frames, 3, height, width, generator=generator) - 0.1).clamp(-1, 1)


def noisy(frames: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (frames + sigma * torch.randn(frames.shape, generator=generator)).clamp(-1, 1)


# ---------------------------------------------------------------------------------------------
# PSNR


def test_psnr_of_identical_frames_is_inf_with_the_leading_shape():
    video = smooth_frames(2 * 5).view(2, 5, 3, 32, 40)  # (B, T, C, H, W)
    values = psnr(video, video.clone())
    assert values.shape == (2, 5) and values.dtype == torch.float64
    assert torch.isinf(values).all() and (values > 0).all()
    assert psnr(video[0], video[0]).shape == (5,)  # (T, C, H, W) -> (T,)


def test_psnr_matches_a_hand_computation():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.zeros(2, 3, 4, 4)
    b[0] += 0.1  # frame 0: MSE = 0.01 -> 10 log10(4 / 0.01) = 26.0206 dB
    b[1, 0, 0, 0] = 1.0  # frame 1: one value off by 1 of 48 -> MSE = 1/48 -> 10 log10(192) dB
    values = psnr(a, b)
    assert values[0].item() == pytest.approx(10 * math.log10(400), abs=1e-5)  # float32 0.1
    assert values[1].item() == pytest.approx(10 * math.log10(192), abs=1e-12)
    assert psnr(a, b, data_range=1.0)[1].item() == pytest.approx(10 * math.log10(48), abs=1e-12)
    assert mean_psnr(a, b) == pytest.approx(values.mean().item())


# ---------------------------------------------------------------------------------------------
# SSIM


def gaussian_window_2d() -> np.ndarray:
    """(11, 11) gaussian, sigma 1.5, summing to 1, built as a full 2D kernel (not separably)."""
    offsets = np.arange(11) - 5.0
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    window = np.exp(-(yy**2 + xx**2) / (2 * 1.5**2))
    return window / window.sum()


def reference_ssim(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """SSIM of (C, H, W) images in [0, data_range], written independently of videovae: explicit
    11x11 windows (sliding_window_view), population statistics, mean over the valid map and then
    over channels (Wang et al. 2004)."""
    window = gaussian_window_2d()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    per_channel = []
    for xc, yc in zip(x.astype(np.float64), y.astype(np.float64), strict=True):
        px = np.lib.stride_tricks.sliding_window_view(xc, (11, 11))  # (H-10, W-10, 11, 11)
        py = np.lib.stride_tricks.sliding_window_view(yc, (11, 11))
        mu_x = (px * window).sum(axis=(-2, -1))
        mu_y = (py * window).sum(axis=(-2, -1))
        var_x = ((px - mu_x[..., None, None]) ** 2 * window).sum(axis=(-2, -1))
        var_y = ((py - mu_y[..., None, None]) ** 2 * window).sum(axis=(-2, -1))
        cov = ((px - mu_x[..., None, None]) * (py - mu_y[..., None, None]) * window).sum(axis=(-2, -1))
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
            (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
        )
        per_channel.append(ssim_map.mean())
    return float(np.mean(per_channel))


def test_ssim_of_identical_frames_is_one():
    video = smooth_frames(4)
    values = ssim(video, video.clone())
    assert values.shape == (4,)
    torch.testing.assert_close(values, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-12)


def test_ssim_drops_as_noise_grows():
    video = smooth_frames(3)
    scores = [mean_ssim(video, noisy(video, sigma)) for sigma in (0.01, 0.05, 0.2, 0.5)]
    assert all(later < earlier for earlier, later in zip(scores, scores[1:], strict=False)), scores
    assert scores[0] > 0.95 and scores[-1] < 0.5


def test_ssim_matches_an_independent_numpy_computation():
    video = smooth_frames(3, height=23, width=31)  # odd sizes
    other = noisy(video, 0.1)
    values = ssim(video, other)
    for t in range(3):
        # frames in [-1, 1] are scored as images in [0, 2] (shifted by -min_value = 1)
        expected = reference_ssim(video[t].double().numpy() + 1, other[t].double().numpy() + 1, 2.0)
        assert values[t].item() == pytest.approx(expected, abs=1e-10)


def test_ssim_equals_ssim_of_the_8bit_images():
    video = smooth_frames(2)
    other = noisy(video, 0.05)
    as_8bit = lambda frames: (frames.double() + 1) * 127.5  # noqa: E731  [-1, 1] -> [0, 255]
    torch.testing.assert_close(
        ssim(video, other),
        ssim(as_8bit(video), as_8bit(other), data_range=255.0, min_value=0.0),
        rtol=0, atol=1e-12,
    )


def test_ssim_rejects_frames_smaller_than_its_window():
    with pytest.raises(VideoLayoutError, match="11x11"):
        ssim(torch.zeros(2, 3, 10, 32), torch.zeros(2, 3, 10, 32))


# ---------------------------------------------------------------------------------------------
# validation and the streaming accumulator


def test_metrics_reject_mismatched_or_wrong_inputs():
    frames = torch.zeros(2, 3, 16, 16)
    with pytest.raises(VideoLayoutError, match="one shape"):
        psnr(frames, torch.zeros(3, 3, 16, 16))
    with pytest.raises(VideoLayoutError, match=r"\(\.\.\., C, H, W\)"):
        ssim(torch.zeros(16, 16), torch.zeros(16, 16))
    with pytest.raises(VideoDTypeError):
        psnr(frames.to(torch.uint8), frames.to(torch.uint8))


def test_running_metrics_over_chunks_equal_the_whole_video():
    reference = smooth_frames(10).unsqueeze(0)  # (1, 10, 3, H, W)
    reconstruction = noisy(reference, 0.05)
    reconstruction[0, 3] = reference[0, 3]  # one exact frame: per-frame PSNR inf

    running = RunningMetrics()
    for start in range(0, 10, 4):  # chunks of 4, 4, 2 frames
        running.update(reference[:, start : start + 4], reconstruction[:, start : start + 4])

    assert running.frames == 10
    expected_psnr = psnr(reference, reconstruction)[0]  # (T,)
    expected_ssim = ssim(reference, reconstruction)[0]
    assert running.psnr_values == expected_psnr.tolist()
    assert running.ssim_values == pytest.approx(expected_ssim.tolist(), abs=1e-12)
    assert running.mean_psnr == math.inf
    assert running.mean_ssim == pytest.approx(expected_ssim.mean().item(), abs=1e-12)

    mse = ((reference.double() - reconstruction.double()) ** 2).mean()
    assert running.video_psnr == pytest.approx(10 * math.log10(4 / mse.item()), abs=1e-9)
    summary = running.summary()
    assert summary["frames"] == 10 and summary["min_psnr"] == min(running.psnr_values)


def test_running_metrics_start_empty():
    running = RunningMetrics(compute_ssim=False)
    assert running.frames == 0 and math.isnan(running.mean_psnr) and math.isnan(running.video_psnr)
    running.update(torch.zeros(2, 3, 8, 8), torch.full((2, 3, 8, 8), 0.5))  # 8x8: no SSIM needed
    assert running.psnr_values == pytest.approx([10 * math.log10(16)] * 2)
    assert running.ssim_values == [] and math.isnan(running.mean_ssim)
