"""Exact tiling: tile by tile in space equals untiled, for every family, encode and decode, through
the API, the streams and the model; and the tile sizes a user can get wrong."""

from __future__ import annotations

import pytest
import torch

from videovae.errors import OptionError
from videovae.families.stepvideo import StepVideoConfig, StepVideoVAE
from videovae.families.svd import SVDVAE, SVDConfig
from videovae.layers import GroupNorm
from videovae.tiling import Tiles, parse_tile
from videovae_kernels import group_norm

from conftest import stepvideo_io

TOL = 1e-4


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= tol, f"max |tiled - untiled| = {err:.3g} > {tol}"


# -- the grid and the statistics --------------------------------------------------------------------


@pytest.mark.parametrize("tile, expected", [(256, (256, 256)), ((128, 64), (128, 64)), ("64x96", (64, 96)),
                                            ("32", (32, 32)), (None, None)])
def test_tile_sizes_are_read_in_every_form(tile, expected):
    assert parse_tile(tile) == expected


@pytest.mark.parametrize("tile, message", [
    (0, "must be positive"), ((-8, 8), "must be positive"), ("8x8x8", "is not a size"), ("big", "is not a size"),
    (2.5, "must be an int"), (True, "must be an int"),
])
def test_bad_tile_sizes_are_refused(tile, message):
    with pytest.raises(OptionError, match=message):
        parse_tile(tile)


def test_a_tile_off_the_spatial_grid_names_the_sizes_that_work(v1):
    with pytest.raises(OptionError, match=r"tile 12x16 is not a multiple of this model's spatial factor 8: use a height of 8 or 16"):
        v1.decode(torch.zeros(1, 1, 16, 4, 4), tile=(12, 16))
    with pytest.raises(OptionError, match="spatial factor 8"):
        v1.encode(torch.zeros(1, 1, 3, 32, 32), tile="20x20")  # refused before any work


def test_cuts_follow_each_activation_down_the_levels():
    tiles = Tiles((40, 24), (16, 16), align=8)
    assert tiles.count == 6  # rows 0-16-32-40, columns 0-16-24
    assert tiles._cuts(0, 40) == [(0, 16), (16, 32), (32, 40)]
    assert tiles._cuts(0, 5) == [(0, 2), (2, 4), (4, 5)]  # the same cuts at 1/8 size
    assert tiles._cuts(1, 48) == [(0, 32), (32, 48)]      # and at 2x


@pytest.mark.parametrize("per_frame", [False, True])
@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_statistics_over_tiles_are_those_of_the_whole(per_frame, offset):
    torch.manual_seed(0)
    norm = GroupNorm(8, 4, eps=1e-5, per_frame=per_frame)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    x = torch.randn(2, 8, 3, 13, 11) * 2 + offset  # a large mean: the naive sum-of-squares form fails here
    tiles = Tiles((13 * 8, 11 * 8), (40, 32), align=8)  # x is one level down (1/8 size)
    stats = tiles.stats(norm, x)
    expected = group_norm(x, 4, norm.weight, norm.bias, 1e-5, per_frame=per_frame, silu=True)
    # at a mean of 1000 one float32 ulp of x is 6e-5, a few 1e-5 once normalised: both sides round so
    _close(tiles.normalize(norm, stats, x, silu=True), expected, 1e-4 if offset == 0 else 5e-4)


def test_statistics_of_images():
    torch.manual_seed(0)
    norm = GroupNorm(6, 3, eps=1e-6)
    x = torch.randn(4, 6, 9, 10) + 5
    tiles = Tiles((9, 10), (4, 3), align=1)
    _close(tiles.normalize(norm, tiles.stats(norm, x), x), torch.nn.functional.group_norm(x, 3, eps=1e-6), 1e-5)


# -- every family, through the model --------------------------------------------------------------


