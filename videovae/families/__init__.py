"""The model families videovae knows, each a pure plugin (config, modules, key maps; no file I/O).

`FAMILIES` is the one registry the loader (`videovae.checkpoints`) reads: a `FamilySpec` per family,
tried in order. Adding a family is a module with its spec, and one entry here.
"""

from __future__ import annotations

from . import stepvideo, svd_layouts
from .spec import Capabilities, FamilyModel, FamilySpec

FAMILIES: tuple[FamilySpec, ...] = (stepvideo.SPEC, svd_layouts.SPEC)

__all__ = ["FAMILIES", "Capabilities", "FamilyModel", "FamilySpec"]
