"""The SVD VAE as a videovae family: `videovae.load` of every layout (diffusers folder, weights file
with its config.json, original single file), the (B, T, C, H, W) API, overlapped chunked decoding,
and the checkpoint layout conversion. CPU, float32, tiny fixtures from diffusers 0.42.1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import videovae
from conftest import SVD_ATOL, stepvideo_weights
from videovae.chunk_state import OverlapBlender, crossfade_weights, overlap_windows, overlapped_windows
from videovae.errors import CheckpointMismatchError
from videovae.convert import convert_svd_checkpoint
from videovae.families.svd_layouts import convert_layout

FIXTURES = Path(__file__).parent / "fixtures" / "svd"
DIFFUSERS_DIR = FIXTURES / "svd_vae_tiny_diffusers"
WEIGHTS = DIFFUSERS_DIR / "diffusion_pytorch_model.safetensors"
ORIGINAL = FIXTURES / "svd_vae_tiny_original.safetensors"
ATOL = SVD_ATOL



def smooth_video(frames: int = 16, size: int = 32) -> torch.Tensor:
    """(1, T, 3, H, W) in [-1, 1]: moving sinusoids, so neighbouring frames are alike."""
    t = torch.linspace(0, 1, frames).view(frames, 1, 1)
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    channels = [torch.sin(3 * x + 4 * t) * torch.cos(2 * y), torch.cos(3 * y - 3 * t), x * y * (1 - t)]
    return torch.stack(channels, dim=1).unsqueeze(0)


# ---- loading every layout ------------------------------------------------------------------------


def weights_with_config(tmp_path: Path) -> Path:
    shutil.copy(WEIGHTS, tmp_path / "vae.safetensors")
    shutil.copy(DIFFUSERS_DIR / "config.json", tmp_path / "config.json")
    return tmp_path / "vae.safetensors"


LAYOUTS = {
    "diffusers folder": lambda tmp: DIFFUSERS_DIR,
    "weights file + config.json beside it": weights_with_config,
    "original single file": lambda tmp: ORIGINAL,
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_loads_and_matches_the_fixtures(layout, tmp_path, svd_io):
    vae = videovae.load(LAYOUTS[layout](tmp_path), dtype=torch.float32)
    assert (vae.family, vae.version, vae.latent_channels) == ("svd", 1, 4)
    assert (vae.spatial_compression, vae.temporal_compression, vae.frames_per_chunk) == (2, 1, None)
    assert vae.config.block_out_channels == (32, 64) and vae.config.scaling_factor == 0.18215
    video = svd_io["input"].unsqueeze(0)  # (B=1, T=3, C, H, W)
    posterior = vae.encode(video)
    assert posterior.mean.shape == (1, 3, 4, 32, 32)
    torch.testing.assert_close(posterior.mean[0], svd_io["latent_mean"], atol=ATOL, rtol=0)
    torch.testing.assert_close(posterior.logvar[0], svd_io["latent_logvar"], atol=ATOL, rtol=0)
    decoded = vae.decode(posterior.mode())
    assert decoded.shape == (1, 3, 3, 64, 64)
    torch.testing.assert_close(decoded[0], svd_io["decoded"], atol=ATOL, rtol=0)


def test_config_json_supplies_what_the_weights_do_not_hold(tmp_path):
    config = json.loads((DIFFUSERS_DIR / "config.json").read_text())
    weights = weights_with_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "scaling_factor": 0.5, "force_upcast": False}))
    vae = videovae.load(weights)
    assert (vae.config.scaling_factor, vae.config.force_upcast) == (0.5, False)
    # the weights alone: the released model's values
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(WEIGHTS, alone / "weights.safetensors")
    assert videovae.load(alone / "weights.safetensors").config.scaling_factor == 0.18215


def test_a_config_json_that_contradicts_the_weights_is_refused(tmp_path):
    config = json.loads((DIFFUSERS_DIR / "config.json").read_text())
    weights = weights_with_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "latent_channels": 8}))
    with pytest.raises(CheckpointMismatchError, match="latent_channels: config.json 8 vs weights 4"):
        videovae.load(weights)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNetSpatioTemporalConditionModel"}))
    with pytest.raises(CheckpointMismatchError, match="config of a UNetSpatioTemporalConditionModel"):
        videovae.load(weights)


def test_a_full_original_checkpoint_loads_only_its_vae(tmp_path, svd_io):
    state = load_file(ORIGINAL)
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 8, 3, 3, dtype=torch.float16)
    state["conditioner.embedders.0.open_clip.model.proj"] = torch.zeros(4, 4, dtype=torch.float16)
    path = tmp_path / "svd_full.safetensors"
    save_file(state, str(path))
    vae = videovae.load(path)
    assert vae.dtype == torch.float32  # the VAE's tensors decide, not the UNet's
    decoded = vae.decode(svd_io["latent_mean"].unsqueeze(0))
    torch.testing.assert_close(decoded[0], svd_io["decoded"], atol=ATOL, rtol=0)


def test_folder_and_file_errors_are_clear(tmp_path):
    with pytest.raises(videovae.CheckpointError, match="no .safetensors file"):
        videovae.load(tmp_path)
    partial = load_file(WEIGHTS)
    del partial["decoder.up_blocks.1.resnets.2.temporal_res_block.conv2.bias"]
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"detected as SVD VAE.*\n.*1 missing: decoder\.up_blocks\.1\.resnets\.2"):
        videovae.load(tmp_path / "partial.safetensors")
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="Step-Video VAE .* or of an SVD VAE") as info:
        videovae.load(tmp_path / "foreign.safetensors")
    assert "first_stage_model.decoder.conv_out.time_mix_conv.weight" in str(info.value)


def test_stepvideo_still_loads_beside_svd(svd):
    v2 = videovae.load(stepvideo_weights(2))
    assert (v2.family, v2.version, svd.family) == ("stepvideo", 2, "svd")


# ---- the (B, T, C, H, W) API -----------------------------------------------------------------------


def test_any_length_and_size_round_trips_with_the_pad_policy(svd):
    video = smooth_video(5, 32)[..., :31, :29]  # H, W not multiples of the spatial factor 2
    assert svd.latent_shape(video.shape) == (1, 5, 4, 16, 15)
    posterior = svd.encode(video)
    assert posterior.mean.shape == (1, 5, 4, 16, 15)
    assert svd.reconstruct(video).shape == video.shape
    with pytest.raises(videovae.FramePolicyError, match="multiple of 2"):
        svd.encode(video, policy="strict")


def test_encoding_is_per_frame_and_decoding_mixes_the_clip(svd):
    video = smooth_video(4, 16)
    together = svd.encode(video).mean
    apart = torch.cat([svd.encode(video[:, t : t + 1]).mean for t in range(4)], dim=1)
    torch.testing.assert_close(apart, together, atol=ATOL, rtol=0)
    full = svd.decode(together)
    first_alone = svd.decode(together[:, :1])
    assert (full[:, 0] - first_alone[:, 0]).abs().max() > 1e-3  # frame 0 sees the later frames


# ---- overlapped chunked decode ---------------------------------------------------------------------


def test_window_plans():
    assert overlap_windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert overlap_windows(11, 4, 1) == [(0, 4), (3, 7), (6, 10), (7, 11)]  # last moved back: full context
    assert overlap_windows(11, 4, 0) == [(0, 4), (4, 8), (8, 11)]  # plain chunks, as the pipeline
    assert overlap_windows(3, 8, 2) == [(0, 3)]
    for bad in [(10, 4, 4), (10, 0, 0), (10, 4, -1)]:
        with pytest.raises(ValueError, match="overlap|chunk_frames"):
            overlap_windows(*bad)
    for total in range(1, 12):
        for chunk in range(1, 6):
            for overlap in range(chunk):
                stream = torch.arange(total, dtype=torch.float32).view(1, total, 1)
                for piece in (1, 3):
                    windows = list(overlapped_windows(stream.split(piece, dim=1), chunk, overlap))
                    assert [(s, s + w.shape[1]) for s, w in windows] == overlap_windows(total, chunk, overlap)
                    assert all(torch.equal(w[0, :, 0], torch.arange(s, s + w.shape[1]).float()) for s, w in windows)
                # weights of overlapping windows sum to one: identical windows blend to themselves
                blender = OverlapBlender()
                pieces = [blender.push(s, w * 2) for s, w in overlapped_windows([stream], chunk, overlap)]
                blended = torch.cat([*pieces, blender.flush()], dim=1)
                torch.testing.assert_close(blended, stream * 2, atol=1e-6, rtol=0)
    assert crossfade_weights(5, 2, 1).tolist() == pytest.approx([1 / 3, 2 / 3, 1, 1, 0.5])


def test_plain_chunks_reproduce_the_pipeline_chunks(svd, svd_io):
    z = svd_io["latent_mean"].unsqueeze(0)
    chunked = svd.decode(z, chunk_frames=2)  # windows [0:2], [2:3]: decode_chunk_size=2
    torch.testing.assert_close(chunked[0], svd_io["decoded_chunked_2_1"], atol=ATOL, rtol=0)
    torch.testing.assert_close(svd.decode(z, chunk_frames=3)[0], svd_io["decoded"], atol=ATOL, rtol=0)


def seam_errors(vae, frames: int = 12, size: int = 24, chunk: int = 6, overlap: int = 2) -> dict[str, float]:
    """|chunked - full| (max and RMS) over a smooth clip: plain chunks vs overlapped windows of the
    same size. Also used by benchmarks/bench_svd.py."""
    z = vae.encode(smooth_video(frames, size)).mode()
    full = vae.decode(z)
    plain = vae.decode(z, chunk_frames=chunk)
    overlapped = vae.decode(z, chunk_frames=chunk, overlap=overlap)
    return {
        "plain_max": (plain - full).abs().max().item(),
        "overlapped_max": (overlapped - full).abs().max().item(),
        "plain_rms": (plain - full).pow(2).mean().sqrt().item(),
        "overlapped_rms": (overlapped - full).pow(2).mean().sqrt().item(),
    }


def test_overlapped_chunks_have_smaller_seams_than_plain_chunks(svd):
    errors = seam_errors(svd)
    # measured on these fixture weights: plain max 1.51 rms 0.103; overlapped max 0.575 rms 0.066
    assert errors["overlapped_max"] < 0.8 * errors["plain_max"]
    assert errors["overlapped_rms"] < 0.8 * errors["plain_rms"]


def test_decode_stream_with_windows_equals_decode(svd):
    z = svd.encode(smooth_video(9, 8)).mode()
    whole = svd.decode(z, chunk_frames=4, overlap=1)
    for piece in (1, 2, 5):
        streamed = list(svd.decode_stream(z.split(piece, dim=1), chunk_frames=4, overlap=1))
        # equal up to float rounding (the windows are copies at other addresses: other conv paths)
        torch.testing.assert_close(torch.cat(streamed, dim=1), whole, atol=1e-5, rtol=0)
    cut = torch.cat(list(svd.decode_stream(z.split(2, dim=1), num_frames=7, chunk_frames=4, overlap=1)), dim=1)
    torch.testing.assert_close(cut, whole[:, :7], atol=1e-5, rtol=0)
    assert svd.decode(z, num_frames=7, chunk_frames=4, overlap=1).shape[1] == 7


def test_families_with_their_own_chunks_refuse_windows(v1):
    z = torch.zeros(1, 3, 16, 4, 4)
    with pytest.raises(ValueError, match="stepvideo decodes its own chunks of 5 latent frames"):
        v1.decode(z, chunk_frames=2)
    with pytest.raises(ValueError, match="decodes its own chunks"):
        list(v1.decode_stream([z], chunk_frames=2, overlap=1))


# ---- layout conversion -----------------------------------------------------------------------------


def assert_same_file(got: Path, want: dict[str, torch.Tensor]) -> None:
    got = load_file(got)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k].dtype != want[k].dtype or not torch.equal(got[k], want[k])] == []


def test_file_conversion_round_trips_are_bit_exact(tmp_path):
    diffusers_sd, original_sd = load_file(WEIGHTS), load_file(ORIGINAL)
    route_a = {k: v for k, v in original_sd.items() if not k.startswith("first_stage_model.encoder.")}

    summary = convert_svd_checkpoint(DIFFUSERS_DIR, tmp_path / "orig.safetensors", "original")
    assert (summary["from"], summary["to"], summary["tensors"]) == ("diffusers", "original", len(route_a))
    assert_same_file(tmp_path / "orig.safetensors", route_a)
    convert_svd_checkpoint(tmp_path / "orig.safetensors", tmp_path / "back.safetensors", "diffusers")
    assert_same_file(tmp_path / "back.safetensors", diffusers_sd)

    convert_svd_checkpoint(ORIGINAL, tmp_path / "as_diffusers.safetensors", "diffusers")
    assert_same_file(tmp_path / "as_diffusers.safetensors", diffusers_sd)
    convert_svd_checkpoint(tmp_path / "as_diffusers.safetensors", tmp_path / "orig2.safetensors", "original")
    assert_same_file(tmp_path / "orig2.safetensors", route_a)

    # the first-stage encoder route (quant_conv folded into conv_out) round-trips too
    route_b = {k: v for k, v in original_sd.items() if k.startswith("first_stage_model.")}
    as_diffusers = convert_layout(route_b, "diffusers")
    assert_same_file_dict(convert_layout(as_diffusers, "original", encoder_prefix="first_stage_model."), route_b)
    # fp16 on request
    convert_svd_checkpoint(ORIGINAL, tmp_path / "half.safetensors", "diffusers", dtype=torch.float16)
    assert {t.dtype for t in load_file(tmp_path / "half.safetensors").values()} == {torch.float16}


def assert_same_file_dict(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k].dtype != want[k].dtype or not torch.equal(got[k], want[k])] == []


def test_conversion_to_a_diffusers_folder_loads_in_diffusers(tmp_path, svd_io):
    diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed")
    convert_svd_checkpoint(ORIGINAL, tmp_path / "vae", "diffusers")
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["_class_name"] == "AutoencoderKLTemporalDecoder"
    reference = diffusers.AutoencoderKLTemporalDecoder.from_pretrained(tmp_path / "vae").eval()
    with torch.no_grad():
        decoded = reference.decode(svd_io["latent_mean"], num_frames=3).sample
    torch.testing.assert_close(decoded, svd_io["decoded"], atol=ATOL, rtol=0)
    assert videovae.load(tmp_path / "vae").family == "svd"


def test_conversion_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointMismatchError, match="not an SVD VAE checkpoint"):
        convert_svd_checkpoint(stepvideo_weights(1), tmp_path / "x.safetensors", "original")
    partial = load_file(ORIGINAL)
    del partial["first_stage_model.decoder.mid.attn_1.k.bias"]
    save_file(partial, str(tmp_path / "partial.safetensors"))
    for layout in ("diffusers", "original"):
        with pytest.raises(CheckpointMismatchError, match=r"missing: decoder\.mid_block\.attentions\.0\.to_k\.bias"):
            convert_svd_checkpoint(tmp_path / "partial.safetensors", tmp_path / "y.safetensors", layout)
    with pytest.raises(ValueError, match="layout must be one of"):
        convert_svd_checkpoint(ORIGINAL, tmp_path / "z.safetensors", "sgm")
    assert not (tmp_path / "y.safetensors").exists()


def test_convert_checkpoint_takes_a_layout(tmp_path):
    from videovae.convert import convert_checkpoint

    route_a = {k: v for k, v in load_file(ORIGINAL).items() if not k.startswith("first_stage_model.encoder.")}
    convert_checkpoint(DIFFUSERS_DIR, tmp_path / "orig.safetensors", layout="original")
    assert_same_file(tmp_path / "orig.safetensors", route_a)
    convert_checkpoint(tmp_path / "orig.safetensors", tmp_path / "back.safetensors", layout="diffusers")
    assert_same_file(tmp_path / "back.safetensors", load_file(WEIGHTS))
    with pytest.raises(CheckpointMismatchError, match="not an SVD VAE"):
        convert_checkpoint(stepvideo_weights(1), tmp_path / "x.safetensors", layout="original")
    with pytest.raises(ValueError, match="layout must be one of diffusers, original"):
        convert_checkpoint(ORIGINAL, tmp_path / "x.safetensors", layout="sgm")
    assert not (tmp_path / "x.safetensors").exists()
