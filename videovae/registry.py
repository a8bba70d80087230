"""The checkpoints videovae knows: those it ships as package data (`videovae_weights`, the repo's
`weights/` folder) and the released ones listed in `weights/registry.json`.

Shipped files are found through importlib.resources, so they work from a source checkout, an
editable install and a wheel alike.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from .errors import CheckpointNotFoundError

WEIGHTS_PACKAGE = "videovae_weights"
DEFAULT_NAME = "stepvideo_v2_tiny"  # the registry entry the CLI and the demo use by default


def registry() -> dict[str, dict]:
    """registry.json: {name: {file, family, version, sha256?, source, shipped}}."""
    return json.loads(resources.files(WEIGHTS_PACKAGE).joinpath("registry.json").read_text())


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
