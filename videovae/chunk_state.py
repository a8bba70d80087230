"""The state that crosses chunk boundaries, each in one explicit object with `push` and `flush`.

    Rechunker(17)            regroups pieces of any length into chunks of exactly 17 (frames or latents);
    WindowSplitter(16, 4)    regroups latent pieces into overlapping decode windows (start, window);
    OverlapBlender()         cross-fades decoded windows into finished frames;
    SeamBlender()            applies the Step-Video seam blend across decoded chunks, holding one frame.

Each `push` returns what is final now (possibly nothing) and `flush` what remains at the end of the
stream, after which the object is empty and can be reused. `videovae.engine` composes them; nothing
here knows about models. All tensors are (B, T, ...) with time on dim 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from .errors import OptionError


def _cat(pieces: list[Tensor]) -> Tensor:
    return torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]


class Rechunker:
    """Regroups a stream of (B, t, ...) pieces into pieces of exactly `size` along time (the last, at
    flush, may be shorter); size None gathers the whole stream into one piece. Holds at most one
    output piece."""

    def __init__(self, size: int | None):
        self.size = size
        self._held: list[Tensor] = []
        self._count = 0

    @property
    def held_frames(self) -> int:
        return self._count

    def push(self, piece: Tensor) -> list[Tensor]:
        done = []
        while piece.shape[1]:
            take = piece.shape[1] if self.size is None else min(self.size - self._count, piece.shape[1])
            self._held.append(piece[:, :take])
            self._count += take
            piece = piece[:, take:]
            if self.size is not None and self._count == self.size:
                done.append(_cat(self._held))
                self._held, self._count = [], 0
        return done

    def flush(self) -> list[Tensor]:
        done = [_cat(self._held)] if self._held else []
        self._held, self._count = [], 0
        return done


def rechunk(pieces: Iterable[Tensor], size: int | None) -> Iterator[Tensor]:
    """The pieces of `Rechunker(size)` over a stream, as an iterator."""
    chunker = Rechunker(size)
    for piece in pieces:
        yield from chunker.push(piece)
    yield from chunker.flush()


# -- the seam blend of chunked decoders (Step-Video) -------------------------------------------

# Seam blend weights of the Step-Video reference decoder.
SEAM_KEEP = 0.6
SEAM_MIX = 1.0 - SEAM_KEEP


def blend_seam(last: Tensor, first: Tensor) -> None:
    """Blend, in place, the last frame of one decoded chunk with the first frame of the next.

    last, first: (B, C, H, W) (or any matching shapes). first' = 0.6 first + 0.4 last, then
    last' = 0.6 last + 0.4 first' (the second step uses the already blended first frame).
    """
    first.mul_(SEAM_KEEP).add_(last, alpha=SEAM_MIX)
    last.mul_(SEAM_KEEP).add_(first, alpha=SEAM_MIX)


class SeamBlender:
    """Blends the seam between consecutive decoded chunks (B, t, C, H, W). The last frame of each
    chunk is held back until the next chunk's first frame is known; flush returns it."""

    def __init__(self) -> None:
        self._held: Tensor | None = None  # (B, 1, C, H, W)

    def push(self, frames: Tensor) -> Tensor:
        """-> the frames that are final now: all of `frames` but its last, after the held one."""
        if self._held is not None:
            blend_seam(self._held[:, 0], frames[:, 0])
            frames = torch.cat([self._held, frames], dim=1)
        self._held = frames[:, -1:]
        return frames[:, :-1]

    def flush(self) -> Tensor | None:
        """The held last frame (None when nothing was pushed)."""
        held, self._held = self._held, None
        return held


# -- overlapped decoding (families that decode the whole clip at once, e.g. SVD) -----------------
#
# A clip of `total` latent frames is decoded in windows of `chunk` latent frames that start every
# `chunk - overlap` frames. With overlap 0 this is plain chunking, the last chunk shorter: what
# StableVideoDiffusionPipeline does with decode_chunk_size. With overlap > 0 the last window is
# moved back to end at the clip's end, so every window has `chunk` frames of context (a short last
# window decodes visibly worse); it then overlaps its neighbour by more than `overlap`.
# Decoded windows are cross-faded: in a region where two windows overlap by K frames, the earlier one's
# weight falls (K, K-1, ..., 1) / (K + 1) while the later one's rises (1, ..., K) / (K + 1), so the
# weights sum to one. Only for families without temporal compression (frame t <-> latent t).


