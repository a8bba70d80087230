"""Careless and hostile inputs answered with one clear error before any work, nothing destroyed.

(Issue 12, first part: outputs that are inputs, --threads, convert --layout, FIFOs, devices, and
decode/latent_shape arguments.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch

import videovae
from conftest import SVD_FIXTURES, stepvideo_weights
from videovae.cli import main
from videovae.errors import CheckpointError, OptionError, UsageError, VideoDTypeError, VideoLayoutError


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def work(tmp_path) -> Path:
    shutil.copy(stepvideo_weights(2), tmp_path / "ck.safetensors")
    return tmp_path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    pytest.importorskip("av")
    from videovae.video import VideoWriter

    path = tmp_path_factory.mktemp("clip") / "v.mp4"
    with VideoWriter(path, 25, 32, 32) as writer:
        writer.write(torch.rand(1, 9, 3, 32, 32) * 2 - 1)
    return path


def run(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, phrase: str) -> None:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 400, err
    assert phrase in lines[0], err


# -- outputs that are inputs ---------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["encode", "reconstruct-metrics", "reconstruct-compare"])
def test_an_output_named_like_the_checkpoint_is_refused_and_the_checkpoint_kept(work, clip, capsys, command):
    ck = work / "ck.safetensors"
    before = sha(ck)
    argv = {
        "encode": ["encode", clip, "-o", ck, "--checkpoint", ck],
        "reconstruct-metrics": ["reconstruct", clip, "-o", work / "out.mp4", "--metrics-json", ck, "--checkpoint", ck],
        "reconstruct-compare": ["reconstruct", clip, "-o", work / "out.mp4", "--compare", ck, "--checkpoint", ck],
    }[command]
    code, err = run(argv, capsys)
    assert_refused(code, err, "it is the input")
    assert sha(ck) == before
    assert sorted(p.name for p in work.iterdir()) == ["ck.safetensors"]


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_an_output_that_links_to_the_checkpoint_is_refused(work, clip, capsys, link):
    ck, alias = work / "ck.safetensors", work / "alias.safetensors"
    (os.symlink if link == "symlink" else os.link)(ck, alias)
    before = sha(ck)
    code, err = run(["encode", clip, "-o", alias, "--checkpoint", ck], capsys)
    assert_refused(code, err, "the same file")
    assert sha(ck) == before


def test_an_output_inside_a_checkpoint_folder_is_refused(tmp_path, clip, capsys):
    folder = tmp_path / "vae"
    shutil.copytree(SVD_FIXTURES / "svd_vae_tiny_diffusers", folder)
    config = folder / "config.json"
    before = sha(config)
    code, err = run(["reconstruct", clip, "-o", tmp_path / "o.mp4", "--metrics-json", config, "--checkpoint", folder], capsys)
    assert_refused(code, err, "it is the input")
    assert sha(config) == before and not (tmp_path / "o.mp4").exists()


def test_convert_onto_its_own_checkpoint_is_refused(work, capsys):
    ck = work / "ck.safetensors"
    before = sha(ck)
    code, err = run(["convert", ck, "-o", ck, "--dtype", "fp32"], capsys)
    assert_refused(code, err, "it is the input")
    assert sha(ck) == before


def test_convert_layout_is_an_option_of_the_command_line(tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "original.safetensors"
    code = main(["convert", str(SVD_FIXTURES / "svd_vae_tiny_diffusers"), "-o", str(out), "--layout", "original"])
    assert code == 0, capsys.readouterr().err
    keys = set(load_file(out))
    assert any(k.startswith("first_stage_model.decoder.") for k in keys)
    back = tmp_path / "diffusers.safetensors"
    assert main(["convert", str(out), "-o", str(back), "--layout", "diffusers"]) == 0
    original = load_file(SVD_FIXTURES / "svd_vae_tiny_diffusers" / "diffusion_pytorch_model.safetensors")
    converted = load_file(back)
    assert set(converted) == set(original) and all(torch.equal(converted[k], original[k]) for k in original)


# -- the machine's bounds --------------------------------------------------------------------------------

@pytest.mark.parametrize("threads", ["50000", "20000"])
def test_more_threads_than_cpus_is_one_clear_line(work, capsys, threads):
    code, err = run(["--threads", threads, "inspect", work / "ck.safetensors"], capsys)
    assert_refused(code, err, f"--threads {threads}: this machine gives the process")


def test_a_fifo_checkpoint_is_refused_without_hanging(tmp_path, capsys):
    fifo = tmp_path / "ck.safetensors"
    os.mkfifo(fifo)
    outcome = {}

    def attempt():
        try:
            videovae.load(fifo)
        except CheckpointError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "load() blocked on a FIFO"
    assert "not a regular file" in str(outcome["error"])
    code, err = run(["inspect", fifo], capsys)
    assert_refused(code, err, "not a regular file")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device, phrase", [
    ("cuda", "torch.cuda.is_available() is False"), ("cuda:3", "torch.cuda.is_available() is False"),
    ("meta", "holds no data"), ("tpu", "not a device torch knows"),
])
def test_devices_that_are_not_here_are_refused_before_the_file_is_read(device, phrase, tmp_path):
    with pytest.raises(OptionError) as info:
        videovae.load(stepvideo_weights(2), device=device)
    assert isinstance(info.value, ValueError) and phrase in str(info.value)


def test_meta_inputs_are_refused_at_the_boundary(v2):
    with pytest.raises(VideoDTypeError, match="meta device"):
        v2.encode(torch.empty(1, 1, 3, 16, 16, device="meta"))


# -- arguments of decode and latent_shape ------------------------------------------------------------------

@pytest.mark.parametrize("bad", [2.5, "3", True, [3]])
def test_decode_refuses_a_num_frames_that_is_not_an_int_before_decoding(v2, bad, monkeypatch):
    decoded = []
    monkeypatch.setattr(v2.model, "decode_chunk", lambda z: decoded.append(z))
    with pytest.raises(UsageError, match="num_frames must be an int") as info:
        v2.decode(torch.zeros(1, 3, 2, 2, 2), num_frames=bad)
    assert isinstance(info.value, TypeError) and decoded == []


@pytest.mark.parametrize("shape", [(1, 0, 3, 8, 8), (1, -4, 3, 16, 16), (1, 17, 3, 16), (1, 17, 3, 16.0, 16), (1, 17, 4, 16, 16)])
def test_latent_shape_refuses_shapes_that_are_not_videos(v2, shape):
    with pytest.raises(VideoLayoutError):
        v2.latent_shape(shape)


def test_latent_shape_of_a_real_video(v2):
    assert v2.latent_shape((2, 18, 3, 40, 48)) == (2, 4, 2, 3, 3)
