"""videovae's fused kernels (installed as `videovae_kernels`): one public op per file, each with
its PyTorch reference beside it and a dispatcher that picks Triton for CUDA tensors."""

from .group_norm import backend_for, group_norm
from .group_norm_torch import GroupNormSpec, group_norm_torch

__all__ = ["GroupNormSpec", "backend_for", "group_norm", "group_norm_torch"]
