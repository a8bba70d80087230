"""diffusers-compatible faces (videovae.adapters.diffusers): SVDFace and VideoFace over every family,
and SVDFace as the VAE of diffusers' own StableVideoDiffusionPipeline, against diffusers' VAE."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch

import videovae
from conftest import SVD_ATOL, stepvideo_io, stepvideo_weights
from videovae.adapters.diffusers import SVDFace, VideoFace
from videovae.errors import OptionError, VideoLayoutError

FIXTURES = Path(__file__).parent / "fixtures" / "svd"
DIFFUSERS_DIR = FIXTURES / "svd_vae_tiny_diffusers"
ATOL = SVD_ATOL
HAVE_PIPELINE_DEPS = all(importlib.util.find_spec(m) is not None for m in ("diffusers", "transformers"))
needs_pipeline = pytest.mark.skipif(
    not HAVE_PIPELINE_DEPS, reason="diffusers and transformers are not importable (pip install videovae[test])"
)



# ---- SVDFace: the AutoencoderKLTemporalDecoder interface -------------------------------------------


@pytest.mark.parametrize("source", [DIFFUSERS_DIR, FIXTURES / "svd_vae_tiny_original.safetensors"])
def test_svd_face_reproduces_the_diffusers_fixtures(source, svd_io):
    face = SVDFace(videovae.load(source))
    posterior = face.encode(svd_io["input"]).latent_dist  # (B*T, C, H, W) folded frames
    torch.testing.assert_close(posterior.mean, svd_io["latent_mean"], atol=ATOL, rtol=0)
    torch.testing.assert_close(posterior.logvar, svd_io["latent_logvar"], atol=ATOL, rtol=0)
    assert torch.equal(posterior.mode(), posterior.mean)
    torch.testing.assert_close(posterior.std, torch.exp(0.5 * posterior.logvar))
    decoded = face.decode(svd_io["latent_mean"], num_frames=3).sample
    torch.testing.assert_close(decoded, svd_io["decoded"], atol=ATOL, rtol=0)
    # StableVideoDiffusionPipeline.decode_latents with decode_chunk_size=2: slices [0:2] and [2:3]
    z = svd_io["latent_mean"]
    chunks = [face.decode(z[i : i + 2], num_frames=z[i : i + 2].shape[0]).sample for i in range(0, 3, 2)]
    torch.testing.assert_close(torch.cat(chunks), svd_io["decoded_chunked_2_1"], atol=ATOL, rtol=0)


def test_svd_face_has_what_the_pipeline_reads(svd, svd_io):
    face = SVDFace(svd)
    assert "num_frames" in inspect.signature(face.forward).parameters
    config = face.config
    assert 2 ** (len(config.block_out_channels) - 1) == svd.spatial_compression == 2
    assert config.scaling_factor == config.get("scaling_factor") == 0.18215
    assert (config.force_upcast, config.latent_channels, config["in_channels"]) == (True, 4, 3)
    assert config.get("latents_mean", "absent") is None and config.get("no_such_key", 7) == 7
    with pytest.raises(TypeError, match="read-only"):
        config["scaling_factor"] = 1.0
    assert (face.dtype, face.device.type) == (torch.float32, "cpu")
    assert [p.data_ptr() for p in face.parameters()] == [p.data_ptr() for p in svd.parameters()]  # shared weights

    out = face(svd_io["input"], num_frames=3)
    torch.testing.assert_close(out.sample, svd_io["decoded"], atol=ATOL, rtol=0)
    (sample,) = face(svd_io["input"], num_frames=3, return_dict=False)
    assert torch.equal(sample, out.sample)
    (dist,) = face.encode(svd_io["input"], return_dict=False)
    (frames,) = face.decode(svd_io["latent_mean"], num_frames=3, return_dict=False)
    torch.testing.assert_close(frames, svd_io["decoded"], atol=ATOL, rtol=0)
    a = dist.sample(torch.Generator().manual_seed(3))
    b = dist.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and (a - dist.mean).abs().max() > 0 and dist.kl().shape == (3,)

    with pytest.raises(VideoLayoutError, match=r"\(N, C, H, W\)"):
        face.encode(svd_io["input"].unsqueeze(0))
    with pytest.raises(VideoLayoutError, match="num_frames=2"):
        face.decode(svd_io["latent_mean"], num_frames=2)


def test_a_half_precision_face_takes_float32_latents(svd_io):
    face = SVDFace(videovae.load(DIFFUSERS_DIR, dtype=torch.float16, strict_dtype=True))
    decoded = face.decode(svd_io["latent_mean"], num_frames=3).sample  # fp32 latents, fp16 weights
    assert decoded.dtype == torch.float32 and face.dtype == torch.float16
    assert (decoded - svd_io["decoded"]).abs().max() < 2e-2
    face.to(dtype=torch.float32)  # what the pipeline does for force_upcast
    assert face.dtype == torch.float32
    upcast = face.decode(svd_io["latent_mean"], num_frames=3).sample  # fp16-rounded weights, fp32 compute
    assert upcast.dtype == torch.float32 and (upcast - svd_io["decoded"]).abs().max() < 1e-2


# ---- VideoFace: the 5D interface -------------------------------------------------------------------


def test_video_face_over_svd(svd, svd_io):
    face = VideoFace(svd)
    assert (face.temporal_compression_ratio, face.spatial_compression_ratio) == (1, 2)
    assert (face.config.temporal_compression_ratio, face.config.spatial_compression_ratio) == (1, 2)
    video = svd_io["input"].unsqueeze(0).transpose(1, 2)  # (B=1, C, T=3, H, W)
    posterior = face.encode(video).latent_dist
    assert posterior.mean.shape == (1, 4, 3, 32, 32)
    torch.testing.assert_close(posterior.mean[0].transpose(0, 1), svd_io["latent_mean"], atol=ATOL, rtol=0)
    decoded = face.decode(posterior.mean, return_dict=False)[0]
    assert decoded.shape == (1, 3, 3, 64, 64)
    torch.testing.assert_close(decoded[0].transpose(0, 1), svd_io["decoded"], atol=ATOL, rtol=0)

    # slicing: one batch element at a time, same result
    two = torch.cat([posterior.mean, posterior.mean.flip(2)])
    whole = face.decode(two).sample
    face.enable_slicing()
    torch.testing.assert_close(face.decode(two).sample, whole, atol=ATOL, rtol=0)
    torch.testing.assert_close(face.encode(torch.cat([video, video])).latent_dist.mean[1:], posterior.mean, atol=ATOL, rtol=0)
    face.disable_slicing()

    # tiling, with diffusers' argument names: exact, whatever the strides
    face.enable_tiling(tile_sample_min_height=16, tile_sample_min_width=32, tile_sample_stride_height=12)
    assert face.use_tiling and face.tile == (16, 32)
    torch.testing.assert_close(face.decode(two).sample, whole, atol=1e-4, rtol=0)
    torch.testing.assert_close(face.encode(video).latent_dist.mean, posterior.mean, atol=1e-4, rtol=0)
    face.disable_tiling()
    assert not face.use_tiling
    face.enable_tiling()  # diffusers' default tile: 256, more than these frames: one tile
    assert face.tile == (256, 256)
    face.disable_tiling()
    # exact=False: diffusers' blended tiles (approximate), the overlap from its strides
    face.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24,
                       tile_sample_stride_width=24, exact=False)
    assert face.tile_overlap == 8
    blended = face.decode(two).sample
    assert blended.shape == whole.shape and 1e-3 < (blended - whole).abs().max().item() < 2
    torch.testing.assert_close(blended, face.vae.decode(two.transpose(1, 2), tile=32, tile_overlap=8).transpose(1, 2))
    face.disable_tiling()
    with pytest.raises(OptionError, match="overlap differently in height and width"):
        face.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24,
                           tile_sample_stride_width=16, exact=False)
    with pytest.raises(OptionError, match="unknown arguments tile_size"):
        face.enable_tiling(tile_size=16)
    with pytest.raises(OptionError, match="spatial factor 2"):
        face.enable_tiling(tile_sample_min_height=15)
    with pytest.raises(VideoLayoutError, match=r"\(B, C, T, H, W\)"):
        face.encode(svd_io["input"])


@pytest.fixture(scope="module")
def v2_fp32() -> videovae.VideoVAE:
    return videovae.load(stepvideo_weights(2), dtype=torch.float32)


def test_both_faces_over_stepvideo_v2(v2_fp32):
    x = stepvideo_io(2)["x_1f"]  # (1, 1, 3, H, W): one frame, as TI2V conditions on one image
    reference = v2_fp32.encode(x)

    face5 = VideoFace(v2_fp32)
    assert (face5.temporal_compression_ratio, face5.spatial_compression_ratio) == (
        v2_fp32.temporal_compression, v2_fp32.spatial_compression,
    )
    assert face5.config.scaling_factor == 1.0 and face5.config.latent_channels == v2_fp32.latent_channels
    posterior = face5.encode(x.transpose(1, 2)).latent_dist
    assert torch.equal(posterior.mean, reference.mean.transpose(1, 2))
    decoded = face5.decode(posterior.mean).sample
    assert torch.equal(decoded, v2_fp32.decode(reference.mean).transpose(1, 2))

    face4 = SVDFace(v2_fp32)
    assert 2 ** (len(face4.config.block_out_channels) - 1) == v2_fp32.spatial_compression == 16
    image_posterior = face4.encode(x[:, 0]).latent_dist  # (N, C, H, W) images -> (N, z, h, w)
    assert torch.equal(image_posterior.mean, reference.mean[:, 0])
    frames = face4.decode(image_posterior.mean, num_frames=1).sample
    assert frames.shape == x[:, 0].shape
    torch.testing.assert_close(frames, v2_fp32.decode(reference.mean)[:, 0], atol=ATOL, rtol=0)


# ---- inside diffusers' StableVideoDiffusionPipeline ------------------------------------------------


def tiny_pipeline_components() -> dict:
    """The tiny random UNet, CLIP image encoder and scheduler diffusers' own SVD pipeline tests build
    (tests/pipelines/stable_video_diffusion), with the CLIP image size set to our 64x64 frames."""
    from diffusers import EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32, num_attention_heads=8, projection_class_embeddings_input_dim=96,
        addition_time_embed_dim=32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1,
        timestep_spacing="leading", timestep_type="continuous", trained_betas=None, use_karras_sigmas=True,
    )
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=5, num_attention_heads=4, image_size=64,
        intermediate_size=37, patch_size=2,
    ))
    feature_extractor = CLIPImageProcessor(crop_size=64, size=64)
    return {"unet": unet.eval(), "image_encoder": image_encoder.eval(), "scheduler": scheduler,
            "feature_extractor": feature_extractor}


@pytest.fixture(scope="module")
def pipeline_runner():
    from diffusers import StableVideoDiffusionPipeline

    components = tiny_pipeline_components()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # in [0, 1], as the pipeline takes

    def run(vae, decode_chunk_size: int = 3) -> torch.Tensor:
        pipe = StableVideoDiffusionPipeline(vae=vae, **components)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            return pipe(
                image, num_frames=3, height=64, width=64, num_inference_steps=2, output_type="pt",
                decode_chunk_size=decode_chunk_size, generator=torch.Generator().manual_seed(0),
                min_guidance_scale=1.0, max_guidance_scale=2.5,
            ).frames  # (B, T, C, H, W) in [0, 1]

    return run


@pytest.fixture(scope="module")
def diffusers_frames(pipeline_runner) -> dict[int, torch.Tensor]:
    from diffusers import AutoencoderKLTemporalDecoder

    vae = AutoencoderKLTemporalDecoder.from_pretrained(DIFFUSERS_DIR).eval()
    return {chunk: pipeline_runner(vae, chunk) for chunk in (3, 2)}


@needs_pipeline
@pytest.mark.parametrize("decode_chunk_size", [3, 2])
def test_svd_pipeline_gives_the_same_frames_with_videovae(decode_chunk_size, pipeline_runner, diffusers_frames):
    ours = pipeline_runner(SVDFace(videovae.load(DIFFUSERS_DIR)), decode_chunk_size)
    theirs = diffusers_frames[decode_chunk_size]
    assert ours.shape == theirs.shape == (1, 3, 3, 64, 64)
    assert (ours - theirs).abs().max() < 1e-4  # measured 2.7e-5 (3) and 2.2e-5 (2)
    if decode_chunk_size == 2:  # the chunked decode really differs from the whole-clip one
        assert (theirs - diffusers_frames[3]).abs().max() > 1e-2


@needs_pipeline
def test_svd_pipeline_with_a_tiled_vae_gives_the_untiled_frames(pipeline_runner, diffusers_frames):
    face = SVDFace(videovae.load(DIFFUSERS_DIR))
    face.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=16)  # 2 x 4 tiles of the 64x64 frames
    frames = pipeline_runner(face)
    assert (frames - diffusers_frames[3]).abs().max() < 1e-4


@needs_pipeline
def test_svd_pipeline_with_a_half_precision_vae(pipeline_runner, diffusers_frames):
    from diffusers import AutoencoderKLTemporalDecoder

    half = SVDFace(videovae.load(DIFFUSERS_DIR, dtype=torch.float16, strict_dtype=True))
    frames = pipeline_runner(half)
    assert half.dtype == torch.float16  # force_upcast: cast to fp32 to encode, back to fp16 to decode
    assert torch.isfinite(frames).all()
    assert (frames - diffusers_frames[3]).abs().max() < 1e-2  # measured 1.5e-3
    # diffusers' own VAE in fp16 gets fp32 latents from the same pipeline and fails
    theirs = AutoencoderKLTemporalDecoder.from_pretrained(DIFFUSERS_DIR, torch_dtype=torch.float16).eval()
    with pytest.raises(RuntimeError, match="Input type .* and bias type .* should be the same"):
        pipeline_runner(theirs)
