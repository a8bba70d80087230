"""Careless and hostile inputs answered with one clear error before any work, nothing destroyed.

(Issue 12, first part: outputs that are inputs, --threads, convert --layout, FIFOs, devices, and
decode/latent_shape arguments.)
"""

from __future__ import annotations

import hashlib
import os
import re
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
    from videovae.video_write import VideoWriter

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


# -- values ---------------------------------------------------------------------------------------------------

def test_frames_in_0_255_get_one_warning_naming_the_cause(v2):
    from videovae.errors import InputRangeWarning

    x = torch.rand(1, 17, 3, 16, 16) * 255
    with pytest.warns(InputRangeWarning, match="0..255 frames: use x / 127.5 - 1") as record:
        v2.encode(x)
    assert len([w for w in record if issubclass(w.category, InputRangeWarning)]) == 1
    with pytest.warns(InputRangeWarning) as record:  # streaming: one per call too, not one per piece
        list(v2.encode_stream(x.split(4, dim=1)))
    assert len([w for w in record if issubclass(w.category, InputRangeWarning)]) == 1


def test_a_video_in_range_gets_no_warning(v2):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v2.encode(torch.rand(1, 1, 3, 16, 16) * 2 - 1)


def test_huge_inputs_give_an_error_not_nan_latents(v2):
    from videovae.errors import InputRangeWarning, NonFiniteOutputError

    with pytest.warns(InputRangeWarning), pytest.raises(NonFiniteOutputError, match="far outside") as info:
        v2.encode(torch.full((1, 1, 3, 16, 16), 1e30))
    assert isinstance(info.value, ArithmeticError)


# -- latent files ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def latent_file(tmp_path_factory, clip):
    path = tmp_path_factory.mktemp("latents") / "v.latents.safetensors"
    assert main(["encode", str(clip), "-o", str(path), "-q"]) == 0
    return path


def _with_meta(src: Path, dst: Path, **changes) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = {**f.metadata(), **changes}
    save_file(tensors, str(dst), metadata=meta)
    return dst


@pytest.mark.parametrize("changes, phrase", [
    ({"fps": "1/0"}, "is not a frame rate"),
    ({"fps": "1/1000000"}, "no video can be written at it"),
    ({"frames": "nine"}, "'frames' entry 'nine' is not an integer"),
    ({"latent_channels": "two"}, "'latent_channels' entry 'two' is not an integer"),
    ({"frames": "0"}, "'frames' entry is 0"),
    ({"frames": "1"}, "the file is inconsistent"),  # 9 frames' 2 latent frames, said to be 1 frame
])
def test_damaged_latent_metadata_is_one_line_before_decoding(latent_file, tmp_path, capsys, changes, phrase):
    bad = _with_meta(latent_file, tmp_path / "bad.safetensors", **changes)
    out = tmp_path / "out.mp4"
    code, err = run(["decode", bad, "-o", out], capsys)
    assert_refused(code, err, phrase)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


@pytest.mark.parametrize("name", ["out.xyz", "out"])
def test_unknown_output_extensions_are_refused_before_the_model_loads(clip, tmp_path, capsys, monkeypatch, name):
    from videovae import commands

    monkeypatch.setattr(commands, "_load", lambda args: pytest.fail("the model was loaded"))
    code, err = run(["reconstruct", clip, "-o", tmp_path / name], capsys)
    assert_refused(code, err, "unknown video extension")


# -- damaged checkpoints: inspect checks what load checks --------------------------------------------------------

def _damaged(src: Path, dst: Path, change: str) -> Path:
    from safetensors.torch import load_file, save_file

    state = load_file(src)
    if change == "missing":
        del state["decoder.conv_out.weight"]
    elif change == "misshaped":
        state["decoder.norm_out.weight"] = torch.zeros(65, dtype=torch.bfloat16)
    elif change == "extra":
        state["decoder.extra.weight"] = torch.zeros(3, dtype=torch.bfloat16)
    elif change == "integer":
        state = {k: (v.to(torch.int64) if i % 2 else v) for i, (k, v) in enumerate(state.items())}
    save_file(state, str(dst))
    return dst


