"""Where training clips come from: the camera generator over photographs, or a folder of videos.

A clip source maps a key (seed, step, index) to one clip, so the data of every step is fixed by the
seed: a resumed run sees exactly the batches an uninterrupted one would have.

    source = PhotoClips(photos("train"))
    batch = make_batch(source, seed=0, step=12, batch=2, shape=(9, 64, 64))  # (2, 9, 3, 64, 64)
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from ..camera import random_path, render
from ..errors import UsageError
from ..video import probe, read_video

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v")


def clip_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The generator that draws clip `index` of `step` (one per clip: order and batch size independent)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + index)


VIEW_SCALE = (2.0, 6.0)  # training clips are crops of views filmed 2x to 6x larger (see PhotoClips)


class PhotoClips:
    """Clips filmed by a random virtual camera (`videovae.camera`) over one of `photos`, flipped at
    random, with random colour: gray photographs get a tint, colour ones a channel permutation and a
    saturation change, and every clip a contrast change. Colour photographs are drawn twice as often
    as gray ones (held-out content is colour: a model that saw mostly gray textures learns washed-out,
    low-contrast output). augment=False films the photographs as they are (held-out evaluation).

    A training clip is a window of a larger view: the camera films (frames, s H, s W) with s drawn
    log-uniformly from `view_scale`, and the clip is a random (H, W) crop of it, the same in every
    frame. A small clip filmed directly would show the whole photograph squeezed into H pixels, with
    its motion shrunk as much: crops of a 96-pixel view carry the detail and the per-frame motion,
    in pixels, of the 96x128 videos the model reconstructs."""

    def __init__(self, photos: dict[str, Tensor], *, augment: bool = True, view_scale: tuple[float, float] = VIEW_SCALE):
        if not photos:
            raise UsageError("PhotoClips needs at least one photograph")
        if not 1.0 <= view_scale[0] <= view_scale[1]:
            raise UsageError(f"PhotoClips: view_scale is (low, high) with 1 <= low <= high; got {view_scale}")
        self.names = sorted(photos)
        self.photos = photos
        self.augment = augment
        self.view_scale = view_scale
        self.gray = {name for name in self.names if _is_gray(photos[name])}
        weights = torch.tensor([1.0 if name in self.gray else 2.0 for name in self.names])
        self.weights = weights / weights.sum()

    def clip(self, generator: torch.Generator, frames: int, height: int, width: int) -> Tensor:
        """-> (frames, 3, height, width) in [-1, 1]."""
        name = self.names[int(torch.multinomial(self.weights, 1, generator=generator))]
        photo = self.photos[name]
        if bool(torch.rand((), generator=generator) < 0.5):
            photo = photo.flip(-1)
        if not self.augment:
            return render(photo, random_path(generator), frames, height, width)
        clip = self._window(photo, generator, frames, height, width)
        clip = (clip + 1) / 2  # [0, 1]
        if name in self.gray:
            tint = 0.55 + 0.45 * torch.rand(3, generator=generator)  # per-channel gain
            clip = clip * (tint / tint.max()).view(1, 3, 1, 1)
        else:
            clip = clip[:, torch.randperm(3, generator=generator)]
            saturation = 0.6 + 0.8 * float(torch.rand((), generator=generator))
            luma = clip.mean(dim=1, keepdim=True)
            clip = luma + saturation * (clip - luma)
        contrast = 0.8 + 0.7 * float(torch.rand((), generator=generator))
        mean = clip.mean()
        clip = mean + contrast * (clip - mean)
        return (clip * 2 - 1).clamp(-1, 1)

    def _window(self, photo: Tensor, generator: torch.Generator, frames: int, height: int, width: int) -> Tensor:
        """A random (height, width) crop of a view filmed s times larger: (frames, 3, height, width)."""
        low, high = (math.log(v) for v in self.view_scale)
        scale = math.exp(low + (high - low) * float(torch.rand((), generator=generator)))
        view_h, view_w = max(height, round(height * scale)), max(width, round(width * scale))
        view = render(photo, random_path(generator), frames, view_h, view_w)  # (frames, 3, view_h, view_w)
        top = int(torch.randint(view_h - height + 1, (), generator=generator))
        left = int(torch.randint(view_w - width + 1, (), generator=generator))
        return view[:, :, top : top + height, left : left + width]


def _is_gray(photo: Tensor) -> bool:
    return bool((photo[0] == photo[1]).all() and (photo[1] == photo[2]).all())


class VideoFolderClips:
    """Random windows of the videos in a folder (recursively): a random start frame, a random
    scale and crop to the clip size. Videos shorter than the clip are skipped."""

    def __init__(self, folder: str | os.PathLike, min_frames: int):
        root = Path(folder)
        if not root.is_dir():
            raise UsageError(f"--data {str(folder)!r} is not a folder of videos; give a folder, or --data photos")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        self.videos = []
        for path in files:
            info = probe(path)
            if info.frame_count is None or info.frame_count >= min_frames:
                self.videos.append((path, info.frame_count))
        if not self.videos:
            raise UsageError(f"{str(folder)!r} holds no video of at least {min_frames} frames ({', '.join(VIDEO_SUFFIXES)})")

    def clip(self, generator: torch.Generator, frames: int, height: int, width: int) -> Tensor:
        path, count = self.videos[int(torch.randint(len(self.videos), (), generator=generator))]
        start = int(torch.randint(max(1, (count or frames) - frames + 1), (), generator=generator))
        video, _ = read_video(path, start_frame=start, max_frames=frames)  # (1, t, 3, H0, W0)
        video = video[0]
        if video.shape[0] < frames:  # the header over-counted: repeat the last frame
            video = torch.cat([video, video[-1:].expand(frames - video.shape[0], -1, -1, -1)])
        H0, W0 = video.shape[-2:]
        scale = max(height / H0, width / W0) * (1 + 0.5 * float(torch.rand((), generator=generator)))
        size = (max(height, round(H0 * scale)), max(width, round(W0 * scale)))
        video = F.interpolate(video, size=size, mode="bilinear", antialias=True, align_corners=False)
        top = int(torch.randint(size[0] - height + 1, (), generator=generator))
        left = int(torch.randint(size[1] - width + 1, (), generator=generator))
        return video[:, :, top : top + height, left : left + width].clamp(-1, 1)


def make_batch(source, *, seed: int, step: int, batch: int, shape: tuple[int, int, int]) -> Tensor:
    """The batch of `step`: (batch, T, 3, H, W) in [-1, 1] for shape (T, H, W)."""
    frames, height, width = shape
    return torch.stack([source.clip(clip_generator(seed, step, i), frames, height, width) for i in range(batch)])
