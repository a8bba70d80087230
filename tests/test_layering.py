"""The dependency rule is enforced: the import-linter contracts in pyproject.toml hold for the tree,
and an upward import (a family importing the API) breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("importlinter", reason="pip install 'videovae[test]' (import-linter)")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    """lint-imports on the packages under `tree` (videovae/ and videovae_kernels/), with the project's contracts."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=120,
    )


def _copy_tree(dest: Path) -> Path:
    shutil.copytree(ROOT / "videovae", dest / "videovae", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "videovae_kernels", dest / "videovae_kernels", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_the_tree_keeps_the_contracts(tmp_path):
    result = _lint(_copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, upward", [
    ("families/spec.py", "from videovae import api"),          # a family importing the API
    ("chunking.py", "import videovae.engine"),                  # a helper importing the engine
    ("layers.py", "from videovae.families import stepvideo"),   # a layer importing a family
])
def test_an_upward_import_breaks_them(tmp_path, module, upward):
    tree = _copy_tree(tmp_path)
    path = tree / "videovae" / module
    path.write_text(path.read_text() + f"\n{upward}  # noqa: E402,F401\n")
    result = _lint(tree)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout
