"""Memory budgets (`max_memory=`): the counted peak of a plan is what the real run allocates, the
plan stays within its budget, a budget below the minimum is refused with the minimum in the
message, and a budgeted run equals the untiled one."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import videovae as vv
from videovae.errors import OptionError
from videovae.families.stepvideo import StepVideoConfig, StepVideoVAE
from videovae.families.svd import SVDVAE, SVDConfig
from videovae.memory_plan import MAX_GRID, _LiveBytes, _simulate, chunk_peak, grid_tile, parse_memory, plan_tiles
from videovae.tiling import Tiles

SMALL_V1 = StepVideoConfig(
    version=1, z_channels=8, encoder_in_width=32, encoder_widths=(32, 32, 64), encoder_blocks=1,
    encoder_temporal_levels=(1,), decoder_widths=(32, 32, 64), decoder_blocks=1, decoder_temporal_levels=(2,),
)
SMALL_V2 = StepVideoConfig(
    version=2, z_channels=4, encoder_in_width=32, encoder_widths=(32, 32, 64), encoder_blocks=1,
    encoder_temporal_levels=(), decoder_widths=(32, 32, 64), decoder_blocks=1, decoder_temporal_levels=(),
    patch_channels=4 * 4 * 8,
)


@pytest.fixture(scope="module")
def v1_small():
    torch.manual_seed(0)
    return StepVideoVAE(SMALL_V1).eval()


def _real_peak(model, op: str, x: torch.Tensor, tile) -> int:
    """The bytes the real CPU run allocates (the same counter, on real tensors)."""
    s = model.frame_layout.spatial_factor
    size = x.shape[-2:] if op == "encode" else (x.shape[-2] * s, x.shape[-1] * s)
    tiles = Tiles(tuple(size), tile, s) if tile is not None else None
    counter = _LiveBytes(set())
    with torch.no_grad(), counter:
        out = getattr(model, f"{op}_chunk")(x, tiles) if tiles is not None else getattr(model, f"{op}_chunk")(x)
        del out
    return max(w + r for w, r in counter.events)


@pytest.mark.parametrize("text, size", [
    ("4GB", 4 * 10**9), ("4 GiB", 4 * 2**30), ("512MiB", 512 * 2**20), ("1.5g", 1_500_000_000), ("2048", 2048),
    (10**6, 10**6),
])
def test_budgets_are_read_in_every_form(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("value, message", [
    ("lots", "is not a size"), ("4 parsecs", "is not a size"), ("0GB", "must be positive"), (-5, "must be positive"),
    (2.5, "must be bytes"), (True, "must be bytes"),
])
def test_bad_budgets_are_refused(value, message):
    with pytest.raises(OptionError, match=message):
        parse_memory(value)


def test_grid_tiles_are_multiples_of_the_spatial_factor():
    assert grid_tile((64, 96), 2, 8) == (32, 48)
    assert grid_tile((64, 96), 3, 8) == (24, 32)   # 64 / 3 = 21.3 -> 24
    assert grid_tile((64, 96), MAX_GRID, 8) == (8, 16)
    assert grid_tile((16, 16), 8, 8) == (8, 8)     # never below the factor


@pytest.mark.parametrize("op", ["encode", "decode"])
@pytest.mark.parametrize("tile", [None, (16, 16), (8, 8)])
def test_the_counted_peak_is_what_the_real_run_allocates(v1_small, op, tile):
    """(8, 8) on 48x64 is a 6 x 8 grid: counted on a 3 x 3 surrogate frame and scaled."""
    x = torch.randn(1, 3, 9, 48, 64) if op == "encode" else torch.randn(1, 8, 5, 12, 16)
    counted = chunk_peak(v1_small, op, tuple(x.shape), tile)
    real = _real_peak(v1_small, op, x, tile)
    assert abs(counted - real) <= 0.02 * real, (counted, real)


def test_the_surrogate_frame_counts_what_the_whole_grid_does(v1_small):
    shape = (1, 8, 5, 16, 16)  # 64 x 64 output (spatial factor 4), tiles of 8: an 8 x 8 grid
    whole = max(w + r for w, r in _simulate(v1_small, "decode", shape, (8, 8), set()))
    assert abs(chunk_peak(v1_small, "decode", shape, (8, 8)) - whole) <= 0.01 * whole


def test_a_plan_stays_within_its_budget_and_picks_the_fewest_tiles(v1_small):
    shape = (1, 8, 5, 16, 16)
    untiled = chunk_peak(v1_small, "decode", shape, None)
    assert plan_tiles(v1_small, "decode", shape, untiled).tile is None  # it fits: no tiles
    plan = plan_tiles(v1_small, "decode", shape, int(untiled * 0.8))
    assert plan.tile is not None and plan.peak <= plan.budget
    assert plan.minimum <= plan.peak
    z = torch.randn(shape)
    assert _real_peak(v1_small, "decode", z, plan.tile) <= plan.budget
    coarser = [t for t in (grid_tile((64, 64), k, 4) for k in range(2, MAX_GRID + 1)) if t[0] > plan.tile[0]]
    assert all(chunk_peak(v1_small, "decode", shape, t) > plan.budget for t in coarser)


def test_a_budget_below_the_minimum_names_it(v1_small):
    shape = (1, 8, 5, 16, 16)
    minimum = plan_tiles(v1_small, "decode", shape, 10**12).minimum
    with pytest.raises(OptionError, match=r"max_memory 1.00 MB is below the .* MB that exact tiling needs to decode a "
                                          r"chunk of 5 latent frames of 64x64 pixels .*give at least"):
        plan_tiles(v1_small, "decode", shape, 10**6)
    assert plan_tiles(v1_small, "decode", shape, minimum).peak <= minimum


@pytest.mark.parametrize("family", ["v1", "v2", "svd"])
def test_a_budgeted_run_equals_the_untiled_one(family):
    torch.manual_seed(0)
    model = {"v1": lambda: StepVideoVAE(SMALL_V1), "v2": lambda: StepVideoVAE(SMALL_V2),
             "svd": lambda: SVDVAE(SVDConfig(block_out_channels=(32, 32), layers_per_block=1))}[family]()
    vae = vv.VideoVAE(model.eval())
    video = torch.rand(2, 9, 3, 48, 64) * 2 - 1
    with torch.no_grad():
        expected = vae.reconstruct(video)
        enc = vae.memory_plan("encode", 48, 64, 10**12, frames=9, batch=2)
        dec = vae.memory_plan("decode", 48, 64, 10**12, frames=9, batch=2)
        budget = max(enc.minimum, dec.minimum) + 1
        assert vae.memory_plan("decode", 48, 64, budget, frames=9, batch=2).tile is not None
        out = vae.reconstruct(video, max_memory=budget)
        streamed = torch.cat(list(vae.reconstruct_stream(video.split(4, dim=1), max_memory=budget)), dim=1)
        streamed_untiled = torch.cat(list(vae.reconstruct_stream(video.split(4, dim=1))), dim=1)
    assert (out - expected).abs().max().item() <= 1e-4
    assert (streamed - streamed_untiled).abs().max().item() <= 1e-4


def test_tile_and_max_memory_are_one_choice(v1_small):
    vae = vv.VideoVAE(v1_small)
    with pytest.raises(OptionError, match="give tile or max_memory, not both"):
        vae.encode(torch.zeros(1, 9, 3, 16, 16), tile=8, max_memory="1GB")
    with pytest.raises(OptionError, match="is not a size"):
        vae.decode(torch.zeros(1, 5, 8, 2, 2), max_memory="a lot")
    with pytest.raises(OptionError, match="op must be"):
        vae.memory_plan("reconstruct", 16, 16, "1GB")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("returned", [False, True])
def test_return_freed_memory_makes_freed_buffers_leave_the_heap(returned):
    """glibc keeps a freed 16 MiB buffer in its heap once an earlier large free has raised its mmap
    threshold; after return_freed_memory() the buffer goes back to the system at once (RSS falls by
    its size). In a subprocess: the setting is process-wide and permanent."""
    code = (
        "import numpy\n"
        "from videovae.memory_plan import return_freed_memory\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        f"assert {returned} is False or return_freed_memory()\n"
        "a = numpy.ones(2 ** 21); del a\n"  # the first large free: glibc raises its threshold to 16 MiB
        "before = rss(); c = numpy.ones(2 ** 21); held = rss(); del c\n"
        "print((held - before) / 2 ** 20, (held - rss()) / 2 ** 20)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    grew, released = map(float, done.stdout.split())
    assert grew > 15
    assert (released > 15) if returned else (released < 1)
