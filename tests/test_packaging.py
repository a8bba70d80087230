"""A wheel installs whole: the shipped checkpoint and registry are package data, found through
importlib.resources from an installed copy, outside any source tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy: an in-tree build leaves build/ behind, and a stale one breaks the next build.
    source = tmp_path_factory.mktemp("source") / "videovae"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "outputs", "results"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300, cwd=out,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (built,) = out.glob("videovae-*.whl")
    return built


def test_the_wheel_carries_the_default_checkpoint_and_the_registry(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    registry = json.loads(zipfile.ZipFile(wheel).read("videovae_weights/registry.json"))
    shipped = [entry["file"] for entry in registry.values() if entry.get("shipped")]
    assert shipped and all(f"videovae_weights/{name}" in names for name in shipped)
    assert {"videovae/__init__.py", "videovae_kernels/__init__.py", "videovae_weights/__init__.py"} <= names
    default = registry["stepvideo_v1_demo"]["file"]
    info = zipfile.ZipFile(wheel).getinfo(f"videovae_weights/{default}")
    assert info.file_size == (ROOT / "videovae_weights" / default).stat().st_size
    assert "videovae_weights/demo_photo.safetensors" in names
    assert not any(name.endswith("_tiny.safetensors") for name in names)  # the untrained fixture is a test fixture


def test_an_installed_wheel_finds_and_loads_its_checkpoint_from_another_folder(wheel, tmp_path):
    target = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import videovae, videovae.registry as r\n"
        "path = r.shipped_checkpoint()\n"
        "vae = videovae.load(path)\n"
        "print(videovae.__file__)\n"
        "print(path)\n"
        "print(vae.family, vae.version, vae.dtype)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=elsewhere, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    module, path, facts = done.stdout.strip().splitlines()
    assert module.startswith(str(target)) and path.startswith(str(target))  # the installed copy, not the tree
    assert facts == "stepvideo 1 torch.float32"
