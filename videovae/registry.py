"""The checkpoints videovae knows: those it ships as package data (`videovae_weights`, the repo's
`videovae_weights/` folder) and the released ones listed in `videovae_weights/registry.json`.

Shipped files are found through importlib.resources, so they work from a source checkout, an
editable install and a wheel alike.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from .errors import CheckpointNotFoundError

WEIGHTS_PACKAGE = "videovae_weights"
DEMO_PHOTO = "demo_photo.safetensors"  # skimage's astronaut, 384x384: held out from training, filmed by the demo
DEFAULT_NAME = "stepvideo_v1_demo"  # the registry entry the CLI and the demo use by default: the trained demo model


def registry() -> dict[str, dict]:
    """registry.json: {name: {file, family, version, sha256?, source, shipped}}."""
    return json.loads(resources.files(WEIGHTS_PACKAGE).joinpath("registry.json").read_text())


def known_checkpoint(sha256: str) -> tuple[str, dict] | None:
    """(name, entry) of the registry entry whose file has this sha256, or None for an unknown file."""
    return next(((name, entry) for name, entry in registry().items() if entry.get("sha256") == sha256), None)


def shipped_checkpoint(name: str = DEFAULT_NAME) -> Path:
    """The path of a checkpoint shipped with videovae (default: the demo's)."""
    entry = registry().get(name)
    if entry is None or not entry.get("shipped"):
        shipped = sorted(k for k, v in registry().items() if v.get("shipped"))
        raise CheckpointNotFoundError(f"videovae ships no checkpoint named {name!r}; it ships {', '.join(shipped)}")
    path = Path(str(resources.files(WEIGHTS_PACKAGE).joinpath(entry["file"])))
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"the shipped checkpoint {entry['file']} is missing from {path.parent}; reinstall videovae "
            "(pip install --force-reinstall videovae) or pass --checkpoint"
        )
    return path


def demo_photo():
    """The photograph the demo films: (3, 384, 384) float32 in [-1, 1] (never seen in training)."""
    from safetensors.torch import load_file

    from .camera import photo_tensor

    path = Path(str(resources.files(WEIGHTS_PACKAGE).joinpath(DEMO_PHOTO)))
    if not path.is_file():
        raise CheckpointNotFoundError(f"the demo photograph {DEMO_PHOTO} is missing from {path.parent}; reinstall videovae")
    return photo_tensor(load_file(str(path))["image"])

