"""Encode / decode wall time and peak memory of the full-size Step-Video VAE architectures.

Random weights from the released configs (nothing is downloaded). Each case runs in a fresh
subprocess so its peak resident memory (ru_maxrss) is its own. Prints a markdown table and saves
JSON. Never asserts speed.

    python benchmarks/bench_vae.py                              # v2, fp32, 17x128x128 and 34x128x128
    python benchmarks/bench_vae.py --versions 1 2 --sizes 17x96x96 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def run_case(version: int, frames: int, height: int, width: int, dtype: str, repeats: int, threads: int) -> dict:
    """Runs inside the worker process: build, time encode and decode, report peak RSS."""
    import resource

    import torch

    from videovae.api import VideoVAE
    from videovae.families import stepvideo

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = stepvideo.stepvideo_v1_config() if version == 1 else stepvideo.stepvideo_v2_config()
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    vae = VideoVAE(stepvideo.StepVideoVAE(config).to(torch_dtype).eval().requires_grad_(False))
    # Small weights keep random activations in range through the deep stack.
    with torch.no_grad():
        for p in vae.parameters():
            p.mul_(0.5)
    video = torch.rand(1, frames, 3, height, width) * 2 - 1
    rss_after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    encode_s, decode_s = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            posterior = vae.encode(video)
            encode_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = vae.decode(posterior.mode())
            decode_s.append(time.perf_counter() - t0)
    assert out.shape == video.shape
    return {
        "version": version, "frames": frames, "height": height, "width": width, "dtype": dtype,
        "threads": threads, "repeats": repeats,
        "encode_s": statistics.median(encode_s), "decode_s": statistics.median(decode_s),
        "encode_runs_s": encode_s, "decode_runs_s": decode_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_build_mb": rss_after_build / 1024,
        "latent_shape": list(posterior.mean.shape),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, nargs="+", default=[2])
    parser.add_argument("--sizes", nargs="+", default=["17x128x128", "34x128x128"], help="TxHxW")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_vae.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_case(**json.loads(args.worker))))
        return 0

    rows = []
    for version in args.versions:
        for size in args.sizes:
            T, H, W = (int(n) for n in size.split("x"))
            case = dict(version=version, frames=T, height=H, width=W, dtype=args.dtype, repeats=args.repeats, threads=args.threads)
            done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(case)], capture_output=True, text=True)
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                return done.returncode
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"v{version} {size} {args.dtype}: encode {r['encode_s']:.2f}s decode {r['decode_s']:.2f}s peak {r['peak_rss_mb']:.0f} MB", flush=True)

    table = [
        "| model | input (T x H x W) | dtype | threads | encode s | decode s | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| Step-Video v{r['version']} | {r['frames']}x{r['height']}x{r['width']} | {r['dtype']} | {r['threads']} | "
            f"{r['encode_s']:.2f} | {r['decode_s']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    print("\n".join(table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    args.out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print(f"saved {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