def check_window(chunk: int, overlap: int) -> None:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise OptionError(f"chunk_frames must be an int >= 1 (latent frames decoded together); got {chunk!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < chunk:
        raise OptionError(
            f"overlap must be an int with 0 <= overlap < chunk_frames={chunk} (frames shared by neighbouring "
            f"windows); got {overlap!r}"
        )


def overlap_windows(total: int, chunk: int, overlap: int = 0) -> list[tuple[int, int]]:
    """[start, stop) of each decode window over `total` latent frames (see the section comment).

    overlap_windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]; overlap_windows(11, 4, 1) ==
    [(0, 4), (3, 7), (6, 10), (7, 11)]; overlap_windows(11, 4) == [(0, 4), (4, 8), (8, 11)]; a clip
    of at most `chunk` frames is one window.
    """
    check_window(chunk, overlap)
    step = chunk - overlap
    windows, start = [], 0
    while start + chunk <= total:
        windows.append((start, start + chunk))
        start += step
    if not windows or windows[-1][1] < total:
        windows.append((max(0, total - chunk) if overlap else start, total))
    return windows


class WindowSplitter:
    """Regroups a stream of latent pieces (B, t, ...) into the windows of `overlap_windows`, as
    (start, window) pairs. Holds at most two windows plus one piece; the stream's length need not
    be known in advance."""

    def __init__(self, chunk: int, overlap: int = 0):
        check_window(chunk, overlap)
        self.chunk, self.overlap = chunk, overlap
        self._reset()

    def _reset(self) -> None:
        self._held: Tensor | None = None  # latents [held_start, held_start + held.shape[1])
        self._held_start = self._start = self._last_end = 0

    def push(self, piece: Tensor) -> list[tuple[int, Tensor]]:
        chunk, step = self.chunk, self.chunk - self.overlap
        held = piece if self._held is None else torch.cat([self._held, piece], dim=1)
        done = []
        while self._held_start + held.shape[1] >= self._start + chunk:
            done.append((self._start, held[:, self._start - self._held_start : self._start - self._held_start + chunk]))
            self._last_end = self._start + chunk
            # an end-aligned last window (overlap > 0) starts after this one's start, never before
            keep = self._start if self.overlap else self._start + step
            held, self._held_start = held[:, keep - self._held_start :], keep
            self._start += step
        self._held = held
        return done

    def flush(self) -> list[tuple[int, Tensor]]:
        held, done = self._held, []
        if held is not None:
            total = self._held_start + held.shape[1]
            if self._last_end < total:
                first = max(0, total - self.chunk) if self.overlap else self._start
                done.append((first, held[:, first - self._held_start :]))
        self._reset()
        return done


def overlapped_windows(pieces: Iterable[Tensor], chunk: int, overlap: int) -> Iterator[tuple[int, Tensor]]:
    """The (start, window) pairs of `WindowSplitter(chunk, overlap)` over a stream, as an iterator."""
    splitter = WindowSplitter(chunk, overlap)
    for piece in pieces:
        yield from splitter.push(piece)
    yield from splitter.flush()


def crossfade_weights(length: int, front: int, back: int) -> Tensor:
    """Weights (length,) of one decoded window that overlaps the previous window by `front` frames
    and the next by `back`: linear ramps (j + 1) / (front + 1) up and (length - j) / (back + 1) down,
    1 in between."""
    j = torch.arange(length, dtype=torch.float64)
    up = (j + 1) / (front + 1)
    down = (length - j) / (back + 1)
    return torch.minimum(torch.minimum(up, down), torch.ones(())).float()


class OverlapBlender:
    """Cross-fades decoded windows (B, L, C, H, W), pushed in order with their start frame, into
    finished frames. Holds the last window until the next one is known (its weights depend on both
    neighbours) and the frames not yet finished; accumulates in float32.

        blender = OverlapBlender()
        for start, z in overlapped_windows(latents, chunk, overlap):
            done = blender.push(start, decode(z))   # frames before `start` are final
        done = blender.flush()
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._last: tuple[int, Tensor, int] | None = None  # (start, frames, front overlap)
        self._acc: Tensor | None = None  # weighted sums of frames [acc_start, ...), float32
        self._weight: Tensor | None = None  # (n,) summed weights of those frames
        self._acc_start = 0
        self._dtype: torch.dtype | None = None

    def _add(self, start: int, frames: Tensor, weights: Tensor) -> None:
        """Add frames * weights to the accumulator, which covers [acc_start, start + L)."""
        stop = start + frames.shape[1]
        if self._acc is None:
            self._acc = frames.new_zeros((frames.shape[0], 0, *frames.shape[2:]), dtype=torch.float32)
            self._weight = torch.zeros(0, device=frames.device)
            self._acc_start = start
        grow = stop - self._acc_start - self._acc.shape[1]
        if grow > 0:
            self._acc = torch.cat([self._acc, self._acc.new_zeros((self._acc.shape[0], grow, *self._acc.shape[2:]))], 1)
            self._weight = torch.cat([self._weight, self._weight.new_zeros(grow)])
        at = start - self._acc_start
        w = weights.to(frames.device)
        self._acc[:, at : at + frames.shape[1]] += frames.float() * w.view(1, -1, *([1] * (frames.ndim - 2)))
        self._weight[at : at + frames.shape[1]] += w

    def _take(self, stop: int | None) -> Tensor:
        """Finished frames [acc_start, stop) (all held frames for None), normalised; drops them."""
        n = self._acc.shape[1] if stop is None else max(stop - self._acc_start, 0)
        w = self._weight[:n].view(1, -1, *([1] * (self._acc.ndim - 2)))
        done = (self._acc[:, :n] / w).to(self._dtype)
        self._acc, self._weight = self._acc[:, n:], self._weight[n:]
        self._acc_start += n
        return done

    def push(self, start: int, frames: Tensor) -> Tensor:
        """Take the decoded window starting at frame `start` (>= the previous window's start);
        return the frames before `start` that are now final (possibly none: shape[1] == 0)."""
        self._dtype = frames.dtype
        if self._last is None:
            self._last = (start, frames, 0)
            return frames[:, :0]
        last_start, last_frames, last_front = self._last
        last_stop = last_start + last_frames.shape[1]
        if not last_start <= start <= last_stop:
            raise OptionError(f"OverlapBlender: window at {start} does not follow the window [{last_start}, {last_stop})")
        back = last_stop - start
        self._add(last_start, last_frames, crossfade_weights(last_frames.shape[1], last_front, back))
        self._last = (start, frames, back)
        return self._take(start)

    def flush(self) -> Tensor:
        """The remaining frames, up to the end of the last window."""
        if self._last is None:
            raise OptionError("OverlapBlender: nothing was pushed")
        start, frames, front = self._last
        self._add(start, frames, crossfade_weights(frames.shape[1], front, 0))
        done = self._take(None)
        self._reset()
        return done
