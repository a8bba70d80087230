"""videovae.dataset: pre-encoding a folder of videos under torchrun (2 CPU ranks, gloo) and alone.

Six small synthetic videos (9-20 frames, 32x32 and 32x48, H.264 written with PyAV into io.BytesIO),
one of them truncated. The torchrun runs are real ones (`python -m torch.distributed.run`, i.e.
torchrun, with --standalone so it picks a free port), one thread per rank.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import videovae
from videovae.checkpoints import file_sha256
from videovae.cli import main as cli_main
from videovae.dataset import STOP_AFTER_ENV, prefetch, resize
from videovae.dataset_inputs import resolve_inputs, video_id
from videovae.errors import VideoFileError
from videovae.latent_files import load_latents
from videovae.video import read_video

REPO = Path(__file__).resolve().parents[1]
V2_WEIGHTS = REPO / "tests" / "fixtures" / "stepvideo" / "stepvideo_v2_tiny.safetensors"
GOOD = {  # name: (frames, height, width)
    "clip0.mp4": (9, 32, 32),
    "clip1.mp4": (12, 32, 48),
    "clip2.mp4": (17, 32, 32),
    "clip3.mp4": (20, 32, 48),
    "clip4.mp4": (14, 32, 48),
}
CORRUPT = "corrupt.mp4"
FPS = 25


def synthetic_frames(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(frames, height, width, 3) uint8: colour waves drifting over time, different per seed."""
    t = np.arange(frames)[:, None, None, None]
    y = np.arange(height)[None, :, None, None] / height
    x = np.arange(width)[None, None, :, None] / width
    phase = np.array([0.0, 2.1, 4.2])[None, None, None, :] + seed
    wave = np.sin(2 * np.pi * (x + 0.5 * y) + 0.4 * t + phase)
    return (127.5 + 100 * wave).astype(np.uint8)


def write_video(path: Path, frames: np.ndarray, fps: int = FPS) -> Path:
    """frames: (T, H, W, 3) uint8 -> H.264 .mp4 at `path`, encoded into io.BytesIO as PyAV's tests do."""
    buffer, rate = io.BytesIO(), Fraction(fps)
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": "18"})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = 1 / rate  # frame i has pts i
        stream.thread_type = "AUTO"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush
    path.write_bytes(buffer.getvalue())
    return path


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a run in a child process: one thread per process, this checkout importable."""
    env = {k: v for k, v in os.environ.items() if k not in (STOP_AFTER_ENV, "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def torchrun(argv: list[str], nproc: int = 2, **env: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node <nproc> -m videovae encode-dataset <argv>` (torchrun is
    `python -m torch.distributed.run`; --standalone picks a free port itself)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "videovae", "encode-dataset", *argv]
    return subprocess.run(command, env=child_env(**env), cwd=REPO, capture_output=True, text=True, timeout=180)


def main(argv: list[str]) -> int:
    """`videovae encode-dataset <argv>` in this process."""
    return cli_main(["encode-dataset", *argv])


def outputs(out: Path) -> dict[str, Path]:
    """Visible latent files in `out`, by name."""
    return {p.name: p for p in out.glob("*.safetensors")}


def hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def stamps(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every latent file: unchanged means not rewritten."""
    return {name: (p.stat().st_ino, p.stat().st_mtime_ns) for name, p in outputs(out).items()}


@contextlib.contextmanager
def torch_threads(threads: int):
    """torch's intra-op thread count inside the block, restored after. In-process encodes here use
    one thread, like each rank: tiny convolutions gain nothing from a second thread, and on a busy
    machine its spin-waits make them several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    paths = {}
    for seed, (name, (T, H, W)) in enumerate(GOOD.items()):
        paths[name] = write_video(folder / name, synthetic_frames(T, H, W, seed))
    whole = write_video(folder / CORRUPT, synthetic_frames(16, 32, 48, 9)).read_bytes()
    (folder / CORRUPT).write_bytes(whole[: len(whole) // 2])  # truncated: the mp4 index is gone
    paths[CORRUPT] = folder / CORRUPT
    # A list file with relative names, in scrambled order and with a duplicate and a comment.
    names = [CORRUPT, *reversed(GOOD), "clip0.mp4"]
    (folder / "inputs.txt").write_text("# the test set\n" + "\n".join(names) + "\n\n")
    return paths


@pytest.fixture(scope="module")
def vae():
    return videovae.load(V2_WEIGHTS, dtype=torch.float32)


@pytest.fixture(scope="module")
def reference(videos, vae) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each good video encoded alone, in process: name -> (mean, logvar) (T_lat, z, h, w)."""
    refs = {}
    with torch.inference_mode(), torch_threads(1):
        for name in GOOD:
            posterior = vae.encode(read_video(videos[name])[0])  # (1, T, 3, H, W) -> (1, T_lat, z, h, w)
            refs[name] = (posterior.mean[0], posterior.logvar[0])
    return refs


