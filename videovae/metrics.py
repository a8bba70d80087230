"""Per-frame PSNR and SSIM for video tensors, in plain torch.

Inputs are (..., C, H, W) float tensors with values in [-1, 1] (any leading dims: (T, C, H, W),
(B, T, C, H, W), ...). Results are per frame, shaped like the leading dims: (T,) for (T, C, H, W),
(B, T) for (B, T, C, H, W). Values are float64, computed one frame at a time so a chunk of 1080p
frames needs no float64 copy of the whole chunk.

    ref, rec: (1, T, 3, H, W) in [-1, 1]
    psnr(ref, rec)   # (1, T) dB, inf where the frames are identical
    ssim(ref, rec)   # (1, T) in [-1, 1], 1 where identical

For long videos feed chunk pairs to `RunningMetrics`, which keeps only the per-frame numbers.

SSIM is Wang et al. (2004) as most tools compute it: 11x11 gaussian window with sigma 1.5, K1 = 0.01,
K2 = 0.03, "valid" filtering (no padding: the map is (H - 10, W - 10)), population (not sample)
covariances, computed on each RGB channel and averaged over the map and then the channels. SSIM's
luminance term is not shift-invariant, so frames are shifted by `-min_value` to [0, data_range]
first; with the defaults that equals SSIM on the frames as 8-bit images ([0, 255], L = 255).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import OptionError, UsageError, VideoDTypeError, VideoLayoutError

__all__ = ["RunningMetrics", "mean_psnr", "mean_ssim", "psnr", "ssim"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    for label, x in (("a", a), ("b", b)):
        if not isinstance(x, torch.Tensor):
            raise UsageError(f"{name}() takes torch tensors, got {type(x).__name__} for {label}")
        if x.ndim < 3:
            raise VideoLayoutError(
                f"{name}() takes frames shaped (..., C, H, W) e.g. (B, T, C, H, W) in [-1, 1]; "
                f"{label} has shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise VideoDTypeError(
                f"{name}() takes float frames in [-1, 1], {label} is {x.dtype}; for uint8 frames "
                "pass x / 127.5 - 1"
            )
    if a.shape != b.shape:
        raise VideoLayoutError(
            f"{name}() compares frames of one shape; got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.device != b.device:
        raise OptionError(f"{name}() got tensors on {a.device} and {b.device}; move both to one device")


def _frames(x: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) -> (N, C, H, W), N = product of the leading dims (a view when possible)."""
    return x.reshape(-1, *x.shape[-3:])


def _mse_per_frame(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) pair -> (N,) float64 mean squared error per frame."""
    frames_a, frames_b = _frames(a), _frames(b)  # (N, C, H, W)
    out = torch.empty(frames_a.shape[0], dtype=torch.float64, device=a.device)
    for i in range(frames_a.shape[0]):
        diff = frames_a[i].to(torch.float64) - frames_b[i].to(torch.float64)  # (C, H, W)
        out[i] = diff.square().mean()
    return out


def _psnr_from_mse(mse: torch.Tensor | float, data_range: float) -> torch.Tensor:
    """PSNR in dB; inf where mse == 0."""
    mse = torch.as_tensor(mse, dtype=torch.float64)
    return 10.0 * torch.log10(data_range**2 / mse)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-frame PSNR in dB of (..., C, H, W) frames in [-1, 1] (`data_range` = max - min = 2):
    10 log10(data_range^2 / MSE), MSE over C, H, W. Returns float64 shaped like the leading dims
    ((T,) for (T, C, H, W)); inf for identical frames."""
    _check_pair(a, b, "psnr")
    return _psnr_from_mse(_mse_per_frame(a, b), data_range).reshape(a.shape[:-3])


