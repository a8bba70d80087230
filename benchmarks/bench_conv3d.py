"""videovae.conv3d (oneDNN called directly) against F.conv3d on the small 3D inputs PyTorch sends to
its slow reference kernel (B*C*T*H <= 20480) and on one it does not: best of N, same process.

    python benchmarks/bench_conv3d.py --threads 2 --runs 5

Prints a markdown table (and saves it with JSON to benchmarks/results/); never asserts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from videovae.conv3d import conv3d

RESULTS = Path(__file__).parent / "results"
CASES = [  # input, weight, padding: where each comes from in a video VAE
    ((1, 64, 4, 65, 65), (64, 64, 1, 3, 3), (0, 1, 1), "Winograd frame-conv on a tile"),
    ((1, 128, 2, 64, 64), (128, 128, 1, 3, 3), (0, 1, 1), "frame-conv of a few-frame level"),
    ((1, 128, 7, 17, 17), (128, 128, 3, 3, 3), (0, 1, 1), "low-resolution tile, 3x3x3"),
    ((1, 3, 19, 129, 129), (32, 3, 3, 3, 3), (0, 1, 1), "conv_in on a tile"),
    ((1, 64, 19, 128, 128), (64, 64, 3, 3, 3), (0, 1, 1), "large: oneDNN either way"),
]


def best(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lines = [f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, torch {torch.__version__}, best of {args.runs}",
             "| input | weight | case | F.conv3d ms | videovae.conv3d ms | speed-up | max abs diff |",
             "|---|---|---|---|---|---|---|"]
    rows = []
    with torch.no_grad():
        for shape, kernel, padding, what in CASES:
            x, w, b = torch.randn(shape), torch.randn(kernel), torch.randn(kernel[0])
            plain = best(lambda: F.conv3d(x, w, b, 1, padding), args.runs)
            ours = best(lambda: conv3d(x, w, b, 1, padding), args.runs)
            diff = (F.conv3d(x, w, b, 1, padding) - conv3d(x, w, b, 1, padding)).abs().max().item()
            rows.append({"input": shape, "weight": kernel, "case": what, "f_conv3d_s": plain, "videovae_s": ours, "max_abs_diff": diff})
            lines.append(f"| {shape} | {kernel} | {what} | {plain * 1e3:.1f} | {ours * 1e3:.1f} | {plain / ours:.2f}x | {diff:.1e} |")
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_conv3d.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "bench_conv3d.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
