"""Peak memory and time of encode and decode against resolution: untiled against exact tiling.

Every case runs in its own subprocess (peak RSS is a per-process maximum): it builds the model from
a config with random weights, makes its input, notes its resident memory (the baseline: weights,
input, the interpreter), runs the case once, and reports peak RSS minus that baseline ("peak - weights") and the wall time. The models are full depth at
reduced widths, so that 17 frames at 1024x1024 run on 2 CPU cores; `--widths full` uses the
released widths (at a small size).

    python benchmarks/bench_tiling.py                                   # v1, v2, svd at 256 .. 1024 px
    python benchmarks/bench_tiling.py --models v2 --sizes 512 --tile 256 --op decode
    python benchmarks/bench_tiling.py --widths full --sizes 128 --tile 64

Writes a markdown table, JSON and (with matplotlib) a PNG of peak memory against pixels to
benchmarks/results/. Never asserts; the acceptance bars are printed beside the ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

# full depth (every level, block and attention of the release), widths divided down
REDUCED = {
    "v1": dict(version=1, z_channels=16, encoder_in_width=32, encoder_widths=(32, 64, 128, 128),
               decoder_widths=(32, 64, 128, 128)),
    "v2": dict(version=2, z_channels=16, encoder_in_width=32, encoder_widths=(32, 64, 128, 128),
               decoder_widths=(32, 64, 128, 128), patch_channels=4 * 16 * 8),  # the release's P = 32 z, 8 C / P = 2
}
REDUCED["svd"] = dict(block_out_channels=(32, 64, 128, 128), layers_per_block=2, norm_num_groups=32)
BARS = {"v1": 0.6, "v2": 0.3, "svd": 0.6}  # peak - weights, exact tiled / untiled (issue 15)

CHILD = r"""
import json, resource, sys, time
import torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
torch.manual_seed(0)
from videovae.families import stepvideo as sv, svd
from videovae.tiling import Tiles
if spec["model"] == "svd":
    cfg = svd.SVDConfig(**spec["config"]) if spec["config"] else svd.SVDConfig()
    model = svd.SVDVAE(cfg).eval()
    z_channels, latents = cfg.latent_channels, 17
else:
    released = {"v1": sv.stepvideo_v1_config, "v2": sv.stepvideo_v2_config}[spec["model"]]
    cfg = sv.StepVideoConfig(**spec["config"]) if spec["config"] else released()
    model = sv.StepVideoVAE(cfg).eval()
    z_channels, latents = cfg.z_channels, cfg.frame_layout.latents_per_chunk
S = model.frame_layout.spatial_factor
H = W = spec["size"]
with torch.no_grad():
    if spec["op"] == "encode":
        x = torch.randn(1, cfg.in_channels, 17, H, W)
        run = lambda tiles: model.encode_chunk(x, tiles)
    else:
        x = torch.randn(1, z_channels, latents, H // S, W // S)
        run = lambda tiles: model.decode_chunk(x, tiles)
    tiles = Tiles((H, W), (spec["tile"],) * 2, S) if spec["mode"] == "exact" else None
    base = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
    start = time.perf_counter()
    out = run(tiles)
    seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mib": peak - base, "baseline_mib": base, "tiles": tiles.count if tiles else 1,
                  "shape": list(out.shape)}))
"""


def run_case(spec: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["v1", "v2", "svd"], choices=["v1", "v2", "svd"])
    p.add_argument("--sizes", nargs="+", type=int, default=[256, 512, 1024])
    p.add_argument("--tile", type=int, default=256, help="tile side in pixels (default 256)")
    p.add_argument("--op", nargs="+", default=["decode", "encode"], choices=["decode", "encode"])
    p.add_argument("--widths", choices=["reduced", "full"], default="reduced")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "bench_tiling")
    args = p.parse_args()

    import torch

    rows, lines = [], []

    def print(text: str) -> None:  # the table goes to stdout and to the markdown file
        lines.append(text)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    print(f"CPU: {platform.processor() or platform.machine()}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.threads} threads, torch {torch.__version__}; 17 frames, fp32, tile {args.tile}")
    print("| model | op | size | untiled MiB | exact MiB | exact/untiled (bar) | untiled s | exact s | time ratio | tiles |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        config = REDUCED[name] if args.widths == "reduced" else None
        for op in args.op:
            for size in args.sizes:
                base = dict(config=config, model=name, op=op, size=size, tile=args.tile, threads=args.threads)
                plain, exact = run_case({**base, "mode": "untiled"}), run_case({**base, "mode": "exact"})
                row = {"model": name, "widths": args.widths, "op": op, "size": size, "tile": args.tile,
                       "untiled": plain, "exact": exact}
                rows.append(row)
                if "error" in plain or "error" in exact:
                    print(f"| {name} | {op} | {size} | {plain.get('error', '')} | {exact.get('error', '')} | | | | | |")
                    continue
                ratio, slow = exact["peak_mib"] / plain["peak_mib"], exact["seconds"] / plain["seconds"]
                row.update(memory_ratio=ratio, time_ratio=slow)
                print(f"| {name} | {op} | {size}x{size} | {plain['peak_mib']:.0f} | {exact['peak_mib']:.0f} | "
                      f"{ratio:.2f} (<= {BARS[name]}) | {plain['seconds']:.2f} | {exact['seconds']:.2f} | {slow:.2f} (<= 1.5) | {exact['tiles']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    _plot(rows, args.out.with_suffix(".png"))
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted({(r["model"], r["op"]) for r in rows}):
        sel = [r for r in rows if (r["model"], r["op"]) == key and "memory_ratio" in r]
        pixels = [r["size"] ** 2 for r in sel]
        for mode, style in (("untiled", "-o"), ("exact", "--s")):
            ax.plot(pixels, [r[mode]["peak_mib"] for r in sel], style, label=f"{key[0]} {key[1]} {mode}")
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("pixels per frame (17 frames)"), ax.set_ylabel("peak memory - weights (MiB)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    raise SystemExit(main())
