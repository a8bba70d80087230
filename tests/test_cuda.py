"""Checks that need a CUDA GPU: the Triton kernels compiled for real (not interpreted), fixture parity
on the GPU in float32 and bfloat16, and the 16-bit dtype mixes.

Run by `benchmarks/gpu_check.py` (which sets TRITON_INTERPRET=0); on a machine without CUDA every
test here skips with the reason. Needs no PyAV and no diffusers.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

import videovae
from conftest import stepvideo_io, stepvideo_weights, norm_backend
from videovae.adapters.diffusers import VideoFace
from videovae_kernels.group_norm_torch import group_norm_torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.py runs these)"),
]

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
needs_compiled_triton = pytest.mark.skipif(
    INTERPRETED, reason="Triton is interpreted (TRITON_INTERPRET=1); run with TRITON_INTERPRET=0 to compile the kernels"
)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    mse = (a.float().cpu() - b.float().cpu()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


# -- the Triton kernels, compiled ------------------------------------------------------------------

@needs_compiled_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("per_frame", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_compiled_triton_group_norm_matches_the_reference(dtype, per_frame, layout):
    from videovae_kernels.group_norm import backend_for, group_norm

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn((2, 96, 5, 37, 29), generator=gen) * 3 + 100).to(dtype)  # shifted mean, odd sizes
    residual = torch.randn(x.shape, generator=gen).to(dtype)
    w, b = torch.randn(96, generator=gen) * 0.5 + 1, torch.randn(96, generator=gen) * 0.3
    if layout == "channels_last":
        x, residual = (t.contiguous(memory_format=torch.channels_last_3d) for t in (x, residual))
    args = dict(per_frame=per_frame, silu=True, residual=residual, front_pad=2)
    expected, expected_sum = norm_backend(group_norm_torch, x.double(), 32, w.double(), b.double(), 1e-5,
                                              **{**args, "residual": residual.double()})
    xc = x.cuda()
    assert backend_for(xc) == "triton"
    got, got_sum = group_norm(xc, 32, w.cuda(), b.cuda(), 1e-5, **{**args, "residual": residual.cuda()})
    assert got.dtype == dtype and got.shape == expected.shape
    tol = 2e-5 if dtype == torch.float32 else (1e-2 if dtype == torch.bfloat16 else 2e-3)
    assert (got.double().cpu() - expected).abs().max().item() <= tol * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(got_sum.cpu(), x + residual)
    assert got[:, :, :2].abs().max().item() == 0


@needs_compiled_triton
def test_compiled_triton_group_norm_indexes_past_2_31_elements():
    """(1, 32, 4, 4096, 4096) has 2.1e9 elements: offsets must be int64."""
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs 24 GB of GPU memory")
    from videovae_kernels.group_norm import group_norm

    x = torch.ones((1, 32, 4, 4096, 4096), device="cuda", dtype=torch.bfloat16)
    x[:, :, :, -1, -1] = 3.0  # the last elements must be reached
    y = group_norm(x, 32, None, None, 1e-5, per_frame=True)
    assert y[0, :, :, -1, -1].float().min().item() > 100  # far above the mean of ones
    assert y[0, :, :, 0, 0].float().abs().max().item() < 1


# -- fixture parity on the GPU -----------------------------------------------------------------------

@pytest.mark.parametrize("version", [1, 2])
def test_fixture_parity_on_the_gpu_in_float32(version):
    vae = videovae.load(stepvideo_weights(version), device="cuda")  # float32 by default
    io = stepvideo_io(version)
    for case in ("1f", "17f", "34f", "17f_32x48", "18f"):
        posterior = vae.encode(io[f"x_{case}"].cuda())
        assert (posterior.mean.cpu() - io[f"mean_{case}"]).abs().max().item() < 1e-4, case
        assert (posterior.logvar.cpu() - io[f"logvar_{case}"]).abs().max().item() < 1e-4, case
        decoded = vae.decode(io[f"mean_{case}"].cuda())
        assert (decoded.cpu() - io[f"dec_{case}"]).abs().max().item() < 1e-4, case


@pytest.mark.parametrize("version", [1, 2])
def test_fixture_parity_on_the_gpu_in_bfloat16(version):
    vae = videovae.load(stepvideo_weights(version), device="cuda", dtype="bf16")
    assert vae.dtype == torch.bfloat16  # a GPU never falls back
    io = stepvideo_io(version)
    decoded = vae.decode(io["mean_17f"].cuda())
    assert decoded.dtype == torch.float32  # the input's dtype
    assert psnr(decoded, io["dec_17f"]) > 30


@pytest.mark.parametrize("weights", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("inputs", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_16bit_dtype_mixes_on_the_gpu(weights, inputs):
    vae = videovae.load(stepvideo_weights(2), device="cuda", dtype=weights)
    x = stepvideo_io(2)["x_17f"].to(inputs)  # a CPU input: moved and cast on entry
    posterior = vae.encode(x)
    assert posterior.mean.dtype == inputs and posterior.mean.device.type == "cpu"
    out = vae.decode(posterior.mode())
    assert out.dtype == inputs and out.shape == x.shape and torch.isfinite(out).all()


def test_the_5d_face_on_the_gpu_gives_the_fixture():
    face = VideoFace(videovae.load(stepvideo_weights(2), device="cuda"))
    io = stepvideo_io(2)
    mean = face.encode(io["x_17f"].transpose(1, 2).cuda()).latent_dist.mean  # (B, z, T_lat, h, w)
    assert (mean.transpose(1, 2).cpu() - io["mean_17f"]).abs().max().item() < 1e-4
