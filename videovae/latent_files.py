"""Latent files: the posterior mean and logvar of one video plus the facts needed to decode it and to
know whether it is still current. Safetensors; metadata in the header (strings), written atomically.

Tensors: `mean`, `logvar`: (T_lat, z, h, w) (batch index dropped: one video per file).
Metadata: see `LatentFileMeta`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import LatentFileError, LatentMismatchError
from .atomic_write import atomic_output
from .version import __version__

FORMAT = "videovae.latents/1"


@dataclass(frozen=True)
class LatentFileMeta:
    """Facts stored with the latents of one video (all kept as strings in the safetensors header)."""

    family: str
    version: str               # "" when the family has no versions
    latent_channels: int
    spatial_compression: int
    temporal_compression: int
    frames: int                 # frames the latents decode back to (after the frame policy)
    height: int
    width: int
    fps: str                    # a fraction, e.g. "30000/1001"; "" when unknown
    policy: str                 # "time=pad,space=pad"
    checkpoint_sha256: str
    source: str = ""            # the video these latents encode
    videovae_version: str = ""
    options: str = ""           # JSON of further options that change the latents (size, max frames, dtype)
    source_signature: str = ""  # the source file as encoded ("size=..,mtime_ns=..[,sha256=..]"), for resume

    @classmethod
    def of(cls, vae, encoded, *, fps, policy: str, checkpoint_sha256: str, source, options: str,
           source_signature: str = "") -> "LatentFileMeta":
        """The metadata of `encoded` (a `videovae.engine.EncodedVideo`) from `vae` (a VideoVAE): the one
        place the CLI's `encode` and the dataset job describe what they wrote."""
        height, width = encoded.frame_size
        return cls(
            family=vae.family, version=str(vae.version), latent_channels=vae.latent_channels,
            spatial_compression=vae.spatial_compression, temporal_compression=vae.temporal_compression,
            frames=encoded.frames, height=height, width=width, fps=str(fps), policy=policy,
            checkpoint_sha256=checkpoint_sha256, source=str(source), videovae_version=__version__,
            options=options, source_signature=source_signature,
        )

    def to_header(self) -> dict[str, str]:
        return {"format": FORMAT, **{k: str(v) for k, v in dataclasses.asdict(self).items()}}

    @classmethod
    def from_header(cls, header: dict[str, str], path: Path) -> "LatentFileMeta":
        if header.get("format") != FORMAT:
            raise LatentFileError(f"{path} is not a videovae latent file (format {header.get('format')!r}, expected {FORMAT!r})")
        values = {}
        for field in dataclasses.fields(cls):
            if field.name not in header:
                if field.default is dataclasses.MISSING:
                    raise LatentFileError(f"{path} lacks the {field.name!r} entry of a videovae latent file; re-encode the video")
                continue
            raw = header[field.name]
            values[field.name] = _header_int(raw, field.name, path) if field.type in ("int", int) else raw
        if values.get("fps"):
            _check_fps(values["fps"], path)
        return cls(**values)


# Frame rates a video can be written at: FFmpeg's muxers refuse time bases far outside this.
MIN_FPS, MAX_FPS = Fraction(1, 100), Fraction(1000)


def _header_int(raw: str, name: str, path: Path) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise LatentFileError(f"{path}: its {name!r} entry {raw[:40]!r} is not an integer; the file is damaged, re-encode the video") from None
    if value < (0 if name == "temporal_compression" else 1):
        raise LatentFileError(f"{path}: its {name!r} entry is {value}; the file is damaged, re-encode the video")
    return value


def _check_fps(raw: str, path: Path) -> None:
    try:
        fps = Fraction(raw)
    except (ValueError, ZeroDivisionError):
        raise LatentFileError(f"{path}: its fps entry {raw[:40]!r} is not a frame rate such as '30' or '30000/1001'") from None
    if not MIN_FPS <= fps <= MAX_FPS:
        raise LatentFileError(f"{path}: its fps {raw[:40]!r} is outside {MIN_FPS}..{MAX_FPS}; no video can be written at it")


def save_latents(path: str | os.PathLike, mean: torch.Tensor, logvar: torch.Tensor, meta: LatentFileMeta) -> Path:
    """Write mean and logvar (T_lat, z, h, w) with their metadata; atomically (temp file + rename)."""
    path = Path(path)
    tensors = {"mean": mean.detach().contiguous().cpu(), "logvar": logvar.detach().contiguous().cpu()}
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta.to_header())
    return path


def read_latent_meta(path: str | os.PathLike) -> LatentFileMeta:
    """Only the metadata (reads the header, not the tensors)."""
    path = Path(path)
    header = _open(path, lambda f: f.metadata() or {})
    return LatentFileMeta.from_header(header, path)


def load_latents(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, LatentFileMeta]:
    """(mean, logvar, meta) of a latent file; LatentFileError when it is not one."""
    path = Path(path)

    def read(f):
        keys = set(f.keys())
        if not {"mean", "logvar"} <= keys:
            shown = ", ".join(sorted(keys)[:5]) + (f", ... ({len(keys)} tensors)" if len(keys) > 5 else "")
            raise LatentFileError(f"{path} holds {shown}, not the 'mean' and 'logvar' of a videovae latent file")
        return f.get_tensor("mean"), f.get_tensor("logvar"), f.metadata() or {}

    mean, logvar, header = _open(path, read)
    meta = LatentFileMeta.from_header(header, path)
    if mean.ndim != 4 or mean.shape != logvar.shape or mean.shape[1] != meta.latent_channels:
        raise LatentFileError(f"{path}: mean {tuple(mean.shape)} / logvar {tuple(logvar.shape)} are not (T_lat, z, h, w) latents")
    return mean, logvar, meta


def _open(path: Path, read):
    if not path.exists():
        raise LatentFileError(f"latent file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return read(f)
    except LatentFileError:
        raise
    except Exception as exc:  # safetensors' own error types
        raise LatentFileError(f"{path} is not a readable safetensors latent file ({str(exc).splitlines()[0]})") from None


def check_latents_fit(meta: LatentFileMeta, vae, *, checkpoint_sha256: str | None = None) -> None:
    """Raise LatentMismatchError, saying why, when latents from `meta` cannot be decoded by `vae`."""
    version = "" if vae.version is None else str(vae.version)
    problems = []
    if meta.family != vae.family or meta.version != version:
        problems.append(f"they come from a {meta.family} v{meta.version} model, this checkpoint is {vae.family} v{version}")
    if meta.latent_channels != vae.latent_channels:
        problems.append(f"they have {meta.latent_channels} latent channels, this model {vae.latent_channels}")
    if meta.spatial_compression != vae.spatial_compression or meta.temporal_compression != vae.temporal_compression:
        problems.append(
            f"their compression is {meta.spatial_compression}x/{meta.temporal_compression}x, this model's "
            f"{vae.spatial_compression}x/{vae.temporal_compression}x"
        )
    if problems:
        raise LatentMismatchError("these latents do not fit the checkpoint: " + "; ".join(problems))
    if checkpoint_sha256 and meta.checkpoint_sha256 and meta.checkpoint_sha256 != checkpoint_sha256:
        import warnings

        warnings.warn(
            f"latents were encoded with checkpoint sha256 {meta.checkpoint_sha256[:12]}..., decoding with "
            f"{checkpoint_sha256[:12]}... (same architecture, other weights)",
            stacklevel=2,
        )


def options_json(**options) -> str:
    """A stable JSON string of the options that change latents, for `LatentFileMeta.options`."""
    return json.dumps(options, sort_keys=True, separators=(",", ":"))
