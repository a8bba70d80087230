"""Frame policies: any T >= 1 and any H, W >= 1 under pad; trim warns and gives the documented shape;
strict names the nearest valid counts."""

import pytest
import torch

from videovae import FramePolicy, FramePolicyError
from videovae.chunking import FrameLayout

FRAME_COUNTS = [1, 2, 5, 8, 9, 16, 17, 18, 20, 26, 33, 34, 35, 51]
V1 = FrameLayout(17, 5, 4, 8)
V2 = FrameLayout(17, 3, 8, 16)


def video(T, H=20, W=27, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, T, 3, H, W, generator=g) * 2 - 1


def largest_exact_at_or_below(layout, T):
    return max(t for t in range(1, T + 1) if layout.is_exact(t))


@pytest.mark.parametrize("T", FRAME_COUNTS)
@pytest.mark.parametrize("version", [1, 2])
def test_pad_reconstructs_the_exact_input_shape(T, version, request):
    vae = request.getfixturevalue(f"v{version}")
    x = video(T)  # 20 x 27: not multiples of 8 or 16
    out = vae.reconstruct(x)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("T", [2, 8, 16, 20, 33])
@pytest.mark.parametrize("version", [1, 2])
def test_trim_drops_to_the_largest_exact_length_and_warns(T, version, request):
    vae = request.getfixturevalue(f"v{version}")
    layout = vae.frame_layout
    expected_T = largest_exact_at_or_below(layout, T)
    s = vae.spatial_compression
    x = video(T, H=2 * s + 3, W=s + 1)
    with pytest.warns(UserWarning, match="trim policy"):
        out = vae.reconstruct(x, policy="trim")
    assert out.shape == (1, expected_T, 3, 2 * s, s)
    # what was kept equals encoding the trimmed video directly
    trimmed = x[:, :expected_T, :, : 2 * s, :s]
    assert torch.allclose(out, vae.reconstruct(trimmed, policy="strict"), atol=1e-5)


@pytest.mark.parametrize("T", FRAME_COUNTS)
@pytest.mark.parametrize("layout", [V1, V2], ids=["v1", "v2"])
def test_strict_accepts_exact_lengths_and_names_neighbours_otherwise(T, layout):
    from videovae.chunking import apply_policy

    x = torch.zeros(1, T, 3, layout.spatial_factor, layout.spatial_factor)
    if layout.is_exact(T):
        out, record = apply_policy(x, layout, FramePolicy("strict", "strict"))
        assert out.shape == x.shape and record.frames == T
        return
    below = largest_exact_at_or_below(layout, T)
    above = min(t for t in range(T, T + 40) if layout.is_exact(t))
    with pytest.raises(FramePolicyError, match=rf"nearest valid frame counts are {below} or {above}"):
        apply_policy(x, layout, FramePolicy("strict", "strict"))


def test_strict_rejects_sizes_naming_the_nearest_multiples(v2):
    with pytest.raises(FramePolicyError, match="H=20 is not a multiple of 16; the nearest valid sizes are 16 or 32"):
        v2.encode(video(17, H=20, W=32), policy="strict")


def test_strict_exact_input_matches_pad(v2):
    x = video(17, H=32, W=48)
    assert torch.equal(v2.reconstruct(x, policy="strict"), v2.reconstruct(x, policy="pad"))


def test_policies_per_axis(v1):
    x = video(18, H=12, W=12)  # 18 frames are exact for v1 (17 + 1)
    out = v1.reconstruct(x, policy=FramePolicy(time="strict", space="pad"))
    assert out.shape == x.shape


def test_pad_replicates_the_last_frame_and_record_undoes_it():
    from videovae.chunking import apply_policy, undo

    x = video(2, H=5, W=7)
    padded, record = apply_policy(x, V2, FramePolicy())
    assert padded.shape == (1, 9, 3, 16, 16)
    assert torch.equal(padded[:, 8], x[:, 1, :, torch.arange(16).clamp(max=4)][..., torch.arange(16).clamp(max=6)])
    assert torch.equal(undo(padded, record), x)


def test_trim_smaller_than_the_spatial_factor_is_an_error(v2):
    with pytest.raises(FramePolicyError, match="smaller than the model's spatial factor 16"):
        v2.encode(video(1, H=8, W=32), policy="trim")


def test_unknown_policy_name():
    with pytest.raises(FramePolicyError, match="unknown time policy 'crop'"):
        FramePolicy.coerce("crop")


def test_one_pixel_and_one_frame(v2):
    x = video(1, H=1, W=1)
    assert v2.reconstruct(x).shape == (1, 1, 3, 1, 1)
