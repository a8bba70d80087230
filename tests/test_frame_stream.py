"""Frames streamed through a chunk (Step-Video v2): the same result as the whole chunk, in a few
frames' memory per conv; chosen by a memory budget; refused where the norms span the chunk."""

from __future__ import annotations

import pytest
import torch

from videovae import frame_stream
from videovae.errors import OptionError
from videovae.families.stepvideo import StepVideoConfig, StepVideoVAE
from videovae.frame_stream import ConvFrames
from videovae.layers import CausalConv3d
from videovae.memory_plan import _LiveBytes, chunk_peak, plan_tiles

from conftest import stepvideo_io

TOL = 1e-4

# every kind of v2 stage: 2D and temporal down/upsampling, width changes (nin shortcuts), attention
V2 = StepVideoConfig(version=2, z_channels=4, encoder_in_width=32, encoder_widths=(32, 64, 64), encoder_blocks=2,
                     encoder_temporal_levels=(1,), decoder_widths=(32, 64, 64), decoder_blocks=2,
                     decoder_temporal_levels=(2,), patch_channels=4 * 4 * 8)


@pytest.fixture(scope="module")
def v2_random():
    torch.manual_seed(0)
    return StepVideoVAE(V2).eval()


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= tol, f"max |streamed - whole| = {err:.3g} > {tol}"


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("pieces", [(1,) * 9, (2, 3, 4), (9,)])
def test_a_conv_over_pushed_frames_is_the_conv_of_the_whole(stride, pieces):
    torch.manual_seed(0)
    conv = CausalConv3d(8, 6, stride=stride)
    x = torch.randn(2, 8, 9, 11, 13)
    residual = torch.randn(2, 6, 9, 11, 13) if stride == 1 else None
    with torch.no_grad():
        whole = conv(x) if residual is None else conv(x) + residual
        stream, done, at = ConvFrames(conv), [], 0
        for n in pieces:
            done.append(stream.push(x[:, :, at : at + n], None if residual is None else residual[:, :, at : at + n]))
            at += n
    assert sum(d.shape[2] for d in done) == whole.shape[2]
    _close(torch.cat(done, dim=2), whole, 1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("frames", [1, 9, 17])
def test_v2_streams_frames_exactly(v2_random, monkeypatch, frames, channels_last):
    """Batch 2, frames not a multiple of the tile, rows in bands of 8 (the stride-2 convs too)."""
    model = v2_random.fast_paths(channels_last=channels_last)
    torch.manual_seed(1)
    x = torch.rand(2, 3, frames, 48, 80) * 2 - 1
    try:
        with torch.no_grad():
            moments = model.encode_chunk(x)
            z = moments[:, :4].contiguous()
            decoded = model.decode_chunk(z)
            _close(model.encode_chunk(x, stream=True), moments)
            _close(model.decode_chunk(z, stream=True), decoded)
            monkeypatch.setattr(frame_stream, "BAND_BYTES", 1)  # the fewest rows a band takes: 8
            _close(model.encode_chunk(x, stream=True), moments)
            _close(model.decode_chunk(z, stream=True), decoded)
    finally:
        model.fast_paths(channels_last=True)


def test_v1_refuses_to_stream(v1):
    assert not v1.model.streams_frames
    with pytest.raises(OptionError, match="normalises over the whole chunk: use spatial tiles"):
        v1.model.encode_chunk(torch.zeros(1, 3, 9, 16, 16), stream=True)


def _real_peak(model, op: str, x: torch.Tensor, **kwargs) -> int:
    counter = _LiveBytes(set(), given=(x,))
    with torch.no_grad(), counter:
        out = getattr(model, f"{op}_chunk")(x, **kwargs)
        del out
    return max(w + r for w, r in counter.events)


@pytest.mark.parametrize("op", ["encode", "decode"])
def test_a_streamed_chunk_needs_a_fraction_of_the_whole_and_the_count_is_real(v2_random, op):
    x = torch.randn(1, 3, 17, 64, 64) if op == "encode" else torch.randn(1, 4, 3, 4, 4)
    counted = chunk_peak(v2_random, op, tuple(x.shape), None, stream=True)
    assert abs(counted - _real_peak(v2_random, op, x, stream=True)) <= 0.02 * counted
    assert counted < 0.6 * chunk_peak(v2_random, op, tuple(x.shape), None)
    with pytest.raises(OptionError, match="give a tile or stream, not both"):
        chunk_peak(v2_random, op, tuple(x.shape), (16, 16), stream=True)


def test_a_budget_below_the_whole_chunk_streams_and_below_the_stream_is_refused(v2_random):
    shape = (1, 4, 3, 4, 4)  # decode 17 frames of 64x64
    whole = chunk_peak(v2_random, "decode", shape, None)
    streamed = chunk_peak(v2_random, "decode", shape, None, stream=True)
    plan = plan_tiles(v2_random, "decode", shape, int(0.9 * whole))
    assert plan.stream and plan.tile is None and plan.peak == streamed
    assert plan.minimum == pytest.approx(streamed, rel=0.02)
    with pytest.raises(OptionError, match=r"below the .* that exact tiling needs .*frame by frame through the chunk"):
        plan_tiles(v2_random, "decode", shape, streamed // 2)


def test_the_v2_fixture_streams_exactly_through_the_api_and_the_streams(v2):
    io = stepvideo_io(2)
    x = io["x_17f_32x48"]
    plain = v2.encode(x)
    decoded = v2.decode(plain.mean)
    minimum = {op: v2.memory_plan(op, 32, 48, 10**12).minimum for op in ("encode", "decode")}
    assert all(v2.memory_plan(op, 32, 48, minimum[op]).stream for op in minimum)
    budget = max(minimum.values())
    streamed = v2.encode(x, max_memory=budget)
    _close(streamed.mean, plain.mean)
    _close(streamed.logvar, plain.logvar)
    _close(decoded, io["dec_17f_32x48"], 1e-3)  # and the whole chunk is the reference
    long = io["x_18f"]
    pieces = list(v2.reconstruct_stream(long.split(5, dim=1), max_memory=budget))
    _close(torch.cat(pieces, dim=1), v2.reconstruct(long))


def test_the_progress_line_says_when_frames_stream(v2):
    from videovae.files import tiles_text

    budget = v2.memory_plan("decode", 32, 48, 10**12).minimum
    assert tiles_text(v2, 32, 48, frames=17, ops=("decode",), max_memory=budget) == "frame by frame"
    assert tiles_text(v2, 32, 48, frames=17, ops=("decode",)) == ""


def test_a_model_of_another_family_does_not_stream(svd):
    assert not svd.model.streams_frames
    with pytest.raises(TypeError):
        svd.model.decode_chunk(torch.zeros(1, 4, 2, 4, 4), stream=True)
