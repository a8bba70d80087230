"""The `videovae` command line over video files: outputs, equivalences, and one-line failures that
leave nothing behind. Small clips and the shipped tiny v2 weights keep the file fast on 2 cores."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import videovae
from videovae import files
from videovae.cli import main
from videovae.latent_files import load_latents
from videovae.metrics import psnr, ssim
from videovae.progress import Progress
from videovae.registry import DEFAULT_NAME, registry, shipped_checkpoint
from videovae.video import probe, read_video

DEFAULT_CHECKPOINT = shipped_checkpoint()

ROOT = Path(__file__).resolve().parents[1]
V1_WEIGHTS = ROOT / "tests" / "fixtures" / "stepvideo" / "stepvideo_v1_tiny.safetensors"
FRAMES, HEIGHT, WIDTH, FPS = 20, 32, 40, 25  # 20 = 17 + 3 frames (pads to 17 + 9); width 40 pads to 48 (v2: 16x)


def make_video(path: Path, frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH, fps: int = FPS) -> Path:
    """An H.264 clip with motion: a bright square sliding over a gradient that drifts."""
    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            image = np.stack([(x * 4 + t * 6) % 256, (y * 5 - t * 3) % 256, np.full_like(x, 40 + 8 * t)], -1)
            left, top = (3 * t) % (width - 10), (2 * t) % (height - 10)
            image[top : top + 10, left : left + 10] = (250, 240, 30)
            frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def run(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) in process: (exit code, stdout, stderr); argparse's SystemExit becomes its code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def listing(folder: Path) -> list[str]:
    """Every entry, hidden temporaries included."""
    return sorted(os.listdir(folder))


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> the uint8 levels VideoWriter stores (clamped, rounded)."""
    return ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def clip(work) -> Path:
    return make_video(work / "clip.mp4")


@pytest.fixture(scope="module")
def vae():
    return videovae.load(DEFAULT_CHECKPOINT, dtype="fp32")


@pytest.fixture(scope="module")
def reference(clip, vae):
    """The in-memory path: (input frames, vae.reconstruct of them), (1, T, 3, H, W) each."""
    video, _ = read_video(clip)
    with torch.inference_mode():
        return video, vae.reconstruct(video)


@pytest.fixture(scope="module")
def lossless(work, clip):
    """`videovae reconstruct --lossless` with a comparison and metrics, in process."""
    out, compare, metrics = work / "rec.mkv", work / "cmp.mkv", work / "metrics.json"
    code, stdout, stderr = run(
        ["reconstruct", clip, "-o", out, "--lossless", "--compare", compare, "--metrics-json", metrics]
    )
    assert code == 0, stderr
    return {"out": out, "compare": compare, "metrics": json.loads(metrics.read_text()), "stdout": stdout, "stderr": stderr}


@pytest.fixture(scope="module")
def latents(work, clip):
    path = work / "clip.latents.safetensors"
    code, stdout, stderr = run(["encode", clip, "-o", path])
    assert code == 0, stderr
    assert "latents (11, 32, 8, 10) (T_lat, z, h, w)" in stdout
    return path


# -- outputs ------------------------------------------------------------------------------------


