"""Which dtype a model computes in: the names users give, the float32 default, and the CPU check
that keeps 16-bit compute off the CPUs where PyTorch has no fast 16-bit convolution.

The default is float32 whatever the file stores, as the reference does (it builds float32 modules
and loads the bf16 file into them) and as diffusers' `from_pretrained` does. 16-bit compute is used
only when asked for (`dtype="bf16"` / `"fp16"`), and `dtype="file"` keeps the file's dtype.

On a CPU, PyTorch runs a bf16 or fp16 convolution through oneDNN only where the CPU has the
instructions for it (AVX-512 BF16 or AMX for bf16; AVX-512 FP16 or AMX-FP16 for fp16). Elsewhere it
falls back to a naive GEMM that is 20x to 360x slower than float32 (measured: one 128-channel conv3d
on (1, 128, 11, 48, 48), 90 ms in float32 against 17.5 s in bf16 on AVX2). Asking for 16-bit
compute there almost always means asking for speed or memory that the fallback cannot give, so
`load` computes in float32 instead, with one `DTypeFallbackWarning` that says why;
`strict_dtype=True` forces the dtype asked for.

Whether a dtype is fast is measured, not looked up: `cpu_has_fast_conv(dtype)` times one tiny conv3d
in that dtype against float32, once per process and dtype (a fact about the machine, cached as
such; `cpu_has_fast_conv.cache_clear()` forgets it). The capability string that
`torch.backends.cpu.get_cpu_capability()` reports is part of the message but does not decide:
it says which vector width ATen's own kernels use (AVX2, AVX512), not whether oneDNN will take a
16-bit convolution, and CPUs of one capability differ there (this EPYC reports AVX512 and has fast
bf16 but slow fp16 convolutions).
"""

from __future__ import annotations

import functools
import time
import warnings

import torch
from torch.nn import functional as F

from .errors import DTypeFallbackWarning, VideoDTypeError

FILE_DTYPE = "file"  # `load(dtype="file")`: compute in the dtype the checkpoint stores
DEFAULT_DTYPE = torch.float32

DTYPE_NAMES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}
SHORT_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
SIXTEEN_BIT = (torch.bfloat16, torch.float16)
CLI_CHOICES = ("fp32", "bf16", "fp16", FILE_DTYPE)  # --dtype on every command that loads a model
CLI_HELP = "compute dtype: fp32 (default, whatever the file stores), bf16, fp16, or file (the checkpoint's)"
STRICT_HELP = "compute in --dtype even on a CPU where it is slow (default: 16-bit falls back to fp32 there)"

# A 16-bit conv that takes more than this many times the float32 time is the slow fallback. Native
# oneDNN bf16 runs the probe 0.2x-1x the float32 time; the fallback takes 15x (probe) to 360x (full
# layers), so the threshold sits far from both.
SLOW_FACTOR = 4.0


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bf16" (and fp32, fp16, fp64); other dtypes as torch prints them."""
    return SHORT_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def parse_dtype(dtype: torch.dtype | str | None, *, allow_file: bool = False) -> torch.dtype | str | None:
    """A dtype from a torch dtype or a name ("fp32", "bf16", "fp16", ...); None stays None.

    allow_file: also accept "file" (returned as FILE_DTYPE), for `load`.
    """
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise VideoDTypeError(f"dtype must be a floating dtype (fp32, bf16, fp16); got {dtype}")
        return dtype
    if not isinstance(dtype, str):
        raise VideoDTypeError(f"dtype must be a torch dtype or a name such as 'fp32' or 'bf16'; got {type(dtype).__name__}")
    name = dtype.lower().removeprefix("torch.")
    if allow_file and name == FILE_DTYPE:
        return FILE_DTYPE
    try:
        return DTYPE_NAMES[name]
    except KeyError:
        choices = "fp32, bf16, fp16" + (", or 'file' to keep the checkpoint's dtype" if allow_file else "")
        raise VideoDTypeError(f"unknown dtype {dtype!r}; use one of {choices}") from None


def probe_conv_seconds(dtype: torch.dtype) -> float:
    """Seconds for one small causal-VAE-like conv3d (32 -> 32 channels, 3x3x3, on 3x16x16) in `dtype`
    on the CPU: the best of three runs after one warm-up."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((1, 32, 5, 18, 18), generator=generator).to(dtype)
    weight = torch.randn((32, 32, 3, 3, 3), generator=generator).to(dtype)
    F.conv3d(x, weight)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        F.conv3d(x, weight)
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def cpu_has_fast_conv(dtype: torch.dtype) -> bool:
    """Whether PyTorch convolves in `dtype` on this CPU about as fast as in float32 (measured once per
    process and dtype; see the module docstring). float32 and float64 are always fast."""
    if dtype not in SIXTEEN_BIT:
        return True
    with torch.inference_mode():
        return probe_conv_seconds(dtype) <= SLOW_FACTOR * probe_conv_seconds(torch.float32)


def slow_dtype_message(dtype: torch.dtype) -> str:
    """Why `dtype` is slow on this CPU, in one sentence a user can act on."""
    capability = torch.backends.cpu.get_cpu_capability()
    return (
        f"this CPU (torch capability {capability}) has no fast {dtype_name(dtype)} convolution: PyTorch "
        f"falls back to a naive kernel that is 20x-360x slower than float32"
    )


def resolve_compute_dtype(
    requested: torch.dtype | str | None,
    stored: torch.dtype,
    device: torch.device,
    *,
    strict: bool = False,
) -> torch.dtype:
    """The dtype a model loaded on `device` computes in.

    requested: a dtype, a name, "file" (the stored dtype) or None (float32). stored: the checkpoint's
    floating dtype. strict: compute in the requested dtype even where it is slow.
    Falls back to float32, with one DTypeFallbackWarning, for 16-bit compute on a CPU without fast
    16-bit convolutions.
    """
    dtype = parse_dtype(requested, allow_file=True)
    if dtype is None:
        return DEFAULT_DTYPE
    if dtype == FILE_DTYPE:
        dtype = stored
    if strict or device.type != "cpu" or cpu_has_fast_conv(dtype):
        return dtype
    warnings.warn(
        f"{dtype_name(dtype)} compute was asked for, but {slow_dtype_message(dtype)}; computing in float32 "
        f"instead (outputs still come back in the input's dtype). Pass strict_dtype=True (CLI: "
        f"--strict-dtype) to force {dtype_name(dtype)}",
        DTypeFallbackWarning,
        stacklevel=3,
    )
    return torch.float32


def warn_if_slow(dtype: torch.dtype, device: torch.device) -> bool:
    """Warn (and return True) when a model already cast to `dtype` on `device` will take the slow
    16-bit CPU path, e.g. after `vae.to(torch.bfloat16)`."""
    if device.type != "cpu" or cpu_has_fast_conv(dtype):
        return False
    warnings.warn(
        f"this model computes in {dtype_name(dtype)} on the CPU, but {slow_dtype_message(dtype)}; "
        f"cast it back with vae.to(torch.float32), or load it with videovae.load(path) (float32 by default)",
        DTypeFallbackWarning,
        stacklevel=4,
    )
    return True