@pytest.mark.parametrize("change, phrase", [
    ("missing", "decoder.conv_out.conv.weight"), ("misshaped", "1 mis-shaped: decoder.norm_out.weight"),
    ("extra", "1 unexpected: decoder.extra.weight"), ("integer", "are not floating point"),
])
def test_inspect_and_load_refuse_a_damaged_checkpoint_in_one_short_line(tmp_path, capsys, change, phrase):
    from videovae.errors import CheckpointMismatchError

    bad = _damaged(stepvideo_weights(2), tmp_path / "bad.safetensors", change)
    code, err = run(["inspect", bad], capsys)
    assert code == 1 and phrase in err and len(err.strip().splitlines()) == 1 and len(err) < 800, err
    assert capsys.readouterr().out == ""  # no valid-looking config printed
    with pytest.raises(CheckpointMismatchError, match=re.escape(phrase)):
        videovae.load(bad)


# -- encode-dataset: resume sees changed sources; outputs never among the inputs ----------------------------------

def _write_clip(path: Path, seed: int) -> Path:
    from videovae.video_write import VideoWriter

    g = torch.Generator().manual_seed(seed)
    with VideoWriter(path, 25, 32, 32, lossless=True) as writer:
        writer.write(torch.rand(1, 9, 3, 32, 32, generator=g) * 2 - 1)
    return path


def _encode_dataset(inputs: str, out: Path, *extra: str) -> int:
    return main(["-q", "encode-dataset", "--inputs", inputs, "--out", str(out), "--checkpoint",
                 str(stepvideo_weights(2)), "--device", "cpu", *extra])


@pytest.mark.parametrize("hashed", [False, True])
def test_a_source_replaced_in_place_is_encoded_again(tmp_path, capsys, hashed):
    import json

    from videovae.latent_files import load_latents

    pytest.importorskip("av")
    data = tmp_path / "data"
    data.mkdir()
    video = _write_clip(data / "a.mkv", seed=0)
    extra = ("--hash-sources",) if hashed else ()
    assert _encode_dataset(str(data / "*.mkv"), tmp_path / "out", *extra) == 0
    (latent,) = (tmp_path / "out").glob("a-*.safetensors")
    first, _, _ = load_latents(latent)
    assert _encode_dataset(str(data / "*.mkv"), tmp_path / "out", *extra) == 0
    manifest = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [m["status"] for m in manifest] == ["skipped"]
    _write_clip(video, seed=1)  # the same name, other content
    assert _encode_dataset(str(data / "*.mkv"), tmp_path / "out", *extra) == 0
    manifest = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [m["status"] for m in manifest] == ["encoded"]
    second, _, _ = load_latents(latent)
    assert not torch.equal(first, second)


def test_an_out_folder_inside_the_inputs_is_refused(tmp_path, capsys):
    pytest.importorskip("av")
    data = tmp_path / "data"
    data.mkdir()
    _write_clip(data / "a.mkv", seed=0)
    code = _encode_dataset(str(data / "**"), data / "latents")
    err = capsys.readouterr().err
    assert code != 0 and "encode its own outputs" in err, err
    assert not (data / "latents").exists()


# -- names with control characters ---------------------------------------------------------------------------------

def test_names_with_control_characters_are_printed_escaped(tmp_path, clip, capsys):
    evil = tmp_path / "red\x1b[31m\nline.mp4"
    shutil.copy(clip, evil)
    out = tmp_path / "out\x1b[2J.mp4"
    assert main(["reconstruct", str(evil), "-o", str(out), "-q"]) == 0
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out + captured.err
    assert repr(str(out)) in captured.out
    code = main(["reconstruct", str(tmp_path / "gone\x1b[31m.mp4"), "-o", str(tmp_path / "o.mp4")])
    captured = capsys.readouterr()
    assert code == 1 and "\x1b" not in captured.err and len(captured.err.strip().splitlines()) == 1
