"""Frames streamed through a causal network one at a time, with the state each layer carries.

Where every norm of a network is per frame and every layer is causal in time (Step-Video v2), a
chunk can pass through it frame by frame: each causal conv keeps the input frames its next outputs
still read (two, for a 3-frame kernel), and nothing else crosses frames. The result is the chunk's,
exactly; the memory held is a few frames per conv instead of the chunk's whole activations.

    chain = FrameChain([ConvFrames(conv_in), block.frames(), ...])
    for t in range(T):
        for frame in chain.push(x[:, :, t : t + 1]):   # what is final now: (B, C', 1, H', W') each
            ...
    chain.flush()                                     # resets the held frames for the next chunk

A stage is any object with `push(x: (B, C, t, H, W)) -> (B, C', t', H', W')`, where t' may be 0
(a stride-2 conv waits for its second frame) or 2t (a temporal upsampling).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .conv3d import conv3d
from .layers import CausalConv3d, is_channels_last


BAND_BYTES = 32 << 20  # a conv's input is gathered in bands of about this many bytes


class ConvFrames:
    """A causal conv over a stream of frames: holds the input frames its next output reads.

    It starts with the conv's `time_pad` zero frames (the causal front padding of a chunk); each
    push appends frames and returns every output they complete (for stride 2: one per two frames).
    residual, when given to `push`, is added to the outputs (same frames as they come out).

    Each output frame is computed in bands of rows, each band's input gathered from the held frames
    (`BAND_BYTES` at most, the halo rows included), so that the frames are never joined into one
    (k, H, W) input: what stays alive is the held frames, the new one and the output."""

    def __init__(self, conv: CausalConv3d):
        self.conv = conv
        self.kernel = conv.conv.kernel_size[0]
        self.stride = conv.conv.stride[0]
        self._held: list[Tensor | None] = [None] * conv.time_pad  # (B, C_in, 1, H, W) each; None: a zero frame

    def push(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        frames = self._held + list(x.split(1, dim=2))
        count = max(0, (len(frames) - self.kernel) // self.stride + 1)
        outs = [self._output(frames[j * self.stride : j * self.stride + self.kernel], x) for j in range(count)]
        self._held = frames[count * self.stride :]
        out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0] if outs else _no_frames(x, self.conv)
        return out.add_(residual) if residual is not None else out

    def _output(self, window: list[Tensor | None], like: Tensor) -> Tensor:
        """One output frame (B, C_out, 1, H', W') of the conv over `window`, k input frames."""
        conv = self.conv.conv
        (kh, kw), (sh, sw), (_, ph, pw) = conv.kernel_size[1:], conv.stride[1:], conv.padding
        B, C, _, H, W = like.shape
        H_out, W_out = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
        fmt = weight_format(conv.weight)
        out = torch.empty((B, conv.out_channels, 1, H_out, W_out), dtype=like.dtype, device=like.device, memory_format=fmt)
        row_bytes = self.kernel * B * C * W * like.element_size()
        rows = max(8, (BAND_BYTES // max(1, row_bytes) - kh) // sh + 1)  # output rows per band
        for a in range(0, H_out, rows):
            b = min(H_out, a + rows)
            top, bottom = a * sh - ph, (b - 1) * sh - ph + kh  # input rows read, padding included
            lo, hi = max(0, top), min(H, bottom)
            band = torch.empty((B, C, self.kernel, bottom - top, W), dtype=like.dtype, device=like.device, memory_format=fmt)
            if lo > top:
                band[:, :, :, : lo - top].zero_()
            if bottom > hi:
                band[:, :, :, hi - top :].zero_()
            for i, frame in enumerate(window):
                if frame is None:
                    band[:, :, i].zero_()
                else:
                    band[:, :, i, lo - top : hi - top].copy_(frame[:, :, 0, lo:hi])
            out[:, :, :, a:b] = conv3d(band, conv.weight, conv.bias, (1, sh, sw), (0, 0, pw))
        return out

    def flush(self) -> None:
        self._held = [None] * self.conv.time_pad


class PerFrame:
    """A stage that treats every frame on its own (a 2D conv, a per-frame norm): no state."""

    def __init__(self, fn: Callable[[Tensor], Tensor]):
        self.fn = fn

    def push(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def flush(self) -> None:
        pass


class NormConvFrames:
    """conv(silu(norm(x))) over a stream: a per-frame norm, then a causal conv's held frames."""

    def __init__(self, norm: Callable[..., Tensor], conv: CausalConv3d):
        self.norm = norm
        self.conv = ConvFrames(conv)

    def push(self, x: Tensor) -> Tensor:
        return self.conv.push(self.norm(x, silu=True))

    def flush(self) -> None:
        self.conv.flush()


class FrameChain:
    """Stages in sequence, depth first: each frame a stage emits goes on through the rest of the
    chain before the stage's next frame, and is dropped as soon as the next stage is done with it,
    so that at every level only one frame's work is alive besides the stages' held frames.

    A stage's push returns a tensor (B, C, t, H, W), or a list of one-frame tensors, each its own
    storage (freed one by one as they go on)."""

    def __init__(self, stages: list):
        self.stages = stages

    def push(self, x: Tensor) -> list[Tensor]:
        """x: (B, C, t, H, W) -> the finished frames of the last stage, (B, C', 1, H', W') each."""
        done: list[Tensor] = []
        pending = [(0, frame) for frame in reversed(x.split(1, dim=2))] if x.shape[2] else []  # a stack: the next frame last
        del x
        while pending:
            i, frame = pending.pop()
            if i == len(self.stages):
                done.append(frame)
                continue
            out = self.stages[i].push(frame)
            del frame  # the stage keeps what it needs: the rest is freed now
            frames = out if isinstance(out, list) else list(out.split(1, dim=2)) if out.shape[2] else []
            del out
            pending.extend((i + 1, f) for f in reversed(frames))
            del frames
        return done

    def flush(self) -> None:
        """Resets every stage for the next chunk."""
        for stage in self.stages:
            stage.flush()


def weight_format(weight: Tensor) -> torch.memory_format:
    """The layout oneDNN computes a conv in for this weight: what its input should already have."""
    return torch.channels_last_3d if is_channels_last(weight) else torch.contiguous_format


def join_frames(before: Tensor | None, x: Tensor, count: int, fmt: torch.memory_format) -> Tensor:
    """The `count` frames before x (zeros when None: the front of a chunk), then x, in one tensor of
    layout fmt: (B, C, count + t, H, W). (torch.cat would pick the layout from strides that one-frame
    tensors leave ambiguous, and the conv would then copy its whole input to its own layout.)"""
    B, C, t, H, W = x.shape
    out = torch.empty((B, C, count + t, H, W), dtype=x.dtype, device=x.device, memory_format=fmt)
    if before is None:
        out[:, :, :count].zero_()
    else:
        out[:, :, :count].copy_(before)
    out[:, :, count:].copy_(x)
    return out


def _no_frames(x: Tensor, conv: CausalConv3d) -> Tensor:
    B, _, _, H, W = x.shape
    s = conv.conv.stride[1]
    return x.new_empty((B, conv.conv.out_channels, 0, -(-H // s), -(-W // s)))

