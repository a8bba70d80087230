"""The handlers of the `videovae` commands (`cmd_*`), their argument types and shared checks;
`videovae.cli` parses the arguments and dispatches here. Every handler checks its output folders
before any work, writes outputs atomically and raises a VideoVAEError with the fix in the message.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from .compute_dtype import dtype_name
from .errors import OptionError, StateError
from .terminal import shown
from .validation import check_device
from .files import (
    ERROR_GAIN,
    decode_pieces,
    encode_file,
    run_reconstruct,
    tiles_text,
    write_sample_video,
)

MAX_MESSAGE = 600  # characters of an error line on stderr; --debug shows the whole exception



# -- argument types (argparse turns their ValueErrors into exit-2 usage errors) ---------------------


def int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse


def quality_arg(text: str) -> int:
    value = int_at_least(0)(text)
    if value > 51:
        raise argparse.ArgumentTypeError(f"CRF is 0 (best) .. 51 (worst), got {value}")
    return value


# -- small helpers ------------------------------------------------------------------------------


def one_line(text: str) -> str:
    """A message of any shape as one line (multi-line errors list their items after '; ')."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = "; ".join(lines) if lines else ""
    if len(line) > MAX_MESSAGE:
        line = f"{line[:MAX_MESSAGE]}... ({len(line) - MAX_MESSAGE} more characters; --debug shows all)"
    return line


def _fmt_db(value: float) -> str:
    return "inf (identical)" if value == math.inf else f"{value:.2f} dB"


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file `path` names, through symlinks; None when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _input_files(args: argparse.Namespace, *paths: Path) -> list[Path]:
    """The given input files plus every file the --checkpoint reads (a folder's weights and config)."""
    from .checkpoints import checkpoint_files

    files = [p for p in paths if p is not None]
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint is not None:
        files += checkpoint_files(checkpoint)  # CheckpointNotFoundError before any work
    return files


def _check_outputs(inputs: list[Path], outputs: list[Path | None]) -> None:
    """Every output's folder exists and is writable, no output is an input (the same file, also
    through a symlink or a hard link), no two outputs collide."""
    from .atomic_write import check_output_path

    sources = {}
    for p in inputs:
        if (key := _identity(p)) is not None:
            sources[key] = p
    seen: dict[object, Path] = {}
    for path in outputs:
        if path is None:
            continue
        check_output_path(path)
        key = _identity(path)
        if key in sources:
            source = sources[key]
            alias = "" if os.path.abspath(source) == os.path.abspath(path) else " (the same file, through a link)"
            raise OptionError(
                f"refusing to write {str(path)!r}: it is the input file {str(source)!r}{alias}; choose another output name"
            )
        key = key or path.resolve()
        if key in seen:
            raise OptionError(f"{str(path)!r} is given for two outputs; give each output its own name")
        seen[key] = path


def _check_video_outputs(*paths: Path | None) -> None:
    """Video outputs have an extension videos can be written under (before the model loads)."""
    from .video_write import check_video_extension

    for path in paths:
        if path is not None:
            check_video_extension(path)


def _stream_options(args: argparse.Namespace) -> dict:
    """--chunk-frames/--overlap/--tile/--max-memory as keyword arguments of the streams (absent: the default)."""
    options = {name: getattr(args, name) for name in ("tile", "max_memory") if getattr(args, name, None) is not None}
    if args.chunk_frames is None:
        if args.overlap:
            raise OptionError("--overlap needs --chunk-frames (the latent frames of each window)")
        return options
    return {**options, "chunk_frames": args.chunk_frames, "overlap": args.overlap or 0}


def _tiling(options: dict) -> dict:
    return {name: options[name] for name in ("tile", "max_memory") if name in options}


def _load(args: argparse.Namespace):
    """(vae, checkpoint sha256, seconds) for --checkpoint/--device/--dtype."""
    from . import load
    from .checkpoints import file_sha256, weights_path

    device = check_device(args.device)  # before the file is read
    start = time.perf_counter()
    vae = load(args.checkpoint, device=device, dtype=args.dtype, strict_dtype=args.strict_dtype)
    seconds = time.perf_counter() - start
    return vae, file_sha256(weights_path(args.checkpoint)), seconds


def _dtypes_text(vae) -> str:
    """'computes in fp32, stored bf16' (or 'fp32' when both agree)."""
    compute = dtype_name(vae.dtype)
    if vae.stored_dtype is None or vae.stored_dtype == vae.dtype:
        return compute
    return f"computes in {compute}, stored {dtype_name(vae.stored_dtype)}"


