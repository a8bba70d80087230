"""Gradients through every fast path: each one either differentiates like plain PyTorch or hands
over to a path that does. Never a detached, missing or zero gradient.

The Triton kernels run under the interpreter here (conftest sets TRITON_INTERPRET=1), forced with
VIDEOVAE_KERNELS=triton; on a GPU machine the same code runs compiled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib

import pytest
import torch
from torch.nn import functional as F

from videovae.families.stepvideo import StepVideoConfig, StepVideoVAE
from videovae.layers import CausalConv3d, conv3d_as_matmul, upsample2x_conv
from videovae_kernels import group_norm
from videovae_kernels.group_norm_torch import group_norm_functional
from conftest import norm_backend

V1 = StepVideoConfig(version=1, z_channels=4, encoder_in_width=32, encoder_widths=(32, 32, 64, 64), encoder_blocks=1,
                     decoder_widths=(32, 32, 64, 64), decoder_blocks=1)
V2 = dataclasses.replace(V1, version=2, patch_channels=4 * 4 * 8)
CLIP = {1: (1, 3, 5, 16, 16), 2: (1, 3, 9, 16, 16)}  # (B, C, T, H, W): one chunk of each layout


def _grads(fn, *inputs):
    """Output and input gradients of sum(fn(*inputs) * fixed weights)."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o.float() * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in outs)
    loss.backward()
    return [o.detach() for o in outs], [None if t is None else t.grad for t in leaves]


def _assert_close(got, want, tol=1e-4, floor=1e-6):
    """Max error relative to the reference's max, or to `floor` where that is smaller (a gradient
    that is zero in exact arithmetic, such as a conv bias that a one-channel group norm removes)."""
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            scale = w.abs().max().clamp_min(floor)
            assert (g - w).abs().max() / scale < tol, f"relative error {((g - w).abs().max() / scale).item():.2e}"


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("per_frame", [False, True])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_forward_and_backward_match_plain_pytorch(monkeypatch, backend, per_frame, residual, channels_last):
    monkeypatch.setenv("VIDEOVAE_KERNELS", backend)
    torch.manual_seed(0)
    x = torch.randn(2, 64, 3, 5, 6) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    r = torch.randn_like(x) if residual else None
    w, b = torch.randn(64), torch.randn(64)
    options = dict(per_frame=per_frame, silu=True, front_pad=2)

    def fast(x, w, b, r):
        return group_norm(x, 32, w, b, 1e-5, residual=r, **options)

    def plain(x, w, b, r):
        return norm_backend(group_norm_functional, x, 32, w, b, 1e-5, residual=r, **options)

    out, grads = _grads(fast, x, w, b, r)
    out_ref, grads_ref = _grads(plain, x, w, b, r)
    _assert_close(out, out_ref)
    _assert_close(grads, grads_ref)
    assert all(g is None or g.abs().sum() > 0 for g in grads)


def test_group_norm_without_grad_keeps_the_fast_paths(monkeypatch):
    """Inference still runs the fused kernels: only a needed gradient switches path."""
    dispatch = importlib.import_module("videovae_kernels.group_norm")

    calls = []
    monkeypatch.setattr(dispatch, "group_norm_differentiable", lambda *a, **k: calls.append(1))
    x = torch.randn(1, 32, 2, 4, 4)
    group_norm(x, 32, torch.ones(32), torch.zeros(32))
    assert calls == []
    group_norm(x, 32, torch.ones(32, requires_grad=True), torch.zeros(32))
    assert calls == [1]


def test_conv_as_matmul_gradient_matches_conv3d():
    torch.manual_seed(0)
    x, w, b = torch.randn(1, 8, 5, 6, 6), torch.randn(16, 8, 3, 3, 3), torch.randn(16)
    out, grads = _grads(lambda x, w, b: conv3d_as_matmul(x, w, b), x, w, b)
    out_ref, grads_ref = _grads(lambda x, w, b: F.conv3d(x, w, b), x, w, b)
    _assert_close(out, out_ref)
    _assert_close(grads, grads_ref)


