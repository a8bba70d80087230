"""One prepared check for a CUDA machine: the tests that need a GPU, then a table of GPU numbers.

    pip install --no-deps --no-build-isolation -e . && python benchmarks/gpu_check.py

Installs nothing and needs no PyAV, diffusers or network (PyTorch, Triton, einops, safetensors and
numpy only). Finishes in under 8 minutes on one H100/H200-class GPU. In order:

1. pytest on tests/test_cuda.py (the `cuda` marker: compiled Triton kernels, fixture parity in fp32
   and bf16 on the GPU, the 16-bit dtype mixes) and tests/test_group_norm.py, with
   TRITON_INTERPRET=0 so the Triton kernels compile for the GPU instead of being interpreted.
2. Fused group norm (+ SiLU) on video shapes, bf16: the Triton kernel against eager F.group_norm
   followed by F.silu, median of CUDA-event timings. Traffic model: the floor for GN + SiLU is
   2 reads + 1 write of x (3·N·e bytes); both columns divide that floor by the measured time, so
   they compare on one scale. Peak: a large device copy measured in the same run (1 read + 1 write),
   and the data-sheet figure for known devices.
3. Full-size Step-Video v2 (random weights, bf16) decoding 1x17 frames at 544x992 (latents
   (1, 3, 64, 34, 62)): videovae as shipped against the plain PyTorch path of the same model
   (VIDEOVAE_KERNELS=torch, phase-split upsampling and Winograd off), time and peak memory, and the
   PSNR between the two outputs. Encoding the same clip is timed the same way.
4. The same model decoding 17 frames at 1536x1536 (Step-Video-T2V issue #30's size) under
   `max_memory="24GB"`: the plan the budget picks (untiled, frame by frame or tiles), its counted
   peak, and the measured peak allocation above the weights and time.

The table is printed and saved as JSON and markdown in --out-dir (default benchmarks/results/, and
also $OUT when that is set). `--smoke` runs every step on tiny shapes on whatever device there is
(the test suite runs it on the CPU so the script cannot rot); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
# Data-sheet HBM bandwidth, bytes/s, matched against torch.cuda.get_device_name().
DATASHEET_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "L40S": 0.864e12, "4090": 1.008e12}

GN_SHAPES = [(1, 128, 17, 512, 512), (1, 128, 17, 272, 496), (1, 256, 17, 136, 248), (1, 512, 5, 68, 124)]
GN_SMOKE_SHAPES = [(1, 64, 3, 16, 16)]
DECODE_CASE = dict(frames=17, height=544, width=992)
DECODE_SMOKE_CASE = dict(frames=17, height=32, width=32)
BUDGET_CASE = dict(frames=17, height=1536, width=1536, max_memory="24GB")
BUDGET_SMOKE_CASE = dict(frames=17, height=64, width=64, max_memory=None)  # None: the plan's own minimum


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def device_facts(device: torch.device) -> dict:
    facts = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    try:
        import triton

        facts["triton"] = triton.__version__
    except ImportError:
        facts["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(name=props.name, memory_gb=round(props.total_memory / 2**30, 1),
                     capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count)
    else:
        facts.update(name=platform.processor() or platform.machine(), capability=torch.backends.cpu.get_cpu_capability())
    return facts


# -- 1. the tests ---------------------------------------------------------------------------------

# pytest's closing line ("3 passed, 12 skipped in 4.1s"); plugins may print warnings after it
PYTEST_RESULT = re.compile(r"\b\d+ (passed|failed|skipped|errors?|deselected)\b.* in [\d.]+s")


def pytest_summary(lines: list[str]) -> str:
    """pytest's result line from its output lines; the last line when there is none (a crash)."""
    return next((line for line in reversed(lines) if PYTEST_RESULT.search(line)), lines[-1] if lines else "(no output)")


