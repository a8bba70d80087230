"""Named model configs to train from scratch (`videovae train --config NAME`).

`demo-v1` is the shipped demo model: the Step-Video v1 blocks and causal layout (group-norm
statistics over the chunk) with three levels instead of four (4x spatial instead of 8x), one
temporal level instead of two (2x temporal: 17 frames -> 9 latents), widths 64-96 and z = 32. Two things decided it, both measured on 2 CPU cores:
a group norm of 32 groups over 32 channels (one channel per group) loses each channel's level and
contrast, so the widths start at 64; and the four-level 8x model learned too slowly to reach a useful
quality in an hour (held-out PSNR still 12 dB after 500 steps), where three levels learn faster.
"""

from __future__ import annotations

from ..errors import UsageError
from ..families.stepvideo import StepVideoConfig

CONFIGS: dict[str, StepVideoConfig] = {
    "demo-v1": StepVideoConfig(
        version=1, z_channels=32, encoder_in_width=64,
        encoder_widths=(64, 64, 96), encoder_blocks=1, encoder_temporal_levels=(1,),
        decoder_widths=(64, 64, 96), decoder_blocks=1, decoder_temporal_levels=(2,),
    ),
    "tiny-v2": StepVideoConfig(
        version=2, z_channels=4, encoder_in_width=32, encoder_widths=(32, 32, 64, 64), encoder_blocks=1,
        decoder_widths=(32, 32, 64, 64), decoder_blocks=1, patch_channels=4 * 4 * 8,
    ),
}


def named_config(name: str) -> StepVideoConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise UsageError(f"no training config named {name!r}; choose one of {', '.join(CONFIGS)}") from None
