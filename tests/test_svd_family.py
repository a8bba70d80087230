"""SVD temporal-decoder VAE (videovae.families.svd): parity with diffusers' AutoencoderKLTemporalDecoder
fixtures, the original-layout key maps, config inference and strict-load errors. CPU, float32."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import videovae

from videovae.errors import CheckpointMismatchError, LatentMismatchError, VideoLayoutError
from videovae.families.svd import SVDVAE, SVDConfig, config_from_shapes
from videovae.families.svd_layouts import detect_svd_layout, diffusers_to_original, original_to_diffusers

FIXTURES = Path(__file__).parent / "fixtures" / "svd"
DIFFUSERS_DIR = FIXTURES / "svd_vae_tiny_diffusers"
SIDECAR = json.loads((FIXTURES / "svd_vae_tiny_io.json").read_text())
ATOL = 1e-5  # fp32; the fixtures were produced by diffusers 0.42.1 on CPU
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
FIRST_STAGE_ENCODER = "first_stage_model.encoder."
COND_ENCODER = "conditioner.embedders.3.encoder."


def shapes_of(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def assert_bit_exact(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    different = [k for k in want if got[k].dtype != want[k].dtype or not torch.equal(got[k], want[k])]
    assert different == []


def load_strict(sd: dict[str, torch.Tensor]) -> SVDVAE:
    """Build on meta from the shapes alone, then load every tensor with assign=True, strict."""
    with torch.device("meta"):
        model = SVDVAE(config_from_shapes(shapes_of(sd)))
    model.load_state_dict(sd, assign=True)
    return model.eval()


def encode_frames(model: SVDVAE, frames: torch.Tensor) -> torch.Tensor:
    """Frames (N, C, H, W) -> moments (N, 2z, h, w) through the family interface (one clip of N frames)."""
    return model.encode_chunk(frames.transpose(0, 1).unsqueeze(0))[0].transpose(0, 1)


def decode_clip(model: SVDVAE, z: torch.Tensor) -> torch.Tensor:
    """Latents (B, T, z, h, w) -> frames (B, T, C, H, W) through the family interface."""
    return model.decode_chunk(z.transpose(1, 2)).transpose(1, 2)


def split_moments(moments: torch.Tensor, z: int) -> tuple[torch.Tensor, torch.Tensor]:
    """moments (N, 2z, h, w) -> mean (N, z, h, w), logvar clamped as diffusers does."""
    return moments[:, :z], moments[:, z:].clamp(LOGVAR_MIN, LOGVAR_MAX)


@pytest.fixture(scope="module")
def diffusers_sd() -> dict[str, torch.Tensor]:
    return load_file(DIFFUSERS_DIR / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def original_sd() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "svd_vae_tiny_original.safetensors")


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "svd_vae_tiny_io.safetensors")


@pytest.fixture(scope="module")
def model(diffusers_sd) -> SVDVAE:
    return load_strict(diffusers_sd)


def test_fixture_files_match_their_sidecar():
    for name, meta in SIDECAR["files"].items():
        data = (FIXTURES / name).read_bytes()
        assert len(data) == meta["bytes"], name
        assert hashlib.sha256(data).hexdigest() == meta["sha256"], name


# ---- config ----------------------------------------------------------------------------------


def test_config_from_shapes_equals_fixture_config(diffusers_sd):
    config_json = json.loads((DIFFUSERS_DIR / "config.json").read_text())
    from_shapes = config_from_shapes(shapes_of(diffusers_sd))
    assert from_shapes == SVDConfig.from_diffusers_config(config_json)
    assert from_shapes == SVDConfig(block_out_channels=(32, 64), layers_per_block=2, latent_channels=4)
    assert from_shapes.spatial_compression == 2
    # Everything in config.json that describes the model comes back (sample_size is unused by it).
    ignored = {"_diffusers_version", "sample_size"}
    assert from_shapes.to_diffusers_config() == {k: v for k, v in config_json.items() if k not in ignored}


def test_default_config_is_the_released_svd_vae():
    cfg = SVDConfig()
    assert (cfg.block_out_channels, cfg.layers_per_block, cfg.latent_channels) == ((128, 256, 512, 512), 2, 4)
    assert (cfg.scaling_factor, cfg.force_upcast, cfg.spatial_compression) == (0.18215, True, 8)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in SVDVAE(cfg).parameters())
    assert round(n_params / 1e6, 1) == 97.7  # REFERENCE.md: 97.7 M parameters


def test_config_from_diffusers_config_rejects_what_it_cannot_build():
    with pytest.raises(ValueError, match="unknown key"):
        SVDConfig.from_diffusers_config({"block_out_channels": [32], "up_block_types": ["UpDecoderBlock2D"]})
    with pytest.raises(ValueError, match="down_block_types"):
        SVDConfig.from_diffusers_config({"block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D"]})
    with pytest.raises(ValueError, match="groups"):
        SVDConfig(block_out_channels=(48,))


# ---- parity with the diffusers fixtures --------------------------------------------------------


def test_encode_matches_fixture(model, io):
    with torch.no_grad():
        mean, logvar = split_moments(encode_frames(model, io["input"]), model.config.latent_channels)
    assert mean.shape == io["latent_mean"].shape == (3, 4, 32, 32)
    torch.testing.assert_close(mean, io["latent_mean"], atol=ATOL, rtol=0)
    torch.testing.assert_close(logvar, io["latent_logvar"], atol=ATOL, rtol=0)


def test_decode_clip_matches_fixture(model, io):
    z = io["latent_mean"].unsqueeze(0)  # (B=1, T=3, 4, 32, 32)
    with torch.no_grad():
        decoded = decode_clip(model, z)
    assert decoded.shape == (1, 3, 3, 64, 64)
    assert decoded.abs().max() > 0.1  # not a degenerate output
    torch.testing.assert_close(decoded[0], io["decoded"], atol=ATOL, rtol=0)


def test_decoding_in_chunks_reproduces_the_pipeline_chunks(model, io):
    """StableVideoDiffusionPipeline with decode_chunk_size=2 decodes frames [0:2] and [2:3] apart."""
    z = io["latent_mean"].unsqueeze(0)
    with torch.no_grad():
        chunked = torch.cat([decode_clip(model, z[:, 0:2]), decode_clip(model, z[:, 2:3])], dim=1)
    torch.testing.assert_close(chunked[0], io["decoded_chunked_2_1"], atol=ATOL, rtol=0)
    # and the chunks really differ from the whole-clip decode: the decoder mixes over T
    assert (io["decoded_chunked_2_1"] - io["decoded"]).abs().max() > 1e-3


def test_decoder_mixes_every_frame_and_clips_are_independent(model, io):
    z = io["latent_mean"].unsqueeze(0)
    later_changed = z.clone()
    later_changed[:, 2] += 1.0
    with torch.no_grad():
        base = decode_clip(model, z)
        two_clips = decode_clip(model, torch.cat([z, later_changed]))  # (B=2, T=3, ...)
    torch.testing.assert_close(two_clips[:1], base, atol=ATOL, rtol=0)  # clip 1 does not leak into clip 0
    assert (two_clips[1, 0] - base[0, 0]).abs().max() > 1e-4  # not causal: frame 0 sees frame 2


def test_encoder_is_per_frame(model, io):
    with torch.no_grad():
        together = encode_frames(model, io["input"])
        apart = torch.cat([encode_frames(model, frame[None]) for frame in io["input"]])
    torch.testing.assert_close(apart, together, atol=ATOL, rtol=0)


# ---- original (Stability single-file) layout -----------------------------------------------------


def route_a(original_sd):
    """The conditioning-frame encoder + quant_conv and the first-stage decoder (bit-exact route)."""
    return {k: v for k, v in original_sd.items() if not k.startswith(FIRST_STAGE_ENCODER)}


def route_b(original_sd):
    """first_stage_model.* only: its encoder has the quant_conv folded into conv_out."""
    return {k: v for k, v in original_sd.items() if k.startswith("first_stage_model.")}


def test_detect_layout(diffusers_sd, original_sd):
    assert detect_svd_layout(diffusers_sd) == "diffusers"
    assert detect_svd_layout(original_sd.keys()) == "original"
    assert detect_svd_layout(route_b(original_sd)) == "original"
    assert detect_svd_layout(["encoder.conv_in.weight", "decoder.conv_in.weight"]) is None
    assert detect_svd_layout([]) is None


def test_original_to_diffusers_gives_the_diffusers_tensors(original_sd, diffusers_sd):
    converted = original_to_diffusers(original_sd)  # all three groups: the conditioner encoder wins
    assert_bit_exact(converted, diffusers_sd)
    assert_bit_exact(original_to_diffusers(route_a(original_sd)), diffusers_sd)


def test_original_layout_loads_strictly_and_matches_fixture(original_sd, io):
    model = load_strict(original_to_diffusers(original_sd))
    with torch.no_grad():
        mean, logvar = split_moments(encode_frames(model, io["input"]), 4)
        decoded = decode_clip(model, io["latent_mean"].unsqueeze(0))[0]
    torch.testing.assert_close(mean, io["latent_mean"], atol=ATOL, rtol=0)
    torch.testing.assert_close(logvar, io["latent_logvar"], atol=ATOL, rtol=0)
    torch.testing.assert_close(decoded, io["decoded"], atol=ATOL, rtol=0)


def test_first_stage_encoder_route_uses_an_identity_quant_conv(original_sd, io):
    converted = original_to_diffusers(route_b(original_sd))
    q = converted["quant_conv.weight"]
    assert torch.equal(q[:, :, 0, 0], torch.eye(8)) and torch.equal(converted["quant_conv.bias"], torch.zeros(8))
    model = load_strict(converted)
    with torch.no_grad():
        mean, logvar = split_moments(encode_frames(model, io["input"]), 4)
    # the folded conv_out differs from conv_out -> quant_conv only by float rounding
    torch.testing.assert_close(mean, io["latent_mean"], atol=ATOL, rtol=0)
    torch.testing.assert_close(logvar, io["latent_logvar"], atol=ATOL, rtol=0)


def test_key_map_round_trips_are_bit_exact(original_sd, diffusers_sd):
    # diffusers -> original -> diffusers
    as_original = diffusers_to_original(diffusers_sd)
    assert_bit_exact(as_original, route_a(original_sd))
    assert all(k.startswith(("first_stage_model.decoder.", COND_ENCODER)) for k in as_original)
    assert_bit_exact(original_to_diffusers(as_original), diffusers_sd)
    # original -> diffusers -> original, both routes
    assert_bit_exact(diffusers_to_original(original_to_diffusers(route_a(original_sd))), route_a(original_sd))
    first_stage = route_b(original_sd)
    assert_bit_exact(diffusers_to_original(original_to_diffusers(first_stage), "first_stage_model."), first_stage)
    # the attention projections are the only reshaped tensors
    assert as_original["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert diffusers_sd["decoder.mid_block.attentions.0.to_q.weight"].shape == (64, 64)


def test_folding_quant_conv_reproduces_the_first_stage_encoder(original_sd, diffusers_sd):
    folded = diffusers_to_original(diffusers_sd, encoder_prefix="first_stage_model.")
    want = route_b(original_sd)
    assert sorted(folded) == sorted(want)
    for key in ("first_stage_model.encoder.conv_out.weight", "first_stage_model.encoder.conv_out.bias"):
        torch.testing.assert_close(folded[key], want[key], atol=1e-6, rtol=0)
        assert not torch.equal(folded[key], diffusers_sd[key.replace("first_stage_model.", "")])


# ---- errors -------------------------------------------------------------------------------------


def test_strict_load_lists_missing_unexpected_and_misshaped_keys(diffusers_sd, tmp_path):
    partial = dict(diffusers_sd)
    del partial["decoder.time_conv_out.bias"]
    partial["decoder.extra.weight"] = torch.zeros(1)
    partial["encoder.conv_in.bias"] = torch.zeros(31)
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointMismatchError) as err:
        videovae.load(tmp_path / "partial.safetensors")
    message = str(err.value)
    assert "1 missing: decoder.time_conv_out.bias [3]" in message
    assert "1 unexpected: decoder.extra.weight [1]" in message
    assert "encoder.conv_in.bias file [31] vs model [32]" in message


def test_partial_state_dicts_raise_mismatch(diffusers_sd, original_sd):
    no_decoder_up = {k: v for k, v in diffusers_sd.items() if not k.startswith("decoder.up_blocks.1.")}
    with pytest.raises(CheckpointMismatchError, match="up blocks"):
        config_from_shapes(shapes_of(no_decoder_up))
    with pytest.raises(CheckpointMismatchError, match="missing"):
        diffusers_to_original({k: v for k, v in diffusers_sd.items() if k != "quant_conv.bias"})
    with pytest.raises(CheckpointMismatchError, match="original_to_diffusers"):
        config_from_shapes(shapes_of(original_sd))
    with pytest.raises(CheckpointMismatchError, match="SVD UNet"):
        config_from_shapes({"conv_in.weight": (320, 8, 3, 3)})

    missing_attention = {k: v for k, v in original_sd.items() if k != "first_stage_model.decoder.mid.attn_1.k.bias"}
    with pytest.raises(CheckpointMismatchError, match=r"missing: decoder\.mid_block\.attentions\.0\.to_k\.bias"):
        original_to_diffusers(missing_attention)
    stray = dict(original_sd)
    stray["first_stage_model.decoder.mid.block_1.time_stack.emb_layers.1.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match="emb_layers"):
        original_to_diffusers(stray)
    with pytest.raises(CheckpointMismatchError, match="first_stage_model.decoder"):
        original_to_diffusers({k: v for k, v in original_sd.items() if "decoder" not in k})
    # keys outside the VAE groups (a full SVD checkpoint's UNet) are not the VAE's business
    with_unet = dict(original_sd)
    with_unet["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(320, 8, 3, 3)
    assert_bit_exact(original_to_diffusers(with_unet), original_to_diffusers(original_sd))


def test_inputs_in_the_wrong_layout_raise(model):
    vae = videovae.VideoVAE(model)
    with pytest.raises(VideoLayoutError, match=r"must be 5D \(B, T_lat, z, h, w\)"):
        vae.decode(torch.zeros(3, 4, 8, 8))
    with pytest.raises(VideoLayoutError, match=r"look like \(B, z, T_lat, h, w\)"):
        vae.decode(torch.zeros(1, 4, 3, 8, 8))  # (B, z, T, h, w) by mistake
    with pytest.raises(LatentMismatchError, match="channels"):
        vae.decode(torch.zeros(1, 3, 5, 8, 8))
    with pytest.raises(VideoLayoutError, match=r"\(B, T, C, H, W\)"):
        vae.encode(torch.zeros(1, 2, 3, 16, 16).transpose(1, 2))


# ---- against diffusers itself --------------------------------------------------------------------


def random_diffusers_vae(cfg: SVDConfig, seed: int = 0):
    """diffusers' AutoencoderKLTemporalDecoder for cfg with deterministic random weights, group norms
    and blend factors perturbed as in the fixtures (so no layer is an identity). Also used by
    benchmarks/bench_svd.py, so both measure the same model."""
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(seed)
    diffusers_config = {k: v for k, v in cfg.to_diffusers_config().items() if not k.startswith("_")}
    reference = AutoencoderKLTemporalDecoder(**diffusers_config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(reference.named_parameters()):
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=generator))
            elif name.endswith("mix_factor"):
                p.copy_(torch.randn(p.shape, generator=generator))
    return reference


def test_matches_diffusers_on_random_configs():
    pytest.importorskip("diffusers", reason="diffusers is not installed: cannot compare against it")
    configs = [
        SVDConfig(block_out_channels=(32, 64), layers_per_block=2),
        # 3 blocks, one layer per block (the decoder's mid attention is stored but never run)
        SVDConfig(in_channels=2, out_channels=1, block_out_channels=(32, 32, 64), layers_per_block=1, latent_channels=3),
    ]
    generator = torch.Generator().manual_seed(1)
    for cfg in configs:
        reference = random_diffusers_vae(cfg)
        ours = load_strict(reference.state_dict())
        assert ours.config == cfg

        B, T, f, z = 2, 3, cfg.spatial_compression, cfg.latent_channels
        frames = torch.rand(B * T, cfg.in_channels, 8 * f, 8 * f, generator=generator) * 2 - 1  # folded (B*T, C, H, W)
        with torch.no_grad():
            posterior = reference.encode(frames).latent_dist
            mean, logvar = split_moments(encode_frames(ours, frames), z)
            want = reference.decode(posterior.mean, num_frames=T).sample  # (B*T, out, H, W)
            got = decode_clip(ours, posterior.mean.unflatten(0, (B, T))).flatten(0, 1)
        torch.testing.assert_close(mean, posterior.mean, atol=ATOL, rtol=0)
        torch.testing.assert_close(logvar, posterior.logvar, atol=ATOL, rtol=0)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