def run_tests(timeout_s: int) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
           "tests/test_cuda.py", "tests/test_group_norm.py"]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), "timeout"
    lines = [line for line in output.strip().splitlines() if line.strip()]
    summary = pytest_summary(lines)
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))][:20]
    return {"command": " ".join(cmd[1:]), "exit": code, "summary": summary, "failures": failures,
            "seconds": round(time.perf_counter() - start, 1)}


# -- 2. fused group norm bandwidth -------------------------------------------------------------------

def group_norm_rows(shapes, device: torch.device, repeats: int, copy_elements: int) -> tuple[list[dict], float]:
    from videovae_kernels.group_norm import backend_for, group_norm

    dtype = torch.bfloat16
    copy_src = torch.empty(copy_elements, dtype=torch.float32, device=device)
    copy_dst = torch.empty_like(copy_src)
    copy_s = median_seconds(lambda: copy_dst.copy_(copy_src), device, repeats)
    copy_gbs = 2 * copy_src.numel() * 4 / copy_s / 1e9
    rows = []
    for shape in shapes:
        for per_frame in (False, True):
            x = torch.randn(shape, device=device, dtype=dtype)
            C = shape[1]
            w, b = torch.ones(C, device=device), torch.zeros(C, device=device)
            floor_bytes = 3 * x.numel() * x.element_size()

            def fused():
                return group_norm(x, 32, w, b, 1e-5, per_frame=per_frame, silu=True)

            def eager():
                if per_frame:  # frames folded into the batch: statistics per (b, t, group)
                    B, C_, T, H, W = x.shape
                    folded = x.transpose(1, 2).reshape(B * T, C_, H, W)
                    return F.silu(F.group_norm(folded, 32, w.to(dtype), b.to(dtype), 1e-5))
                return F.silu(F.group_norm(x, 32, w.to(dtype), b.to(dtype), 1e-5))

            fused_s = median_seconds(fused, device, repeats)
            eager_s = median_seconds(eager, device, repeats)
            rows.append({
                "shape": list(shape), "per_frame": per_frame, "backend": backend_for(x),
                "fused_ms": fused_s * 1e3, "eager_ms": eager_s * 1e3, "speedup": eager_s / fused_s,
                "fused_gbs": floor_bytes / fused_s / 1e9, "eager_gbs": floor_bytes / eager_s / 1e9,
            })
    return rows, copy_gbs


# -- 3. full-size Step-Video v2 decode -----------------------------------------------------------------

def build_stepvideo_v2(device: torch.device, smoke: bool):
    """Full-size Step-Video v2 with random weights in bf16 (smoke: the shipped tiny model, fp32)."""
    import videovae
    from videovae.api import VideoVAE
    from videovae.families import stepvideo
    from videovae.registry import shipped_checkpoint

    if smoke:
        return videovae.load(shipped_checkpoint(), device=device)
    torch.manual_seed(0)
    with torch.device(device):
        model = stepvideo.StepVideoVAE(stepvideo.stepvideo_v2_config())
    with torch.no_grad():  # smaller random weights keep activations in range through the deep stack
        for p in model.parameters():
            p.mul_(0.5)
    return VideoVAE(model.to(torch.bfloat16).eval().requires_grad_(False))


