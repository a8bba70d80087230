"""dtype policy (weights fp32/bf16/fp16, inputs of any float dtype) and loading facts."""

import math

import pytest
import torch
from safetensors import safe_open

import videovae

from conftest import stepvideo_io, stepvideo_weights
from videovae.families import stepvideo


def psnr(a, b, data_range=2.0):
    mse = (a.float() - b.float()).pow(2).mean().item()
    return 10 * math.log10(data_range**2 / mse)


def test_default_dtype_is_float32_whatever_the_file_stores():
    vae = videovae.load(stepvideo_weights(2))  # the fixture is stored in bfloat16
    assert vae.dtype == torch.float32 and vae.stored_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 and not p.is_meta and not p.requires_grad for p in vae.parameters())
    with safe_open(str(stepvideo_weights(2)), "pt") as f:  # 16-bit weights load into float32 exactly
        for name, param in vae.model.state_dict().items():
            stored = f.get_tensor(stepvideo.module_to_checkpoint_key(name))
            assert stored.dtype == torch.bfloat16 and torch.equal(stored.float(), param), name


def test_dtype_file_keeps_the_files_dtype():
    vae = videovae.load(stepvideo_weights(2), dtype="file", strict_dtype=True)
    assert vae.dtype == vae.stored_dtype == torch.bfloat16


@pytest.mark.parametrize("version", [1, 2])
def test_a_plain_load_of_a_bf16_fixture_reproduces_the_reference(version):
    vae, io = videovae.load(stepvideo_weights(version)), stepvideo_io(version)
    for case in ("17f", "18f"):
        posterior = vae.encode(io[f"x_{case}"])
        assert (posterior.mean - io[f"mean_{case}"]).abs().max() < 1e-4
        assert (posterior.logvar - io[f"logvar_{case}"]).abs().max() < 1e-4
        assert (vae.decode(io[f"mean_{case}"]) - io[f"dec_{case}"]).abs().max() < 1e-4


# 16-bit compute for real (strict_dtype: even where the CPU is slow at it), on small inputs, so these
# take seconds on a CPU without native 16-bit convolutions. Each input and weight dtype appears.
@pytest.mark.parametrize("weights, inputs", [
    (torch.bfloat16, torch.float32), (torch.bfloat16, torch.float16),
    (torch.float16, torch.float64), (torch.float16, torch.bfloat16),
])
def test_any_float_input_runs_on_16bit_weights(weights, inputs):
    vae = videovae.load(stepvideo_weights(2), dtype=weights, strict_dtype=True)
    assert vae.dtype == weights
    x = stepvideo_io(2)["x_1f"][..., :16, :16].to(inputs)  # (1, 1, 3, 16, 16)
    posterior = vae.encode(x)
    assert posterior.mean.dtype == inputs
    out = vae.decode(posterior.mode())
    assert out.dtype == inputs and out.shape == x.shape and torch.isfinite(out).all()


def test_fp32_weights_take_16bit_inputs(v1):
    x = stepvideo_io(1)["x_1f"]
    out = v1.reconstruct(x.half())
    assert out.dtype == torch.float16
    assert (out.float() - v1.reconstruct(x)).abs().max() < 0.05


def _16bit_decode_psnr(version: int, fp32, case: str) -> tuple[float, float]:
    bf16 = videovae.load(stepvideo_weights(version), dtype="bf16", strict_dtype=True)
    fp16 = videovae.load(stepvideo_weights(version), dtype="fp16", strict_dtype=True)
    z = stepvideo_io(version)[f"mean_{case}"]
    reference = fp32.decode(z)
    return psnr(bf16.decode(z), reference), psnr(fp16.decode(z), reference)


@pytest.mark.parametrize("version", [1, 2])
def test_16bit_decode_of_one_frame_is_close_to_fp32(version, request):
    bf16_db, fp16_db = _16bit_decode_psnr(version, request.getfixturevalue(f"v{version}"), "1f")
    assert bf16_db > 30 and fp16_db > 40


@pytest.mark.slow  # minutes on a CPU without native 16-bit convs; the one-frame check above runs in CI
@pytest.mark.parametrize("version", [1, 2])
def test_16bit_decode_of_17_frames_is_close_to_fp32(version, request):
    bf16_db, fp16_db = _16bit_decode_psnr(version, request.getfixturevalue(f"v{version}"), "17f")
    assert bf16_db > 30 and fp16_db > 40


def test_a_model_on_meta_is_never_returned_half_loaded(tmp_path):
    vae = videovae.load(stepvideo_weights(1), dtype=torch.float32)
    assert not any(t.is_meta for t in vae.state_dict().values())


def test_decoder_conv_out_quirk_is_mapped():
    assert stepvideo.checkpoint_to_module_key("decoder.conv_out.weight") == "decoder.conv_out.conv.weight"
    assert stepvideo.checkpoint_to_module_key("encoder.conv_out.conv.weight") == "encoder.conv_out.conv.weight"
    assert stepvideo.module_to_checkpoint_key("decoder.conv_out.conv.bias") == "decoder.conv_out.bias"


@pytest.mark.parametrize(
    "builder, params, tensors",
    [(stepvideo.stepvideo_v1_config, 258_828_195, 258), (stepvideo.stepvideo_v2_config, 498_818_819, 262)],
)
def test_full_size_configs_are_read_back_from_shapes(builder, params, tensors):
    """The released checkpoints' shapes (built here on meta: nothing is downloaded) give back the
    released configs with no hand-written config, and the published parameter and tensor counts."""
    config = builder()
    with torch.device("meta"):
        model = stepvideo.StepVideoVAE(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert stepvideo.config_from_shapes(shapes) == config
    assert len(shapes) == tensors
    assert sum(math.prod(s) for s in shapes.values()) == params


def test_tiny_configs_are_read_from_the_fixture_files(v1, v2):
    assert v1.config.encoder_widths == (64, 32, 64, 64) and v1.config.z_channels == 16
    assert v2.config.patch_channels == 64 and v2.config.z_channels == 2 and v2.config.decoder_blocks == 3
