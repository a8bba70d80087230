"""What a model family is, as the loader sees it: a pure plugin over key names, shapes and tensors.

A family module (`stepvideo`, `svd`) holds a config, its modules and its key maps, and exports one
`FamilySpec`. Nothing here reads or writes files; `videovae.checkpoints` does the I/O and asks the
specs in `videovae.families.FAMILIES` which one a file holds.

    spec = FAMILIES[i]
    spec.looks_like(file_keys)                 # is it this family?
    state = spec.module_state(file_tensors)    # file layout -> the module's state dict
    config = spec.config_from_shapes({k: tuple(v.shape) for k, v in state.items()})
    model = spec.build(config)                 # on the meta device, then assigned
    spec.file_state(model.state_dict())        # the module's state -> the released file layout
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointMismatchError
from ..layers import CausalConv3d

Shapes = Mapping[str, tuple[int, ...]]
State = dict[str, Tensor]


@dataclass(frozen=True)
class Capabilities:
    """What a family's model does beyond one chunk in, one chunk out, declared so that `videovae.api`
    applies an option where it means something and refuses it with a clear error elsewhere.

    seam_blend: the family decodes chunks of its own whose seams the reference blends (Step-Video),
        so `blend` applies.
    stream_window: (latent frames, overlap) of the windows a stream decodes in, for a family that
        decodes whole clips (SVD): memory stays bounded on a long video. None: chunks of its own.
    encode_window: frames encoded together by a family without chunks whose encoder treats every
        frame on its own (SVD), so that encoding holds a bounded number of frames; the result does
        not depend on it. None: the family's chunks, or the whole clip.
    """

    seam_blend: bool = False
    stream_window: tuple[int, int] | None = None
    encode_window: int | None = None


class FamilyModel(nn.Module):
    """The contract between a family's model and `videovae.api`.

    Subclasses set `family` (a name), `capabilities` and `config`, and define `version` (int),
    `latent_channels`, `frame_layout` (a `videovae.chunking.FrameLayout`) and, on channels-first clips,
        encode_chunk(x: (B, C, T, H, W), tiles=None) -> moments (B, 2z, T_lat, h, w)
        decode_chunk(z: (B, z, T_lat, h, w), tiles=None) -> (B, C, T', H, W)
    for one chunk of `frame_layout` (the whole clip when it has no chunks). Given a
    `videovae.tiling.Tiles`, they run tile by tile in space with the same result (each module's
    `tiled(x, tiles)`: its forward split at the norms, see `videovae.tiling`).
    """

    family: str
    capabilities: Capabilities

    @property
    def streams_frames(self) -> bool:
        """Whether encode_chunk and decode_chunk take stream=True: every norm per frame and every
        layer causal, so that frames pass through a chunk one at a time (`videovae.frame_stream`),
        with the same result in a few frames' memory per conv instead of the chunk's."""
        return False

    def fast_paths(self, *, winograd: bool | None = None, phase_split: bool | None = None,
                   channels_last: bool | None = None) -> "FamilyModel":
        """Switch the exact fast paths (None leaves one as it is), all equal to the plain paths up
        to float rounding:
        - winograd: Winograd tiles in time for large float32 causal 3x3x3 convs (`videovae.winograd`);
          on by default.
        - phase_split: upsampling convs computed phase by phase on the low-res input
          (`videovae.layers.upsample2x_conv`); on by default.
        - channels_last: the 3D conv weights stored channels-last-3d, so that activations flow
          channels-last through the convs and the fused norms, and the modules that convert their
          input to channels-last (SVD's encoder and decoder, on by default) do so."""
        for module in self.modules():
            if winograd is not None and isinstance(module, CausalConv3d):
                module.winograd = winograd
            if phase_split is not None and hasattr(module, "by_phases"):
                module.by_phases = phase_split
            if channels_last is not None and isinstance(getattr(module, "channels_last", None), bool):
                module.channels_last = channels_last
        if channels_last is not None:
            fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
            with torch.no_grad():
                for p in self.parameters():
                    if p.ndim == 5:
                        p.data = p.data.contiguous(memory_format=fmt)
        return self


def _identity_state(tensors: Mapping[str, Tensor]) -> State:
    return dict(tensors)


def _all_keys(keys: Iterable[str]) -> list[str]:
    return list(keys)


@dataclass(frozen=True)
class FamilySpec:
    """How to recognise, configure, build and store one model family.

    looks_like: file keys -> whether a file holds this family.
    expects: the family and its sentinel keys in words ("a Step-Video VAE (...)"), for the error that
        names what a foreign file holds instead.
    config_from_shapes: module {key: shape} -> config (raises on an incomplete set).
    build: config -> the model (the family's nn.Module, see `videovae.families.protocol`).
    describe: config -> one line for messages and `videovae inspect`.
    file_keys: the file keys the model is read from (default all; a full SVD checkpoint also holds
        a UNet that is never read).
    module_state: file tensors (of file_keys) -> the module's state dict; must work on meta tensors.
    file_state: the module's state dict -> the released file layout (what `save_model` writes).
    config_file: (config, a diffusers config.json dict, its path) -> config, for families whose
        weights do not hold every setting (SVD's scaling_factor); None: such a file is not read.
    """

    name: str
    looks_like: Callable[[set[str]], bool]
    expects: str
    config_from_shapes: Callable[[Shapes], Any]
    build: Callable[[Any], nn.Module]
    describe: Callable[[Any], str]
    file_keys: Callable[[Iterable[str]], list[str]] = _all_keys
    module_state: Callable[[Mapping[str, Tensor]], State] = _identity_state
    file_state: Callable[[Mapping[str, Tensor]], State] = _identity_state
    config_file: Callable[[Any, dict, str], Any] | None = None


def mismatch_report(expected: Shapes, found: Shapes, limit: int = 20) -> str:
    """Missing, unexpected and mis-shaped tensors of `found` against `expected`, one line each kind
    (empty when they match)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    parts = []

    def listing(title: str, names: list[str], fmt: Callable[[str], str]) -> None:
        if names:
            shown = "; ".join(fmt(n) for n in names[:limit])
            more = f"; ... and {len(names) - limit} more" if len(names) > limit else ""
            parts.append(f"{len(names)} {title}: {shown}{more}")

    listing("missing", missing, lambda k: f"{k} {list(expected[k])}")
    listing("unexpected", unexpected, lambda k: f"{k} {list(found[k])}")
    listing("mis-shaped", misshaped, lambda k: f"{k} file {list(found[k])} vs model {list(expected[k])}")
    return "\n  ".join(parts)


def check_shapes_match(expected: Shapes, found: Shapes, what: str) -> None:
    """CheckpointMismatchError with the `mismatch_report` when `found` does not fit `expected`."""
    report = mismatch_report(expected, found)
    if report:
        raise CheckpointMismatchError(f"{what}, but its tensors do not match that model:\n  {report}")


def model_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a model's state dict (build it on the meta device: no memory)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def block_indices(keys: Iterable[str], prefix: str) -> list[int]:
    """Sorted distinct integers i of the keys that start with `prefix` + "i." (prefix a literal
    module path such as "encoder.down_blocks" or "encoder.down.0.block")."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pattern.match(k))})
