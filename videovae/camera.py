"""A virtual camera over a still photograph: clips with a real image's statistics and smooth motion.

`random_path(generator)` draws a camera move (a pan of the crop centre, a zoom, a small rotation and an
exposure change, each interpolated linearly over the clip); `render(photo, path, frames, height,
width)` films it. Everything is deterministic given the generator, so a seed names a clip.

    photo: (3, H0, W0) float in [-1, 1]
    clip = render(photo, random_path(torch.Generator().manual_seed(0)), 17, 96, 128)  # (17, 3, 96, 128)

The photo is first resized (with antialiasing) so that the crop maps about one photo pixel to one
output pixel; the per-frame resampling is bilinear. No dependency beyond torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from .errors import OptionError


@dataclass(frozen=True)
class CameraPath:
    """A camera move, each field a (start, end) pair interpolated linearly over the clip.

    centre: crop centre as fractions (x, y) of the photo's width and height, within the range that
        keeps the crop inside the photo (0 and 1 are its two extremes; 0.5 the photo's centre).
    zoom: crop height as a fraction of the largest crop with the clip's aspect that fits the photo.
    angle: rotation in radians. gain: exposure multiplier on [0, 1] intensities.
    """

    centre: tuple[tuple[float, float], tuple[float, float]]
    zoom: tuple[float, float]
    angle: tuple[float, float]
    gain: tuple[float, float]


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def random_path(generator: torch.Generator, *, max_pan: float = 0.35, zoom_range: tuple[float, float] = (0.35, 0.95),
                max_zoom_change: float = 0.2, max_angle: float = 0.12, gain_range: tuple[float, float] = (0.8, 1.15)) -> CameraPath:
    """A random camera move: the crop pans up to `max_pan` of the free range, zooms by up to
    `max_zoom_change` (relative), turns by up to `max_angle` radians and changes exposure in `gain_range`."""
    x0, y0 = _uniform(generator, 0, 1), _uniform(generator, 0, 1)
    x1 = min(1.0, max(0.0, x0 + _uniform(generator, -max_pan, max_pan)))
    y1 = min(1.0, max(0.0, y0 + _uniform(generator, -max_pan, max_pan)))
    z0 = _uniform(generator, *zoom_range)
    z1 = min(1.0, z0 * (1 + _uniform(generator, -max_zoom_change, max_zoom_change)))
    a0 = _uniform(generator, -max_angle, max_angle)
    a1 = a0 + _uniform(generator, -max_angle, max_angle) / 2
    g0, g1 = _uniform(generator, *gain_range), _uniform(generator, *gain_range)
    return CameraPath(((x0, y0), (x1, y1)), (z0, z1), (a0, a1), (g0, g1))


def render(photo: Tensor, path: CameraPath, frames: int, height: int, width: int) -> Tensor:
    """Film `path` over photo: (3, H0, W0) in [-1, 1] -> (frames, 3, height, width) in [-1, 1], float32."""
    if photo.ndim != 3 or photo.shape[0] != 3:
        raise OptionError(f"render takes a (3, H, W) photo; got shape {tuple(photo.shape)}")
    if frames < 1 or height < 1 or width < 1:
        raise OptionError(f"render needs a positive clip size; got {frames} frames of {width}x{height}")
    photo = photo.float()
    H0, W0 = photo.shape[1:]
    # The largest crop of the clip's aspect that fits the photo even when turned by the largest angle.
    turn = max(abs(a) for a in path.angle)
    fit = min(H0 / (height * math.cos(turn) + width * math.sin(turn)),
              W0 / (width * math.cos(turn) + height * math.sin(turn)))
    crop_h = [z * fit * height for z in path.zoom]  # photo pixels per clip height, at start and end
    scale = min(1.0, height / min(crop_h))  # resize so the tightest crop is about 1:1
    if scale < 1.0:
        size = (max(1, round(H0 * scale)), max(1, round(W0 * scale)))
        photo = F.interpolate(photo[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    thetas = []
    for i in range(frames):
        ch = lerp_value(crop_h, i, frames)
        cw = ch * width / height
        angle = lerp_value(path.angle, i, frames)
        cos, sin = math.cos(angle), math.sin(angle)
        # Half extents of the turned crop's bounding box, in original photo pixels.
        ext_x = (cw * abs(cos) + ch * abs(sin)) / 2
        ext_y = (cw * abs(sin) + ch * abs(cos)) / 2
        (x0, y0), (x1, y1) = path.centre
        cx = ext_x + (W0 - 2 * ext_x) * lerp_value((x0, x1), i, frames)
        cy = ext_y + (H0 - 2 * ext_y) * lerp_value((y0, y1), i, frames)
        # Output (u, v) in [-1, 1]^2 -> photo pixel c + R (u cw/2, v ch/2) -> normalised photo coords.
        thetas.append([
            [cos * cw / W0, -sin * ch / W0, 2 * cx / W0 - 1],
            [sin * cw / H0, cos * ch / H0, 2 * cy / H0 - 1],
        ])
    theta = torch.tensor(thetas, dtype=torch.float32)  # (frames, 2, 3)
    grid = F.affine_grid(theta, (frames, 3, height, width), align_corners=False)
    clip = F.grid_sample(photo[None].expand(frames, -1, -1, -1), grid, mode="bilinear",
                         padding_mode="reflection", align_corners=False)  # (frames, 3, height, width)
    gains = torch.tensor([lerp_value(path.gain, i, frames) for i in range(frames)]).view(frames, 1, 1, 1)
    return ((clip + 1) * gains - 1).clamp(-1, 1)


def lerp_value(pair: tuple[float, float], i: int, frames: int) -> float:
    """pair interpolated at frame i of `frames` (the start value for a one-frame clip)."""
    s = i / (frames - 1) if frames > 1 else 0.0
    return pair[0] + (pair[1] - pair[0]) * s


def photo_tensor(image) -> Tensor:
    """An (H, W), (H, W, 3) or (H, W, 4) uint8 or bool image (numpy or torch) -> (3, H, W) float32 in [-1, 1].
    Gray is repeated to RGB; an alpha channel is composited over white."""
    t = torch.as_tensor(image)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8) * 255
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if t.ndim == 2:
        t = t[..., None].expand(-1, -1, 3)
    if t.ndim != 3 or t.shape[2] not in (3, 4):
        raise OptionError(f"a photo is (H, W), (H, W, 3) or (H, W, 4); got shape {tuple(t.shape)}")
    if t.shape[2] == 4:
        alpha = t[..., 3:]
        t = t[..., :3] * alpha + (1 - alpha)
    return (t.permute(2, 0, 1) * 2 - 1).contiguous()
