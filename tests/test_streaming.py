"""Streaming equals the in-memory path: same latents, same frames (seam blend included)."""

import pytest
import torch

from videovae.chunk_state import rechunk


def video(T, H=20, W=27, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, T, 3, H, W, generator=g) * 2 - 1


@pytest.mark.parametrize("T", [1, 18, 35])
@pytest.mark.parametrize("piece", [1, 7, 40])
@pytest.mark.parametrize("version", [1, 2])
def test_reconstruct_stream_equals_reconstruct(version, T, piece, request):
    vae = request.getfixturevalue(f"v{version}")
    x = video(T)
    streamed = torch.cat(list(vae.reconstruct_stream(iter(x.split(piece, dim=1)))), dim=1)
    assert streamed.shape == x.shape
    assert (streamed - vae.reconstruct(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("version", [1, 2])
def test_encode_stream_and_decode_stream_equal_in_memory(version, request):
    vae = request.getfixturevalue(f"v{version}")
    x = video(30)
    posterior = vae.encode(x)
    chunks = list(vae.encode_stream(iter(x.split(4, dim=1))))
    assert [c.mean.shape[1] for c in chunks][:1] == [vae.latent_frames_per_chunk]
    assert torch.equal(torch.cat([c.mean for c in chunks], dim=1), posterior.mean)
    assert torch.equal(torch.cat([c.logvar for c in chunks], dim=1), posterior.logvar)
    for blend in (True, False):
        pieces = vae.decode_stream(iter(posterior.mean.split(1, dim=1)), num_frames=30, blend=blend)
        assert torch.equal(torch.cat(list(pieces), dim=1), vae.decode(posterior.mean, num_frames=30, blend=blend))


def test_stream_trim_policy_applies_to_the_whole_length(v2):
    x = video(20)  # v2: 20 frames trim to 18 (17 + 1)
    with pytest.warns(UserWarning, match="dropping the last 2"):
        out = torch.cat(list(v2.reconstruct_stream(iter(x.split(6, dim=1)), policy="trim")), dim=1)
    assert out.shape[1] == 18


def test_stream_strict_names_counts_of_the_whole_video(v2):
    from videovae import FramePolicyError

    with pytest.raises(FramePolicyError, match="20 frames do not round-trip.*18 or 26"):
        list(v2.encode_stream(iter(video(20, H=16, W=16).split(5, dim=1)), policy="strict"))


def test_stream_holds_one_chunk():
    """rechunk never holds more than one output piece: feeding 1-frame pieces of a 100-frame stream
    yields 17-frame chunks as soon as each is complete."""
    fed = []

    def pieces():
        for t in range(100):
            fed.append(t)
            yield torch.full((1, 1, 1), float(t))

    for i, chunk in enumerate(rechunk(pieces(), 17)):
        assert chunk.shape[1] == (17 if i < 5 else 15)
        assert len(fed) == min(17 * (i + 1), 100)  # nothing read ahead of the chunk being yielded
        assert chunk[0, :, 0].tolist() == [float(t) for t in range(17 * i, min(17 * (i + 1), 100))]
