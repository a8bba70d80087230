"""The faster execution paths are exact (up to float rounding) against the plain ones: upsampling
convs by phase, channels-last-3d activations, the lean 16-bit CPU norm, and torch.compile."""

import pytest
import torch
import torch.nn.functional as F

import videovae
from conftest import stepvideo_io, stepvideo_weights, norm_backend
from videovae.layers import add_upsampled_, conv_per_frame, upsample2x_conv
from videovae_kernels.group_norm_torch import group_norm_cpu, group_norm_functional, group_norm_torch


@pytest.mark.parametrize("frames", [1, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_per_frame_equals_a_one_tap_conv3d(frames, stride):
    """One frame goes through conv2d (PyTorch's one-frame conv3d is its slow reference kernel)."""
    conv = torch.nn.Conv2d(6, 4, 3, stride=stride)
    x = torch.randn(2, 6, frames, 9, 8)
    with torch.no_grad():
        expected = F.conv3d(x, conv.weight.unsqueeze(2), conv.bias, stride=(1, stride, stride), padding=(0, 1, 1))
        assert torch.allclose(conv_per_frame(x, conv, padding=(1, 1)), expected, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 4, 3, 5, 6), (2, 3, 1, 7, 4), (1, 8, 2, 1, 1)])
def test_upsample_conv_by_phases_equals_upsample_then_conv(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    C = shape[1]
    w3, w2, b = torch.randn(5, C, 3, 3, 3, generator=g), torch.randn(5, C, 1, 3, 3, generator=g), torch.randn(5, generator=g)
    # 3D: nearest x2 in (t, h, w), causal conv (2 zero frames in front), H/W zero-padded by 1
    plain = F.conv3d(F.pad(F.interpolate(x, scale_factor=2, mode="nearest"), (1, 1, 1, 1, 2, 0)), w3, b)
    assert torch.allclose(upsample2x_conv(x, w3, b, time=True), plain, atol=1e-5)
    # 2D per frame: nearest x2 in (h, w), 3x3 conv padded by 1
    plain2 = F.conv3d(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"), w2, b, padding=(0, 1, 1))
    assert torch.allclose(upsample2x_conv(x, w2, b, time=False), plain2, atol=1e-5)
    u = F.interpolate(x, scale_factor=2, mode="nearest")
    h = torch.randn(u.shape, generator=g)
    assert torch.equal(add_upsampled_(h.clone(), x, time=True), h + u)


def test_upsample_conv_and_add_keep_a_channels_last_layout():
    """A channels-last input gives a channels-last output of the same values (4D frames and 5D clips)."""
    g = torch.Generator().manual_seed(1)
    w3, w2, b = torch.randn(6, 4, 3, 3, 3, generator=g), torch.randn(6, 4, 1, 3, 3, generator=g), torch.randn(6, generator=g)
    frames = torch.randn(3, 4, 5, 7, generator=g)
    cl = upsample2x_conv(frames.contiguous(memory_format=torch.channels_last), w2, b, time=False)
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    assert torch.allclose(cl, upsample2x_conv(frames, w2, b, time=False), atol=1e-5)
    clip = torch.randn(2, 4, 3, 5, 6, generator=g)
    cl3 = upsample2x_conv(clip.contiguous(memory_format=torch.channels_last_3d), w3, b, time=True)
    assert cl3.is_contiguous(memory_format=torch.channels_last_3d) and not cl3.is_contiguous()
    assert torch.allclose(cl3, upsample2x_conv(clip, w3, b, time=True), atol=1e-5)
    h = torch.randn(2, 4, 6, 10, 12, generator=g)
    expected = h + F.interpolate(clip, scale_factor=2, mode="nearest")
    assert torch.equal(add_upsampled_(h.contiguous(memory_format=torch.channels_last_3d), clip, time=True), expected)


def test_svd_in_channels_last_equals_the_contiguous_layout():
    """The SVD encoder and decoder run channels-last by default; their outputs have the layout and
    the values of the contiguous-layout model's."""
    from videovae.families.svd import SVDVAE, SVDConfig

    torch.manual_seed(0)
    model = SVDVAE(SVDConfig(block_out_channels=(32, 64), layers_per_block=2)).eval()
    x, z = torch.rand(1, 3, 3, 12, 10) * 2 - 1, torch.randn(1, 4, 3, 6, 5)
    with torch.no_grad():
        fast = model.encode_chunk(x), model.decode_chunk(z)
        model.encoder.channels_last = model.decoder.channels_last = False
        plain = model.encode_chunk(x), model.decode_chunk(z)
    for f, p in zip(fast, plain):
        assert f.stride() == p.stride()
        assert (f - p).abs().max() < 1e-5


def test_the_one_switch_turns_svd_channels_last_off_and_on():
    from videovae.families.svd import SVDVAE, SVDConfig

    torch.manual_seed(0)
    vae = videovae.VideoVAE(SVDVAE(SVDConfig(block_out_channels=(32, 64), layers_per_block=2)).eval())
    z = torch.randn(1, 3, 4, 6, 5)
    fast = vae.decode(z)
    vae.fast_paths(channels_last=False)
    assert not vae.model.encoder.channels_last and not vae.model.decoder.channels_last
    assert (vae.decode(z) - fast).abs().max() < 1e-5
    vae.fast_paths(channels_last=True)
    assert vae.model.encoder.channels_last and vae.model.decoder.channels_last
    conv = vae.model.decoder.time_conv_out.weight
    assert conv.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("version", [1, 2])
def test_decoder_by_phases_equals_plain_decoder(version):
    vae = videovae.load(stepvideo_weights(version), dtype=torch.float32)
    z = stepvideo_io(version)["mean_17f"]
    fast = vae.decode(z)
    vae.fast_paths(phase_split=False)
    plain = vae.decode(z)
    assert (fast - plain).abs().max() < 1e-5
    assert (plain - stepvideo_io(version)["dec_17f"]).abs().max() < 1e-4


@pytest.mark.parametrize("version", [1, 2])
def test_channels_last_model_matches_the_fixtures(version):
    vae = videovae.load(stepvideo_weights(version), dtype=torch.float32)
    vae.fast_paths(channels_last=True)
    io = stepvideo_io(version)
    assert (vae.encode(io["x_17f"]).mean - io["mean_17f"]).abs().max() < 1e-4
    assert (vae.decode(io["mean_17f"]) - io["dec_17f"]).abs().max() < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("per_frame, channels_last", [(False, False), (True, True), (True, False)])
@pytest.mark.parametrize("front_pad", [0, 2])
def test_lean_cpu_norm_is_within_a_few_ulp_of_the_reference(dtype, per_frame, channels_last, front_pad):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 64, 3, 9, 11, generator=g) * 3 + 1).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last_3d)
    w, b = torch.randn(64, generator=g).to(dtype), torch.randn(64, generator=g).to(dtype)
    kwargs = dict(per_frame=per_frame, silu=True, front_pad=front_pad)
    ref, fast = norm_backend(group_norm_torch, x, 32, w, b, **kwargs), norm_backend(group_norm_cpu, x, 32, w, b, **kwargs)
    assert fast.shape == ref.shape and fast.dtype == dtype
    assert fast.is_contiguous(memory_format=torch.channels_last_3d) == ref.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(fast[:, :, :front_pad], torch.zeros_like(fast[:, :, :front_pad]))
    # SiLU after the single rounding: |error| <= 4 ulp of the value (SiLU's slope amplifies it at most ~4x)
    ulp = torch.finfo(dtype).eps if dtype != torch.float32 else 1e-6
    err = (fast.float() - ref.float()).abs()
    assert (err <= 4 * ulp * ref.float().abs() + 1e-5).all()