def _gaussian_window(device: torch.device) -> torch.Tensor:
    """(11,) float64 gaussian, sigma 1.5, summing to 1."""
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - (SSIM_WINDOW - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    return weights / weights.sum()


def _blur_valid(maps: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """(M, H, W) -> (M, H - 10, W - 10): separable gaussian filter, no padding."""
    size = window.numel()
    x = maps.unsqueeze(1)  # (M, 1, H, W): each map its own image
    x = F.conv2d(x, window.view(1, 1, size, 1))  # (M, 1, H - 10, W)
    x = F.conv2d(x, window.view(1, 1, 1, size))  # (M, 1, H - 10, W - 10)
    return x.squeeze(1)


def _ssim_frame(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, c1: float, c2: float) -> torch.Tensor:
    """(C, H, W) float64 pair in [0, L] -> scalar SSIM: mean over the map, then over channels."""
    channels = x.shape[0]
    moments = _blur_valid(torch.cat([x, y, x * x, y * y, x * y]), window)  # (5C, H', W')
    mu_x, mu_y, e_xx, e_yy, e_xy = moments.split(channels)  # each (C, H', W')
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    ssim_map = numerator / denominator  # (C, H', W')
    return ssim_map.mean(dim=(1, 2)).mean()


def ssim(
    a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, min_value: float = -1.0
) -> torch.Tensor:
    """Per-frame SSIM of (..., C, H, W) frames in [min_value, min_value + data_range] (default
    [-1, 1]); see the module docstring for the exact definition. Returns float64 shaped like the
    leading dims ((T,) for (T, C, H, W)); 1 for identical frames. Frames must be at least 11 x 11."""
    _check_pair(a, b, "ssim")
    height, width = a.shape[-2:]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise VideoLayoutError(
            f"ssim() needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} (its gaussian window); "
            f"got {height}x{width}"
        )
    window = _gaussian_window(a.device)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    frames_a, frames_b = _frames(a), _frames(b)  # (N, C, H, W)
    out = torch.empty(frames_a.shape[0], dtype=torch.float64, device=a.device)
    for i in range(frames_a.shape[0]):
        x = frames_a[i].to(torch.float64) - min_value  # (C, H, W) in [0, data_range]
        y = frames_b[i].to(torch.float64) - min_value
        out[i] = _ssim_frame(x, y, window, c1, c2)
    return out.reshape(a.shape[:-3])


def mean_psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    """Mean over frames of the per-frame PSNR (inf if any frame is identical)."""
    return float(psnr(a, b, data_range).mean())


def mean_ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, min_value: float = -1.0) -> float:
    """Mean over frames of the per-frame SSIM."""
    return float(ssim(a, b, data_range, min_value).mean())


class RunningMetrics:
    """Per-frame PSNR and SSIM accumulated over chunk pairs, so a long video is scored without
    holding it: only the per-frame numbers are kept.

        metrics = RunningMetrics()
        for ref, rec in zip(reference_chunks, reconstructed_chunks):   # (1, t, 3, H, W) each
            metrics.update(ref, rec)
        metrics.mean_psnr, metrics.mean_ssim, metrics.psnr_values   # per-frame lists, in order

    Frames from leading dims are appended in row-major order ((B, T) -> b0t0, b0t1, ..., b1t0, ...).
    """

    def __init__(self, data_range: float = 2.0, min_value: float = -1.0, compute_ssim: bool = True) -> None:
        self.data_range = data_range
        self.min_value = min_value
        self.compute_ssim = compute_ssim
        self.psnr_values: list[float] = []
        self.ssim_values: list[float] = []
        self._squared_error_sum = 0.0  # sum over frames of per-frame MSE

    def update(self, reference: torch.Tensor, reconstruction: torch.Tensor) -> None:
        """Score one chunk pair of (..., C, H, W) frames in [-1, 1]."""
        _check_pair(reference, reconstruction, "RunningMetrics.update")
        mse = _mse_per_frame(reference, reconstruction)  # (N,)
        self._squared_error_sum += float(mse.sum())
        self.psnr_values.extend(_psnr_from_mse(mse, self.data_range).tolist())
        if self.compute_ssim:
            values = ssim(reference, reconstruction, self.data_range, self.min_value)
            self.ssim_values.extend(values.flatten().tolist())

    @property
    def frames(self) -> int:
        return len(self.psnr_values)

    @property
    def mean_psnr(self) -> float:
        """Mean of the per-frame PSNRs (inf if any frame is identical; nan before any update)."""
        return math.fsum(self.psnr_values) / self.frames if self.frames else math.nan

    @property
    def video_psnr(self) -> float:
        """PSNR of the mean squared error over all frames: finite unless every frame is identical,
        and weighted toward the worst frames (the mean of per-frame PSNRs is not)."""
        if not self.frames:
            return math.nan
        return float(_psnr_from_mse(self._squared_error_sum / self.frames, self.data_range))

    @property
    def mean_ssim(self) -> float:
        """Mean of the per-frame SSIMs (nan before any update or with compute_ssim=False)."""
        return math.fsum(self.ssim_values) / len(self.ssim_values) if self.ssim_values else math.nan

    def summary(self) -> dict[str, float | int]:
        """{"frames", "mean_psnr", "video_psnr", "mean_ssim", "min_psnr", "min_ssim"} as plain
        numbers (JSON-ready except for inf / nan)."""
        return {
            "frames": self.frames,
            "mean_psnr": self.mean_psnr,
            "video_psnr": self.video_psnr,
            "mean_ssim": self.mean_ssim,
            "min_psnr": min(self.psnr_values, default=math.nan),
            "min_ssim": min(self.ssim_values, default=math.nan),
        }
