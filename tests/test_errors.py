"""Every exception videovae raises on purpose is a VideoVAEError that is also the matching builtin.

Two walks: the source (no `raise ValueError(...)` and friends anywhere in the package), and the public
entries with bad input (each raises the videovae class and the builtin a caller may catch).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import videovae
from conftest import SVD_FIXTURES, stepvideo_weights
from videovae import errors
from videovae.adapters.diffusers import SVDFace, VideoFace
from videovae.chunk_state import OverlapBlender, overlap_windows
from videovae.convert import convert_checkpoint

PACKAGE = Path(videovae.__file__).parent
BUILTINS = {"ValueError", "TypeError", "RuntimeError", "NotImplementedError", "OSError", "FileNotFoundError",
            "KeyError", "IndexError", "AssertionError", "Exception", "IOError"}


def _raised_builtins(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(call, ast.Name) and call.id in BUILTINS:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} raises {call.id}")
    return found


def test_the_package_raises_no_bare_builtin_exception():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20  # the walk sees the whole package
    offenders = [hit for f in files for hit in _raised_builtins(f)]
    assert offenders == []


def test_every_videovae_exception_is_also_a_builtin():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.VideoVAEError)]
    assert len(classes) >= 15
    for cls in classes:
        if cls is errors.VideoVAEError:
            continue
        assert any(issubclass(cls, b) for b in (ValueError, TypeError, OSError, RuntimeError, NotImplementedError, ArithmeticError)), cls
        assert getattr(videovae, cls.__name__) is cls, f"{cls.__name__} is not exported from videovae"


@pytest.fixture(scope="module")
def vae():
    return videovae.load(stepvideo_weights(2))


def _bad_calls(vae, tmp: Path):
    """(what, call, the builtin it must also be)"""
    z = torch.zeros(1, 3, 2, 2, 2)
    face = VideoFace(vae)
    return [
        ("decode(chunk_frames=) on a chunked family", lambda: vae.decode(z, chunk_frames=2), ValueError),
        ("decode(num_frames=0)", lambda: vae.decode(z, num_frames=0), ValueError),
        ("overlap_windows(overlap >= chunk)", lambda: overlap_windows(10, 4, 4), ValueError),
        ("OverlapBlender().flush() with nothing pushed", lambda: OverlapBlender().flush(), ValueError),
        ("load(dtype='fp8')", lambda: videovae.load(stepvideo_weights(2), dtype="fp8"), TypeError),
        ("load(device='nonsense')", lambda: videovae.load(stepvideo_weights(2), device="nonsense"), ValueError),
        ("load(missing)", lambda: videovae.load(tmp / "missing.safetensors"), FileNotFoundError),
        ("convert_checkpoint(layout='bogus')",
         lambda: convert_checkpoint(stepvideo_weights(2), tmp / "x.safetensors", layout="bogus"), ValueError),
        ("convert_checkpoint(dtype=int32)",
         lambda: convert_checkpoint(stepvideo_weights(2), tmp / "x.safetensors", dtype=torch.int32), TypeError),
        ("svd convert_layout('bogus')", lambda: _svd_convert_layout("bogus"), ValueError),
        ("svd convert to an original-layout .bin", lambda: _svd_convert_to(tmp / "out.bin"), ValueError),
        ("face.enable_tiling(a tile off the grid)", lambda: face.enable_tiling(tile_sample_min_height=3), ValueError),
        ("decode(tile=0)", lambda: vae.decode(z, tile=0), ValueError),
        ("face.config is read-only", lambda: face.config.__setitem__("scaling_factor", 2.0), TypeError),
        ("SVDFace(not a VideoVAE)", lambda: SVDFace(torch.nn.Linear(2, 2)), TypeError),
        ("encode of a (B, C, T, H, W) tensor", lambda: vae.encode(torch.zeros(1, 3, 17, 32, 32)), ValueError),
        ("encode of an int tensor", lambda: vae.encode(torch.zeros(1, 1, 3, 32, 32, dtype=torch.int64)), TypeError),
        ("StepVideoConfig(version=3)", lambda: _stepvideo_config(3), ValueError),
    ]


def _svd_convert_layout(layout):
    from safetensors.torch import load_file

    from videovae.families.svd_layouts import convert_layout

    return convert_layout(load_file(SVD_FIXTURES / "svd_vae_tiny_original.safetensors"), layout)


def _svd_convert_to(dst):
    from videovae.convert import convert_svd_checkpoint

    return convert_svd_checkpoint(SVD_FIXTURES / "svd_vae_tiny_diffusers", dst, "original")


def _stepvideo_config(version):
    from videovae.families.stepvideo import StepVideoConfig

    return StepVideoConfig(version=version, z_channels=16)


def test_bad_input_to_public_entries_raises_videovae_errors(vae, tmp_path):
    for what, call, builtin in _bad_calls(vae, tmp_path):
        with pytest.raises(errors.VideoVAEError) as info:
            call()
        assert isinstance(info.value, builtin), f"{what}: {type(info.value).__name__} is not a {builtin.__name__}"
        assert str(info.value), what
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, not even half


def test_a_closed_writer_raises_a_state_error(tmp_path):
    pytest.importorskip("av")
    from videovae.video_write import VideoWriter

    writer = VideoWriter(tmp_path / "v.mp4", 25, 32, 32)
    writer.write(torch.zeros(1, 1, 3, 32, 32))
    writer.close()
    with pytest.raises(errors.StateError) as info:
        writer.write(torch.zeros(1, 1, 3, 32, 32))
    assert isinstance(info.value, RuntimeError) and "closed" in str(info.value)
