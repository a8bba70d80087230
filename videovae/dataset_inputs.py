"""The videos a dataset job encodes: globs, folders, list files and explicit paths resolved to files,
and the id each one's latent file is named by.

    resolve_inputs(["clips/**/*.mp4", "more.txt"])   # -> sorted, de-duplicated [Path, ...]
    video_id(Path("clips/a/b.mp4"))                   # -> a stable, filesystem-safe id
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from .errors import DatasetError

LIST_SUFFIXES = (".txt", ".lst", ".list")  # a file of paths, one per line
MANIFEST = "manifest.jsonl"  # the job's own record in the output folder, never an input

def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _read_list_file(path: Path) -> list[Path]:
    folder = path.parent
    paths = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entry = Path(line).expanduser()
            paths.append(entry if entry.is_absolute() else folder / entry)
    return paths


def resolve_inputs(items: Sequence[str]) -> list[Path]:
    """The sorted, de-duplicated resolved absolute paths that `--inputs` names.

    Each item is a glob pattern (matching files only), a list file (.txt/.lst/.list: one path per
    line, relative ones relative to the list's folder), or a path. Listed paths that do not exist are kept (they are recorded
    as failures, not silently dropped). Raises DatasetError when nothing is named.
    """
    paths: list[Path] = []
    for item in items:
        expanded = os.path.expanduser(str(item))
        if _has_glob(expanded):
            import glob

            paths.extend(Path(p) for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
        elif Path(expanded).suffix.lower() in LIST_SUFFIXES:
            if not Path(expanded).is_file():
                raise DatasetError(f"list file not found: {expanded!r}; give a text file with one video path per line")
            paths.extend(_read_list_file(Path(expanded)))
        else:
            paths.append(Path(expanded))
    resolved = sorted({p.resolve() for p in paths}, key=str)
    if not resolved:
        raise DatasetError(
            f"no input videos: --inputs {' '.join(map(str, items))} names no files (a glob that matched "
            "nothing, or an empty list file); check the pattern and quote it so the shell does not expand it"
        )
    return resolved


def pattern_reaches(item: str, out: Path) -> bool:
    """Whether the glob `item` would match the latent files a run writes into `out`."""
    import fnmatch

    expanded = os.path.abspath(os.path.expanduser(item))
    if not _has_glob(expanded):
        return False
    return any(fnmatch.fnmatchcase(str(out / name), expanded) for name in ("x.safetensors", MANIFEST))


def video_id(source: Path) -> str:
    """A stable, readable id of a video from its resolved absolute path: '<stem>-<16 hex of sha1>'."""
    digest = hashlib.sha1(str(source).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", source.stem).strip("._")[:48] or "video"
    return f"{stem}-{digest}"
