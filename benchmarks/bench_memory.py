"""Peak resident memory of `videovae reconstruct` against video length: streaming should make it flat.

The same content (a clip whose motion repeats every 34 frames) at 17, 170 and 680 frames, 64x64,
30 fps, H.264, is reconstructed with the shipped tiny Step-Video v2 weights by the real command line,
one subprocess per case. Each case runs under a small wrapper process whose only child is
`python -m videovae reconstruct ...`, so the wrapper's RUSAGE_CHILDREN ru_maxrss is that command's
own peak RSS (ru_maxrss over children is a maximum over all of them, so one wrapper per case).
Prints a markdown table, saves JSON and markdown to benchmarks/results/, and reports the ratio of
the longest case's peak to the shortest's (the target: within 15%). Never asserts.

    python benchmarks/bench_memory.py                          # 17, 170, 680 frames at 64x64
    python benchmarks/bench_memory.py --frames 17 68 --size 32x32 --threads 2
    python benchmarks/bench_memory.py --model svd --frames 17 340 --size 96x96   # SVD, widths 64-256,
        # random weights, given as a diffusers folder: decoded in its declared overlapping windows
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "tests" / "fixtures" / "stepvideo" / "stepvideo_v2_tiny.safetensors"  # bench_memory measures memory: an untrained model does

# Runs `sys.argv[1:]` as a child and prints its peak RSS (KiB on Linux) and wall time as JSON.
WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - start
print(json.dumps({"returncode": done.returncode, "seconds": seconds, "stdout": done.stdout, "stderr": done.stderr[-2000:],
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def write_clip(path: Path, frames: int, height: int, width: int, fps: int = 30) -> Path:
    """A 64x64-style clip with motion, frame t identical to frame t + 34: same content per frame at
    every length. Written frame by frame with PyAV (never held whole)."""
    import av
    import numpy as np

    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.thread_type = "AUTO"
        for t in range(frames):
            phase = t % 34
            image = np.stack([(x * 3 + phase * 7) % 256, (y * 3 - phase * 5) % 256, np.full_like(x, 60 + 4 * phase)], -1)
            side = max(4, min(height, width) // 5)
            left, top = (phase * 3) % (width - side), (phase * 2) % (height - side)
            image[top : top + side, left : left + side] = (250, 230, 40)
            frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


SVD_WIDTHS = (64, 128, 256)  # large enough for activations to dominate at 96x96


def svd_folder(dest: Path) -> Path:
    """An SVD VAE of widths 64-256 with random weights, written as a diffusers folder."""
    import torch

    from videovae.convert import convert_svd_checkpoint
    from videovae.checkpoints import save_model
    from videovae.families.svd import SVDConfig, SVDVAE

    torch.manual_seed(0)
    model = SVDVAE(SVDConfig(block_out_channels=SVD_WIDTHS, layers_per_block=1))
    flat = save_model(model, dest / "svd.safetensors")
    convert_svd_checkpoint(flat, dest / "svd_diffusers", layout="diffusers")
    return dest / "svd_diffusers"


def run_case(video: Path, out: Path, threads: int, checkpoint: Path) -> dict:
    command = [
        sys.executable, "-m", "videovae", "--quiet", "--threads", str(threads),
        "reconstruct", str(video), "-o", str(out), "--checkpoint", str(checkpoint),
    ]
    done = subprocess.run([sys.executable, "-c", WRAPPER, *command], capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(done.stdout)
    if result["returncode"] != 0:
        raise SystemExit(f"videovae reconstruct failed on {video}: {result['stderr']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[17, 170, 680])
    parser.add_argument("--size", default="64x64", help="HxW")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", choices=("stepvideo", "svd"), default="stepvideo",
                        help="stepvideo: the tiny v2 fixture; svd: an SVD VAE of widths 64-256 (random weights) as a diffusers folder")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_memory.json")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))

    rows = []
    with tempfile.TemporaryDirectory(prefix="videovae-bench-memory-") as tmp:
        checkpoint = svd_folder(Path(tmp)) if args.model == "svd" else CHECKPOINT
        for frames in args.frames:
            video = write_clip(Path(tmp) / f"clip_{frames}.mp4", frames, height, width)
            result = run_case(video, Path(tmp) / f"rec_{frames}.mp4", args.threads, checkpoint)
            rows.append({
                "frames": frames, "height": height, "width": width,
                "peak_rss_mib": result["maxrss_kib"] / 1024,
                "seconds": result["seconds"],
                "frames_per_second": frames / result["seconds"],
            })
            print(f"  {frames} frames: {rows[-1]['peak_rss_mib']:.1f} MiB, {result['seconds']:.1f}s", file=sys.stderr)

    model_name = ("SVD widths " + "-".join(map(str, SVD_WIDTHS)) + " (fp32, diffusers folder, default windows)"
                  if args.model == "svd" else "tiny Step-Video v2 (fp32)")
    first, last = rows[0], rows[-1]
    ratio = last["peak_rss_mib"] / first["peak_rss_mib"]
    table = [
        f"`videovae reconstruct`, {model_name}, {height}x{width}, {args.threads} threads, "
        "peak RSS of the command's process",
        "",
        "| frames | peak RSS (MiB) | vs first | wall time (s) | frames/s |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {r['frames']} | {r['peak_rss_mib']:.1f} | {r['peak_rss_mib'] / first['peak_rss_mib']:.3f} | "
            f"{r['seconds']:.1f} | {r['frames_per_second']:.1f} |"
            for r in rows
        ),
        "",
        f"{last['frames']} vs {first['frames']} frames: peak RSS ratio {ratio:.3f} "
        f"({'within' if ratio <= 1.15 else 'OUTSIDE'} the 15% target)",
    ]
    markdown = "\n".join(table)
    print(markdown)
    report = {
        "benchmark": "bench_memory", "command": "videovae reconstruct", "model": model_name,
        "threads": args.threads, "python": platform.python_version(), "machine": platform.machine(),
        "rows": rows, "ratio_last_vs_first": ratio, "target_ratio": 1.15,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown + "\n")
    print(f"saved {args.out} and {args.out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
