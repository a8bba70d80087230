"""Checkpoint files: safe reading, family detection from key names and shapes, strict loading.

Only safetensors is read (never pickle). A model is built on the meta device from the config its
shapes imply and the file's tensors are assigned into it (`assign=True`), so a 2 GB checkpoint
needs 2 GB. Every parameter must come from the file: missing, unexpected and mis-shaped tensors are
listed together in one error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .errors import CheckpointError, CheckpointMismatchError, CheckpointNotFoundError
from .atomic_write import atomic_output
from .families import FAMILIES, FamilySpec
from .families.spec import check_shapes_match, model_shapes

_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


@dataclass(frozen=True)
class CheckpointHeader:
    """What a safetensors header says, without reading any tensor data."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    metadata: dict[str, str]


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 24) -> str:
    """Hex sha256 of a file, read in 16 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(chunk_bytes):
            digest.update(piece)
    return digest.hexdigest()


def weights_path(path: str | os.PathLike) -> Path:
    """The weights file of a checkpoint path: the path itself, or for a diffusers model folder its
    diffusion_pytorch_model.safetensors (or its only .safetensors file)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}; check the path (no file or folder there)")
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is not a regular file (a FIFO, socket or device); pass the checkpoint file itself"
        )
    if (path / DIFFUSERS_WEIGHTS_NAME).is_file():
        return path / DIFFUSERS_WEIGHTS_NAME
    found = sorted(p.name for p in path.glob("*.safetensors") if p.is_file())
    if len(found) == 1:
        return path / found[0]
    if found:
        raise CheckpointError(f"{path} is a folder with {len(found)} .safetensors files ({', '.join(found)}); pass one of them")
    hint = "; for a diffusers pipeline folder pass its vae/ subfolder" if (path / "vae").is_dir() else ""
    raise CheckpointError(f"{path} is a folder with no .safetensors file in it; pass the weights file{hint}")


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """Every file `load(path)` may read: the weights file, and a config.json beside it."""
    weights = weights_path(path)
    config = weights.parent / "config.json"
    return [weights] + ([config] if config.is_file() else [])


def load_config_beside(weights: str | os.PathLike) -> dict | None:
    """The config.json in the weights file's folder (diffusers' model-folder layout), or None."""
    config = Path(weights).parent / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config} beside the weights is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{config} beside the weights is not a JSON object")
    return data


