"""Encode / decode time, achieved GFLOP/s and peak memory of the full-size Step-Video VAEs.

Random weights from the released configs (nothing is downloaded). Every case runs in a fresh
subprocess so its peak resident memory (VmHWM) is its own. Per case: median of --repeats runs
of encode and of decode, after one warm-up (which also compiles, for --compiled).

FLOPs are counted once per (version, size) with torch.utils.flop_counter on the meta device, for the
plain computation (upsample then convolve, as the reference does): "GFLOP/s" is those model FLOPs
over our time, so paths that skip work (the decoder's upsampling convs by phase) show as faster
rather than as doing less (likewise the Winograd-in-time convs; `--convs plain` turns both off and
measures the reference's computation in the same run). The single-conv baseline is one 3x3x3 Conv3d (256 -> 256 on
1x256x19x48x48) timed in the same run, per dtype and layout: "share" = achieved / that.

    python benchmarks/bench_vae.py                                    # v2 fp32 eager, 17x128x128, 34x128x128
    python benchmarks/bench_vae.py --versions 1 2 --sizes 17x96x96 17x128x128 \\
        --dtypes fp32 bf16 --layouts contiguous channels_last --modes eager compiled
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import peak_rss  # benchmarks/, the script's folder

RESULTS = Path(__file__).parent / "results"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def build_vae(version: int, dtype: str, layout: str, convs: str = "fast"):
    import torch

    from videovae.api import VideoVAE
    from videovae.families import stepvideo

    torch.manual_seed(0)
    config = stepvideo.stepvideo_v1_config() if version == 1 else stepvideo.stepvideo_v2_config()
    model = stepvideo.StepVideoVAE(config).eval().requires_grad_(False)
    with torch.no_grad():  # smaller random weights keep activations in range through the deep stack
        for p in model.parameters():
            p.mul_(0.5)
    if convs == "plain":  # the reference's computation: upsample then conv, 3 frame-convs per output
        model.fast_paths(phase_split=False, winograd=False)
    vae = VideoVAE(model.to(getattr(torch, DTYPES[dtype])))
    return vae.fast_paths(channels_last=layout == "channels_last")


def count_flops(version: int, frames: int, height: int, width: int) -> dict:
    """Model FLOPs of encode and decode (plain path, reference-equivalent), counted on meta tensors."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from videovae.families import stepvideo

    config = stepvideo.stepvideo_v1_config() if version == 1 else stepvideo.stepvideo_v2_config()
    with torch.device("meta"):
        model = stepvideo.StepVideoVAE(config).fast_paths(phase_split=False, winograd=False)
    layout = config.frame_layout
    counts = {}
    with torch.no_grad():
        for name in ("encode", "decode"):
            with FlopCounterMode(display=False) as counter:
                for start in range(0, frames, layout.frames_per_chunk):
                    t = min(layout.frames_per_chunk, frames - start)
                    if name == "encode":
                        model.encode_chunk(torch.empty(1, 3, t, height, width, device="meta"))
                    else:
                        s = layout.spatial_factor
                        lat = layout.chunk_latents(t)
                        model.decode_chunk(torch.empty(1, config.z_channels, lat, height // s, width // s, device="meta"))
            counts[name] = counter.get_total_flops()
    return counts


def single_conv_gflops(dtype: str, layout: str, repeats: int = 3) -> float:
    import torch
    import torch.nn.functional as F

    torch_dtype = getattr(torch, DTYPES[dtype])
    x = torch.randn(1, 256, 19, 48, 48, dtype=torch_dtype)
    w = torch.randn(256, 256, 3, 3, 3, dtype=torch_dtype) * 0.02
    if layout == "channels_last":
        x, w = x.contiguous(memory_format=torch.channels_last_3d), w.contiguous(memory_format=torch.channels_last_3d)
    flops = 2 * 256 * 256 * 27 * 17 * 46 * 46  # output (1, 256, 17, 46, 46), valid padding
    times = []
    with torch.inference_mode():
        F.conv3d(x, w)
        for _ in range(repeats):
            t0 = time.perf_counter()
            F.conv3d(x, w)
            times.append(time.perf_counter() - t0)
    return flops / statistics.median(times) / 1e9


def run_case(version: int, frames: int, height: int, width: int, dtype: str, layout: str, mode: str,
             convs: str, repeats: int, threads: int) -> dict:
    """Runs inside the worker process."""
    import torch

    torch.set_num_threads(threads)
    vae = build_vae(version, dtype, layout, convs)
    if mode == "compiled":
        vae.fast_paths(compile=True)
    video = torch.rand(1, frames, 3, height, width) * 2 - 1
    encode_s, decode_s = [], []
    with torch.inference_mode():
        t0 = time.perf_counter()
        z = vae.encode(video).mean  # warm-up (and compilation)
        vae.decode(z)
        warmup_s = time.perf_counter() - t0
        for _ in range(repeats):
            t0 = time.perf_counter()
            z = vae.encode(video).mean
            encode_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = vae.decode(z)
            decode_s.append(time.perf_counter() - t0)
    assert out.shape == video.shape
    return {
        "version": version, "frames": frames, "height": height, "width": width, "dtype": dtype,
        "layout": layout, "mode": mode, "convs": convs, "threads": threads, "repeats": repeats,
        "encode_s": statistics.median(encode_s), "decode_s": statistics.median(decode_s),
        "encode_runs_s": encode_s, "decode_runs_s": decode_s, "warmup_s": warmup_s,
        "peak_rss_mb": peak_rss.peak_kib() / 1024,
        "single_conv_gflops": single_conv_gflops(dtype, layout),
        "output_sample": out[0, :, :, :8, :8].float().flatten()[:64].tolist(),
    }


def worker(kind: str, payload: dict) -> dict:
    return count_flops(**payload) if kind == "flops" else run_case(**payload)


def spawn(kind: str, payload: dict) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", kind, json.dumps(payload)], capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"worker {kind} {payload} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, nargs="+", default=[2])
    parser.add_argument("--sizes", nargs="+", default=["17x128x128", "34x128x128"], help="TxHxW")
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=sorted(DTYPES))
    parser.add_argument("--layouts", nargs="+", default=["contiguous"], choices=("contiguous", "channels_last"))
    parser.add_argument("--modes", nargs="+", default=["eager"], choices=("eager", "compiled"))
    parser.add_argument("--convs", nargs="+", default=["fast"], choices=("fast", "plain"),
                        help="fast: phase-split upsampling and Winograd-in-time convs (default); plain: neither")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_vae.json")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker[0], json.loads(args.worker[1]))))
        return 0

    sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes]
    flops = {}
    for version, (T, H, W) in itertools.product(args.versions, sizes):
        flops[(version, T, H, W)] = spawn("flops", dict(version=version, frames=T, height=H, width=W))
    rows = []
    grid = itertools.product(args.versions, sizes, args.dtypes, args.layouts, args.modes, args.convs)
    for version, (T, H, W), dtype, layout, mode, convs in grid:
        case = dict(version=version, frames=T, height=H, width=W, dtype=dtype, layout=layout, mode=mode,
                    convs=convs, repeats=args.repeats, threads=args.threads)
        r = spawn("case", case)
        f = flops[(version, T, H, W)]
        r["encode_tflop"], r["decode_tflop"] = f["encode"] / 1e12, f["decode"] / 1e12
        r["encode_gflops"] = f["encode"] / r["encode_s"] / 1e9
        r["decode_gflops"] = f["decode"] / r["decode_s"] / 1e9
        rows.append(r)
        print(f"v{version} {T}x{H}x{W} {dtype} {layout} {mode} {convs}: encode {r['encode_s']:.2f}s "
              f"({r['encode_gflops']:.0f} GFLOP/s) decode {r['decode_s']:.2f}s ({r['decode_gflops']:.0f} GFLOP/s) "
              f"peak {r['peak_rss_mb']:.0f} MB", flush=True)

    table = [
        "| model | T x H x W | dtype | layout | mode | convs | encode s | encode GFLOP/s (share) | decode s | decode GFLOP/s (share) | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        conv = r["single_conv_gflops"]
        table.append(
            f"| Step-Video v{r['version']} | {r['frames']}x{r['height']}x{r['width']} | {r['dtype']} | {r['layout']} | {r['mode']} | {r['convs']} | "
            f"{r['encode_s']:.2f} | {r['encode_gflops']:.0f} ({r['encode_gflops'] / conv:.0%}) | "
            f"{r['decode_s']:.2f} | {r['decode_gflops']:.0f} ({r['decode_gflops'] / conv:.0%}) | {r['peak_rss_mb']:.0f} |"
        )
    table.append("")
    table.append(f"threads={args.threads}, median of {args.repeats} runs after a warm-up; GFLOP/s = reference-path model FLOPs / time; "
                 "share = of one 3x3x3 Conv3d (256->256) timed in the same process, same dtype and layout.")
    print("\n".join(table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    args.out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print(f"saved {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
