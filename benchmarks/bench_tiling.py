"""Peak memory and time of encode and decode against resolution: untiled against exact tiling, and
(Step-Video v2) against frames streamed through the chunk.

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
BARS = {"v1": 0.6, "v2": 0.3, "svd": 0.6}  # peak - weights, the best exact plan / untiled (issue 15)
STREAMS = {"v2"}  # per-frame norms, causal throughout: frames stream through a chunk

CHILD = r"""
import json, resource, sys, time
import torch
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["bench_dir"])
import peak_rss
torch.set_num_threads(spec["threads"])
if spec.get("return_freed"):  # what `videovae ... --max-memory` does in its own process
    from videovae.memory_plan import return_freed_memory
    assert return_freed_memory(), "no glibc mallopt here"
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
    plan = None
    if spec["mode"] == "budget":  # the plan videovae makes for this budget, then the run it plans
        from videovae.memory_plan import plan_tiles
        plan = plan_tiles(model, spec["op"], tuple(x.shape), spec["budget"])
        tile = plan.tile
        if plan.stream:  # frame by frame through the chunk, as videovae runs this plan
            run = lambda tiles: getattr(model, spec["op"] + "_chunk")(x, stream=True)
    elif spec["mode"] == "blend":  # diffusers' approximate tiles, overlapping by a quarter tile
        from videovae.engine import TileChoice
        overlap = spec["tile"] // 4 // S * S  # 0 when the tile is under four spatial factors
        choice = TileChoice(model, spec["op"], (spec["tile"],) * 2, overlap=overlap)
        run = lambda tiles: choice.run(x)
        tile = None
    elif spec["mode"] == "stream":  # frame by frame through the chunk (v2), untiled in space
        run = lambda tiles: getattr(model, spec["op"] + "_chunk")(x, stream=True)
        tile = None
    else:
        tile = (spec["tile"],) * 2 if spec["mode"] == "exact" else None
    tiles = Tiles((H, W), tile, S) if tile else None
    if spec.get("plan_only"):
        print(json.dumps({"tile": plan.tile, "planned_mib": plan.peak / 2**20, "minimum_mib": plan.minimum / 2**20}))
        raise SystemExit(0)
    peak_rss.reset()  # the model's build is not the run's
    base = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
    start = time.perf_counter()
    out = run(tiles)
    seconds = time.perf_counter() - start
peak = peak_rss.peak_kib() / 1024
report = {"seconds": seconds, "peak_mib": peak - base, "baseline_mib": base, "tiles": tiles.count if tiles else 1,
          "shape": list(out.shape)}
if plan is not None:
    report.update(tile=plan.tile, stream=plan.stream, planned_mib=plan.peak / 2**20, minimum_mib=plan.minimum / 2**20)
