"""SVD VAE decode (and encode): videovae's SVDVAE against diffusers' AutoencoderKLTemporalDecoder
on the same weights and inputs, on CPU.

Reports the median wall time over --runs runs (after one warm-up), the peak resident memory the
operation adds, the ratio videovae / diffusers, and the largest output difference. Each
(implementation, operation) runs in its own subprocess so peak RSS (VmHWM) belongs
to that operation alone: peak = peak RSS (VmHWM) after the first run - RSS before it, the peak
reset (/proc/self/clear_refs) after the weights are loaded.

    OMP_NUM_THREADS=2 python benchmarks/bench_svd.py --config small --frames 8 --size 128
    python benchmarks/bench_svd.py --config svd --frames 4 --size 256 --runs 3 --json out.json

Also reports the seam error of chunked decoding (videovae.VideoVAE.decode with chunk_frames /
overlap) against the whole-clip decode, on a smooth synthetic clip encoded by the same weights:
plain chunks (overlap 0, what StableVideoDiffusionPipeline's decode_chunk_size does) vs overlapped
cross-faded windows of the same size (--seam-chunk, --seam-overlap).

Prints markdown tables, writes JSON (--json). Never asserts speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import peak_rss  # noqa: E402  (benchmarks/, the script's folder)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {  # name -> SVDConfig kwargs
    "tiny": dict(block_out_channels=(32, 64), layers_per_block=2),
    "small": dict(block_out_channels=(64, 128, 128), layers_per_block=2),
    "svd": dict(),  # the released SVD VAE architecture (97.7 M parameters), random weights
}
IMPLS = ("diffusers", "videovae")
OPS = ("decode", "encode")


def current_rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def run_worker(impl: str, op: str, weights: Path, inputs: Path, cfg_name: str, frames: int, runs: int, out: Path) -> dict:
    """Time one (implementation, operation) in this process; save its output to `out`."""
    sys.path.insert(0, str(ROOT))
    from videovae.families.svd import SVDVAE, SVDConfig

    cfg = SVDConfig(**CONFIGS[cfg_name])
    sd = load_file(weights)
    data = load_file(inputs)
    if impl == "videovae":
        # Copied into the model's own parameters, as diffusers' load_state_dict does: with
        # assign=True they would stay pages of the weights file that the first call faults in,
        # counted as that call's peak.
        model = SVDVAE(cfg)
        model.load_state_dict(sd)
        if op == "decode":
            z = data["latents"]  # (B, T, z, h, w)
            call = lambda: model.decode_chunk(z.transpose(1, 2)).transpose(1, 2).flatten(0, 1)  # noqa: E731  -> (B*T, 3, H, W)
        else:  # (N, 3, H, W) as one clip of N frames -> moments (N, 2z, h, w)
            call = lambda: model.encode_chunk(data["frames"].transpose(0, 1)[None])[0].transpose(0, 1)  # noqa: E731
    else:
        from diffusers import AutoencoderKLTemporalDecoder

        config = {k: v for k, v in cfg.to_diffusers_config().items() if not k.startswith("_")}
        model = AutoencoderKLTemporalDecoder(**config)
        model.load_state_dict(sd, strict=True)
        if op == "decode":
            z = data["latents"].flatten(0, 1)  # diffusers folds frames: (B*T, z, h, w)
            call = lambda: model.decode(z, num_frames=frames).sample  # noqa: E731
        else:
            call = lambda: model.encode(data["frames"]).latent_dist.parameters  # noqa: E731  moments
    model.eval()
    del sd

    with torch.no_grad():
        if not peak_rss.reset():  # the load's own peak (weights file + model) is not the operation's
            print("bench_svd: cannot reset the peak RSS (/proc/self/clear_refs); peaks include the load", file=sys.stderr)
        rss_before = current_rss_kib()
        result = call()
        peak_kib = peak_rss.peak_kib() - rss_before
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    save_file({"output": result.contiguous()}, out)
    return {"impl": impl, "op": op, "median_s": statistics.median(times), "times_s": times, "peak_mib": peak_kib / 1024}


def make_weights_and_inputs(cfg_name: str, frames: int, size: int, workdir: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_svd_family import random_diffusers_vae  # the same reference model the parity test uses

    from videovae.families.svd import SVDConfig

    cfg = SVDConfig(**CONFIGS[cfg_name])
    weights, inputs = workdir / "weights.safetensors", workdir / "inputs.safetensors"
    save_file({k: v.contiguous() for k, v in random_diffusers_vae(cfg).state_dict().items()}, weights)
    g = torch.Generator().manual_seed(0)
    h = size // cfg.spatial_compression
    save_file({
        "frames": torch.rand(frames, cfg.in_channels, size, size, generator=g) * 2 - 1,  # (T, C, H, W), one clip
        "latents": torch.randn(1, frames, cfg.latent_channels, h, h, generator=g),  # (B=1, T, z, h, w)
    }, inputs)
    return weights, inputs


def seam_errors(weights: Path, frames: int, size: int, chunk: int, overlap: int) -> dict:
    """|chunked decode - whole-clip decode| (max, RMS, worst frame) for plain and overlapped windows."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_svd import smooth_video  # the same clip the seam test uses

    import videovae

    vae = videovae.load(weights, dtype=torch.float32)
    z = vae.encode(smooth_video(frames, size)).mode()  # (1, T, z, h, w)
    with torch.no_grad():
        full = vae.decode(z)
        rows = {}
        for name, ov in (("plain", 0), ("overlapped", overlap)):
            start = time.perf_counter()
            out = vae.decode(z, chunk_frames=chunk, overlap=ov)
            seconds = time.perf_counter() - start
            err = (out - full).abs()
            rows[name] = {
                "overlap": ov, "max_abs": err.max().item(), "rms": err.pow(2).mean().sqrt().item(),
                "per_frame_max": err.amax(dim=(0, 2, 3, 4)).tolist(), "seconds": seconds,
            }
    return {"frames": frames, "size": size, "chunk_frames": chunk, "rows": rows}