def vae_rows(vae, device: torch.device, smoke: bool, repeats: int) -> list[dict]:
    case = DECODE_SMOKE_CASE if smoke else DECODE_CASE
    shape = (1, case["frames"], 3, case["height"], case["width"])
    latent_shape = vae.latent_shape(shape)
    gen = torch.Generator(device=device).manual_seed(0)
    video = torch.rand(shape, generator=gen, device=device, dtype=vae.dtype) * 2 - 1
    latents = torch.randn(latent_shape, generator=gen, device=device, dtype=vae.dtype)
    outputs, rows = {}, []
    saved_kernels = os.environ.get("VIDEOVAE_KERNELS")
    try:
        for path in ("videovae", "plain"):
            fast = path == "videovae"
            os.environ["VIDEOVAE_KERNELS"] = "auto" if fast else "torch"
            vae.fast_paths(phase_split=fast, winograd=fast)
            for name, fn in (("decode", lambda: vae.decode(latents)), ("encode", lambda: vae.encode(video).mean)):
                with torch.inference_mode():
                    fn()  # warm-up, compiles the kernels
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    seconds = median_seconds(fn, device, repeats, warmup=0)
                    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
                    outputs[(path, name)] = fn().float().cpu()
                rows.append({"path": path, "op": name, "input": list(latent_shape if name == "decode" else shape),
                             "dtype": str(vae.dtype).removeprefix("torch."), "seconds": seconds, "peak_gb": peak})
    finally:
        if saved_kernels is None:
            os.environ.pop("VIDEOVAE_KERNELS", None)
        else:
            os.environ["VIDEOVAE_KERNELS"] = saved_kernels
        vae.fast_paths(phase_split=True, winograd=True)
    for row in rows:
        ours, plain = outputs[("videovae", row["op"])], outputs[("plain", row["op"])]
        mse = (ours - plain).pow(2).mean().item()
        row["psnr_vs_plain_db"] = float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(4.0 / mse)).item()
    return rows


# -- 4. a decode under a memory budget ----------------------------------------------------------------

def plan_text(plan) -> str:
    if plan.stream:
        return "frame by frame"
    return "untiled" if plan.tile is None else f"tiles of {plan.tile[0]}x{plan.tile[1]}"


