"""SVD VAE checkpoint layouts: diffusers' (`AutoencoderKLTemporalDecoder`, the module's own keys)
and Stability's original single-file one; recognising either, bit-exact renames between them, and
the family spec the loader reads (`SPEC`). Dicts of tensors in, dicts out: no file I/O (the
converter, `videovae.convert`, writes files). The model and its config live in `svd.py`."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..errors import CheckpointMismatchError, OptionError
from .spec import FamilySpec, block_indices, check_shapes_match, model_shapes
from .svd import (
    DIFFUSERS_SENTINELS,
    ORIGINAL_SENTINEL,
    FAMILY,
    SVDConfig,
    SVDVAE,
    config_from_shapes,
    config_with_diffusers_json,
    describe,
)

__all__ = ["original_to_diffusers", "diffusers_to_original", "detect_svd_layout", "convert_layout", "SPEC"]

LAYOUTS = ("diffusers", "original")


# --------------------------------------------------------------------------------------------
# Key maps: diffusers <-> Stability's original single-file layout
# --------------------------------------------------------------------------------------------

DECODER_PREFIX = "first_stage_model.decoder."
COND_ENCODER_PREFIX = "conditioner.embedders.3.encoder."  # holds encoder.* and quant_conv.*
FIRST_STAGE_PREFIX = "first_stage_model."  # holds encoder.* with quant_conv folded into conv_out

# Sub-module renames inside one block, diffusers -> original; the parameter name is kept.
_ENCODER_RESNET = {
    "norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut",
}
_DECODER_RESNET = {
    "spatial_res_block.norm1": "norm1",
    "spatial_res_block.conv1": "conv1",
    "spatial_res_block.norm2": "norm2",
    "spatial_res_block.conv2": "conv2",
    "spatial_res_block.conv_shortcut": "nin_shortcut",
    "temporal_res_block.norm1": "time_stack.in_layers.0",
    "temporal_res_block.conv1": "time_stack.in_layers.2",
    "temporal_res_block.norm2": "time_stack.out_layers.0",
    "temporal_res_block.conv2": "time_stack.out_layers.3",
    "time_mixer": "",  # time_mixer.mix_factor -> mix_factor
}
_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_ATTENTION_LINEARS = ("to_q", "to_k", "to_v", "to_out.0")
_TOP = {
    "conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out", "time_conv_out": "conv_out.time_mix_conv",
}


def _split(name: str) -> tuple[str, str]:
    """'a.b.weight' -> ('a.b', 'weight'); 'mix_factor' -> ('', 'mix_factor')."""
    module, _, param = name.rpartition(".")
    return module, param


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _rename_in_block(rest: str, table: Mapping[str, str]) -> str | None:
    module, param = _split(rest)
    return _join(table[module], param) if module in table else None


@dataclass(frozen=True)
class _Rule:
    """One kind of block, named in both layouts: templates of the name prefix with {b} (block index)
    and {r} (resnet index), and the renames inside the block (diffusers -> original)."""

    diffusers: str
    original: str
    table: Mapping[str, str]
    flip_blocks: bool = False  # up blocks: original index = num_blocks - 1 - diffusers index
    resnet_shift: int = 0      # mid block: original block_{r + 1} = diffusers resnets.{r}

    def match(self, name: str, to_original: bool) -> re.Match | None:
        """Whether `name` starts with this block's prefix in its layout."""
        source = self.diffusers if to_original else self.original
        return re.match(re.escape(source).replace(r"\{b\}", r"(?P<b>\d+)").replace(r"\{r\}", r"(?P<r>\d+)"), name)

    def translate(self, m: re.Match, num_blocks: int, to_original: bool) -> str | None:
        """The matched name in the other layout, or None if its block has no such sub-module."""
        index = {k: int(v) for k, v in m.groupdict().items()}
        if "b" in index and self.flip_blocks:
            index["b"] = num_blocks - 1 - index["b"]
        if "r" in index:
            index["r"] += self.resnet_shift if to_original else -self.resnet_shift
        table = self.table if to_original else {v: k for k, v in self.table.items()}
        new = _rename_in_block(m.string[m.end():], table)
        return new and (self.original if to_original else self.diffusers).format(**index) + new


