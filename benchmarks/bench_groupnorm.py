"""Fused group norm + SiLU against native F.group_norm followed by F.silu, on video shapes.

Per-clip statistics (what F.group_norm computes), 32 groups, affine, contiguous (B, C, T, H, W).
Reports the median time of several runs, the ratio to the eager baseline measured in the same run,
the achieved bandwidth under a stated traffic model, and its share of the peak: the bandwidth of a
large tensor copy measured in the same run on the same device (a measured figure, not a data sheet).

Traffic model (N elements of e bytes; GB = 1e9 bytes), per implementation:
  - fused Triton op:         2 reads + 1 write of x  = 3·N·e (statistics pass, then apply pass)
  - eager GN then SiLU:      GN 2 reads + 1 write, SiLU 1 read + 1 write = 5·N·e
  - fused PyTorch reference: float32: sum (1 read), x - mean into the output (1 read + 1 write),
                             sum and norm of it (2 reads), in-place affine and SiLU (2 x (1 read +
                             1 write)) = 9·N·4; 16-bit inputs add an fp32 upcast and a final
                             downcast (see `reference_bytes`)
  - videovae op, CPU dispatch (`group_norm` on a CPU tensor, what the models run): PyTorch's
                             native norm (2 reads + 1 write) then in-place SiLU (1 read + 1 write)
                             = 5·N·e
  - copy (the "peak"):       1 read + 1 write
The `floor GB/s` column divides the minimum traffic (3·N·e) by the time, so the implementations
are comparable on one scale.

Without a GPU only the CPU paths run (the Triton kernels need a GPU; interpreter timings mean
nothing) and the report says so; no GPU figure is ever printed unless it was measured here.

    python benchmarks/bench_groupnorm.py                      # default shapes, 2 threads
    python benchmarks/bench_groupnorm.py --quick --threads 1
The baseline is imported from tests/test_group_norm.py so test and benchmark measure the same thing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

DEFAULT_OUT = Path(__file__).parent / "results" / "bench_groupnorm.json"
SHAPES = [(1, 128, 17, 256, 256), (1, 512, 5, 64, 64), (1, 256, 9, 128, 128), (1, 512, 17, 32, 32), (2, 128, 9, 192, 192)]
QUICK_SHAPES = [(1, 128, 17, 64, 64), (1, 512, 5, 32, 32), (1, 256, 9, 48, 48)]
GROUPS = 32
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _baseline():
    """eager_group_norm_silu from the test file (STYLE.md point 7)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_group_norm import eager_group_norm_silu

    return eager_group_norm_silu


def reference_bytes(n: int, e: int) -> int:
    """Modeled traffic of `group_norm_torch(..., silu=True)` (see the module docstring)."""
    if e == 4:
        return 9 * n * 4
    # upcast (read e, write 4), sum (read 4), in-place sub, affine and SiLU (3 x (read 4 + write 4)),
    # sum and norm (2 x read 4), copy into the output (read 4, write e)
    return n * (e + 4) + n * 4 + 3 * n * 8 + 2 * n * 4 + n * (4 + e)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, repeats: int, device: torch.device, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of fn() over `repeats` runs (after `warmup`), synchronising around each."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), runs