def _random_models():
    torch.manual_seed(0)
    v1 = StepVideoVAE(StepVideoConfig(version=1, z_channels=4, encoder_in_width=32, encoder_widths=(32, 64, 64),
                                      encoder_blocks=1, encoder_temporal_levels=(1,), decoder_widths=(32, 64, 64),
                                      decoder_blocks=2, decoder_temporal_levels=(2,)))
    v2 = StepVideoVAE(StepVideoConfig(version=2, z_channels=4, encoder_in_width=32, encoder_widths=(32, 32, 64),
                                      encoder_blocks=1, encoder_temporal_levels=(1,), decoder_widths=(32, 32, 64),
                                      decoder_blocks=1, decoder_temporal_levels=(2,), patch_channels=4 * 4 * 8))
    svd = SVDVAE(SVDConfig(block_out_channels=(32, 32, 64), layers_per_block=2, norm_num_groups=8, latent_channels=4))
    return {"v1": v1.eval(), "v2": v2.eval(), "svd": svd.eval()}


MODELS = _random_models()


@pytest.mark.parametrize("name", ["v1", "v2", "svd"])
@pytest.mark.parametrize("frames", [1, 5])
def test_random_models_tile_exactly_at_sizes_off_the_tile(name, frames):
    """Three tile sizes (one tile of a single factor), frame sizes that are not multiples of them,
    batch 2, one-frame clips."""
    model = MODELS[name]
    S = model.frame_layout.spatial_factor
    H, W = 3 * S, 5 * S
    torch.manual_seed(1)
    x = torch.randn(2, 3, frames, H, W)
    with torch.no_grad():
        moments = model.encode_chunk(x)
        z = moments[:, : model.latent_channels].contiguous()
        frames_out = model.decode_chunk(z)
        for tile in [(S, S), (2 * S, 3 * S), (2 * S, 4 * S)]:
            tiles = Tiles((H, W), tile, S)
            assert tiles.count > 1
            _close(model.encode_chunk(x, tiles), moments)
            _close(model.decode_chunk(z, tiles), frames_out)


def test_tiles_larger_than_the_frame_are_one_tile():
    model = MODELS["v1"]
    S = model.frame_layout.spatial_factor
    tiles = Tiles((2 * S, 2 * S), (64 * S, 64 * S), S)
    assert tiles.count == 1
    x = torch.randn(1, 3, 5, 2 * S, 2 * S)
    with torch.no_grad():
        _close(model.encode_chunk(x, tiles), model.encode_chunk(x))


@pytest.mark.parametrize("fast", [False, True])
def test_the_fast_paths_tile_exactly(fast):
    model = MODELS["v1"].fast_paths(winograd=fast, phase_split=fast)
    S = model.frame_layout.spatial_factor
    z = torch.randn(1, 4, 3, 3, 2)
    try:
        with torch.no_grad():
            _close(model.decode_chunk(z, Tiles((3 * S, 2 * S), (S, S), S)), model.decode_chunk(z))
    finally:
        model.fast_paths(winograd=True, phase_split=True)


# -- the fixtures, through the API and the streams --------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_stepvideo_fixtures_tile_exactly_through_the_api(version, v1, v2):
    vae = v1 if version == 1 else v2
    io = stepvideo_io(version)
    x = io["x_17f_32x48"]
    plain = vae.encode(x)
    decoded = vae.decode(plain.mean)
    for tile in [16, (32, 16)]:  # 2x3 and 1x3 tiles of 32x48 (multiples of 8 and 16)
        tiled = vae.encode(x, tile=tile)
        _close(tiled.mean, plain.mean)
        _close(tiled.logvar, plain.logvar)
        _close(vae.decode(plain.mean, tile=tile), decoded)
    _close(decoded, io["dec_17f_32x48"], 1e-3)  # and untiled is the reference (as in the parity tests)
    _close(vae.reconstruct(io["x_18f"], tile=(16, 32)), vae.reconstruct(io["x_18f"]))


