"""The one public fused group-norm op, and the choice between its Triton kernel and PyTorch reference.

`group_norm(...)` validates its arguments, then runs:
  - the Triton kernels (`group_norm_triton.py`) for CUDA tensors,
  - the PyTorch reference (`group_norm_torch.py`) otherwise.
When a gradient is needed (any of x, weight, bias, residual requires grad, grad mode on), the CPU path
is `group_norm_differentiable` (native PyTorch ops that autograd differentiates) and the Triton
path is an autograd.Function whose backward is that same reference's: never a detached gradient.
`VIDEOVAE_KERNELS=auto|torch|triton` forces a path; `triton` on a CPU tensor runs the Triton
interpreter, which needs `TRITON_INTERPRET=1` set before `videovae_kernels.group_norm_triton`
is first imported. The variable is read at every call: there is no cached backend state.
"""

from __future__ import annotations

import os

from torch import Tensor

import torch

from .group_norm_torch import GroupNormSpec, group_norm_cpu, group_norm_differentiable

BACKENDS = ("auto", "torch", "triton")


def backend_for(x: Tensor) -> str:
    """'triton' or 'torch' for this tensor, honouring VIDEOVAE_KERNELS."""
    choice = os.environ.get("VIDEOVAE_KERNELS", "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"VIDEOVAE_KERNELS={choice!r} is not one of {', '.join(BACKENDS)}; unset it or pick one of those")
    if choice == "auto":
        # Decided from the device, never by trying a launch ("0 active drivers" on CPU-only hosts).
        return "triton" if x.is_cuda and _triton_importable() else "torch"
    return choice


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def check_group_norm_args(
    x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None,
    per_frame: bool, residual: Tensor | None, front_pad: int,
) -> None:
    """Raise ValueError/TypeError for inputs the op (either backend) does not support."""
    if x.ndim not in (4, 5):
        raise ValueError(f"group_norm takes (B, C, T, H, W) or (N, C, H, W); got a {x.ndim}D tensor of shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"group_norm takes a floating-point tensor; got {x.dtype}")
    C = x.shape[1]
    if num_groups < 1 or C % num_groups:
        raise ValueError(f"group_norm: {C} channels do not split into {num_groups} groups; use a group count that divides C")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (C,):
            raise ValueError(f"group_norm: {name} must have shape ({C},); got {tuple(p.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"group_norm: residual shape {tuple(residual.shape)} differs from x {tuple(x.shape)}")
    if (per_frame or front_pad) and x.ndim != 5:
        raise ValueError("group_norm: per_frame and front_pad need a 5D (B, C, T, H, W) input")
    if front_pad < 0:
        raise ValueError(f"group_norm: front_pad must be >= 0; got {front_pad}")


def group_norm(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    per_frame: bool = False,
    silu: bool = False,
    residual: Tensor | None = None,
    front_pad: int = 0,
) -> Tensor | tuple[Tensor, Tensor]:
    """Group norm (+ SiLU) (+ residual add before the norm) (+ zero front frames), fused.

    x: (B, C, T, H, W) contiguous or channels-last-3d, or (N, C, H, W); fp32, bf16 or fp16.
    weight, bias: (C,) affine parameters, or None.
    per_frame: statistics over (C/G, H, W) for each frame t, instead of over (C/G, T, H, W).
    silu: apply SiLU after the affine.
    residual: a tensor shaped like x, added to x before the norm; the sum is returned too.
    front_pad: the output is (B, C, front_pad + T, H, W) with its first `front_pad` frames zero
        (the causal padding the next convolution needs).

    Returns y, or (y, x + residual) when `residual` is given. y has x's dtype and memory format.
    Statistics and arithmetic are float32.
    """
    check_group_norm_args(x, num_groups, weight, bias, per_frame, residual, front_pad)
    spec = GroupNormSpec(num_groups, eps, per_frame=per_frame, silu=silu, front_pad=front_pad)
    grad = needs_grad(x, weight, bias, residual)
    if backend_for(x) == "triton":
        from .group_norm_triton import group_norm_triton, group_norm_triton_autograd

        run = group_norm_triton_autograd if grad else group_norm_triton
        return run(x, weight, bias, spec, residual)
    run = group_norm_differentiable if grad else group_norm_cpu
    return run(x, weight, bias, spec, residual)


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd will want a gradient through an op on these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
