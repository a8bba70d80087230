"""`videovae train`: the command line over `videovae.training.trainer`.

    videovae train --config demo-v1 --out runs/demo                      # from scratch, photo clips
    videovae train --init model.safetensors --data clips/ --decoder-only --out runs/ft

Rerunning the same command resumes from the run folder's last checkpoint.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path




def _shape(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a clip shape TxHxW (for example 9x64x64)")
    return tuple(int(g) for g in m.groups())


def add_arguments(p: argparse.ArgumentParser) -> None:
    start = p.add_mutually_exclusive_group()
    start.add_argument("--config", default=None, help="train from scratch: a named config (default demo-v1; see videovae.training.configs)")
    start.add_argument("--init", type=Path, default=None, help="fine-tune these weights (a checkpoint videovae.load reads)")
    p.add_argument("--data", default="photos", help="'photos' (the camera generator over scikit-image's photographs, default) or a folder of videos")
    p.add_argument("--out", type=Path, required=True, help="run folder: train_state.pt, history.json, model.safetensors")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop at this step of the --steps schedule (checkpoint and model written); rerun without it to go on")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--shape", type=_shape, action="append", default=None, metavar="TxHxW",
                   help="training clip shape, repeatable (used in turn; default 17x24x24: whole 17-frame chunks, small)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--ssim-weight", type=float, default=0.2)
    p.add_argument("--ema", type=float, default=0.999,
                   help="decay of the weights' moving average that is evaluated and saved (default 0.999; 0: the raw weights)")
    p.add_argument("--decoder-only", action="store_true", help="freeze the encoder (adapt the decoder to a domain)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=250, help="held-out PSNR/SSIM every N steps (default 250)")
    p.add_argument("--eval-shape", type=_shape, default=(17, 96, 128), metavar="TxHxW", help="held-out clip shape (default 17x96x128)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="write the resumable state every N steps (default 100)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (bf16 autocast on CUDA)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..api import load
    from ..validation import check_device
    from .clips import PhotoClips, VideoFolderClips
    from .configs import named_config
    from .photos import photos
    from .trainer import TrainOptions, TrainRun, narrow_posterior

    shapes = tuple(args.shape) if args.shape else TrainOptions.shapes
    options = TrainOptions(
        steps=args.steps, batch=args.batch, shapes=shapes, lr=args.lr, warmup=args.warmup,
        kl_weight=args.kl_weight, ssim_weight=args.ssim_weight, decoder_only=args.decoder_only, ema=args.ema,
        seed=args.seed, eval_every=args.eval_every, eval_shape=args.eval_shape, checkpoint_every=args.checkpoint_every,
    )
    device = check_device(args.device)
    if args.init is not None:
        model = load(args.init, dtype="fp32").model
    else:
        from ..families.stepvideo import StepVideoVAE

        torch.manual_seed(args.seed)
        model = narrow_posterior(StepVideoVAE(named_config(args.config or "demo-v1")))
    if args.data == "photos":
        source, eval_source = PhotoClips(photos("train")), PhotoClips(photos("held_out"), augment=False)
    else:
        source = VideoFolderClips(args.data, min_frames=max(t for t, _, _ in shapes))
        eval_source = None
        print("videovae: note: no held-out evaluation for a video folder (it runs on the built-in held-out photographs only)", file=sys.stderr)
    run = TrainRun(model, source, args.out, options, eval_source=eval_source, device=device,
                   progress=not getattr(args, "quiet", False), log=lambda m: print(m, file=sys.stderr))
    history = run.train(stop_at=args.stop_at)
    final = history["evals"][-1] if history["evals"] else None
    summary = f"trained {run.step} steps in {history['wall_seconds'] / 60:.1f} min -> {args.out / 'model.safetensors'}"
    if final:
        summary += f"; held-out PSNR {final['psnr']:.2f} dB, SSIM {final['ssim']:.4f}"
    print(summary)
    return 0