def test_stepvideo_streams_tile_exactly(v1):
    io = stepvideo_io(1)
    x = io["x_18f"]  # two chunks, the second of one frame
    tile = (16, 24)
    latents = list(v1.encode_stream(x.split(5, dim=1), tile=tile))
    plain = v1.encode(x)
    _close(torch.cat([p.mean for p in latents], dim=1), plain.mean)
    pieces = list(v1.decode_stream(plain.mean.split(2, dim=1), tile=tile))
    _close(torch.cat(pieces, dim=1), v1.decode(plain.mean))
    _close(torch.cat(list(v1.reconstruct_stream(x.split(7, dim=1), tile=tile)), dim=1), v1.decode(plain))


def test_svd_fixture_tiles_exactly_through_the_api_and_streams(svd, svd_io):
    video = svd_io["input"].unsqueeze(0)  # (1, T, C, H, W)
    plain = svd.encode(video)
    decoded = svd.decode(plain.mean)
    for tile in [16, (32, 48), (24, 64)]:  # 4x4, 2x2 and 3x1 tiles of 64x64
        _close(svd.encode(video, tile=tile).mean, plain.mean)
        _close(svd.decode(plain.mean, tile=tile), decoded)
    streamed = torch.cat(list(svd.decode_stream([plain.mean], tile=32, chunk_frames=2, overlap=1)), dim=1)
    _close(streamed, torch.cat(list(svd.decode_stream([plain.mean], chunk_frames=2, overlap=1)), dim=1))


# -- the approximate mode: diffusers' blended tiles --------------------------------------------------


def _diffusers_tiled(run, x, tile: int, stride: int, scale: int):
    """diffusers' tiled_decode loop (AutoencoderKLWan), with its own blend_v / blend_h."""
    wan = pytest.importorskip("diffusers.models.autoencoders.autoencoder_kl_wan").AutoencoderKLWan
    H, W = x.shape[-2:]
    rows = [[run(x[..., i : i + tile, j : j + tile]) for j in range(0, W, stride)] for i in range(0, H, stride)]
    blend = (tile - stride) * scale
    result = []
    for i, row in enumerate(rows):
        kept = []
        for j, t in enumerate(row):
            if i > 0:
                t = wan.blend_v(None, rows[i - 1][j], t, blend)
            if j > 0:
                t = wan.blend_h(None, row[j - 1], t, blend)
            kept.append(t[..., : stride * scale, : stride * scale])
        result.append(torch.cat(kept, dim=-1))
    return torch.cat(result, dim=-2)[..., : H * scale, : W * scale]


def test_blended_tiles_are_diffusers_tiling(v1):
    vae = v1
    z = torch.randn(1, vae.latent_channels, 3, 11, 9)  # (B, z, T_lat, h, w): partial tiles at both edges
    with torch.no_grad():
        expected = _diffusers_tiled(lambda w: vae.model.decode_chunk(w), z, tile=4, stride=3, scale=8)
        got = vae.decode(z.transpose(1, 2), tile=32, tile_overlap=8).transpose(1, 2)
        exact = vae.decode(z.transpose(1, 2)).transpose(1, 2)
    assert got.shape == exact.shape == expected.shape
    _close(got, expected, 1e-5)
    assert (got - exact).abs().max().item() > 1e-2  # approximate: per-tile statistics differ from the whole frame's


def test_blended_tiles_need_a_tile_and_a_sound_overlap(v1):
    with pytest.raises(OptionError, match="needs a tile size"):
        v1.decode(torch.zeros(1, 1, 16, 4, 4), tile_overlap=8)
    with pytest.raises(OptionError, match="not a multiple of this model's spatial factor 8"):
        v1.decode(torch.zeros(1, 1, 16, 4, 4), tile=32, tile_overlap=4)
    with pytest.raises(OptionError, match="must be smaller than the tile"):
        v1.decode(torch.zeros(1, 1, 16, 4, 4), tile=16, tile_overlap=16)
