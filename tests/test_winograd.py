"""Winograd tiles along time (`videovae.winograd`) against the plain causal conv they replace."""

import random
from fractions import Fraction

import pytest
import torch
from torch.nn import functional as F

from videovae import winograd
from videovae.families import stepvideo
from videovae.layers import CausalConv3d


def plain_causal_conv(xp, weight, bias):
    """xp: (B, C, 2 + T, H, W) front-padded -> (B, O, T, H, W), the conv the Winograd path replaces."""
    return F.conv3d(xp, weight, bias, padding=(0, 1, 1))


def padded_input(shape, dtype=torch.float64, seed=0):
    """(B, C, 2 + T, H, W) with the two causal zero frames in front."""
    g = torch.Generator().manual_seed(seed)
    xp = torch.randn(shape, generator=g, dtype=dtype)
    xp[:, :, :2] = 0
    return xp


@pytest.mark.parametrize("m", sorted(winograd.TRANSFORMS))
def test_transforms_compute_the_correlation_exactly(m):
    AT, G, BT = winograd.TRANSFORMS[m]
    a = m + 2
    rng = random.Random(m)
    for _ in range(20):
        d = [Fraction(rng.randint(-50, 50), rng.randint(1, 9)) for _ in range(a)]
        w = [Fraction(rng.randint(-50, 50), rng.randint(1, 9)) for _ in range(3)]
        Gw = [sum(G[i][k] * w[k] for k in range(3)) for i in range(a)]
        Bd = [sum(BT[i][k] * d[k] for k in range(a)) for i in range(a)]
        y = [sum(AT[r][i] * Gw[i] * Bd[i] for i in range(a)) for r in range(m)]
        assert y == [sum(w[k] * d[r + k] for k in range(3)) for r in range(m)]
    assert all(v.denominator == 1 for row in BT for v in row), "activation transforms use integers"


def test_matrices_need_distinct_points():
    with pytest.raises(ValueError, match="distinct"):
        winograd.winograd_matrices(2, (Fraction(0), Fraction(1), Fraction(1)))


@pytest.mark.parametrize("T", range(1, 41))
def test_tiling_covers_every_output_once_and_saves_frame_convs(T):
    tiling = winograd.plan_time_tiles(T)
    covered = list(range(tiling.head))
    for start, m, n in tiling.segments:
        assert start == len(covered)
        covered += list(range(start, start + m * n))
    assert covered == list(range(T))
    assert tiling.frame_convs == tiling.head + sum((m + 2) * n for _, m, n in tiling.segments)
    assert tiling.frame_convs <= 3 * T - 2  # the plain conv's 3T, minus at least the zero taps of output 0


def test_tiling_of_the_step_video_chunk_lengths():
    assert {T: winograd.plan_time_tiles(T).frame_convs for T in (5, 9, 17, 20)} == {5: 7, 9: 13, 17: 25, 20: 30}
    with pytest.raises(ValueError, match="T must be >= 1"):
        winograd.plan_time_tiles(0)


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 17])
def test_equals_the_plain_conv_in_float64(T):
    xp = padded_input((2, 5, T + 2, 7, 6))
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 5, 3, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(4, generator=g, dtype=torch.float64)
    expected = plain_causal_conv(xp, weight, bias)
    out = winograd.causal_conv3d_winograd(xp, weight, bias)
    assert out.shape == expected.shape
    assert (out - expected).abs().max() < 1e-11


