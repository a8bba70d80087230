"""Every bad input gets a videovae exception of the right builtin kind whose message names the
problem and the fix; never a raw view/permute/conv error from inside."""

import pytest
import torch
from safetensors.torch import load_file, save_file

import videovae
from conftest import stepvideo_weights
from videovae import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    FramePolicyError,
    LatentMismatchError,
    NonFiniteInputError,
    VideoDTypeError,
    VideoLayoutError,
    VideoVAEError,
)


def clip(T=1, H=16, W=16):
    return torch.zeros(1, T, 3, H, W)


# -- videos ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "x, error, builtin, phrase",
    [
        (torch.zeros(3, 16, 16), VideoLayoutError, ValueError, "must be 5D (B, T, C, H, W); got 3D"),
        (torch.zeros(5, 3, 16, 16), VideoLayoutError, ValueError, "add the batch dim: x.unsqueeze(0)"),
        (torch.zeros(1, 3, 17, 16, 16), VideoLayoutError, ValueError, "this looks like (B, C, T, H, W); videovae takes (B, T, C, H, W)"),
        (torch.zeros(1, 17, 4, 16, 16), VideoLayoutError, ValueError, "must have 3 channels at dim 2"),
        (torch.zeros(1, 1, 3, 16, 16, dtype=torch.uint8), VideoDTypeError, TypeError, "x.float() / 127.5 - 1"),
        (torch.zeros(1, 1, 3, 16, 16, dtype=torch.int64), VideoDTypeError, TypeError, "real floating-point tensor; got torch.int64"),
        (torch.zeros(1, 1, 3, 16, 16, dtype=torch.complex64), VideoDTypeError, TypeError, "got torch.complex64"),
        (torch.zeros(1, 0, 3, 16, 16), VideoLayoutError, ValueError, "empty along T"),
        (torch.zeros(1, 2, 3, 0, 16), VideoLayoutError, ValueError, "empty along H"),
        (torch.zeros(1, 2, 3, 16, 0), VideoLayoutError, ValueError, "empty along W"),
        ([[1.0]], VideoDTypeError, TypeError, "must be a torch.Tensor; got list"),
    ],
)
def test_bad_videos(v2, x, error, builtin, phrase):
    with pytest.raises(error) as info:
        v2.encode(x)
    assert isinstance(info.value, builtin) and isinstance(info.value, VideoVAEError)
    assert phrase in str(info.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_video(v2, bad):
    x = clip()
    x[0, 0, 1, 2, 3] = bad
    with pytest.raises(NonFiniteInputError, match="nan_to_num"):
        v2.reconstruct(x)


def test_strict_policy_violation_names_the_nearest_counts(v2):
    with pytest.raises(FramePolicyError, match="nearest valid frame counts are 1 or 9"):
        v2.encode(clip(T=5), policy="strict")


# -- latents --------------------------------------------------------------------------------------

def test_latents_in_the_wrong_layout(v1):
    with pytest.raises(VideoLayoutError, match=r"look like \(B, z, T_lat, h, w\)"):
        v1.decode(torch.zeros(1, 16, 5, 2, 2))


def test_latents_from_another_model(v1):
    with pytest.raises(LatentMismatchError, match="have 2 channels at dim 2; this model's latents have 16"):
        v1.decode(torch.zeros(1, 3, 2, 2, 2))


def test_num_frames_beyond_the_decoded_length(v2):
    with pytest.raises(VideoLayoutError, match="num_frames=18, but these latents decode to 17 frames"):
        v2.decode(torch.zeros(1, 3, 2, 1, 1), num_frames=18)


# -- checkpoints ----------------------------------------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="checkpoint not found") as info:
        videovae.load(tmp_path / "nope.safetensors")
    assert isinstance(info.value, FileNotFoundError)


def test_not_safetensors(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("hello, this is text and not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as info:
        videovae.load(path)
    assert isinstance(info.value, OSError)


def test_pickle_is_refused(tmp_path):
    path = tmp_path / "vae.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="pickle checkpoint; videovae reads only safetensors"):
        videovae.load(path)


def test_truncated_safetensors(tmp_path):
    data = stepvideo_weights(2).read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        videovae.load(path)


def test_a_unet_is_named_as_such(tmp_path):
    path = tmp_path / "unet.safetensors"
    save_file({
        "conv_in.weight": torch.zeros(32, 8, 3, 3),
        "down_blocks.0.attentions.0.proj_in.weight": torch.zeros(32, 32),
        "up_blocks.0.resnets.0.conv1.weight": torch.zeros(32, 32, 3, 3),
    }, str(path))
    with pytest.raises(CheckpointMismatchError, match="diffusion UNet; its conv_in takes 8 input channels") as info:
        videovae.load(path)
    assert isinstance(info.value, ValueError)


def test_missing_extra_and_misshaped_tensors_are_listed_together(tmp_path):
    state = load_file(str(stepvideo_weights(2)))
    del state["decoder.mid.block_1.norm1.bias"]
    state["encoder.mid.extra.weight"] = torch.zeros(3)
    state["decoder.norm_out.weight"] = torch.zeros(65, dtype=torch.bfloat16)
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointMismatchError) as info:
        videovae.load(path)
    message = str(info.value)
    assert "Step-Video VAE v2" in message
    assert "1 missing: decoder.mid.block_1.norm1.bias [64]" in message
    assert "1 unexpected: encoder.mid.extra.weight [3]" in message
    assert "1 mis-shaped: decoder.norm_out.weight file [65] vs model [64]" in message


def test_a_partial_file_missing_a_structural_tensor(tmp_path):
    state = load_file(str(stepvideo_weights(1)))
    del state["encoder.conv_out.conv.weight"]
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointMismatchError, match="do not describe a complete model"):
        videovae.load(path)


def test_bad_dtype_argument():
    with pytest.raises(TypeError, match="unknown dtype 'fp8'"):
        videovae.load(stepvideo_weights(2), dtype="fp8")