print(json.dumps(report))
"""

# glibc's default mmap threshold grows to 32 MiB after the first large free, and the freed tiles'
# buffers then stay in the heap: peak RSS runs above what PyTorch allocates. A fixed threshold
# (`videovae.memory_plan.return_freed_memory`, which the command line sets for --max-memory)
# returns them at once, at some cost in page faults: the budget runs are measured both ways.



def run_case(spec: dict) -> dict:
    spec = {**spec, "bench_dir": str(Path(__file__).resolve().parent)}  # where the child finds peak_rss
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
    p.add_argument("--no-blend", action="store_true", help="skip the blended-tiles runs (the slow sizes)")
    p.add_argument("--blend-error", action="store_true",
                   help="also: the error of blended tiles against exact ones, on the shipped demo model's held-out clip")
    p.add_argument("--max-memory", nargs="*", type=float, default=None, metavar="X",
                   help="instead: budget runs at X times each case's reported minimum (default 1 1.5 2.5): the "
                        "plan's tiles, its planned peak, and the measured peak RSS against the budget")
    p.add_argument("--counted", action="store_true",
                   help="instead: no run, the peaks videovae.memory_plan counts on the meta device (any size, "
                        "any width, in seconds): untiled against exact tiles")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="with --counted: the compute dtype")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_tiling")
    args = p.parse_args()
    if args.max_memory is not None:
        return budgets(args)
    if args.counted:
        return counted(args)

    rows, lines = [], []
    print = _printer(lines)  # the table goes to stdout and to the markdown file
    print(_machine(args) + f"; 17 frames, fp32, tile {args.tile}")
    print("| model | op | size | untiled MiB | exact MiB | exact/untiled | untiled s | exact s | time ratio | tiles "
          "| streamed MiB | streamed/untiled | streamed s | time ratio | best/untiled (bar) | blend MiB | blend s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for name, op, size, base in _cases(args):
        plain, exact = run_case({**base, "mode": "untiled"}), run_case({**base, "mode": "exact"})
        streamed = run_case({**base, "mode": "stream"}) if name in STREAMS else {}  # frame by frame (v2)
        blend = {} if args.no_blend else run_case({**base, "mode": "blend"})
        row = {"model": name, "widths": args.widths, "op": op, "size": size, "tile": args.tile,
               "untiled": plain, "exact": exact, "streamed": streamed, "blend": blend}
        rows.append(row)
        if "error" in plain or "error" in exact:
            print(f"| {name} | {op} | {size} | {plain.get('error', '')} | {exact.get('error', '')} |" + " |" * 12)
            continue
        ratio, slow = exact["peak_mib"] / plain["peak_mib"], exact["seconds"] / plain["seconds"]
        s_ratio = streamed.get("peak_mib", nan) / plain["peak_mib"]
        s_slow = streamed.get("seconds", nan) / plain["seconds"]
        best = min(ratio, s_ratio) if streamed.get("peak_mib") else ratio
        row.update(memory_ratio=ratio, time_ratio=slow, streamed_ratio=s_ratio, streamed_time_ratio=s_slow, best_ratio=best)
        print(f"| {name} | {op} | {size}x{size} | {plain['peak_mib']:.0f} | {exact['peak_mib']:.0f} | "
              f"{ratio:.2f} | {plain['seconds']:.2f} | {exact['seconds']:.2f} | {slow:.2f} (<= 1.5) | {exact['tiles']} | "
              f"{streamed.get('peak_mib', nan):.0f} | {s_ratio:.2f} | {streamed.get('seconds', nan):.2f} | {s_slow:.2f} | "
              f"{best:.2f} (<= {BARS[name]}) | {blend.get('peak_mib', nan):.0f} | {blend.get('seconds', nan):.2f} |")
    if args.blend_error:
        print("")
        for line in blend_error_table():
            print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    _plot(rows, args.out.with_suffix(".png"))
    return 0


def _printer(lines: list[str]):
    def print(text: str) -> None:
        lines.append(text)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    return print


def _machine(args) -> str:
    import torch

    return (f"CPU: {platform.processor() or platform.machine()}, capability {torch.backends.cpu.get_cpu_capability()}, "
            f"{args.threads} threads, torch {torch.__version__}")


def _cases(args):
    """(model, op, size, the child's spec) of every case asked for."""
    for name in args.models:
        config = REDUCED[name] if args.widths == "reduced" else None
        for op in args.op:
            for size in args.sizes:
                yield name, op, size, dict(config=config, model=name, op=op, size=size, tile=args.tile, threads=args.threads)


def blend_error_table(tiles=((64, 16), (48, 16), (32, 8))) -> list[str]:
    """Blended (diffusers') tiles against exact ones on natural content: the shipped demo model
    (trained) on its demo clip, a held-out photograph, 17 x 96 x 128."""
    import torch

    import videovae
    from videovae.camera import render
    from videovae.files import DEMO_CAMERA
    from videovae.metrics import RunningMetrics
    from videovae.registry import demo_photo, shipped_checkpoint

    vae = videovae.load(shipped_checkpoint(), dtype="fp32")
    clip = render(demo_photo(), DEMO_CAMERA, 17, 96, 128)[None]  # (1, T, 3, H, W)
    lines = ["Blended tiles (diffusers' mode) against exact ones: the shipped demo model, its held-out demo clip 17x96x128",
             "", "| tile | overlap | PSNR blend vs exact dB | max abs diff | PSNR vs original: exact | blend |", "|---|---|---|---|---|---|"]
    with torch.no_grad():
        exact = vae.reconstruct(clip).clamp(-1, 1)
        for tile, overlap in tiles:
            blend = vae.reconstruct(clip, tile=tile, tile_overlap=overlap).clamp(-1, 1)
            between, ex, bl = RunningMetrics(), RunningMetrics(), RunningMetrics()
            between.update(exact, blend), ex.update(clip, exact), bl.update(clip, blend)
            lines.append(f"| {tile} | {overlap} | {between.mean_psnr:.2f} | {(blend - exact).abs().max().item():.3f} | "
                         f"{ex.mean_psnr:.2f} | {bl.mean_psnr:.2f} |")
    return lines


def budgets(args) -> int:
    """Budget runs: for each case, videovae's minimum, then runs at multiples of it."""

    lines, rows = [], []
    print = _printer(lines)
    factors = args.max_memory or [1.0, 1.5, 2.5]
    print(_machine(args) + "; 17 frames, fp32; budgets as multiples of the reported minimum")
    print("| model | op | size | budget MiB | tile | planned MiB | RSS MiB (glibc default) | RSS / budget | s | "
          "RSS MiB (freed memory returned, as the CLI runs) | RSS / budget | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, op, size, base in _cases(args):
        base = {**base, "mode": "budget"}
        probe = run_case({**base, "budget": 2**50, "plan_only": True})
        if "error" in probe:
            print(f"| {name} | {op} | {size} | {probe['error']} | | | | | | | |")
            continue
        minimum = probe["minimum_mib"] * 2**20
        for factor in factors:
            budget = int(minimum * factor)
            plain, fixed = run_case({**base, "budget": budget}), run_case({**base, "budget": budget, "return_freed": True})
            row = {"model": name, "op": op, "size": size, "budget_mib": budget / 2**20, "factor": factor,
                   "default_malloc": plain, "fixed_mmap": fixed}
            rows.append(row)
            if "error" in plain or "error" in fixed:
                print(f"| {name} | {op} | {size} | {budget / 2**20:.0f} | {plain.get('error', '')} {fixed.get('error', '')} |||||||")
                continue
            mib = budget / 2**20
            tile = "x".join(map(str, plain["tile"])) if plain["tile"] else "frames" if plain.get("stream") else "untiled"
            print(f"| {name} | {op} | {size}x{size} | {mib:.0f} ({factor:g} x min) | {tile} | {plain['planned_mib']:.0f} | "
                  f"{plain['peak_mib']:.0f} | {plain['peak_mib'] / mib:.2f} | {plain['seconds']:.1f} | "
                  f"{fixed['peak_mib']:.0f} | {fixed['peak_mib'] / mib:.2f} | {fixed['seconds']:.1f} |")
    out = args.out.with_name(args.out.name + "_budgets")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


def counted(args) -> int:
    """Counted (not measured) peaks of one 17-frame chunk: untiled and exact tiles, any size."""
    import torch

    from videovae.families import stepvideo as sv, svd
    from videovae.memory_plan import chunk_peak

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    lines: list[str] = []
    print = _printer(lines)
    print(f"Counted on the meta device (videovae.memory_plan), not measured: one chunk of 17 frames, {args.dtype}, "
          f"{args.widths} widths, tile {args.tile}")
    print("| model | op | size | untiled GiB | exact GiB | streamed GiB | best / untiled (bar) |")
    print("|---|---|---|---|---|---|---|")
    for name, op, size, spec in _cases(args):
        with torch.device("meta"):
            if name == "svd":
                cfg = svd.SVDConfig(**spec["config"]) if spec["config"] else svd.SVDConfig()
                model, z, latents = svd.SVDVAE(cfg), cfg.latent_channels, 17
            else:
                released = {"v1": sv.stepvideo_v1_config, "v2": sv.stepvideo_v2_config}[name]
                cfg = sv.StepVideoConfig(**spec["config"]) if spec["config"] else released()
                model, z, latents = sv.StepVideoVAE(cfg), cfg.z_channels, cfg.frame_layout.latents_per_chunk
        model = model.to(dtype)
        S = model.frame_layout.spatial_factor
        shape = (1, 3, 17, size, size) if op == "encode" else (1, z, latents, size // S, size // S)
        plain, exact = chunk_peak(model, op, shape, None), chunk_peak(model, op, shape, (args.tile,) * 2)
        streamed = chunk_peak(model, op, shape, None, stream=True) if model.streams_frames else None
        best = min(exact, streamed or exact)
        print(f"| {name} | {op} | {size}x{size} | {plain / 2**30:.2f} | {exact / 2**30:.2f} | "
              f"{'' if streamed is None else f'{streamed / 2**30:.2f}'} | {best / plain:.2f} (<= {BARS[name]}) |")
    out = args.out.with_name(args.out.name + "_counted")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
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
        for mode, style in (("untiled", "-o"), ("exact", "--s"), ("streamed", ":^")):
            if all(r[mode].get("peak_mib") for r in sel):
                ax.plot(pixels, [r[mode]["peak_mib"] for r in sel], style, label=f"{key[0]} {key[1]} {mode}")
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("pixels per frame (17 frames)"), ax.set_ylabel("peak memory - weights (MiB)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    raise SystemExit(main())