_SAMPLER = {"conv": "conv"}
_ENCODER_RULES = (
    _Rule("down_blocks.{b}.resnets.{r}.", "down.{b}.block.{r}.", _ENCODER_RESNET),
    _Rule("down_blocks.{b}.downsamplers.0.", "down.{b}.downsample.", _SAMPLER),
    _Rule("mid_block.resnets.{r}.", "mid.block_{r}.", _ENCODER_RESNET, resnet_shift=1),
    _Rule("mid_block.attentions.0.", "mid.attn_1.", _ATTENTION),
    _Rule("", "", {k: v for k, v in _TOP.items() if k != "time_conv_out"}),
)
_DECODER_RULES = (
    _Rule("up_blocks.{b}.resnets.{r}.", "up.{b}.block.{r}.", _DECODER_RESNET, flip_blocks=True),
    _Rule("up_blocks.{b}.upsamplers.0.", "up.{b}.upsample.", _SAMPLER, flip_blocks=True),
    _Rule("mid_block.resnets.{r}.", "mid.block_{r}.", _DECODER_RESNET, resnet_shift=1),
    _Rule("mid_block.attentions.0.", "mid.attn_1.", _ATTENTION),
    _Rule("", "", _TOP),
)


def _rename(name: str, num_blocks: int, *, decoder: bool, to_original: bool) -> str | None:
    """One name relative to encoder./decoder. (e.g. 'mid_block.resnets.0.conv1.weight') -> its name
    in the other layout, relative to the same module; None if it has no counterpart there. The
    first rule whose block prefix matches decides (the last rule, the top level, matches all)."""
    for rule in _DECODER_RULES if decoder else _ENCODER_RULES:
        if m := rule.match(name, to_original):
            return rule.translate(m, num_blocks, to_original)
    return None


def _is_attention_linear_weight(diffusers_name: str) -> bool:
    module, param = _split(diffusers_name)
    return param == "weight" and module.startswith("mid_block.attentions.0.") and module.endswith(_ATTENTION_LINEARS)


def _group_to_diffusers(
    sd: Mapping[str, Tensor], prefix: str, new_prefix: str, rename: Callable[[str], str | None], unmatched: list[str]
) -> dict[str, Tensor]:
    """The keys of sd under `prefix`, renamed by `rename` and put under `new_prefix`; attention 1x1
    conv weights [C, C, 1, 1] become Linear weights [C, C] (a view). Names it cannot map go to
    `unmatched`."""
    out = {}
    for key, tensor in sd.items():
        if not key.startswith(prefix):
            continue
        new = rename(key[len(prefix):])
        if new is None:
            unmatched.append(key)
            continue
        if _is_attention_linear_weight(new) and tensor.ndim == 4:
            tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])  # [C, C, 1, 1] -> [C, C]
        out[new_prefix + new] = tensor
    return out


def _check_complete(sd: Mapping[str, Tensor], layout: str) -> SVDConfig:
    """The config of a diffusers-layout state dict; CheckpointMismatchError unless it is a complete VAE."""
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    cfg = config_from_shapes(shapes)
    with torch.device("meta"):
        expected = model_shapes(SVDVAE(cfg))
    check_shapes_match(expected, shapes, f"this state dict ({layout} layout) looks like {describe(cfg)}")
    return cfg


def detect_svd_layout(keys: Iterable[str]) -> Literal["diffusers", "original"] | None:
    """'diffusers' (AutoencoderKLTemporalDecoder names), 'original' (Stability's single-file names:
    a full SVD checkpoint or its VAE subset), or None (not an SVD VAE), from sentinel key names."""
    keys = set(keys)
    if "decoder.time_conv_out.weight" in keys and "decoder.conv_in.weight" in keys:
        return "diffusers"
    if ORIGINAL_SENTINEL in keys:
        return "original"
    return None