def test_reconstruct_through_python_m_keeps_frames_size_fps(work, clip):
    out, compare, metrics = work / "sub.mp4", work / "sub_cmp.mp4", work / "sub.json"
    done = subprocess.run(
        [sys.executable, "-m", "videovae", "--threads", "2", "reconstruct", str(clip), "-o", str(out),
         "--compare", str(compare), "--metrics-json", str(metrics)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    info = probe(out)
    assert (info.frame_count, info.width, info.height, info.fps) == (FRAMES, WIDTH, HEIGHT, Fraction(FPS))
    assert len(read_video(out)[0][0]) == FRAMES
    side = probe(compare)
    assert (side.frame_count, side.width, side.height, side.fps) == (FRAMES, 3 * WIDTH, HEIGHT, Fraction(FPS))
    report = json.loads(metrics.read_text())
    assert f"PSNR           {report['metrics']['mean_psnr']:.2f} dB" in done.stdout
    assert f"SSIM           {report['metrics']['mean_ssim']:.4f}" in done.stdout
    # Progress goes to stderr; not a tty here, so plain lines, the last one complete.
    assert done.stderr.strip().splitlines()[-1].startswith(f"reconstruct  {FRAMES}/{FRAMES} frames (100%)")


def test_streaming_cli_equals_in_memory_reconstruct(clip, vae, reference):
    video, expected = reference
    with torch.inference_mode():
        pairs = list(files.reconstruct_pairs(vae, clip))
    originals = torch.cat([o for o, _ in pairs], dim=1)
    streamed = torch.cat([r for _, r in pairs], dim=1)
    assert len(pairs) >= 2  # really streamed, in pieces
    assert torch.equal(originals, video)  # the FIFO pairs each reconstruction with its own frames
    assert streamed.shape == expected.shape == (1, FRAMES, 3, HEIGHT, WIDTH)
    assert (streamed - expected).abs().max().item() <= 1e-5


def test_tiled_reconstruct_equals_untiled_and_counts_tiles(work, clip, lossless, reference):
    out, metrics = work / "tiled.mkv", work / "tiled.json"
    code, stdout, stderr = run(["reconstruct", clip, "-o", out, "--lossless", "--tile", "16x24",
                                "--metrics-json", metrics])
    assert code == 0, stderr
    assert "4 tiles per chunk" in stderr.strip().splitlines()[-1]  # 32x40 pads to 32x48: 2 x 2 tiles
    tiled = json.loads(metrics.read_text())["metrics"]
    assert abs(tiled["mean_psnr"] - lossless["metrics"]["metrics"]["mean_psnr"]) < 1e-3
    written, _ = read_video(out)
    assert (to_uint8(written).int() - to_uint8(reference[1]).int()).abs().max().item() <= 1


def test_tiled_encode_and_decode_equal_untiled(work, clip, latents):
    path, video = work / "tiled.latents.safetensors", work / "tiled_decode.mkv"
    code, _, stderr = run(["encode", clip, "-o", path, "--tile", "16"])
    assert code == 0, stderr
    torch.testing.assert_close(load_latents(path)[0], load_latents(latents)[0], rtol=0, atol=1e-4)
    code, _, stderr = run(["decode", path, "-o", video, "--tile", "16x48", "--lossless"])
    assert code == 0, stderr
    assert "2 tiles per chunk" in stderr


def test_a_memory_budget_picks_tiles_and_keeps_the_result(work, clip, lossless, reference, vae):
    minimum = max(vae.memory_plan(op, HEIGHT, WIDTH, 10**12).minimum for op in ("encode", "decode"))
    out = work / "budget.mkv"
    code, _, stderr = run(["reconstruct", clip, "-o", out, "--lossless", "--max-memory", str(minimum)])
    assert code == 0, stderr
    assert "tiles per chunk" in stderr.strip().splitlines()[-1]
    written, _ = read_video(out)
    assert (to_uint8(written).int() - to_uint8(reference[1]).int()).abs().max().item() <= 1


def test_the_command_returns_freed_memory_for_a_budget_in_its_own_process_only(monkeypatch, work):
    """As this process's command (no argv), --max-memory makes malloc return freed buffers, so that
    RSS tracks the budget; run inside another program (argv given), the allocator is left alone."""
    import videovae.memory_plan as memory_plan

    calls = []
    monkeypatch.setattr(memory_plan, "return_freed_memory", lambda: calls.append(1) or True)
    argv = ["reconstruct", str(work / "missing.mp4"), "-o", str(work / "out.mp4"), "--max-memory", "2GB"]
    assert run(argv)[0] == 1 and calls == []
    monkeypatch.setattr(sys, "argv", ["videovae", *argv])
    with contextlib.redirect_stderr(io.StringIO()):
        assert main() == 1
    assert calls == [1]
    monkeypatch.setattr(sys, "argv", ["videovae", *argv[:-2]])
    with contextlib.redirect_stderr(io.StringIO()):
        main()
    assert calls == [1]


def test_lossless_output_holds_the_in_memory_frames(lossless, reference):
    written, _ = read_video(lossless["out"])
    assert written.shape == (1, FRAMES, 3, HEIGHT, WIDTH)
    levels = to_uint8(written).int() - to_uint8(reference[1]).int()
    assert levels.abs().max().item() <= 1
    assert (levels != 0).float().mean().item() <= 1e-3


def test_metrics_json_holds_per_frame_psnr_and_ssim(lossless, reference, clip):
    video, expected = reference
    report = lossless["metrics"]
    rows = report["per_frame"]
    assert [row["frame"] for row in rows] == list(range(FRAMES))
    want_psnr = psnr(video[0], expected[0].clamp(-1, 1))
    want_ssim = ssim(video[0], expected[0].clamp(-1, 1))
    assert np.allclose([row["psnr"] for row in rows], want_psnr.numpy(), atol=1e-4)
    assert np.allclose([row["ssim"] for row in rows], want_ssim.numpy(), atol=1e-5)
    assert report["metrics"]["frames"] == FRAMES
    assert report["metrics"]["mean_psnr"] == pytest.approx(float(want_psnr.mean()), abs=1e-4)
    assert report["input"] == {
        "path": str(clip), "frames": FRAMES, "start_frame": 0, "fps": "25", "fps_float": 25.0,
        "width": WIDTH, "height": HEIGHT, "codec": "h264",
    }
    assert report["checkpoint"]["family"] == "stepvideo" and report["checkpoint"]["version"] == 1
    assert report["checkpoint"]["sha256"] == registry()[DEFAULT_NAME]["sha256"]
    assert report["latent_shape"] == [11, 32, 8, 10]
    assert report["timings"]["reconstruct_seconds"] > 0
    assert f"PSNR           {report['metrics']['mean_psnr']:.2f} dB" in lossless["stdout"]


def test_comparison_is_original_reconstruction_and_error_side_by_side(lossless, reference):
    side, _ = read_video(lossless["compare"])
    assert side.shape == (1, FRAMES, 3, HEIGHT, 3 * WIDTH)
    left, middle, right = side.split(WIDTH, dim=-1)
    video, _ = reference
    assert torch.equal(to_uint8(left), to_uint8(video))  # the input's own 8-bit frames
    written, _ = read_video(lossless["out"])
    assert torch.equal(to_uint8(middle), to_uint8(written))
    error = ((middle - left).abs() * files.ERROR_GAIN).clamp(max=2) - 1
    assert (right - error).abs().max().item() <= 4 * 2 / 255 + 1e-6  # from unquantised frames
    assert right.max() > right.min()  # the untrained weights leave plenty of error to show


def test_start_frame_and_max_frames_select_frames(work, clip, vae, reference):
    out = work / "part.mkv"
    code, _, stderr = run(
        ["reconstruct", clip, "-o", out, "--lossless", "--start-frame", 3, "--max-frames", 9, "-q"]
    )
    assert code == 0, stderr
    assert stderr == ""  # -q: no progress
    written, _ = read_video(out)
    with torch.inference_mode():
        expected = vae.reconstruct(reference[0][:, 3:12])
    assert written.shape == (1, 9, 3, HEIGHT, WIDTH)
    assert (to_uint8(written).int() - to_uint8(expected).int()).abs().max().item() <= 1


def test_encode_writes_latents_and_metadata(latents, clip, reference, vae):
    mean, logvar, meta = load_latents(latents)
    assert mean.shape == logvar.shape == (11, 32, 8, 10) and mean.dtype == torch.float32
    assert (meta.family, meta.version, meta.latent_channels, meta.spatial_compression) == ("stepvideo", "1", 32, 4)
    assert (meta.frames, meta.height, meta.width, meta.fps) == (FRAMES, HEIGHT, WIDTH, "25")
    assert meta.policy == "time=pad,space=pad" and meta.source == str(clip)
    assert meta.checkpoint_sha256 == registry()[DEFAULT_NAME]["sha256"]
    assert meta.videovae_version == videovae.__version__
    assert json.loads(meta.options) == {"dtype": "fp32", "max_frames": None, "start_frame": 0}
    with torch.inference_mode():
        posterior = vae.encode(reference[0])
    assert (mean - posterior.mean[0]).abs().max().item() <= 1e-5
    assert (logvar - posterior.logvar[0]).abs().max().item() <= 1e-5


def test_encode_then_decode_equals_reconstruct(work, latents, lossless, vae, reference):
    # As tensors: the decode command's core against the in-memory reconstruction.
    mean, _, meta = load_latents(latents)
    with torch.inference_mode():
        decoded = torch.cat(list(files.decode_pieces(vae, mean, meta)), dim=1)
    assert decoded.shape == (1, FRAMES, 3, HEIGHT, WIDTH)
    assert (decoded - reference[1]).abs().max().item() <= 1e-5
    # As files: decode's lossless output equals reconstruct's lossless output.
    out = work / "decoded.mkv"
    code, stdout, stderr = run(["decode", latents, "-o", out, "--lossless"])
    assert code == 0, stderr
    assert f"-> {FRAMES} frames {WIDTH}x{HEIGHT} @ 25 fps" in stdout
    assert probe(out).fps == Fraction(FPS)
    assert torch.equal(to_uint8(read_video(out)[0]), to_uint8(read_video(lossless["out"])[0]))


# -- the other commands ----------------------------------------------------------------------------


def test_convert_rewrites_dtype_keeping_keys_and_metadata(work):
    out = work / "tiny_fp32.safetensors"
    code, stdout, stderr = run(["convert", DEFAULT_CHECKPOINT, "-o", out, "--dtype", "fp32"])
    assert code == 0, stderr
    assert f"wrote {out}  (130 tensors, fp32" in stdout
    with safe_open(str(DEFAULT_CHECKPOINT), "pt") as src, safe_open(str(out), "pt") as dst:
        assert sorted(src.keys()) == sorted(dst.keys())
        assert src.metadata() == dst.metadata()
        for key in src.keys():
            a, b = src.get_tensor(key), dst.get_tensor(key)
            assert b.dtype == (torch.float32 if a.is_floating_point() else a.dtype), key
            assert torch.equal(a.to(b.dtype), b), key  # fp16 -> fp32 is exact
    code, stdout, _ = run(["inspect", out])
    assert code == 0 and json.loads(stdout)["stored_dtype"] == "fp32"
    assert json.loads(stdout)["known_as"] is None  # a new file: no registry entry has its sha256


def test_inspect_names_a_known_checkpoint_by_its_sha256():
    code, stdout, stderr = run(["inspect", DEFAULT_CHECKPOINT])
    assert code == 0, stderr
    assert json.loads(stdout)["known_as"].startswith(f"{DEFAULT_NAME}: trained by scripts/train_demo.py")


def test_reconstruct_reads_a_diffusers_checkpoint_folder(work, clip):
    folder = ROOT / "tests" / "fixtures" / "svd" / "svd_vae_tiny_diffusers"
    out, report = work / "svd.mp4", work / "svd.json"
    code, _, stderr = run(["reconstruct", clip, "-o", out, "--checkpoint", folder, "--max-frames", 5,
                           "--metrics-json", report])
    assert code == 0, stderr
    checkpoint = json.loads(report.read_text())["checkpoint"]
    assert (checkpoint["family"], checkpoint["version"]) == ("svd", 1)
    assert checkpoint["sha256"] == videovae.checkpoints.file_sha256(folder / "diffusion_pytorch_model.safetensors")


def test_convert_needs_a_dtype_and_a_checkpoint(work, capsys):
    before = listing(work)
    assert run(["convert", DEFAULT_CHECKPOINT, "-o", work / "x.safetensors"])[0] == 2
    code, _, stderr = run(["convert", work / "missing.safetensors", "-o", work / "x.safetensors", "--dtype", "bf16"])
    assert code == 1 and "checkpoint not found" in stderr
    assert listing(work) == before


def test_demo_writes_its_outputs_into_out_dir(tmp_path):
    code, stdout, stderr = run(["demo", "--out-dir", tmp_path / "demo", "--frames", 9, "--height", 32, "--width", 32, "-q"])
    assert code == 0, stderr
    assert listing(tmp_path / "demo") == ["compare.mp4", "metrics.json", "reconstruction.mp4", "sample.mp4"]
    assert "reconstruction (1, 9, 3, 32, 32)  (B, T, C, H, W)" in stdout
    assert "latents        (1, 5, 32, 8, 8)  (B, T_lat, z, h, w)" in stdout
    assert len(json.loads((tmp_path / "demo" / "metrics.json").read_text())["per_frame"]) == 9


def test_encode_dataset_is_registered(work):
    import importlib.util

    code, stdout, stderr = run(["encode-dataset", "--help"])
    if importlib.util.find_spec("videovae.dataset") is None:
        assert code == 1 and "encode-dataset is not available" in stderr
    else:
        assert code == 0 and stdout.startswith("usage: videovae encode-dataset")


def test_progress_redraws_on_a_tty_and_logs_lines_otherwise():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    now = [0.0]
    tty = Tty()
    bar = Progress(40, label="reconstruct", stream=tty, clock=lambda: now[0])
    now[0] = 2.0
    bar.update(16)
    now[0] = 4.0
    bar.close()
    assert tty.getvalue().count("\r") == 3 and tty.getvalue().endswith("\n")
    assert "16/40 frames (40%)  8.0 fps  elapsed 0:02  ETA 0:03" in tty.getvalue()
    log = io.StringIO()
    bar = Progress(40, label="encode", stream=log, clock=lambda: now[0])
    for _ in range(40):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 4  # 25%, 50%, 75%, done
    assert lines[0].startswith("encode  10/40 frames (25%)") and lines[-1].startswith("encode  40/40 frames (100%)")


# -- failures: exit non-zero, one line, nothing left behind ----------------------------------------


def fails(argv, folder: Path, message: str, code: int = 1) -> str:
    before = listing(folder)
    status, stdout, stderr = run(argv)
    assert status == code, (status, stderr)
    assert message in stderr, stderr
    if code == 1:
        assert len(stderr.strip().splitlines()) == 1, stderr
        assert stderr.startswith("videovae: error: ") and "Traceback" not in stderr
    assert listing(folder) == before, "a failure left files behind"
    return stderr


@pytest.fixture
def out_dir(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def test_missing_input(out_dir):
    fails(["reconstruct", out_dir / "none.mp4", "-o", out_dir / "a.mp4"], out_dir, "video file not found")


def test_not_a_video(out_dir, tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video\n")
    fails(["reconstruct", fake, "-o", out_dir / "a.mp4"], out_dir, "is not a video file FFmpeg can read")


def test_truncated_video(out_dir, tmp_path, clip):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    fails(["reconstruct", cut, "-o", out_dir / "a.mp4"], out_dir, "truncated or corrupt")
    fails(["encode", cut, "-o", out_dir / "a.safetensors"], out_dir, "truncated or corrupt")


def test_missing_checkpoint(out_dir, clip):
    fails(["reconstruct", clip, "-o", out_dir / "a.mp4", "--checkpoint", out_dir / "vae.safetensors"],
          out_dir, "checkpoint not found")


def test_checkpoint_that_is_not_safetensors(out_dir, clip, tmp_path):
    bad = tmp_path / "vae.safetensors"
    bad.write_bytes(b"\x00" * 64)
    fails(["reconstruct", clip, "-o", out_dir / "a.mp4", "--checkpoint", bad], out_dir, "is not a readable safetensors file")


def test_checkpoint_that_is_a_unet(out_dir, clip, tmp_path):
    unet = tmp_path / "unet.safetensors"
    save_file({
        "conv_in.weight": torch.zeros(4, 8, 3, 3),
        "down_blocks.0.attentions.0.proj_in.weight": torch.zeros(4, 4),
        "up_blocks.0.resnets.0.conv1.weight": torch.zeros(4, 4, 3, 3),
    }, str(unet))
    fails(["encode", clip, "-o", out_dir / "a.safetensors", "--checkpoint", unet], out_dir, "an SVD UNet")


def test_output_folder_missing(out_dir, clip):
    fails(["reconstruct", clip, "-o", out_dir / "no" / "a.mp4"], out_dir, "the folder")
    fails(["reconstruct", clip, "-o", out_dir / "a.mp4", "--compare", out_dir / "no" / "c.mp4"], out_dir, "does not exist")
    fails(["encode", clip, "-o", out_dir / "no" / "a.safetensors"], out_dir, "does not exist")


def test_output_folder_not_writable(out_dir, clip, monkeypatch):
    out_dir.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the check see what a user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == out_dir else real(p, mode, **kw))
    try:
        fails(["reconstruct", clip, "-o", out_dir / "a.mp4"], out_dir, "is not writable")
    finally:
        out_dir.chmod(0o755)


def test_output_is_the_input_or_twice_the_same(out_dir, clip):
    fails(["reconstruct", clip, "-o", clip], clip.parent, "it is the input file")
    fails(["reconstruct", clip, "-o", out_dir / "a.mp4", "--compare", out_dir / "a.mp4"], out_dir, "two outputs")


def test_unknown_output_extension_fails_before_work(out_dir, clip):
    fails(["reconstruct", clip, "-o", out_dir / "a.xyz"], out_dir, "unknown video extension '.xyz'")


def test_latents_that_do_not_fit_the_checkpoint(out_dir, latents):
    stderr = fails(["decode", latents, "-o", out_dir / "a.mp4", "--checkpoint", V1_WEIGHTS], out_dir,
                   "these latents do not fit the checkpoint")
    assert "they have 32 latent channels, this model 16; their compression is 4x/2x, this model's 8x/4x" in stderr


def test_decode_refuses_a_file_that_is_not_latents(out_dir):
    fails(["decode", DEFAULT_CHECKPOINT, "-o", out_dir / "a.mp4"], out_dir, "is not a videovae latent file")


def test_strict_policy_fails_before_any_work(out_dir, clip):
    # 19 = 17 + 2 frames: the demo model round-trips 17k + r frames for odd r only
    fails(["reconstruct", clip, "-o", out_dir / "a.mp4", "--policy", "strict", "--max-frames", 19], out_dir,
          "strict policy: 19 frames do not round-trip exactly")


def test_a_tile_off_the_grid_fails_before_any_work(out_dir, clip):
    fails(["reconstruct", clip, "-o", out_dir / "a.mp4", "--tile", "30"], out_dir,
          "tile 30x30 is not a multiple of this model's spatial factor 4: use a height of 28 or 32")


def test_a_budget_below_the_minimum_fails_before_any_work(out_dir, clip):
    fails(["reconstruct", clip, "-o", out_dir / "a.mp4", "--max-memory", "1MB"], out_dir,
          "max_memory 1.00 MB is below the")
    fails(["encode", clip, "-o", out_dir / "a.latents.safetensors", "--max-memory", "1MB"], out_dir,
          "that exact tiling needs to encode a chunk of 17 frames")


def test_start_frame_past_the_end(out_dir, clip):
    fails(["reconstruct", clip, "-o", out_dir / "a.mp4", "--start-frame", 50], out_dir, "past the end")


def test_failure_in_the_middle_leaves_no_output(out_dir, clip, monkeypatch):
    def broken(self, frames, policy=None, **kw):
        first = next(iter(frames))
        yield first  # one piece written, then the model "fails"
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(videovae.VideoVAE, "reconstruct_stream", broken)
    fails(["reconstruct", clip, "-o", out_dir / "a.mp4", "--compare", out_dir / "c.mp4",
           "--metrics-json", out_dir / "m.json", "-q"], out_dir, "out of memory (simulated)")


@pytest.mark.parametrize("argv, message", [
    (["--max-frames", "-3"], "argument --max-frames: must be >= 1, got -3"),
    (["--max-frames", "0"], "must be >= 1, got 0"),
    (["--start-frame", "-1"], "argument --start-frame: must be >= 0"),
    (["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
    (["--policy", "crop"], "argument --policy: invalid choice: 'crop'"),
    (["--quality", "60"], "CRF is 0 (best) .. 51 (worst), got 60"),
    (["--quality", "20", "--lossless"], "not allowed with argument"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--tile", "0"], "argument --tile: tile sizes must be positive"),
    (["--tile", "big"], "argument --tile: tile 'big' is not a size"),
    (["--max-memory", "lots"], "argument --max-memory: max_memory 'lots' is not a size"),
    (["--max-memory", "4GB", "--tile", "16"], "not allowed with argument"),
])
def test_bad_argument_values_exit_2(out_dir, clip, argv, message):
    fails(["reconstruct", clip, "-o", out_dir / "a.mp4", *argv], out_dir, message, code=2)


def test_unavailable_device(out_dir, clip):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    fails(["reconstruct", clip, "-o", out_dir / "a.mp4", "--device", "cuda"], out_dir, "CUDA is not available")


def test_debug_shows_the_exception(out_dir):
    from videovae.errors import VideoFileNotFoundError

    with pytest.raises(VideoFileNotFoundError, match="video file not found"):
        main(["--debug", "reconstruct", str(out_dir / "none.mp4"), "-o", str(out_dir / "a.mp4")])


def test_python_m_failure_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "videovae", "reconstruct", str(tmp_path / "none.mp4"), "-o", str(tmp_path / "a.mp4")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert done.returncode == 1
    assert done.stderr == f"videovae: error: video file not found: {str(tmp_path / 'none.mp4')!r}; check the path\n"
    assert listing(tmp_path) == []