def _print_reconstruct_report(report: dict) -> None:
    out, timings, m = report["output"], report["timings"], report["metrics"]
    fps = timings["frames_per_second"]
    print(
        f"reconstructed  {out['frames']} frames {out['width']}x{out['height']} @ {report['input']['fps_float']:.3g} fps"
        f" -> {shown(out['path'])}  ({timings['reconstruct_seconds']:.1f}s, {fps or 0:.1f} frames/s;"
        f" checkpoint loaded in {timings['load_seconds']:.2f}s)"
    )
    if out["compare"]:
        print(f"compare        {shown(out['compare'])}  ({3 * out['width']}x{out['height']}: original | reconstruction | |error| x{ERROR_GAIN:g})")
    psnr = math.inf if m["mean_psnr"] is None else m["mean_psnr"]
    video_psnr = math.inf if m["video_psnr"] is None else m["video_psnr"]
    print(f"PSNR           {_fmt_db(psnr)} (mean over frames; {_fmt_db(video_psnr)} from the whole video's MSE)")
    ssim = "n/a (frames smaller than 11x11)" if m["mean_ssim"] is None else f"{m['mean_ssim']:.4f}"
    print(f"SSIM           {ssim}")


# -- command handlers ------------------------------------------------------------------------------


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """videovae reconstruct IN -o OUT: stream a video through the model; print PSNR/SSIM."""
    import torch

    _check_outputs(_input_files(args, args.input), [args.output, args.compare, args.metrics_json])
    _check_video_outputs(args.output, args.compare)
    vae, sha, load_s = _load(args)
    with torch.inference_mode():
        report = run_reconstruct(
            vae, args.input, args.output, checkpoint=args.checkpoint, checkpoint_sha256=sha, load_seconds=load_s,
            compare=args.compare, metrics_json=args.metrics_json, policy=args.policy,
            start_frame=args.start_frame, max_frames=args.max_frames, quality=args.quality,
            lossless=args.lossless, progress=not args.quiet, stream_options=_stream_options(args),
        )
    _print_reconstruct_report(report)
    if args.metrics_json is not None:
        print(f"metrics        {shown(args.metrics_json)}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    """videovae encode IN -o LATENTS: streaming encode; save mean, logvar and metadata."""
    import torch

    from .chunking import FramePolicy
    from .latent_files import LatentFileMeta, options_json, save_latents
    from .video import probe

    _check_outputs(_input_files(args, args.input), [args.output])
    info = probe(args.input)
    vae, sha, load_s = _load(args)
    policy = FramePolicy.coerce(args.policy)
    start = time.perf_counter()
    with torch.inference_mode():
        encoded = encode_file(
            vae, args.input, policy=policy, start_frame=args.start_frame, max_frames=args.max_frames,
            progress=not args.quiet, tile=args.tile, max_memory=args.max_memory,
        )
    seconds = time.perf_counter() - start
    meta = LatentFileMeta.of(
        vae, encoded, fps=info.fps, policy=policy.text, checkpoint_sha256=sha, source=args.input,
        options=options_json(start_frame=args.start_frame, max_frames=args.max_frames, dtype=dtype_name(vae.dtype)),
    )
    save_latents(args.output, encoded.mean, encoded.logvar, meta)
    print(
        f"encoded  {meta.frames} frames {meta.width}x{meta.height} -> latents {tuple(encoded.mean.shape)} (T_lat, z, h, w) in "
        f"{seconds:.1f}s (checkpoint loaded in {load_s:.2f}s) -> {shown(args.output)}"
    )
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    """videovae decode LATENTS -o OUT: decode a latent file to a video at its stored fps."""
    import torch

    from .latent_files import load_latents, read_latent_meta
    from .progress import Progress
    from .video_write import VideoWriter

    _check_outputs(_input_files(args, args.latents), [args.output])
    _check_video_outputs(args.output)
    read_latent_meta(args.latents)  # the header alone first: a short message for a file that is not latents
    mean, _, meta = load_latents(args.latents)
    if not meta.fps:
        raise OptionError(f"{args.latents} stores no frame rate; cannot write a video from it")
    vae, sha, load_s = _load(args)
    start = time.perf_counter()
    with torch.inference_mode():
        options = _stream_options(args)
        pieces = decode_pieces(vae, mean, meta, checkpoint_sha256=sha, stream_options=options)  # checks the fit first
        with (
            VideoWriter(args.output, meta.fps, meta.width, meta.height, quality=args.quality, lossless=args.lossless) as writer,
            Progress(meta.frames, label="decode", enabled=not args.quiet) as bar,
        ):
            bar.postfix = tiles_text(vae, meta.height, meta.width, frames=meta.frames, **_tiling(options))
            for piece in pieces:
                writer.write(piece.clamp(-1.0, 1.0))
                bar.update(piece.shape[1])
    seconds = time.perf_counter() - start
    print(
        f"decoded  latents {tuple(mean.shape)} (T_lat, z, h, w) -> {meta.frames} frames {meta.width}x{meta.height} "
        f"@ {meta.fps} fps in {seconds:.1f}s (checkpoint loaded in {load_s:.2f}s) -> {shown(args.output)}"
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print family, version, config, parameter count, dtype and sha256 of a checkpoint."""
    import dataclasses

    from .checkpoints import file_sha256, plan_model, read_header, stored_float_dtype
    from .registry import known_checkpoint

    header = read_header(args.checkpoint)
    family, _, _, config = plan_model(header)  # the checks `load` makes: exit 1 where it would fail
    dtypes = sorted({dtype_name(d) for d in header.dtypes.values()})
    stored = dtype_name(stored_float_dtype(header))
    info = {
        "path": str(header.path),
        "family": family.name,
        "description": family.describe(config),
        "config": dataclasses.asdict(config),
        "parameters": sum(math.prod(s) for s in header.shapes.values()),
        "tensors": len(header.shapes),
        "stored_dtype": ",".join(dtypes),
        "compute_dtype": f"fp32 (videovae.load's default; --dtype bf16/fp16 on request, --dtype file keeps {stored})",
        "sha256": file_sha256(header.path),
    }
    known = known_checkpoint(info["sha256"])
    info["known_as"] = None if known is None else f"{known[0]}: {known[1]['source']}"  # videovae_weights/registry.json
    print(json.dumps(info, indent=2))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """videovae convert CKPT -o OUT --dtype bf16: rewrite a checkpoint (videovae.convert)."""
    from .checkpoints import file_sha256, read_header
    from .convert import convert_checkpoint

    if args.dtype is None and args.layout is None:
        args.parser.error("nothing to convert: give --dtype and/or --layout")
    _check_outputs(_input_files(args), [args.output])  # never replace the checkpoint being read
    out = convert_checkpoint(args.checkpoint, args.output, dtype=args.dtype, layout=args.layout)
    header = read_header(out)
    dtypes = ",".join(sorted({dtype_name(d) for d in header.dtypes.values()}))
    print(f"wrote {shown(out)}  ({len(header.shapes)} tensors, {dtypes}, {out.stat().st_size} bytes, sha256 {file_sha256(out)})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: film a held-out photograph with a virtual camera, reconstruct the clip with the
    reconstruct command's code, and print shapes, timings and PSNR/SSIM."""
    import torch

    out_dir = args.out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise OptionError(f"--out-dir {str(out_dir)!r} is a file, not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    sample, reconstruction = out_dir / "sample.mp4", out_dir / "reconstruction.mp4"
    compare, metrics_json = out_dir / "compare.mp4", out_dir / "metrics.json"
    _check_outputs(_input_files(args), [sample, reconstruction, compare, metrics_json])

    start = time.perf_counter()
    write_sample_video(sample, args.frames, args.height, args.width, args.fps)
    sample_s = time.perf_counter() - start
    vae, sha, load_s = _load(args)
    shape = (1, args.frames, 3, args.height, args.width)
    print(f"checkpoint     {shown(args.checkpoint)}  ({vae.family} v{vae.version}, {_dtypes_text(vae)}, loaded in {load_s:.2f}s)")
    print(f"sample         {shown(sample)}  {tuple(shape)} (B, T, C, H, W) @ {args.fps} fps, written in {sample_s:.2f}s")
    print(f"latents        {vae.latent_shape(shape, args.policy)}  (B, T_lat, z, h, w)")
    with torch.inference_mode():
        report = run_reconstruct(
            vae, sample, reconstruction, checkpoint=args.checkpoint, checkpoint_sha256=sha, load_seconds=load_s,
            compare=compare, metrics_json=metrics_json, policy=args.policy, progress=not args.quiet,
        )
    out = report["output"]
    print(f"reconstruction {(1, out['frames'], 3, out['height'], out['width'])}  (B, T, C, H, W)")
    _print_reconstruct_report(report)
    print(f"metrics        {shown(metrics_json)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train or fine-tune (videovae.training.command)."""
    from .training import command

    return command.run(args)


def cmd_encode_dataset(args: argparse.Namespace) -> int:
    """videovae encode-dataset ...: the arguments and the work belong to videovae.dataset."""
    try:
        from . import dataset
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.dataset":
            raise
        raise StateError(
            "encode-dataset is not available: this install has no videovae.dataset module"
        ) from None
    parser = argparse.ArgumentParser(prog="videovae encode-dataset", description="Encode a folder of videos to latent files (torchrun for many processes).")
    dataset.add_arguments(parser)
    dataset_args = parser.parse_args(args.extra, namespace=argparse.Namespace(debug=args.debug, quiet=args.quiet))
    return int(dataset.run(dataset_args) or 0)
