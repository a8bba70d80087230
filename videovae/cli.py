"""The `videovae` command line: thin argument parsing over the library. Nothing runs at import."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_CHECKPOINT = REPO_WEIGHTS / "stepvideo_v2_tiny.safetensors"


def _dtype_name(dtype) -> str:
    return {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(dtype), str(dtype))


def cmd_demo(args: argparse.Namespace) -> int:
    """Reconstruct a synthetic video tensor and print shapes and timings."""
    import torch

    import videovae

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    vae = videovae.load(args.checkpoint, device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - t0
    T, H, W = args.frames, args.height, args.width
    # A moving diagonal gradient in [-1, 1]: (1, T, 3, H, W).
    t = torch.arange(T).view(T, 1, 1, 1)
    y, x = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    phase = torch.tensor([0.0, 2.1, 4.2]).view(1, 3, 1, 1)
    video = torch.sin(6.28 * (x + y) + 0.3 * t + phase).unsqueeze(0)
    with torch.inference_mode():
        t0 = time.perf_counter()
        posterior = vae.encode(video, policy=args.policy)
        enc_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = vae.decode(posterior)
        dec_s = time.perf_counter() - t0
    mse = (out - video).pow(2).mean().item()
    print(f"checkpoint  {args.checkpoint}  ({vae.family} v{vae.version}, {_dtype_name(vae.dtype)}, loaded in {load_s:.2f}s)")
    print(f"video       {tuple(video.shape)}  (B, T, C, H, W)")
    print(f"latents     {tuple(posterior.mean.shape)}  (B, T_lat, z, h, w)   encode {enc_s:.2f}s")
    print(f"decoded     {tuple(out.shape)}   decode {dec_s:.2f}s")
    print(f"mse         {mse:.4f}  (weights from {args.checkpoint.name}; untrained weights give a poor reconstruction)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print family, version, config, parameter count, dtype and sha256 of a checkpoint."""
    import dataclasses
    import math

    from .checkpoints import detect_family, file_sha256, read_header

    header = read_header(args.checkpoint)
    family = detect_family(header.shapes, path=header.path)
    module_shapes = {family.to_module_key(k): s for k, s in header.shapes.items()}
    config = family.config_from_shapes(module_shapes)
    dtypes = sorted({_dtype_name(d) for d in header.dtypes.values()})
    info = {
        "path": str(header.path),
        "family": family.name,
        "description": family.describe(config),
        "config": dataclasses.asdict(config),
        "parameters": sum(math.prod(s) for s in header.shapes.values()),
        "tensors": len(header.shapes),
        "dtype": ",".join(dtypes),
        "sha256": file_sha256(header.path),
    }
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videovae", description="Causal video autoencoders: encode, decode, reconstruct.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="reconstruct a synthetic video tensor; print shapes and timings")
    demo.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    demo.add_argument("--frames", type=int, default=34)
    demo.add_argument("--height", type=int, default=48)
    demo.add_argument("--width", type=int, default=64)
    demo.add_argument("--policy", choices=("pad", "trim", "strict"), default="pad")
    demo.add_argument("--device", default=None)
    demo.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    demo.add_argument("--threads", type=int, default=2)
    demo.set_defaults(func=cmd_demo)

    inspect = sub.add_parser("inspect", help="family, version, config, parameter count, dtype, sha256")
    inspect.add_argument("checkpoint", type=Path)
    inspect.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import VideoVAEError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (VideoVAEError, OSError, ValueError) as exc:
        if args.debug:
            raise
        print(f"videovae: error: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("videovae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
