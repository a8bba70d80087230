"""Reconstruction losses for training: L1, SSIM (differentiable) and the posterior's KL term.

All take (B, T, C, H, W) videos in [-1, 1] (or, for the KL, the posterior's mean and logvar) and return
a float32 scalar averaged over every element.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ..distribution import LOGVAR_MAX, LOGVAR_MIN
from ..metrics import SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW


def l1_loss(reconstruction: Tensor, target: Tensor) -> Tensor:
    return (reconstruction.float() - target.float()).abs().mean()


def _window(device: torch.device) -> Tensor:
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float32, device=device) - (SSIM_WINDOW - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    return weights / weights.sum()


def ssim_loss(reconstruction: Tensor, target: Tensor, data_range: float = 2.0, min_value: float = -1.0) -> Tensor:
    """1 - SSIM with `videovae.metrics.ssim`'s definition (11x11 gaussian, valid filtering, values
    shifted to [0, data_range]), per channel and frame, in float32 so that it differentiates; frames
    must be at least 11x11."""
    x = (reconstruction.float() - min_value).flatten(0, 2).unsqueeze(1)  # (B*T*C, 1, H, W)
    y = (target.float() - min_value).flatten(0, 2).unsqueeze(1)
    w = _window(x.device)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (N, 5, H, W)
    blurred = F.conv2d(stack, w.view(1, 1, -1, 1).expand(5, 1, -1, 1), groups=5)
    mu_x, mu_y, e_xx, e_yy, e_xy = F.conv2d(blurred, w.view(1, 1, 1, -1).expand(5, 1, 1, -1), groups=5).unbind(1)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    var_x, var_y, cov = e_xx - mu_x**2, e_yy - mu_y**2, e_xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return 1 - ssim_map.mean()


def kl_loss(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per latent element, averaged."""
    mean, logvar = mean.float(), logvar.float().clamp(LOGVAR_MIN, LOGVAR_MAX)
    return 0.5 * (mean.square() + logvar.exp() - 1 - logvar).mean()