@pytest.mark.parametrize("channels_last", [False, True])
def test_float32_with_residual_and_layouts(channels_last):
    xp = padded_input((1, 64, 19, 12, 10), dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(64, 64, 3, 3, 3, generator=g) / (64 * 27) ** 0.5
    bias = torch.randn(64, generator=g)
    residual = torch.randn(1, 64, 17, 12, 10, generator=g)
    expected = plain_causal_conv(xp, weight, bias) + residual
    if channels_last:
        xp = xp.to(memory_format=torch.channels_last_3d)
    out = winograd.causal_conv3d_winograd(xp, weight, bias, residual)
    assert out.is_contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
    scale = expected.abs().max()
    assert (out - expected).abs().max() < 1e-5 * scale


def test_dispatch_takes_large_float32_convs_only():
    w = torch.empty(64, 64, 3, 3, 3)
    x = torch.empty(1, 64, 19, 16, 16)
    assert winograd.worth_it(x, w, (1, 1, 1))
    assert not winograd.worth_it(x.bfloat16(), w.bfloat16(), (1, 1, 1)), "16-bit combinations lose precision"
    assert not winograd.worth_it(x, w, (2, 2, 2))
    assert not winograd.worth_it(x[:, :, :5], w, (1, 1, 1)), "3 frames: too short to tile"
    assert not winograd.worth_it(x[:, :32], w[:, :32], (1, 1, 1)), "narrow convs are traffic-bound"
    assert not winograd.worth_it(x[..., :4, :4], w, (1, 1, 1)), "few positions: the weight combinations dominate"


def test_causal_conv_module_switch():
    conv = CausalConv3d(64, 64).eval()
    x = padded_input((1, 64, 19, 16, 16), dtype=torch.float32)[:, :, 2:]  # T = 17
    with torch.no_grad():
        fast = conv(x)
        conv.winograd = False
        plain = conv(x)
    assert not torch.equal(fast, plain), "the Winograd path was not taken"
    assert (fast - plain).abs().max() < 1e-5 * plain.abs().max()


def test_model_with_winograd_matches_plain_convs():
    """A Step-Video v2 model wide enough for the Winograd path, end to end (random weights)."""
    cfg = stepvideo.StepVideoConfig(
        version=2, z_channels=4, patch_channels=4 * 4 * 8, encoder_in_width=32,
        encoder_widths=(64, 64, 64, 64), encoder_blocks=1, decoder_widths=(64, 64, 64, 64), decoder_blocks=1,
    )
    torch.manual_seed(0)
    model = stepvideo.StepVideoVAE(cfg).eval()
    x = torch.rand(1, 3, 17, 32, 32) * 2 - 1
    with torch.no_grad():
        moments, decoded = model.encode_chunk(x), None
        decoded = model.decode_chunk(moments[:, :4])
        model.fast_paths(winograd=False)
        plain_moments = model.encode_chunk(x)
        plain_decoded = model.decode_chunk(plain_moments[:, :4])
    assert (moments - plain_moments).abs().max() < 1e-4
    assert (decoded - plain_decoded).abs().max() < 1e-4
    assert not torch.equal(decoded, plain_decoded), "the Winograd path was not taken"


def test_one_frame_convs_match_conv3d():
    """Tiles of one frame (and output 0) go through conv2d; results must not change."""
    xp = padded_input((1, 8, 7, 5, 6))  # T = 5: output 0, then one F(4, 3) tile (one frame per product)
    weight = torch.randn(3, 8, 3, 3, 3, dtype=torch.float64)
    assert winograd.plan_time_tiles(5).segments == ((1, 4, 1),)
    assert (winograd.causal_conv3d_winograd(xp, weight, None) - plain_causal_conv(xp, weight, None)).abs().max() < 1e-11
    kernel = weight[:, :, :1]
    assert torch.allclose(winograd.frame_conv(xp[:, :, 3:4], kernel, None), F.conv3d(xp[:, :, 3:4], kernel, padding=(0, 1, 1)))


def test_training_falls_back_to_the_plain_conv():
    """Autograd cannot go through the transforms' out= writes: with gradients on, the plain conv runs."""
    conv = CausalConv3d(64, 64)
    x = padded_input((1, 64, 19, 16, 16), dtype=torch.float32)[:, :, 2:]
    assert winograd.worth_it(F.pad(x, (0, 0, 0, 0, 2, 0)), conv.conv.weight.detach(), (1, 1, 1))
    out = conv(x)
    out.square().mean().backward()
    assert conv.conv.weight.grad is not None and conv.conv.weight.grad.abs().sum() > 0


def test_compiles_without_graph_breaks_and_keeps_the_winograd_path():
    """Under torch.compile the same sums run in a functional form (dynamo refuses out= into views)."""
    torch._dynamo.reset()
    conv = CausalConv3d(64, 64).eval().requires_grad_(False)
    x = padded_input((1, 64, 19, 16, 16), dtype=torch.float32)[:, :, 2:]
    with torch.no_grad():
        eager = conv(x)
        compiled = torch.compile(conv, backend="aot_eager", fullgraph=True)(x)
        conv.winograd = False
        plain = conv(x)
    assert compiled.shape == eager.shape
    assert (compiled - eager).abs().max() < 1e-5 * plain.abs().max()
    assert not torch.equal(compiled, plain), "compiled code fell back to the plain conv"
