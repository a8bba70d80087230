"""Checkpoint conversion: rewrite a safetensors checkpoint with its tensors transformed, keys and
metadata otherwise preserved, written atomically.

    convert_checkpoint("vae_v2.safetensors", "vae_v2_bf16.safetensors", dtype="bf16")

A conversion is a list of steps, each a function `(tensors, metadata) -> (tensors, metadata)` over
the whole state dict (name -> tensor) and the header's string metadata. `convert_checkpoint` builds
the list from its keyword arguments and applies the steps in order; a new kind of conversion (e.g. a
key layout) is one more keyword, one more step function and one line in `_steps`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .checkpoints import DIFFUSERS_WEIGHTS_NAME, load_config_beside, read_header
from .compute_dtype import parse_dtype
from .errors import CheckpointMismatchError, OptionError, UsageError
from .families import svd, svd_layouts
from .atomic_write import atomic_output, check_output_path

__all__ = ["convert_checkpoint", "convert_svd_checkpoint", "cast_floating", "svd_layout"]

Tensors = dict[str, torch.Tensor]
Metadata = dict[str, str]
Step = Callable[[Tensors, Metadata], tuple[Tensors, Metadata]]


def cast_floating(dtype: torch.dtype) -> Step:
    """A step casting every floating-point tensor to `dtype`; integer and bool tensors are kept."""
    if not dtype.is_floating_point:
        raise UsageError(f"a checkpoint can be converted to a floating dtype (fp32, bf16, fp16), not {dtype}")

    def step(tensors: Tensors, metadata: Metadata) -> tuple[Tensors, Metadata]:
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}, metadata

    return step


def svd_layout(layout: str) -> Step:
    """A step rewriting an SVD VAE checkpoint in the "diffusers" or the "original" (Stability
    single-file) key layout, bit-exact (`videovae.families.svd_layouts.convert_layout`). Only the VAE is
    kept: a full SVD checkpoint's UNet and conditioners are left out."""
    if layout not in svd_layouts.LAYOUTS:
        raise OptionError(f"layout must be one of {', '.join(svd_layouts.LAYOUTS)} (SVD VAE key layouts); got {layout!r}")

    def step(tensors: Tensors, metadata: Metadata) -> tuple[Tensors, Metadata]:
        return svd_layouts.convert_layout(tensors, layout), metadata

    return step


def _steps(*, dtype: torch.dtype | None, layout: str | None = None) -> list[Step]:
    """The conversion steps the keyword arguments ask for, in the order they apply."""
    steps: list[Step] = []
    if layout is not None:
        steps.append(svd_layout(layout))
    if dtype is not None:
        steps.append(cast_floating(dtype))
    return steps


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    layout: str | None = None,
) -> Path:
    """Rewrite the safetensors checkpoint `src` to `dst` and return `dst`.

    dtype: cast every floating tensor to this dtype ("fp32", "bf16", "fp16" or a torch dtype); None
        keeps each tensor's dtype. Keys, non-floating tensors and the header metadata are kept.
    layout: "diffusers" or "original": rewrite an SVD VAE's keys in that layout (bit-exact; see
        `svd_layout`); None keeps the keys.
    `dst` is written atomically (a temporary file renamed at the end), so a failure leaves no file;
    `dst` may be `src` (the file is read whole before it is replaced). Raises `CheckpointError` for
    a missing or non-safetensors `src` and `OutputPathError` when `dst`'s folder is not writable,
    both before any tensor is read.
    """

    header = read_header(src)  # CheckpointError: missing, pickle, not safetensors
    target = check_output_path(dst)
    steps = _steps(dtype=parse_dtype(dtype), layout=layout)
    with safe_open(str(header.path), framework="pt", device="cpu") as f:
        tensors: Tensors = {key: f.get_tensor(key) for key in f.keys()}
        metadata: Metadata = dict(f.metadata() or {})
    for step in steps:
        tensors, metadata = step(tensors, metadata)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    with atomic_output(target) as tmp:  # keeps normal file permissions
        save_file(tensors, str(tmp), metadata=metadata or None)
    return target


def convert_svd_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    layout: str,
    *,
    dtype: torch.dtype | str | None = None,
    encoder_prefix: str = svd_layouts.COND_ENCODER_PREFIX,
) -> dict[str, Any]:
    """Write the SVD VAE of checkpoint `src` (a safetensors file in either layout, or a diffusers
    folder) to `dst` in `layout` ("diffusers" or "original"), atomically.

    dst: a .safetensors file; or, for layout "diffusers", a folder (any path without a .safetensors
    suffix), which gets diffusion_pytorch_model.safetensors and a config.json that diffusers'
    AutoencoderKLTemporalDecoder.from_pretrained reads (scaling_factor / force_upcast from a
    config.json beside `src`, else the released model's). dtype: cast floating tensors (None keeps
    them bit-exact). Only the VAE is written: a full SVD checkpoint's UNet and conditioners are left
    out (counted in the returned summary). Returns {"src", "dst", "from", "to", "tensors", "left_out"}.
    """
    header = read_header(src)
    found = svd_layouts.detect_svd_layout(header.shapes)
    if found is None:
        raise CheckpointMismatchError(
            f"{header.path} is not an SVD VAE checkpoint in the diffusers or the original layout "
            f"(no decoder.time_conv_out.weight and no {svd.ORIGINAL_SENTINEL})"
        )
    dst = Path(dst)
    folder = layout == "diffusers" and dst.suffix != ".safetensors"
    if not folder and dst.suffix != ".safetensors":
        raise OptionError(f"dst must be a .safetensors file for layout {layout!r}; got {dst}")
    keys = svd_layouts.file_keys(header.shapes)
    with safe_open(str(header.path), framework="pt", device="cpu") as f:
        tensors: Tensors = {k: f.get_tensor(k) for k in keys}
    if dtype is not None:
        tensors, _ = cast_floating(parse_dtype(dtype))(tensors, {})
    out = {k: v.contiguous() for k, v in svd_layouts.convert_layout(tensors, layout, encoder_prefix=encoder_prefix).items()}

    weights = dst / DIFFUSERS_WEIGHTS_NAME if folder else dst
    if folder:
        dst.mkdir(parents=True, exist_ok=True)
        cfg = svd.config_from_shapes({k: tuple(v.shape) for k, v in out.items()})
        beside = load_config_beside(header.path)
        if beside is not None:
            cfg = svd.config_with_diffusers_json(cfg, beside, str(header.path.parent / "config.json"))
        config = {**cfg.to_diffusers_config(), "sample_size": beside.get("sample_size", 768) if beside else 768}
        with atomic_output(dst / "config.json") as tmp:
            tmp.write_text(json.dumps(config, indent=2) + "\n")
    with atomic_output(check_output_path(weights)) as tmp:
        save_file(out, str(tmp), metadata={"format": "pt"})
    return {
        "src": str(header.path), "dst": str(weights), "from": found, "to": layout,
        "tensors": len(out), "left_out": len(header.shapes) - len(keys),
    }
