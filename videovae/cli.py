"""The `videovae` command line: thin argument parsing over the library. Nothing runs at import.

    videovae reconstruct in.mp4 -o out.mp4 [--compare cmp.mp4] [--metrics-json m.json]
    videovae encode in.mp4 -o latents.safetensors
    videovae decode latents.safetensors -o out.mp4
    videovae inspect CKPT | videovae convert CKPT -o OUT --dtype bf16
    videovae demo [--out-dir outputs]
    videovae encode-dataset ...            (videovae.dataset)

Every command checks its output folders before any work, writes outputs atomically, and on failure
exits 1 with one line on stderr (the traceback with `--debug`); argparse errors exit 2.

The handlers live in `videovae.commands`. Video files stream through the model one chunk at a time;
the streaming work lives in `videovae.files` (reconstruct_pairs, run_reconstruct, encode_file,
decode_pieces), usable from Python.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import warnings
from pathlib import Path

from .chunking import POLICY_NAMES
from .compute_dtype import CLI_CHOICES, CLI_HELP, STRICT_HELP
from .errors import OptionError
from .registry import shipped_checkpoint
from .terminal import EscapingStream
from .memory_plan import add_tiling_arguments



from .commands import (
    int_at_least, one_line, quality_arg, cmd_convert, cmd_decode, cmd_demo, cmd_encode, cmd_encode_dataset,
    cmd_inspect, cmd_reconstruct, cmd_train,
)


# -- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videovae", description="Causal video autoencoders: reconstruct, encode and decode video files."
    )
    # Global options, accepted before or after the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    common.add_argument("--threads", type=int_at_least(1), default=argparse.SUPPRESS, help="torch CPU threads (default: torch's)")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--threads", type=int_at_least(1), default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--checkpoint", type=Path, default=None, help="VAE weights, safetensors (default: the shipped demo model, a small trained Step-Video v1)")
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default cpu)")
    model.add_argument("--dtype", choices=CLI_CHOICES, default="fp32", help=CLI_HELP)
    model.add_argument("--strict-dtype", action="store_true", help=STRICT_HELP)

    reading = argparse.ArgumentParser(add_help=False)
    reading.add_argument("--policy", choices=POLICY_NAMES, default="pad", help="frame counts and sizes that do not round-trip: pad (default), trim, strict")
    reading.add_argument("--start-frame", type=int_at_least(0), default=0, help="first frame to read (default 0)")
    reading.add_argument("--max-frames", type=int_at_least(1), default=None, help="read at most this many frames")

    writing = argparse.ArgumentParser(add_help=False)
    quality = writing.add_mutually_exclusive_group()
    quality.add_argument("--quality", type=quality_arg, default=None, help="CRF 0 (best) .. 51 (worst), default 18")
    quality.add_argument("--lossless", action="store_true", help="store the 8-bit frames exactly (ffv1 in .mkv, libx264rgb in .mp4)")

    windows = argparse.ArgumentParser(add_help=False)
    windows.add_argument("--chunk-frames", type=int_at_least(1), default=None, metavar="N",
                         help="families that decode whole clips (svd): decode windows of N latent frames "
                              "(default: the family's, 16 for svd), so memory stays flat in the video's length")
    windows.add_argument("--overlap", type=int_at_least(0), default=None, metavar="K",
                         help="latent frames shared by neighbouring windows, cross-faded (default: the family's, 4 for svd)")

    tiling = argparse.ArgumentParser(add_help=False)
    add_tiling_arguments(tiling)

    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("reconstruct", parents=[common, model, reading, writing, windows, tiling], help="encode and decode a video file; PSNR/SSIM, comparison")
    p.add_argument("input", type=Path, help="video file")
    p.add_argument("-o", "--output", type=Path, required=True, help="reconstructed video (.mp4, .mkv, .webm, ...)")
    p.add_argument("--compare", type=Path, default=None, help="also write original | reconstruction | |error| x4, side by side")
    p.add_argument("--metrics-json", type=Path, default=None, help="write per-video and per-frame PSNR/SSIM, facts and timings")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("encode", parents=[common, model, reading, tiling], help="encode a video file to a latent file (mean, logvar, metadata)")
    p.add_argument("input", type=Path, help="video file")
    p.add_argument("-o", "--output", type=Path, required=True, help="latent file (.safetensors)")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", parents=[common, model, writing, windows, tiling], help="decode a latent file to a video at its stored fps")
    p.add_argument("latents", type=Path, help="latent file written by `videovae encode`")
    p.add_argument("-o", "--output", type=Path, required=True, help="video file")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("inspect", parents=[common], help="family, version, config, parameter count, dtype, sha256 of a checkpoint")
    p.add_argument("checkpoint", type=Path)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("convert", parents=[common], help="rewrite a checkpoint in another dtype or SVD key layout")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="converted checkpoint (.safetensors)")
    p.add_argument("--dtype", choices=CLI_CHOICES[:3], default=None, help="cast floating tensors to this dtype")
    p.add_argument("--layout", choices=("diffusers", "original"), default=None,
                   help="rewrite an SVD VAE's keys in diffusers' or Stability's original layout (bit-exact)")
    p.set_defaults(func=cmd_convert, parser=p)

    p = sub.add_parser("demo", parents=[common, model], help="the main job: film a held-out photograph, reconstruct it; outputs in --out-dir")
    p.add_argument("--out-dir", type=Path, default=Path("outputs"), help="where sample.mp4, reconstruction.mp4, compare.mp4, metrics.json go (default outputs/)")
    p.add_argument("--frames", type=int_at_least(1), default=51)
    p.add_argument("--height", type=int_at_least(1), default=96)
    p.add_argument("--width", type=int_at_least(1), default=128)
    p.add_argument("--fps", type=int_at_least(1), default=24)
    p.add_argument("--policy", choices=POLICY_NAMES, default="pad")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", parents=[common], help="train or fine-tune a model on photo clips or a folder of videos; resumable")
    from .training.command import add_arguments as add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    # Its options belong to videovae.dataset, which is imported only when this command runs.
    p = sub.add_parser(
        "encode-dataset", add_help=False, help="encode a dataset of videos to latent files (see `videovae encode-dataset --help`)"
    )
    p.set_defaults(func=cmd_encode_dataset)
    return parser


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """torch's CPU thread count set to `threads` inside, restored after (None: untouched)."""
    if threads is None:
        yield
        return
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads > cpus:
        raise OptionError(f"--threads {threads}: this machine gives the process {cpus} CPUs; use --threads {cpus} or fewer")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _escaped_terminal():
    """stdout and stderr escape control characters (a file name's ANSI codes) inside; restored after."""
    before = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = EscapingStream(sys.stdout), EscapingStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = before