def budget_row(vae, device: torch.device, smoke: bool) -> dict:
    """One decode of a whole chunk under the budget: the plan, its counted peak, the measured peak
    allocation above what was allocated before (the weights) and the time."""
    case = BUDGET_SMOKE_CASE if smoke else BUDGET_CASE
    frames, height, width = case["frames"], case["height"], case["width"]
    budget = case["max_memory"] or vae.memory_plan("decode", height, width, 2**50, frames=frames).minimum
    plan = vae.memory_plan("decode", height, width, budget, frames=frames)
    gen = torch.Generator(device=device).manual_seed(0)
    latents = torch.randn(vae.latent_shape((1, frames, 3, height, width)), generator=gen, device=device, dtype=vae.dtype)
    _sync(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = vae.decode(latents, max_memory=budget)
    _sync(device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**30 if device.type == "cuda" else None
    return {"op": "decode", "output": list(out.shape), "dtype": str(vae.dtype).removeprefix("torch."),
            "budget": budget if isinstance(budget, str) else f"{budget / 2**30:.3f}GiB", "plan": plan_text(plan),
            "counted_gb": plan.peak / 2**30, "peak_gb": peak, "seconds": seconds,
            "finite": bool(torch.isfinite(out).all())}


# -- the report ---------------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    facts, tests = report["facts"], report["tests"]
    lines = [f"# gpu_check on {facts.get('name')} ({facts['device']}), torch {facts['torch']}, triton {facts['triton']}", ""]
    lines += [f"tests: `{tests['command']}` -> exit {tests['exit']}: {tests['summary']} ({tests['seconds']} s)"]
    lines += [f"  {f}" for f in tests["failures"]]
    peak = report.get("datasheet_gbs")
    lines += ["", f"Fused group norm + SiLU, bf16, floor traffic 3·N·e. Measured copy: {report['copy_gbs']:.0f} GB/s"
              + (f"; data sheet {peak:.0f} GB/s" if peak else ""), "",
              "| shape | stats | backend | fused ms | eager ms | speedup | fused GB/s | % copy | % data sheet | eager GB/s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["group_norm"]:
        sheet = f"{100 * r['fused_gbs'] / peak:.0f}%" if peak else "n/a"
        lines.append(
            f"| {tuple(r['shape'])} | {'per frame' if r['per_frame'] else 'per clip'} | {r['backend']} | {r['fused_ms']:.3f} | "
            f"{r['eager_ms']:.3f} | {r['speedup']:.2f}x | {r['fused_gbs']:.0f} | {100 * r['fused_gbs'] / report['copy_gbs']:.0f}% | "
            f"{sheet} | {r['eager_gbs']:.0f} |")
    model = "the shipped tiny v2 (smoke)" if report["smoke"] else "Step-Video v2 full size (random weights)"
    lines += ["", f"{model}: videovae vs the plain PyTorch path of the same model", "",
              "| op | input | dtype | path | seconds | peak GB | ratio | PSNR vs plain |", "|---|---|---|---|---|---|---|---|"]
    plain = {r["op"]: r for r in report["vae"] if r["path"] == "plain"}
    for r in report["vae"]:
        ratio = plain[r["op"]]["seconds"] / r["seconds"]
        peak_gb = "n/a" if r["peak_gb"] is None else f"{r['peak_gb']:.2f}"
        lines.append(f"| {r['op']} | {tuple(r['input'])} | {r['dtype']} | {r['path']} | {r['seconds']:.3f} | {peak_gb} | "
                     f"{ratio:.2f}x | {r['psnr_vs_plain_db']:.1f} dB |")
    b = report["budget"]
    peak_gb = "n/a" if b["peak_gb"] is None else f"{b['peak_gb']:.2f}"
    lines += ["", f"{model}: one chunk decoded under a memory budget (peak: allocated above the weights)", "",
              "| op | output | dtype | budget | plan | counted GB | peak GB | seconds | finite |", "|---|---|---|---|---|---|---|---|---|",
              f"| {b['op']} | {tuple(b['output'])} | {b['dtype']} | {b['budget']} | {b['plan']} | {b['counted_gb']:.2f} | "
              f"{peak_gb} | {b['seconds']:.2f} | {b['finite']} |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on any device (numbers mean nothing)")
    parser.add_argument("--skip-tests", action="store_true", help="only the benchmarks")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--test-timeout", type=int, default=300, help="seconds for the pytest step")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        print("gpu_check: no CUDA device here; run it on a GPU machine, or pass --smoke to try the script on tiny shapes",
              file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = False
    report = {"facts": device_facts(device), "smoke": args.smoke}
    name = report["facts"].get("name") or ""
    report["datasheet_gbs"] = next((bw / 1e9 for key, bw in DATASHEET_BANDWIDTH.items() if key in name), None)
    start = time.perf_counter()
    if args.skip_tests:
        report["tests"] = {"command": "(skipped)", "exit": None, "summary": "skipped", "failures": [], "seconds": 0}
    else:
        report["tests"] = run_tests(args.test_timeout)
        print(f"tests: {report['tests']['summary']} ({report['tests']['seconds']} s)", flush=True)
    repeats = 2 if args.smoke else args.repeats
    shapes, copy_elements = (GN_SMOKE_SHAPES, 1 << 22) if args.smoke else (GN_SHAPES, 1 << 28)  # 16 MiB / 1 GiB
    report["group_norm"], report["copy_gbs"] = group_norm_rows(shapes, device, repeats, copy_elements)
    vae = build_stepvideo_v2(device, args.smoke)
    report["vae"] = vae_rows(vae, device, args.smoke, 2 if args.smoke else 3)
    report["budget"] = budget_row(vae, device, args.smoke)
    report["seconds"] = round(time.perf_counter() - start, 1)

    text = markdown(report)
    print(text)
    folders = [args.out_dir] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        stem = "gpu_check_smoke" if args.smoke else "gpu_check"
        (folder / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
        (folder / f"{stem}.md").write_text(text)
    print(f"total {report['seconds']} s; saved in {', '.join(str(f) for f in folders)}")
    return 0 if report["tests"]["exit"] in (0, None) else 1


if __name__ == "__main__":
    sys.exit(main())