def measure_copy_bandwidth(device: torch.device, repeats: int, nbytes: int = 1 << 29) -> float:
    """GB/s of dst.copy_(src) for a `nbytes` float32 tensor: 1 read + 1 write."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t, _ = median_seconds(lambda: dst.copy_(src), repeats, device)
    return 2 * nbytes / t / 1e9


def setup(shape, dtype: torch.dtype, device: torch.device) -> dict:
    """Inputs and the implementations to time on this device: one place for speed and memory."""
    from videovae_kernels import GroupNormSpec, group_norm, group_norm_torch

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 2 + 0.5).to(device=device, dtype=dtype)
    C = shape[1]
    w = (torch.randn(C, generator=gen) * 0.5 + 1).to(device=device, dtype=dtype)
    b = (torch.randn(C, generator=gen) * 0.3).to(device=device, dtype=dtype)
    n, e = x.numel(), x.element_size()
    eager = _baseline()
    impls = {"eager F.group_norm + F.silu": (lambda: eager(x, GROUPS, w, b), 5 * n * e)}
    if device.type == "cuda":
        from videovae_kernels.group_norm_triton import group_norm_triton

        impls["fused Triton op"] = (
            lambda: group_norm_triton(x, w, b, GroupNormSpec(GROUPS, 1e-5, silu=True)),
            3 * n * e,
        )
    impls["fused PyTorch reference"] = (lambda: group_norm_torch(x, w, b, GroupNormSpec(GROUPS, 1e-5, silu=True)), reference_bytes(n, e))
    if device.type != "cuda":
        # What the models run on CPU: the dispatcher's lean path (native norm + in-place SiLU here).
        impls["videovae op, CPU dispatch"] = (lambda: group_norm(x, GROUPS, w, b, 1e-5, silu=True), 5 * n * e)
    return {"x": x, "impls": impls, "floor_bytes": 3 * n * e}


def run(shapes, dtype_name: str, device: torch.device, repeats: int, peak_gbs: float) -> list[dict]:
    rows = []
    for shape in shapes:
        case = setup(shape, DTYPES[dtype_name], device)
        eager_s = None
        for name, (fn, nbytes) in case["impls"].items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base_mem = torch.cuda.memory_allocated(device)
            with torch.inference_mode():
                t, runs = median_seconds(fn, repeats, device)
            eager_s = t if eager_s is None else eager_s
            row = {
                "shape": list(shape), "dtype": dtype_name, "impl": name, "median_ms": t * 1e3,
                "runs_ms": [r * 1e3 for r in runs], "speedup_vs_eager": eager_s / t,
                "modeled_bytes": nbytes, "gbs": nbytes / t / 1e9, "share_of_peak": nbytes / t / 1e9 / peak_gbs,
                "floor_gbs": case["floor_bytes"] / t / 1e9,
            }
            if device.type == "cuda":
                row["peak_extra_mem_mb"] = (torch.cuda.max_memory_allocated(device) - base_mem) / 2**20
            rows.append(row)
            print(f"  {tuple(shape)} {name}: {t * 1e3:.2f} ms", file=sys.stderr, flush=True)
        del case
    return rows


def markdown(rows: list[dict], peak_gbs: float, device_name: str) -> str:
    lines = [
        f"peak = measured copy bandwidth on {device_name}: {peak_gbs:.1f} GB/s",
        "",
        "| shape | dtype | implementation | median ms | vs eager | modeled GB | GB/s | % of peak | floor GB/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {'x'.join(map(str, r['shape']))} | {r['dtype']} | {r['impl']} | {r['median_ms']:.2f} | "
            f"{r['speedup_vs_eager']:.2f}x | {r['modeled_bytes'] / 1e9:.3f} | {r['gbs']:.1f} | "
            f"{100 * r['share_of_peak']:.0f}% | {r['floor_gbs']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case; the median is reported")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on a GPU, fp32 on CPU")
    parser.add_argument("--quick", action="store_true", help="smaller shapes, 3 repeats")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    repeats = 3 if args.quick else args.repeats
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
        note = "GPU present: Triton kernels timed on it."
    else:
        device_name = f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads)"
        note = ("No GPU here: only the CPU paths were timed. Triton timings need a GPU "
                "(the interpreter's are meaningless); no GPU figure is reported.")
    print(note, file=sys.stderr)

    peak_gbs = measure_copy_bandwidth(device, repeats)
    rows = run(shapes, dtype_name, device, repeats, peak_gbs)
    table = markdown(rows, peak_gbs, device_name)
    print(note)
    print(table)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "device": device_name, "device_type": device.type, "threads": args.threads, "repeats": repeats,
        "dtype": dtype_name, "groups": GROUPS, "torch": torch.__version__, "note": note,
        "peak_gbs_measured_copy": peak_gbs,
        "traffic_model": {
            "fused Triton op": "3*N*e (2 reads + 1 write)",
            "eager F.group_norm + F.silu": "5*N*e (GN: 2 reads + 1 write; SiLU: 1 read + 1 write)",
            "fused PyTorch reference": "fp32: 9*N*4; 16-bit: N*(2e + 44) (upcast, sum, 3 in-place passes, sum, norm, downcast)",
            "copy (peak)": "1 read + 1 write",
            "floor_gbs": "3*N*e / time for every implementation",
        },
        "rows": rows,
        "markdown": table,
    }, indent=1))
    print(f"\nsaved {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