class _Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so every writer removes its temporary file."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _signals_interrupt():
    """SIGTERM (timeout, systemd, Slurm, Kubernetes) and SIGHUP raise _Signalled inside; restored after.

    A signal the process was started ignoring stays ignored: under `nohup` a hangup must not stop the run."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Signalled(signum)

    caught = [sig for sig in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(sig) != signal.SIG_IGN]
    before = {sig: signal.signal(sig, handler) for sig in caught}
    try:
        yield
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _one_line_warnings():
    """Warnings as 'videovae: warning: ...' lines on stderr (no source line), restored after."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"videovae: warning: {one_line(message)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    """Run the command line on `argv`; returns the exit status. Without argv it is this process's
    command (sys.argv[1:]), and it may set process-wide state for it: with --max-memory, glibc's
    malloc returns freed buffers at once (`memory_plan.return_freed_memory`), so that the resident
    memory tracks the budget. With argv (a program running commands inside its own process), it
    leaves the process's allocator as it is."""
    from .errors import VideoVAEError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "encode-dataset":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if argv is None and getattr(args, "max_memory", None) is not None:
        from .memory_plan import return_freed_memory

        return_freed_memory()
    try:
        with _escaped_terminal(), _signals_interrupt(), _one_line_warnings(), _torch_threads(args.threads):
            if getattr(args, "checkpoint", ...) is None:
                args.checkpoint = shipped_checkpoint()
            return args.func(args)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"videovae: interrupted ({signal.Signals(signum).name}); no partial output was left", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:  # `videovae inspect CKPT | head`: stop quietly, as other tools do
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (VideoVAEError, OSError, ValueError, TypeError, RuntimeError) as exc:
        if args.debug:
            raise
        print(f"videovae: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, the traceback with --debug
        if args.debug:
            raise
        print(f"videovae: error: {type(exc).__name__}: {one_line(exc)} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
