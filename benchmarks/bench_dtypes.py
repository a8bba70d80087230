"""Reconstruct time per requested dtype on the CPU, with videovae's 16-bit fallback.

For each dtype asked for, loads the tiny Step-Video v2 fixture with `videovae.load(dtype=...)` and
times `vae.reconstruct` of one 17x48x64 clip (median of --repeats runs, after a warm-up), next to
float32 measured in the same run. `--strict` adds the same dtypes with strict_dtype=True: what
computing in 16 bits really costs on this CPU (minutes per run on CPUs without native 16-bit convs).
Also prints what the CPU probe decided for each 16-bit dtype, and the warnings `load` gave.

    python benchmarks/bench_dtypes.py                       # fp32, bf16, fp16 (fallback where slow)
    python benchmarks/bench_dtypes.py --strict --repeats 1  # plus forced 16-bit
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_dtypes.py   # an AVX2-only CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
FIXTURE = ROOT / "tests" / "fixtures" / "stepvideo" / "stepvideo_v2_tiny.safetensors"


def time_reconstruct(dtype: str, strict: bool, video: torch.Tensor, repeats: int, warmup: int) -> dict:
    import videovae
    from videovae.compute_dtype import dtype_name

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        vae = videovae.load(FIXTURE, dtype=dtype, strict_dtype=strict)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            vae.reconstruct(video)
        for _ in range(repeats):
            start = time.perf_counter()
            vae.reconstruct(video)
            times.append(time.perf_counter() - start)
    return {"asked": dtype, "strict": strict, "computes_in": dtype_name(vae.dtype),
            "seconds": statistics.median(times), "runs": times, "warnings": [str(w.message) for w in record]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "fp16"])
    parser.add_argument("--strict", action="store_true", help="also time the 16-bit dtypes forced (strict_dtype=True)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (0 for the slow strict runs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_dtypes.json")
    args = parser.parse_args(argv)

    from videovae.compute_dtype import cpu_has_fast_conv

    torch.set_num_threads(args.threads)
    video = torch.rand((1, 17, 3, 48, 64), generator=torch.Generator().manual_seed(0)) * 2 - 1
    capability = torch.backends.cpu.get_cpu_capability()
    probe = {name: cpu_has_fast_conv(d) for name, d in (("bf16", torch.bfloat16), ("fp16", torch.float16))}
    cases = [(d, False) for d in args.dtypes] + ([(d, True) for d in args.dtypes if d != "fp32"] if args.strict else [])
    rows = [time_reconstruct(d, strict, video, args.repeats, args.warmup) for d, strict in cases]
    base = next(r["seconds"] for r in rows if r["asked"] == "fp32" and not r["strict"]) if "fp32" in args.dtypes else None

    print(f"CPU capability {capability}, {args.threads} threads; probe says fast 16-bit conv: {probe}")
    print("tiny Step-Video v2 fixture, reconstruct (1, 17, 3, 48, 64), median of", args.repeats)
    print("| asked | strict | computes in | seconds | vs fp32 | warnings |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['seconds'] / base:.2f}x" if base else "n/a"
        print(f"| {r['asked']} | {r['strict']} | {r['computes_in']} | {r['seconds']:.3f} | {ratio} | {len(r['warnings'])} |")
    for r in rows:
        for w in r["warnings"]:
            print(f"  {r['asked']}: {w}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"capability": capability, "threads": args.threads, "probe": probe, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