def original_to_diffusers(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original-layout state dict -> diffusers layout (the same tensors, renamed; the attention 1x1
    conv weights [C, C, 1, 1] become Linear weights [C, C]).

    Reads the decoder from `first_stage_model.decoder.*` and the encoder from
    `conditioner.embedders.3.encoder.{encoder,quant_conv}.*` (the conditioning-frame encoder; used
    when present, bit-exact) or else from `first_stage_model.encoder.*`, whose conv_out already
    contains the quant_conv, with an identity `quant_conv`. Keys outside those groups (the UNet,
    other conditioners) are ignored. Raises CheckpointMismatchError on unmatched, missing or
    mis-shaped keys.
    """
    keys = list(sd)
    if not any(k.startswith(DECODER_PREFIX) for k in keys):
        raise CheckpointMismatchError(
            f"original-layout SVD VAE: no {DECODER_PREFIX}* keys (detected layout: {detect_svd_layout(keys)})"
        )
    num_blocks = len(block_indices(keys, DECODER_PREFIX + "up"))
    unmatched: list[str] = []
    out = _group_to_diffusers(
        sd, DECODER_PREFIX, "decoder.", lambda n: _rename(n, num_blocks, decoder=True, to_original=False), unmatched
    )
    cond_encoder = COND_ENCODER_PREFIX + "encoder."
    if any(k.startswith(cond_encoder) for k in keys):
        encoder_prefix, quant_prefix = cond_encoder, COND_ENCODER_PREFIX + "quant_conv."
    else:
        encoder_prefix, quant_prefix = FIRST_STAGE_PREFIX + "encoder.", FIRST_STAGE_PREFIX + "quant_conv."
    encoder_blocks = len(block_indices(keys, encoder_prefix + "down"))
    out |= _group_to_diffusers(
        sd, encoder_prefix, "encoder.", lambda n: _rename(n, encoder_blocks, decoder=False, to_original=False), unmatched
    )
    quant = {k[len(quant_prefix):]: v for k, v in sd.items() if k.startswith(quant_prefix)}
    if quant:
        out |= {f"quant_conv.{name}": t for name, t in quant.items()}
    elif encoder_prefix.startswith(FIRST_STAGE_PREFIX) and "encoder.conv_out.weight" in out:
        # sgm's first-stage encoder has no quant_conv: it is folded into conv_out. Identity here.
        w = out["encoder.conv_out.weight"]
        out["quant_conv.weight"] = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)[:, :, None, None]
        out["quant_conv.bias"] = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    if unmatched:
        raise CheckpointMismatchError(
            f"original-layout SVD VAE: {len(unmatched)} key(s) with no diffusers counterpart: {sorted(unmatched)[:12]}"
        )
    try:
        _check_complete(out, "original, renamed to diffusers")
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"original-layout SVD VAE, after renaming: {e}") from None
    return out


def diffusers_to_original(sd: Mapping[str, Tensor], encoder_prefix: str = COND_ENCODER_PREFIX) -> dict[str, Tensor]:
    """Diffusers-layout state dict -> original layout (renames; attention Linear [C, C] weights
    become 1x1 conv weights [C, C, 1, 1]).

    The decoder goes to `first_stage_model.decoder.*`. The encoder goes to
    `{encoder_prefix}encoder.*` and `{encoder_prefix}quant_conv.*`; with
    encoder_prefix="first_stage_model." (sgm's first-stage model, which has no quant_conv) the
    quant_conv is folded into encoder.conv_out instead (W' = Q @ W, b' = Q @ b + b_q: arithmetic,
    exact only when Q is the identity). Raises CheckpointMismatchError if sd is not a complete
    diffusers-layout SVD VAE.
    """
    cfg = _check_complete(sd, "diffusers")
    num_blocks = len(cfg.block_out_channels)
    if encoder_prefix and not encoder_prefix.endswith("."):
        encoder_prefix += "."

    out: dict[str, Tensor] = {}
    for key, tensor in sd.items():
        module, _, name = key.partition(".")
        if module == "quant_conv":
            continue
        new_prefix = DECODER_PREFIX if module == "decoder" else f"{encoder_prefix}encoder."
        if _is_attention_linear_weight(name):
            tensor = tensor.reshape(*tensor.shape, 1, 1)  # [C, C] -> [C, C, 1, 1]; a view
        out[new_prefix + _rename(name, num_blocks, decoder=module == "decoder", to_original=True)] = tensor
    if encoder_prefix == FIRST_STAGE_PREFIX:
        q_w, q_b = sd["quant_conv.weight"].flatten(1), sd["quant_conv.bias"]  # (2z, 2z), (2z,)
        w, b = sd["encoder.conv_out.weight"], sd["encoder.conv_out.bias"]  # (2z, C, 3, 3), (2z,)
        out[f"{encoder_prefix}encoder.conv_out.weight"] = torch.einsum("om,mchw->ochw", q_w, w)
        out[f"{encoder_prefix}encoder.conv_out.bias"] = q_w @ b + q_b
    else:
        out[f"{encoder_prefix}quant_conv.weight"] = sd["quant_conv.weight"]
        out[f"{encoder_prefix}quant_conv.bias"] = sd["quant_conv.bias"]
    return out


# --------------------------------------------------------------------------------------------
# The family as videovae.checkpoints sees it: files in either layout -> a diffusers-layout model
# --------------------------------------------------------------------------------------------


def looks_like(keys: Iterable[str]) -> bool:
    """Whether a file's keys hold an SVD VAE, in the diffusers or the original layout."""
    return detect_svd_layout(keys) is not None


def file_keys(keys: Iterable[str]) -> list[str]:
    """The keys of a file that the VAE is read from: all of a diffusers-layout file; of an original
    (possibly full SVD) checkpoint, the decoder and the one encoder group `original_to_diffusers`
    uses, so the UNet and other conditioners are never read."""
    keys = list(keys)
    if detect_svd_layout(keys) != "original":
        return keys
    cond_encoder = COND_ENCODER_PREFIX + "encoder."
    if any(k.startswith(cond_encoder) for k in keys):
        prefixes = (DECODER_PREFIX, cond_encoder, COND_ENCODER_PREFIX + "quant_conv.")
    else:
        prefixes = (DECODER_PREFIX, FIRST_STAGE_PREFIX + "encoder.", FIRST_STAGE_PREFIX + "quant_conv.")
    return [k for k in keys if k.startswith(prefixes)]


def to_diffusers_state(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A file's tensors, in either layout -> the diffusers-layout state dict SVDVAE loads."""
    return original_to_diffusers(sd) if detect_svd_layout(sd) == "original" else dict(sd)


LAYOUTS = ("diffusers", "original")


def convert_layout(
    sd: Mapping[str, Tensor], layout: Literal["diffusers", "original"], *, encoder_prefix: str = COND_ENCODER_PREFIX
) -> dict[str, Tensor]:
    """An SVD VAE state dict in either layout -> the same tensors in `layout` (bit-exact: renames and
    the attention [C, C] <-> [C, C, 1, 1] reshapes only).

    To "original": the encoder goes under `encoder_prefix` (default the conditioning-frame encoder,
    `conditioner.embedders.3.encoder.`, which keeps its quant_conv; "first_stage_model." folds the
    quant_conv into conv_out, exact only for an identity quant_conv). To "diffusers": see
    `original_to_diffusers` (keys outside the VAE groups are left out). A state dict already in
    `layout` comes back unchanged (its VAE keys only; encoder_prefix applies to conversions from
    the diffusers layout). Raises CheckpointMismatchError for anything that is not a complete
    SVD VAE.
    """
    if layout not in LAYOUTS:
        raise OptionError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    found = detect_svd_layout(sd)
    if found is None:
        raise CheckpointMismatchError(
            f"not an SVD VAE state dict in either layout: no decoder.time_conv_out.weight (diffusers) and no "
            f"{ORIGINAL_SENTINEL} (original) among its {len(sd)} keys"
        )
    if layout == "diffusers":
        out = to_diffusers_state(sd)
        if found == "diffusers":
            _check_complete(out, "diffusers")
        return out
    if found == "original":
        original = {k: sd[k] for k in file_keys(sd)}
        original_to_diffusers(original)  # raises unless it is a complete VAE
        return original
    return diffusers_to_original(to_diffusers_state(sd), encoder_prefix)


SPEC = FamilySpec(
    name=FAMILY,
    looks_like=looks_like,
    expects=(
        f"an SVD VAE, in diffusers' layout ({', '.join(DIFFUSERS_SENTINELS)}) "
        f"or Stability's original one ({ORIGINAL_SENTINEL})"
    ),
    config_from_shapes=config_from_shapes,
    build=SVDVAE,
    describe=describe,
    file_keys=file_keys,
    module_state=to_diffusers_state,
    config_file=config_with_diffusers_json,
)