def seam_markdown(seams: dict) -> str:
    lines = [
        f"Seam error vs whole-clip decode: {seams['frames']} frames of {seams['size']}x{seams['size']}, windows of "
        f"{seams['chunk_frames']} latent frames",
        "",
        "| decode | overlap | max abs err | RMS err | s |",
        "|---|---|---|---|---|",
    ]
    for name, row in seams["rows"].items():
        lines.append(f"| {name} | {row['overlap']} | {row['max_abs']:.4f} | {row['rms']:.4f} | {row['seconds']:.3f} |")
    return "\n".join(lines)


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"SVD VAE, config `{meta['config']}`, {meta['frames']} frames of {meta['size']}x{meta['size']}, "
        f"CPU, {meta['threads']} threads, torch {meta['torch']}, diffusers {meta['diffusers']}, median of {meta['runs']}",
        "",
        "| op | diffusers s | videovae s | time ratio (videovae/diffusers) | diffusers peak MiB | videovae peak MiB "
        "| max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for op in OPS:
        row = {r["impl"]: r for r in results if r["op"] == op}
        if len(row) < 2:
            continue
        d, v = row["diffusers"], row["videovae"]
        lines.append(
            f"| {op} | {d['median_s']:.3f} | {v['median_s']:.3f} | {v['median_s'] / d['median_s']:.2f} "
            f"| {d['peak_mib']:.0f} | {v['peak_mib']:.0f} | {v['max_abs_diff']:.2e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="frame height = width, in pixels")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--seam-frames", type=int, default=16, help="frames of the seam-error clip")
    parser.add_argument("--seam-chunk", type=int, default=6, help="latent frames per decode window")
    parser.add_argument("--seam-overlap", type=int, default=2, help="overlap of the overlapped windows")
    parser.add_argument("--worker", nargs=5, metavar=("IMPL", "OP", "WEIGHTS", "INPUTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        impl, op, weights, inputs, out = args.worker
        result = run_worker(impl, op, Path(weights), Path(inputs), args.config, args.frames, args.runs, Path(out))
        print(json.dumps(result))
        return 0

    import diffusers

    meta = {
        "config": args.config, "frames": args.frames, "size": args.size, "runs": args.runs,
        "threads": int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())),
        "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
    }
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        weights, inputs = make_weights_and_inputs(args.config, args.frames, args.size, workdir)
        for op in args.ops:
            outputs = {}
            for impl in IMPLS:
                out = workdir / f"{impl}_{op}.safetensors"
                cmd = [sys.executable, __file__, "--config", args.config, "--frames", str(args.frames),
                       "--runs", str(args.runs), "--worker", impl, op, str(weights), str(inputs), str(out)]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                outputs[impl] = load_file(out)["output"]
            diff = (outputs["videovae"] - outputs["diffusers"]).abs().max().item()
            for r in results[-2:]:
                r["max_abs_diff"] = diff
        seams = seam_errors(weights, args.seam_frames, args.size, args.seam_chunk, args.seam_overlap)
    table = markdown(results, meta) + "\n\n" + seam_markdown(seams)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results, "seams": seams, "markdown": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