def read_header(path: str | os.PathLike) -> CheckpointHeader:
    """Keys, shapes and dtypes of a safetensors file (or of the weights in a diffusers model folder);
    CheckpointError for anything else."""
    path = weights_path(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(
            f"{path} is a PyTorch pickle checkpoint; videovae reads only safetensors and never unpickles. "
            "Convert it where you trust the file: safetensors.torch.save_file(torch.load(f), 'model.safetensors')"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
            dtypes = {k: _torch_dtype(f.get_slice(k).get_dtype()) for k in keys}
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types, unrelated to OSError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        size = path.stat().st_size
        raise CheckpointError(
            f"{path} ({size} bytes) is not a readable safetensors file ({reason}); "
            "it may be truncated (re-download it) or another format"
        ) from None
    return CheckpointHeader(path, shapes, dtypes, metadata)


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _torch_dtype(name: str) -> torch.dtype:
    return _SAFETENSORS_DTYPES.get(name.upper(), torch.float32)


def detect_family(shapes: dict[str, tuple[int, ...]], *, path: Path | None = None) -> FamilySpec:
    """The family whose sentinel keys (as stored in files) are all present; else CheckpointMismatchError
    naming what the keys look like instead."""
    keys = set(shapes)
    for family in FAMILIES:
        if family.looks_like(keys):
            return family
    raise CheckpointMismatchError(
        f"{path or 'state dict'} is not a video VAE videovae knows: {_what_it_looks_like(keys, shapes)}"
    )


def _what_it_looks_like(keys: set[str], shapes: dict[str, tuple[int, ...]] | None = None) -> str:
    """A guess at what a foreign state dict is, to put in the error message."""
    prefixes = Counter(k.split(".", 1)[0] for k in keys)
    top = ", ".join(f"{p} ({n})" for p, n in prefixes.most_common(4))
    if any(k.startswith(("down_blocks.", "up_blocks.")) for k in keys) and any(
        "attentions" in k or "transformer_blocks" in k for k in keys
    ):
        in_ch = shapes.get("conv_in.weight", (None, None))[1] if shapes else None
        takes = f"; its conv_in takes {in_ch} input channels" if in_ch else ""
        unet = " (8 = 4 noisy + 4 image latent channels: an SVD UNet)" if in_ch == 8 else ""
        return f"it looks like a diffusion UNet{takes}{unet}, not a VAE; load the VAE's own file"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "it looks like a full diffusion checkpoint (model.diffusion_model.*); pass the VAE file instead"
    if any(k.startswith(("transformer_blocks.", "blocks.")) for k in keys):
        return f"it looks like a transformer (keys {top}), not a VAE"
    if not keys:
        return "it holds no tensors"
    return f"{len(keys)} tensors under {top}; expected the keys of " + " or of ".join(f.expects for f in FAMILIES)


def module_shapes(family: FamilySpec, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """File {key: shape} -> the module's {key: shape}, through the family's key map on meta tensors
    (no tensor data is read)."""
    meta = {k: torch.empty(shapes[k], device="meta") for k in family.file_keys(shapes)}
    return {k: tuple(t.shape) for k, t in family.module_state(meta).items()}


def build_model(
    shapes: dict[str, tuple[int, ...]], *, family: FamilySpec, source: str, config_file: tuple[dict, str] | None = None
) -> tuple[nn.Module, object]:
    """A meta-device model for module-key shapes, after checking that the shapes fit it exactly.

    config_file: (the dict, its path) of a config.json found beside the weights; used by families
    whose weights do not hold everything (SVD's scaling_factor), ignored by the others.
    """
    try:
        config = family.config_from_shapes(shapes)
    except (KeyError, ValueError, IndexError, ZeroDivisionError) as exc:
        raise CheckpointMismatchError(
            f"{source} looks like a {family.name} checkpoint but its tensors do not describe a complete model "
            f"({type(exc).__name__}: {exc}); the file may be partial"
        ) from None
    if config_file is not None and family.config_file is not None:
        config = family.config_file(config, *config_file)
    with torch.device("meta"):
        model = family.build(config)
    check_shapes_match(model_shapes(model), shapes, f"{source} was detected as {family.describe(config)}")
    return model, config


def plan_model(header: CheckpointHeader) -> tuple[FamilySpec, list[str], nn.Module, object]:
    """Every check `load_model` makes before reading tensor data: the family, the file keys it
    reads, the model built on meta and its config. CheckpointMismatchError, naming the tensors,
    when the file would not load (missing, unexpected, mis-shaped or non-floating tensors)."""
    family = detect_family(header.shapes, path=header.path)
    keys = family.file_keys(list(header.shapes))
    not_float = sorted(k for k in keys if not header.dtypes[k].is_floating_point)
    if not_float:
        shown = "; ".join(f"{k} {str(header.dtypes[k]).removeprefix('torch.')}" for k in not_float[:5])
        more = f"; ... and {len(not_float) - 5} more" if len(not_float) > 5 else ""
        raise CheckpointMismatchError(
            f"{header.path}: {len(not_float)} tensors are not floating point where the model has float "
            f"weights ({shown}{more}); the file is damaged or not a VAE checkpoint"
        )
    try:
        shapes = module_shapes(family, header.shapes)
    except CheckpointMismatchError as exc:
        raise CheckpointMismatchError(f"{header.path}: {exc}") from None
    config_json = load_config_beside(header.path) if family.config_file else None
    config_file = (config_json, str(header.path.parent / "config.json")) if config_json is not None else None
    model, config = build_model(shapes, family=family, source=str(header.path), config_file=config_file)
    return family, keys, model, config


def load_model(
    path: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    *,
    header: CheckpointHeader | None = None,
) -> tuple[nn.Module, CheckpointHeader]:
    """Read, detect, build on meta and assign the weights of a checkpoint file (or diffusers model
    folder; a config.json beside the weights is read by the families that use one).

    dtype: the weights' (and so the compute) dtype; None keeps the file's floating dtype (this is the
    low-level reader: `videovae.load` resolves its float32 default before calling it).
    header: `read_header(path)` when the caller has it already.
    """
    header = header or read_header(path)
    family, keys, model, _ = plan_model(header)

    dtype = dtype or stored_float_dtype(header, keys)
    device = torch.device(device) if device is not None else torch.device("cpu")
    state = {}
    with safe_open(str(header.path), framework="pt", device="cpu") as f:
        for key in keys:
            tensor = f.get_tensor(key)
            state[key] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
    model.load_state_dict(family.module_state(state), strict=True, assign=True)
    _check_nothing_on_meta(model, header.path)
    return model.eval().requires_grad_(False), header


def stored_float_dtype(header: CheckpointHeader, keys: list[str] | None = None) -> torch.dtype:
    """The floating dtype most of a checkpoint's tensors (of `keys`, default all) are stored in."""
    dtypes = header.dtypes if keys is None else {k: header.dtypes[k] for k in keys}
    floats = Counter(d for d in dtypes.values() if d.is_floating_point)
    return floats.most_common(1)[0][0] if floats else torch.float32


def _check_nothing_on_meta(model: nn.Module, source: Path) -> None:
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointMismatchError(f"{source}: {len(left)} tensors were not loaded from the file: {', '.join(left[:10])}")


def family_of(model: nn.Module) -> FamilySpec:
    """The FamilySpec of a built model (its `family` attribute)."""
    for family in FAMILIES:
        if family.name == getattr(model, "family", None):
            return family
    raise CheckpointMismatchError(f"{type(model).__name__} is not a model of a videovae family")


def save_model(model: nn.Module, path: str | os.PathLike, *, metadata: dict[str, str] | None = None) -> Path:
    """Write the model's weights as a safetensors checkpoint in its family's file layout, atomically
    (the file is absent, old or complete). `load_model(path)` rebuilds it from the shapes alone."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors = family_of(model).file_state(state)
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})
    return Path(path)

