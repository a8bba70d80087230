"""Parity with the reference implementation's outputs on the tiny v1/v2 fixtures (float32, CPU)."""

import pytest
import torch

import videovae
from conftest import stepvideo_io, stepvideo_weights

CASES = ["1f", "17f", "34f", "17f_32x48", "18f"]
ATOL = 1e-4


def max_err(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("case", CASES)
def test_encode_matches_reference(version, case, request):
    vae = request.getfixturevalue(f"v{version}")
    io = stepvideo_io(version)
    posterior = vae.encode(io[f"x_{case}"], policy="strict")
    moments = torch.cat([posterior.mean, posterior.logvar], dim=2)
    assert max_err(moments, io[f"moments_{case}"]) < ATOL
    assert max_err(posterior.mean, io[f"mean_{case}"]) < ATOL
    assert max_err(posterior.logvar, io[f"logvar_{case}"]) < ATOL
    assert max_err(posterior.std, io[f"std_{case}"]) < ATOL
    assert posterior.num_frames == io[f"x_{case}"].shape[1]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("case", CASES)
def test_decode_matches_reference_with_and_without_blend(version, case, request):
    vae = request.getfixturevalue(f"v{version}")
    io = stepvideo_io(version)
    assert max_err(vae.decode(io[f"mean_{case}"]), io[f"dec_{case}"]) < ATOL
    assert max_err(vae.decode(io[f"mean_{case}"], blend=False), io[f"dec_nomix_{case}"]) < ATOL


@pytest.mark.parametrize("version", [1, 2])
def test_sample_is_mean_plus_std_times_eps(version, request):
    vae = request.getfixturevalue(f"v{version}")
    io = stepvideo_io(version)
    posterior = vae.encode(io["x_17f"])
    eps = io["eps_17f"]
    assert max_err(posterior.mean + posterior.std * eps, io["sample_17f"]) < ATOL
    # sample() draws eps from the generator: the same seed gives the same sample, another seed does not.
    a = posterior.sample(torch.Generator().manual_seed(0))
    b = posterior.sample(torch.Generator().manual_seed(0))
    c = posterior.sample(torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(posterior.mode(), posterior.mean)


def test_logvar_is_clamped():
    from videovae.distribution import LatentDistribution

    d = LatentDistribution(torch.zeros(1, 1, 2, 1, 1), torch.tensor([-100.0, 100.0]).view(1, 1, 2, 1, 1))
    assert d.logvar.flatten().tolist() == [-30.0, 20.0]


def test_the_seam_blend_changes_only_the_frames_at_chunk_boundaries(v2):
    io = stepvideo_io(2)
    blended, plain = v2.decode(io["mean_34f"]), v2.decode(io["mean_34f"], blend=False)
    changed = ((blended - plain).abs().amax(dim=(0, 2, 3, 4)) > 0).nonzero().flatten().tolist()
    assert changed == [16, 17]


def test_no_global_state_between_models():
    """The reference keeps a process-global norm mode: building v1 after v2 corrupts v2. Here, v2 then
    v1 then v2 again (the same object) each reproduce their fixtures."""
    io1, io2 = stepvideo_io(1), stepvideo_io(2)
    first_v2 = videovae.load(stepvideo_weights(2), dtype=torch.float32)
    assert max_err(first_v2.decode(io2["mean_17f"]), io2["dec_17f"]) < ATOL
    v1 = videovae.load(stepvideo_weights(1), dtype=torch.float32)
    assert max_err(v1.decode(io1["mean_17f"]), io1["dec_17f"]) < ATOL
    assert max_err(first_v2.encode(io2["x_17f"]).mean, io2["mean_17f"]) < ATOL
    assert max_err(first_v2.decode(io2["mean_17f"]), io2["dec_17f"]) < ATOL


@pytest.mark.parametrize("version", [1, 2])
def test_encoding_is_causal_in_time(version, request):
    """Changing frames after t leaves the latents that only see frames up to t unchanged (v2 normalises
    per frame, so this holds inside a chunk; v1's clip-wide statistics make it hold only across chunks)."""
    vae = request.getfixturevalue(f"v{version}")
    x = stepvideo_io(version)["x_34f"]
    y = x.clone()
    y[:, 20:] = torch.rand_like(y[:, 20:])
    a, b = vae.encode(x).mean, vae.encode(y).mean
    first_chunk = vae.latent_frames_per_chunk
    assert max_err(a[:, :first_chunk], b[:, :first_chunk]) == 0.0
    if version == 2:
        # the first latent of chunk two sees frame 17 alone, which did not change
        assert max_err(a[:, first_chunk : first_chunk + 1], b[:, first_chunk : first_chunk + 1]) < 1e-6
    assert max_err(a, b) > 1e-3


@pytest.mark.parametrize("version", [1, 2])
def test_facts(version, request):
    vae = request.getfixturevalue(f"v{version}")
    expected = {1: (16, 8, 4, 5), 2: (2, 16, 8, 3)}[version]
    assert (vae.latent_channels, vae.spatial_compression, vae.temporal_compression, vae.latent_frames_per_chunk) == expected
    assert vae.family == "stepvideo" and vae.version == version and vae.frames_per_chunk == 17
    exact = {1: [1, 5, 9, 13, 17, 18, 22], 2: [1, 9, 17, 18, 26, 34, 35]}[version]
    assert [t for t in range(1, 36) if vae.is_exact(t)][: len(exact)] == exact
    assert vae.latent_shape((2, 34, 3, 32, 48)) == (2, 2 * vae.latent_frames_per_chunk, vae.latent_channels,
                                                    32 // vae.spatial_compression, 48 // vae.spatial_compression)