def output_name(path: Path) -> str:
    return f"{video_id(path.resolve())}.safetensors"


@pytest.fixture(scope="module")
def first_run(videos, tmp_path_factory):
    """A fresh 2-rank run over the list file; returns (out, process, manifest lines, failures lines)."""
    out = tmp_path_factory.mktemp("latents")
    proc = torchrun(["--inputs", str(videos["clip0.mp4"].parent / "inputs.txt"), "--out", str(out),
                     "--checkpoint", str(V2_WEIGHTS)])
    assert (out / "manifest.jsonl").exists(), proc.stderr[-4000:]
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    return out, proc, manifest(out), failures


# ---------------------------------------------------------------------------------------------
# two ranks under torchrun


def test_two_ranks_write_one_output_per_video_equal_to_encoding_alone(first_run, videos, reference):
    out, proc, _, _ = first_run
    assert proc.returncode != 0, "a failed video must make the run exit non-zero"
    assert "[rank 0/2]" in proc.stderr and "[rank 1/2]" in proc.stderr, proc.stderr[-3000:]
    assert "frames/s" in proc.stderr
    assert set(outputs(out)) == {output_name(videos[n]) for n in GOOD}, proc.stderr[-3000:]
    sha = file_sha256(V2_WEIGHTS)
    for name, (T, H, W) in GOOD.items():
        mean, logvar, meta = load_latents(out / output_name(videos[name]))
        ref_mean, ref_logvar = reference[name]
        assert mean.shape == ref_mean.shape and mean.dtype == torch.float32
        torch.testing.assert_close(mean, ref_mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(logvar, ref_logvar, rtol=0, atol=1e-5)
        assert (meta.source, meta.frames, meta.height, meta.width, meta.fps) == (str(videos[name].resolve()), T, H, W, "25")
        assert (meta.checkpoint_sha256, meta.family, meta.version) == (sha, "stepvideo", "2")
        assert meta.policy == "time=pad,space=pad" and json.loads(meta.options)["dtype"] == "fp32"
        assert meta.videovae_version == videovae.__version__
    assert hidden(out) == []


def test_corrupt_video_is_recorded_with_a_reason(first_run, videos):
    out, _, _, failures = first_run
    assert len(failures) == 1
    assert failures[0]["source"] == str(videos[CORRUPT].resolve())
    assert "truncated or corrupt" in failures[0]["reason"]
    assert not list(out.glob("failures.rank*.jsonl")), "per-rank failure files are merged and removed"


def test_manifest_covers_every_input_in_sorted_order(first_run, videos):
    out, _, lines, _ = first_run
    expected = sorted(str(p.resolve()) for p in videos.values())
    assert [line["source"] for line in lines] == expected
    for line in lines:
        if line["source"] == str(videos[CORRUPT].resolve()):
            assert line["status"] == "failed" and line["output"] is None and line["reason"]
            continue
        assert line["status"] == "encoded" and line["fps"] == "25"
        mean, _, meta = load_latents(out / line["output"])
        assert line["latent_shape"] == list(mean.shape) and line["frames"] == meta.frames
        assert line["id"] == Path(line["output"]).stem


def test_second_run_rewrites_nothing(first_run):
    out, _, _, _ = first_run
    before = stamps(out)
    proc = torchrun(["--inputs", str(Path(manifest(out)[0]["source"]).parent / "*.mp4"), "--out", str(out),
                     "--checkpoint", str(V2_WEIGHTS)])
    assert proc.returncode != 0  # the corrupt video is tried again and fails again
    assert stamps(out) == before
    assert sorted(line["status"] for line in manifest(out)) == ["failed"] + ["skipped"] * len(GOOD)


def test_other_checkpoint_reencodes(first_run, reference, videos, tmp_path):
    source_out, _, _, _ = first_run
    out = tmp_path / "latents"
    shutil.copytree(source_out, out)
    before = stamps(out)
    # The same tiny weights stored as fp32: another file (another sha256), identical values once
    # loaded in fp32, so the re-encoded latents equal the reference again.
    fp32 = tmp_path / "v2_fp32.safetensors"
    save_file({k: v.float() for k, v in load_file(V2_WEIGHTS).items()}, fp32)
    proc = torchrun(["--inputs", str(videos["clip0.mp4"].parent / "inputs.txt"), "--out", str(out),
                     "--checkpoint", str(fp32)])
    assert proc.returncode != 0
    after = stamps(out)
    assert set(after) == set(before) and all(after[n] != before[n] for n in before), "every output is rewritten"
    sha = file_sha256(fp32)
    for name in GOOD:
        mean, logvar, meta = load_latents(out / output_name(videos[name]))
        assert meta.checkpoint_sha256 == sha
        torch.testing.assert_close(mean, reference[name][0], rtol=0, atol=1e-5)
    assert sorted(line["status"] for line in manifest(out)) == ["encoded"] * len(GOOD) + ["failed"]


def test_crash_then_restart_gives_the_same_outputs(first_run, videos, tmp_path):
    expected_out = first_run[0]
    out = tmp_path / "latents"
    argv = ["--inputs", str(videos["clip0.mp4"].parent / "inputs.txt"), "--out", str(out),
            "--checkpoint", str(V2_WEIGHTS)]
    crashed = torchrun(argv, **{STOP_AFTER_ENV: "1"})  # each rank os._exit()s after its first video
    assert crashed.returncode != 0
    assert "exiting abruptly (fault injection)" in crashed.stderr, crashed.stderr[-3000:]
    written = outputs(out)
    assert 1 <= len(written) < len(GOOD), crashed.stderr[-3000:]
    assert not (out / "manifest.jsonl").exists()
    for path in written.values():  # whatever carries an output name is complete
        load_latents(path)
    # What a kill during a write leaves: a half-written temporary (hidden, never an output name) ...
    missing = sorted(set(outputs(expected_out)) - set(written))
    (out / f".{missing[0]}.0badc0de.tmp.safetensors").write_bytes(b"\x10\x00\x00\x00half-written")
    # ... and an output damaged after the fact: both must be dealt with on restart.
    damaged = sorted(written)[0]
    (out / damaged).write_bytes((out / damaged).read_bytes()[:40])

    restarted = torchrun(argv)
    assert restarted.returncode != 0  # only the corrupt video fails
    assert set(outputs(out)) == set(outputs(expected_out))
    for name in outputs(out):
        mean, logvar, _ = load_latents(out / name)
        ref_mean, ref_logvar, _ = load_latents(expected_out / name)
        torch.testing.assert_close(mean, ref_mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(logvar, ref_logvar, rtol=0, atol=1e-6)
    assert hidden(out) == [], "leftover temporaries are removed"
    statuses = {Path(line["output"] or "").name: line["status"] for line in manifest(out)}
    assert statuses[damaged] == "encoded"
    assert sum(s == "skipped" for s in statuses.values()) == len(written) - 1


# ---------------------------------------------------------------------------------------------
# one process, in this process (no WORLD_SIZE: no process group)


def test_single_process_run_and_options_change(videos, reference, vae, tmp_path, monkeypatch, capsys):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", STOP_AFTER_ENV):
        monkeypatch.delenv(name, raising=False)
    with torch_threads(1):
        single_process_run_and_options_change(videos, reference, vae, tmp_path, capsys)


def single_process_run_and_options_change(videos, reference, vae, tmp_path, capsys):
    out = tmp_path / "new" / "latents"  # created, parents too
    picked = [videos["clip0.mp4"], videos["clip3.mp4"]]
    argv = ["--inputs", *map(str, picked), "--out", str(out), "--checkpoint", str(V2_WEIGHTS)]
    assert main(argv) == 0
    assert "[rank 0/1] 2/2" in capsys.readouterr().err
    for path, name in zip(picked, ("clip0.mp4", "clip3.mp4")):
        mean, logvar, _ = load_latents(out / output_name(path))
        torch.testing.assert_close(mean, reference[name][0], rtol=0, atol=1e-5)
        torch.testing.assert_close(logvar, reference[name][1], rtol=0, atol=1e-5)
    assert (out / "failures.jsonl").read_text() == ""

    # Other options (a frame size, a frame cap) make other latents: re-encoded, not skipped.
    before = stamps(out)
    assert main([*argv, "--size", "16x24", "--max-frames", "10"]) == 0
    assert all(stamps(out)[n] != before[n] for n in before)
    video = read_video(picked[1], max_frames=10)[0]  # (1, 10, 3, 32, 48)
    with torch.inference_mode():
        expected = vae.encode(resize(video, (16, 24)))  # (1, T_lat, z, 1, 2 (padded))
    mean, _, meta = load_latents(out / output_name(picked[1]))
    torch.testing.assert_close(mean, expected.mean[0], rtol=0, atol=1e-5)
    assert (meta.frames, meta.height, meta.width) == (10, 16, 24)
    assert json.loads(meta.options) == {"dtype": "fp32", "max_frames": 10, "size": [16, 24]}
    assert [line["status"] for line in manifest(out)] == ["encoded", "encoded"]
    assert main([*argv, "--size", "16x24", "--max-frames", "10"]) == 0
    assert [line["status"] for line in manifest(out)] == ["skipped", "skipped"]
    # Tiles change how, not what: the same latents, so the outputs stand (not re-encoded).
    assert main([*argv, "--size", "16x24", "--max-frames", "10", "--tile", "16"]) == 0
    assert [line["status"] for line in manifest(out)] == ["skipped", "skipped"]
    tiled = tmp_path / "tiled"
    assert main(["--inputs", str(picked[1]), "--out", str(tiled), "--checkpoint", str(V2_WEIGHTS), "--tile", "16"]) == 0
    torch.testing.assert_close(load_latents(tiled / output_name(picked[1]))[0], reference["clip3.mp4"][0], rtol=0, atol=1e-4)
    budgeted = tmp_path / "budgeted"
    minimum = vae.memory_plan("encode", 32, 48, 10**12).minimum
    assert main(["--inputs", str(picked[1]), "--out", str(budgeted), "--checkpoint", str(V2_WEIGHTS),
                 "--max-memory", str(minimum)]) == 0
    torch.testing.assert_close(load_latents(budgeted / output_name(picked[1]))[0], reference["clip3.mp4"][0], rtol=0, atol=1e-4)


def test_resize_is_antialiased_bilinear():
    frames = torch.rand(1, 3, 3, 32, 48) * 2 - 1  # (1, t, 3, H, W)
    small = resize(frames, (8, 12))
    assert small.shape == (1, 3, 3, 8, 12)
    assert torch.allclose(small[0, 1], torch.nn.functional.interpolate(frames[0], (8, 12), mode="bilinear", antialias=True)[1])
    assert resize(frames, None) is frames and resize(frames, (32, 48)) is frames


def test_prefetch_reads_at_most_two_ahead_in_order_and_hands_over_errors():
    started = []

    def load(i: int) -> int:
        started.append(i)
        if i == 2:
            raise VideoFileError("not a video")
        return 10 * i

    clips = prefetch(range(6), load)
    assert next(clips) == (0, 0)
    deadline = time.monotonic() + 5
    while len(started) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # room to run further ahead, if it would
    assert started == [0, 1, 2], "one result queued and one loaded, waiting: no further"
    rest = list(clips)
    assert [item for item, _ in rest] == [1, 2, 3, 4, 5]
    assert isinstance(rest[1][1], VideoFileError) and rest[2] == (3, 30)

    clips = prefetch(range(100), load)
    next(clips)
    clips.close()  # the consumer stops early: the reader thread stops too
    assert not any(t.name == "videovae-dataset-reader" and t.is_alive() for t in threading.enumerate())


def test_inputs_resolve_sorted_unique_and_ids_are_stable(videos, tmp_path):
    folder = videos["clip0.mp4"].parent
    from_list = resolve_inputs([str(folder / "inputs.txt")])
    from_glob = resolve_inputs([str(folder / "*.mp4")])
    from_paths = resolve_inputs([str(videos[n]) for n in reversed(list(videos))])
    assert from_list == from_glob == from_paths == sorted(p.resolve() for p in videos.values())
    link = tmp_path / "link.mp4"
    link.symlink_to(videos["clip1.mp4"])
    assert video_id(resolve_inputs([str(link)])[0]) == video_id(videos["clip1.mp4"].resolve())
    assert video_id(videos["clip1.mp4"].resolve()).startswith("clip1-")
    assert len(video_id(videos["clip1.mp4"].resolve()).split("-")[-1]) == 16


def test_clear_errors(videos, tmp_path, monkeypatch, capsys):
    """Problems that stop the job before any video: one 'error:' line, exit status 1."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    good = str(videos["clip0.mp4"])
    cases = [
        (["--inputs", str(tmp_path / "none*.mp4"), "--out", str(tmp_path / "o"), "--checkpoint", str(V2_WEIGHTS)],
         "no input videos"),
        (["--inputs", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"), "--checkpoint", str(V2_WEIGHTS)],
         "list file not found"),
        (["--inputs", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "o"), "--checkpoint", str(V2_WEIGHTS)],
         "no input videos"),
        (["--inputs", good, "--out", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "missing.safetensors")],
         "checkpoint not found"),
        (["--inputs", good, "--out", str(tmp_path / "a_file" / "sub"), "--checkpoint", str(V2_WEIGHTS)],
         "cannot use --out"),
    ]
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    (tmp_path / "a_file").write_text("not a folder")
    for argv, message in cases:
        assert main(argv) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out(videos, tmp_path, capsys):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert main(["--inputs", str(videos["clip0.mp4"]), "--out", str(out), "--checkpoint", str(V2_WEIGHTS)]) == 1
        assert "not writable" in capsys.readouterr().err
    finally:
        out.chmod(0o700)
