"""The streaming engine: ChunkEncoder / ChunkDecoder own the chunk state, every VideoVAE entry goes
through them, and every family answers the same options the same way (or refuses them clearly)."""

import pytest
import torch

from videovae.engine import ChunkDecoder, ChunkEncoder
from videovae.errors import OptionError, VideoLayoutError


def video(T, H=32, W=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, T, 3, H, W, generator=g) * 2 - 1


def test_the_encoder_holds_frames_until_a_chunk_is_complete(v1):
    encoder = ChunkEncoder(v1.model)
    x = video(20, 20, 27)  # 17 + 3 frames; 20x27 is padded to the spatial factor and cropped back
    assert encoder.push(x[:, :10]) == []  # 10 of 17 frames: nothing to encode yet
    first = encoder.push(x[:, 10:])
    assert [p.mean.shape[1] for p in first] == [v1.latent_frames_per_chunk]
    last = encoder.flush()
    assert len(last) == 1 and last[0].record.frames == 3
    record = encoder.record
    assert (record.frames, record.frame_size) == (20, (20, 27))
    whole = v1.encode(x)
    assert torch.equal(torch.cat([p.mean for p in first + last], dim=1), whole.mean)
    assert whole.record == record


def test_the_decoder_holds_the_seam_frame_and_flush_releases_it(v1):
    z = v1.encode(video(34)).mean  # two chunks
    decoder = ChunkDecoder(v1.model)
    assert decoder.blend  # Step-Video blends its seams by default
    pieces = [decoder.push(z[:, :1])]
    assert pieces[0].shape[1] == 0  # a chunk is not complete yet
    pieces.append(decoder.push(z[:, 1:]))
    assert pieces[-1].shape[1] == 34 - 1  # every frame but the last, held for the next seam
    pieces.append(decoder.flush())
    assert pieces[-1].shape[1] == 1
    assert torch.equal(torch.cat(pieces, dim=1), v1.decode(z))


def test_empty_streams_are_refused_where_the_cause_is_known(v1):
    with pytest.raises(VideoLayoutError, match="no frames were pushed"):
        ChunkEncoder(v1.model).flush()
    with pytest.raises(VideoLayoutError, match="no latents were pushed"):
        ChunkDecoder(v1.model).flush()
    assert list(v1.decode_stream(iter([]))) == []


def test_svd_answers_every_entry_like_stepvideo(svd):
    assert svd.version == 1 and isinstance(svd.version, int)
    x = video(6, 16, 16)
    z = svd.encode(x).mean
    with pytest.raises(OptionError, match="blend applies to families that decode chunks of their own"):
        svd.decode(z, blend=True)
    with pytest.raises(OptionError, match="blend applies"):
        list(svd.decode_stream(iter([z]), blend=True))
    assert torch.equal(svd.decode(z, blend=False), svd.decode(z))  # nothing to blend: off is the same


def test_stepvideo_refuses_windows_and_svd_refuses_overlap_without_windows(v1, svd):
    z = v1.encode(video(17)).mean
    with pytest.raises(OptionError, match="leave them unset"):
        v1.decode(z, chunk_frames=4)
    with pytest.raises(OptionError, match="needs chunk_frames"):
        svd.decode(svd.encode(video(3, 16, 16)).mean, overlap=2)


def test_svd_encodes_in_bounded_windows_with_the_same_latents(svd):
    x = video(40, 16, 16)
    calls = []
    encode_chunk = svd.model.encode_chunk
    svd.model.encode_chunk = lambda chunk: calls.append(chunk.shape[2]) or encode_chunk(chunk)
    try:
        windowed = svd.encode(x).mean
    finally:
        del svd.model.encode_chunk
    assert max(calls) == svd.model.capabilities.encode_window < 40
    whole = svd.model.encode_chunk(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(windowed, whole.chunk(2, dim=2)[0], atol=1e-5, rtol=0)


def test_svd_streams_decode_in_the_declared_windows_so_memory_is_flat(svd):
    """A long reconstruction never hands the model more frames than one window: what bounds its
    memory. The stream equals decode with the same windows."""
    x = video(100, 16, 16)
    chunk, overlap = svd.model.capabilities.stream_window
    sizes = []
    decode_chunk = svd.model.decode_chunk
    svd.model.decode_chunk = lambda z: sizes.append(z.shape[2]) or decode_chunk(z)
    try:
        streamed = torch.cat(list(svd.reconstruct_stream(iter(x.split(7, dim=1)))), dim=1)
    finally:
        del svd.model.decode_chunk
    assert max(sizes) == chunk and len(sizes) > 100 // chunk
    z = svd.encode(x).mean
    expected = svd.decode(z, chunk_frames=chunk, overlap=overlap)
    assert streamed.shape == x.shape
    torch.testing.assert_close(streamed, expected, atol=1e-5, rtol=0)
    # the one-shot decode keeps the reference behaviour: the whole clip at once
    short = z[:, :20]
    assert not torch.allclose(svd.decode(short), svd.decode(short, chunk_frames=chunk, overlap=overlap), atol=1e-6)


def test_one_switch_turns_compile_on_and_off(v1):
    v1.fast_paths(compile={"backend": "eager"})
    try:
        assert "encode_chunk" in v1.model.__dict__ and "decode_chunk" in v1.model.__dict__
    finally:
        v1.fast_paths(compile=False)
    assert "encode_chunk" not in v1.model.__dict__ and "decode_chunk" not in v1.model.__dict__
    x = video(5, 16, 16)
    assert torch.equal(v1.reconstruct(x), v1.reconstruct(x))


def test_a_strict_policy_fails_before_any_chunk_is_encoded(v1):
    from videovae.errors import FramePolicyError

    frames = next(n for n in range(18, 40) if not v1.is_exact(n))
    calls = []
    encode_chunk = v1.model.encode_chunk
    v1.model.encode_chunk = lambda chunk: calls.append(chunk.shape[2]) or encode_chunk(chunk)
    try:
        with pytest.raises(FramePolicyError, match="strict policy"):
            v1.encode(video(frames, 16, 16), policy="strict")
    finally:
        del v1.model.encode_chunk
    assert calls == []  # the first full chunk was not encoded either


def test_a_decoder_built_by_hand_refuses_windows_where_the_family_has_chunks(v1):
    with pytest.raises(OptionError, match="leave them unset"):
        ChunkDecoder(v1.model, window=(4, 1))