@pytest.mark.parametrize("time", [False, True])
def test_phase_split_upsampling_gradient_matches_upsample_then_conv(time):
    torch.manual_seed(0)
    x = torch.randn(1, 8, 3, 5, 6)
    w = torch.randn(8, 8, 3 if time else 1, 3, 3)
    b = torch.randn(8)

    def plain(x, w, b):
        if time:
            u = F.pad(F.interpolate(x, scale_factor=2, mode="nearest"), (0, 0, 0, 0, 2, 0))
            return F.conv3d(u, w, b, padding=(0, 1, 1))
        return F.conv3d(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"), w, b, padding=(0, 1, 1))

    out, grads = _grads(lambda x, w, b: upsample2x_conv(x, w, b, time=time), x, w, b)
    out_ref, grads_ref = _grads(plain, x, w, b)
    _assert_close(out, out_ref)
    _assert_close(grads, grads_ref)


def test_winograd_conv_under_autograd_gives_the_plain_gradient():
    """A conv large enough for the Winograd path differentiates as the plain conv does."""
    torch.manual_seed(0)
    conv = CausalConv3d(64, 64)
    x = torch.randn(1, 64, 6, 32, 32)

    def run(enabled):
        conv.winograd = enabled
        conv.zero_grad()
        out, (gx,) = _grads(lambda x: conv(x), x)
        return out, [gx, conv.conv.weight.grad.clone(), conv.conv.bias.grad.clone()]

    out, grads = run(True)
    out_ref, grads_ref = run(False)
    _assert_close(out, out_ref)
    _assert_close(grads, grads_ref)


def _assert_same_parameter_grads(got: dict, want: dict) -> None:
    """Every parameter's gradient within 1e-3 of the reference, on the scale of the model's largest."""
    largest = max(g.abs().max() for g in want.values())
    for name in want:
        assert got[name] is not None, name
        _assert_close([got[name]], [want[name]], tol=1e-3, floor=1e-2 * largest)


def _parameter_grads(model: StepVideoVAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    z_channels = model.config.z_channels
    moments = model.encode_chunk(x)
    y = model.decode_chunk(moments[:, :z_channels] + 0.1 * moments[:, z_channels:])
    (y * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("version", [1, 2])
def test_model_parameter_gradients_fast_paths_equal_plain_paths(version):
    torch.manual_seed(0)
    model = StepVideoVAE(V1 if version == 1 else V2)
    x = torch.randn(CLIP[version])
    fast = _parameter_grads(model.fast_paths(phase_split=True, winograd=True), x)
    plain = _parameter_grads(model.fast_paths(phase_split=False, winograd=False), x)
    missing = [n for n, g in fast.items() if g is None or not torch.isfinite(g).all() or g.abs().sum() == 0]
    assert missing == []
    _assert_same_parameter_grads(fast, plain)


@pytest.mark.parametrize("version", [1, 2])
def test_triton_kernels_give_the_torch_parameter_gradients(monkeypatch, version):
    """The CUDA code path (Triton group norm), run by the interpreter, differentiates like the CPU one."""
    torch.manual_seed(0)
    model = StepVideoVAE(V1 if version == 1 else V2)
    x = torch.randn(CLIP[version])
    monkeypatch.setenv("VIDEOVAE_KERNELS", "torch")
    reference = _parameter_grads(model, x)
    monkeypatch.setenv("VIDEOVAE_KERNELS", "triton")
    _assert_same_parameter_grads(_parameter_grads(model, x), reference)


@contextlib.contextmanager
def _svd_gradients(svd, frames: int):
    """Yields grads(): the parameter gradients of svd's model for one fixed clip of `frames` frames
    (encode, decode the mean, a weighted sum), with the model trainable only inside."""
    model = svd.model
    model.requires_grad_(True)
    torch.manual_seed(0)
    x = torch.randn(1, 3, frames, 16, 16)

    def grads():
        model.zero_grad(set_to_none=True)
        moments = model.encode_chunk(x)
        y = model.decode_chunk(moments[:, : model.latent_channels])
        (y * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
        return {n: p.grad for n, p in model.named_parameters()}

    try:
        yield grads
    finally:
        model.requires_grad_(False)
        model.zero_grad(set_to_none=True)


def test_svd_parameter_gradients_through_triton_equal_torch(monkeypatch, svd):
    with _svd_gradients(svd, frames=2) as grads:
        monkeypatch.setenv("VIDEOVAE_KERNELS", "torch")
        reference = grads()
        monkeypatch.setenv("VIDEOVAE_KERNELS", "triton")
        triton = grads()
    assert [n for n, g in reference.items() if g is None] == []
    _assert_same_parameter_grads(triton, reference)


def test_svd_channels_last_model_has_the_contiguous_gradients(svd):
    """The default channels-last SVD model (fused conv-adds, the decoder's time mix as one sum)
    differentiates like the contiguous one, whose decoder blends the two paths as diffusers does."""
    model = svd.model
    try:
        with _svd_gradients(svd, frames=3) as grads:
            fast = grads()
            model.fast_paths(channels_last=False)
            plain = grads()
    finally:
        model.encoder.channels_last = model.decoder.channels_last = True
    assert [n for n, g in fast.items() if g is None] == []
    _assert_same_parameter_grads(fast, plain)


def test_training_step_on_the_triton_path_changes_every_parameter(monkeypatch, tmp_path):
    from videovae.training.trainer import TrainOptions, TrainRun

    class Noise:
        def clip(self, generator, frames, height, width):
            return torch.rand(frames, 3, height, width, generator=generator) * 2 - 1

    monkeypatch.setenv("VIDEOVAE_KERNELS", "triton")
    torch.manual_seed(0)
    model = StepVideoVAE(V2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    options = TrainOptions(steps=1, batch=1, shapes=((9, 16, 16),), warmup=0, eval_shape=(9, 16, 16))
    run = TrainRun(model, Noise(), tmp_path, options, progress=False)
    losses = run.train_step(torch.rand(1, 9, 3, 16, 16) * 2 - 1)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert unchanged == []