def test_functional_norm_matches_the_reference():
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(1, 64, 4, 5, 6, generator=g), torch.randn(1, 64, 4, 5, 6, generator=g)
    w, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    for per_frame in (False, True):
        kwargs = dict(per_frame=per_frame, silu=True, residual=r, front_pad=2)
        (y1, s1), (y2, s2) = norm_backend(group_norm_torch, x, 32, w, b, **kwargs), norm_backend(group_norm_functional, x, 32, w, b, **kwargs)
        assert torch.allclose(y1, y2, atol=1e-5) and torch.equal(s1, s2)


@pytest.mark.parametrize("version", [1, 2])
def test_compiled_chunks_have_no_graph_breaks_and_match_eager(version):
    """fullgraph=True fails on any graph break in the chunk bodies. The aot_eager backend traces
    the same graphs as Inductor without its C++ compilation, for both versions; the Inductor run
    below (about 30 s) covers v2's decoder."""
    torch._dynamo.reset()
    vae = videovae.load(stepvideo_weights(version), dtype=torch.float32)
    io = stepvideo_io(version)
    eager_mean, eager_frames = vae.encode(io["x_17f"]).mean, vae.decode(io["mean_17f"])
    vae.fast_paths(compile={"backend": "aot_eager"})
    # eager calls oneDNN directly (videovae.conv3d), compiled code F.conv3d: float rounding apart
    assert (vae.encode(io["x_17f"]).mean - eager_mean).abs().max() < 5e-5
    assert (vae.decode(io["mean_17f"]) - eager_frames).abs().max() < 5e-5


def test_inductor_compiled_decode_matches_eager():
    torch._dynamo.reset()
    vae = videovae.load(stepvideo_weights(2), dtype=torch.float32)
    z = stepvideo_io(2)["mean_17f"]
    eager = vae.decode(z)
    vae.fast_paths(compile=True)
    assert (vae.decode(z) - eager).abs().max() < 1e-4


def test_weight_bound_convs_run_as_a_matmul_with_the_same_result(monkeypatch):
    """Big-weight convs over few positions (v2's decoder head) take the im2col + matmul path."""
    from videovae import layers

    g = torch.Generator().manual_seed(0)
    conv = layers.CausalConv3d(16, 24)
    x = torch.randn(1, 16, 3, 4, 5, generator=g)
    assert not layers._weight_bound(conv.conv, layers.pad_time_front(x, 2))
    plain = conv(x)
    monkeypatch.setattr(layers, "_MATMUL_MIN_WEIGHT", 0)  # now this small conv counts as weight-bound
    assert layers._weight_bound(conv.conv, layers.pad_time_front(x, 2))
    assert (conv(x) - plain).abs().max() < 1e-5
    xp = F.pad(x, (1, 1, 1, 1, 2, 0))
    expected = F.conv3d(xp, conv.conv.weight, conv.conv.bias)
    assert torch.allclose(layers.conv3d_as_matmul(xp, conv.conv.weight, conv.conv.bias), expected, atol=1e-5)
