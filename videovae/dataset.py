"""Pre-encode a video dataset to latent files: one process, or many under torchrun.

    videovae encode-dataset --inputs 'clips/**/*.mp4' --out latents/ --checkpoint vae.safetensors
    torchrun --nproc_per_node 8 -m videovae encode-dataset --inputs list.txt --out latents/ --checkpoint vae.safetensors
    (and `videovae encode-dataset ...` / `torchrun -m videovae encode-dataset ...` through the CLI)

The process group is initialised only when torchrun launched us (WORLD_SIZE in the environment):
NCCL when CUDA is available, gloo otherwise. Every rank takes `videos[rank::world]` of the SORTED,
de-duplicated list of resolved input paths, so shards are disjoint and deterministic.

What lands in --out:
  <stem>-<id>.safetensors  one per video (`videovae.latent_files` format): mean and logvar
                           (T_lat, z, h, w) plus metadata. <id> is the first 16 hex digits of the
                           sha1 of the video's resolved absolute path (stable across runs, world
                           sizes and input orders; never an index), <stem> its sanitised file stem.
  manifest.jsonl           written by rank 0 after every rank finished: one line per input, in input
                           order: id, source, output (file name in --out), latent_shape
                           (T_lat, z, h, w), frames (after the frame policy), fps (a fraction), status
                           ("encoded" / "skipped" / "failed") and, for failures, the reason.
  failures.jsonl           the failed inputs of this run (source and one-line reason), merged by rank 0
                           from the per-rank `failures.rank<R>.jsonl` that each rank appends to as it
                           goes (so a crashed run still shows them).

Resume: an output that loads and whose metadata names the same source, checkpoint sha256, policy
and options (dtype, max frames, size) is skipped; anything else is re-encoded. Outputs are written
to a hidden temporary name and renamed (`save_latents`), so a crash never leaves a half-written file
under an output name; a rank deletes stale temporaries of its own outputs when it starts. The exit
status is non-zero on every rank when any video failed.

Memory: the reader thread decodes the next video while the current one encodes, through a queue of
one, so a rank holds at most three decoded videos (encoding, queued, being read); `--max-frames`
bounds each. The model sees one chunk (`frames_per_chunk` frames) at a time (`encode_stream`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .chunking import POLICY_NAMES, FramePolicy
from .memory_plan import add_tiling_arguments
from .compute_dtype import CLI_CHOICES, CLI_HELP, FILE_DTYPE, STRICT_HELP, dtype_name
from .dataset_inputs import MANIFEST, pattern_reaches, resolve_inputs, video_id
from .engine import EncodedVideo, encode_video
from .ranks import Ranks, agree, process_group
from .errors import DatasetError, OutputPathError, VideoVAEError
from .terminal import escape_controls, shown

__all__ = ["DatasetError", "add_arguments", "run", "resolve_inputs", "video_id"]

FAILURES = "failures.jsonl"
# Fault injection for tests: each rank os._exit()s (no cleanup, like a crash) after saving this many
# videos. Read at run time, never at import.
STOP_AFTER_ENV = "VIDEOVAE_DATASET_STOP_AFTER"
STOP_EXIT_CODE = 75
# Read granularity: frames decoded (and resized) per piece before the video is assembled.
READ_CHUNK_FRAMES = 32


# ---------------------------------------------------------------------------------------------
# arguments


def _parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise argparse.ArgumentTypeError(f"size must be HxW with positive integers, e.g. 256x448; got {text!r}")
    return int(match[1]), int(match[2])


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the encode-dataset options to `parser` (the CLI subcommand and `main` share them)."""
    parser.add_argument(
        "--inputs", nargs="+", required=True, metavar="LIST_OR_GLOB",
        help="videos: a text file (.txt/.lst/.list) with one path per line (relative lines are relative "
             "to the list file; blank lines and # comments ignored), a quoted glob pattern ('**' recurses), "
             "or several paths",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT",
                        help="VAE checkpoint (.safetensors file, or a diffusers model folder)")
    parser.add_argument("--policy", choices=POLICY_NAMES, default="pad",
                        help="frame policy for lengths and sizes that do not round-trip (default pad)")
    parser.add_argument("--dtype", choices=CLI_CHOICES, default="fp32", help=f"{CLI_HELP}; latents are stored in fp32")
    parser.add_argument("--strict-dtype", action="store_true", help=STRICT_HELP)
    parser.add_argument("--max-frames", type=_positive_int, default=None, metavar="N",
                        help="encode at most the first N frames of each video")
    parser.add_argument("--hash-sources", action="store_true",
                        help="on resume, also compare each source's sha256 (default: its size and modification time)")
    parser.add_argument("--size", type=_parse_size, default=None, metavar="HxW",
                        help="resize frames to HxW (bilinear, antialiased) before encoding")
    add_tiling_arguments(parser, note="; not part of the resume check")
    parser.add_argument("--device", default=None,
                        help="default: cuda:<LOCAL_RANK> when CUDA is available, else cpu; 'cuda' means cuda:<LOCAL_RANK>")


# ---------------------------------------------------------------------------------------------
# inputs and ids


@dataclass(frozen=True)
class Job:
    """One input video and where its latents go."""

    index: int        # position in the sorted input list
    source: Path      # resolved absolute path
    id: str
    output: Path


@dataclass(frozen=True)
class Settings:
    """Everything that decides the latents of a video, compared on resume."""

    checkpoint: Path
    checkpoint_sha256: str
    policy: str               # "pad" / "trim" / "strict", applied to time and space
    dtype: str                # "fp32" / "bf16" / "fp16" asked for ("file" resolved to the checkpoint's)
    strict_dtype: bool        # 16-bit even on a CPU where it is slow (else float32 there)
    max_frames: int | None
    hash_sources: bool        # the resume check compares a source's sha256 too, not only size and mtime
    size: tuple[int, int] | None  # (H, W) to resize to, or None
    tile: tuple[int, int] | None = None  # exact spatial tiles: how, not what (not in `options`)
    max_memory: int | None = None  # or a budget that picks them (bytes), not in `options` either

    @property
    def policy_text(self) -> str:
        """How `LatentFileMeta.policy` spells it."""
        return FramePolicy.coerce(self.policy).text

    @property
    def options(self) -> str:
        from .latent_files import options_json

        return options_json(dtype=self.dtype, max_frames=self.max_frames, size=list(self.size) if self.size else None)


# ---------------------------------------------------------------------------------------------
# the plan: what every rank agrees on before encoding


@dataclass(frozen=True)
class Plan:
    sources: list[Path]   # sorted resolved inputs
    settings: Settings
    out: Path


def _make_plan(args: argparse.Namespace) -> Plan:
    """Rank 0: resolve the inputs, check the checkpoint and the output folder (cheap checks first),
    then hash the checkpoint once for everyone."""
    from .checkpoints import detect_family, file_sha256, read_header, stored_float_dtype

    sources = resolve_inputs(args.inputs)
    header = read_header(args.checkpoint)  # CheckpointNotFoundError / CheckpointError
    detect_family(header.shapes, path=header.path)
    out_given = Path(args.out).expanduser().resolve()
    inside = [s for s in sources if Path(s).resolve().is_relative_to(out_given)]
    inside += [out_given / "x.safetensors" for item in args.inputs if pattern_reaches(str(item), out_given)]
    if inside:
        raise DatasetError(
            f"--out {shown(args.out)} holds {len(inside)} of the inputs (e.g. {shown(inside[0])}): a run would "
            "encode its own outputs; choose an --out outside the inputs or narrow the input pattern"
        )
    out = _prepare_out(Path(args.out))
    settings = Settings(
        checkpoint=Path(args.checkpoint).expanduser().resolve(),  # as given: a file, or a diffusers folder
        checkpoint_sha256=file_sha256(header.path),  # of the weights file itself
        policy=args.policy,
        dtype=dtype_name(stored_float_dtype(header)) if args.dtype == FILE_DTYPE else args.dtype,
        strict_dtype=args.strict_dtype,
        max_frames=args.max_frames,
        hash_sources=args.hash_sources,
        size=tuple(args.size) if args.size else None,
        tile=args.tile,
        max_memory=args.max_memory,
    )
    return Plan(sources, settings, out)


def _prepare_out(out: Path) -> Path:
    """Create --out if needed and check it is a writable folder; OutputPathError otherwise."""
    from .atomic_write import check_output_path

    out = out.expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"cannot use --out {str(out)!r}: {exc.strerror or exc}; give a folder you can create and write"
        ) from None
    check_output_path(out / MANIFEST)
    return out.resolve()


def _jobs(plan: Plan) -> list[Job]:
    jobs = []
    for index, source in enumerate(plan.sources):
        vid = video_id(source)
        jobs.append(Job(index, source, vid, plan.out / f"{vid}.safetensors"))
    return jobs


# ---------------------------------------------------------------------------------------------
# records: one per input, gathered by rank 0 into the manifest


def _record(job: Job, status: str, *, shape=None, frames=None, fps=None, reason=None) -> dict:
    """One manifest line."""
    return {
        "id": job.id, "source": str(job.source),
        "output": job.output.name if status != "failed" else None,
        "latent_shape": None if shape is None else list(shape),  # (T_lat, z, h, w)
        "frames": frames, "fps": fps, "status": status,
        **({"reason": reason} if reason is not None else {}),
    }


def source_signature(source: Path, with_hash: bool = False) -> str:
    """What identifies the content of a source file for the resume check: its size and modification
    time (and its sha256 with_hash). "" when it cannot be read."""
    try:
        st = os.stat(source)
    except OSError:
        return ""
    signature = f"size={st.st_size},mtime_ns={st.st_mtime_ns}"
    if with_hash:
        from .checkpoints import file_sha256

        signature += f",sha256={file_sha256(source)}"
    return signature


def _current_record(job: Job, settings: Settings) -> dict | None:
    """A 'skipped' record when job.output holds complete latents for these settings, else None."""
    from .latent_files import LatentFileError, load_latents, read_latent_meta

    if not job.output.exists():
        return None
    try:
        meta = read_latent_meta(job.output)  # header only: cheap rejection of stale files
        if (meta.checkpoint_sha256, meta.options, meta.policy, meta.source) != (
            settings.checkpoint_sha256, settings.options, settings.policy_text, str(job.source)
        ):
            return None
        if meta.source_signature != source_signature(job.source, settings.hash_sources):
            return None  # the source changed (replaced in place) since it was encoded
        mean, _, meta = load_latents(job.output)  # the tensors are there and well-formed
    except (LatentFileError, ValueError):
        return None
    return _record(job, "skipped", shape=mean.shape, frames=meta.frames, fps=meta.fps)


def _remove_stale_temporaries(out: Path, names: set[str]) -> int:
    """Delete leftover temporaries of the outputs in `names` (from a crashed run). They are named as
    `videovae.atomic_write.atomic_output` names them: `.<target name>.<8 hex>.tmp<suffix>`."""
    pattern = re.compile(r"\.(?P<target>.+?)\.(?:vv-[0-9a-f]{6}-\d+-)?[0-9a-f]{8}\.tmp(\.[^.]*)?")
    removed = 0
    with os.scandir(out) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match and match["target"] in names:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


# ---------------------------------------------------------------------------------------------
# reading (on a background thread) and encoding


@dataclass(frozen=True)
class Clip:
    """A decoded video ready to encode."""

    video: torch.Tensor  # (1, T, 3, H, W) float32 in [-1, 1], at --size when given
    fps: Fraction
    source_size: tuple[int, int]  # (H, W) in the file
    signature: str = ""  # source_signature(), taken before reading, stored for the resume check


def resize(frames: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """frames: (1, t, 3, H, W) -> (1, t, 3, *size), bilinear with antialiasing (area-like when
    shrinking); unchanged when size is None or already right."""
    if size is None or tuple(frames.shape[-2:]) == tuple(size):
        return frames
    _, t, C, H, W = frames.shape
    flat = frames.reshape(t, C, H, W)  # time2batch: (1, t, C, H, W) -> (t, C, H, W)
    flat = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=True)
    return flat.reshape(1, t, C, *size)  # batch2time: (t, C, h, w) -> (1, t, C, h, w)


def read_clip(source: Path, max_frames: int | None, size: tuple[int, int] | None) -> Clip:
    """Decode (the first `max_frames` frames of) a video, resizing piece by piece so a large source
    never sits in memory at full size. VideoFileError for a missing, non-video or corrupt file."""
    from .video import probe, read_chunks

    info = probe(source)
    pieces = [resize(piece, size) for piece in read_chunks(source, READ_CHUNK_FRAMES, max_frames=max_frames)]
    video = torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]  # (1, T, 3, H, W)
    return Clip(video, info.fps, (info.height, info.width))


def prefetch(items: Iterable[Any], load: Callable[[Any], Any], depth: int = 1) -> Iterator[tuple[Any, Any]]:
    """Yield (item, load(item)) in order, loading the next items on a background thread while the
    caller works on the current one. An exception from `load` is yielded in place of its result.
    At most `depth` results wait in the queue (plus one being loaded)."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()  # sentinel, local to this call

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                results.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        for item in items:
            try:
                result = load(item)
            except Exception as exc:  # handed to the caller, which decides what is fatal
                result = exc
            if not put((item, result)):
                return
        put(end)

    reader = threading.Thread(target=work, name="videovae-dataset-reader", daemon=True)
    reader.start()
    try:
        while (entry := results.get()) is not end:
            yield entry
    finally:
        stop.set()
        reader.join(timeout=5.0)


def encode_clip(vae, clip: Clip, policy: str, tile=None, max_memory=None) -> EncodedVideo:
    """The latents of clip.video as float32 on CPU. The model sees one chunk at a time; each chunk
    moves to the model's device alone."""
    with torch.inference_mode():
        encoded = encode_video(vae.chunk_encoder(policy, tile=tile, max_memory=max_memory), [clip.video])
    return dataclasses.replace(encoded, mean=encoded.mean.float().cpu(), logvar=encoded.logvar.float().cpu())


def _device(requested: str | None, local_rank: int) -> torch.device:
    if requested is None:
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


# Errors that mean "this video cannot be encoded" (recorded, the run goes on). Anything else (a bug,
# out of memory) stops the run: it would fail every video the same way.
_PER_VIDEO_ERRORS = (VideoVAEError, OSError, ValueError)


def _one_line(exc: BaseException) -> str:
    text = f"{exc}".strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# ---------------------------------------------------------------------------------------------
# the job


def run(args: argparse.Namespace) -> int:
    """Encode the dataset `args` describes (see `add_arguments`); returns the exit status: 0, or 1
    when any video failed (the same on every rank). Raises (on every rank) when the job cannot start."""
    stop_after = int(os.environ[STOP_AFTER_ENV]) if os.environ.get(STOP_AFTER_ENV) else None
    with process_group() as ranks:
        plan, error = None, None
        if ranks.rank == 0:
            try:
                plan = _make_plan(args)
            except (VideoVAEError, OSError, ValueError) as exc:
                error = exc
        shared = ranks.broadcast(None if error else plan)
        if error is not None:
            raise error
        if shared is None:
            raise DatasetError("rank 0 could not plan the job (see its error)")
        plan = shared

        jobs = _jobs(plan)
        mine = jobs[ranks.rank :: ranks.world]  # disjoint, deterministic shard
        vae, error = None, None
        try:
            import videovae

            plan.out.mkdir(parents=True, exist_ok=True)  # a rank on another node
            vae = videovae.load(plan.settings.checkpoint, device=_device(args.device, ranks.local_rank),
                                dtype=plan.settings.dtype, strict_dtype=plan.settings.strict_dtype)
        except (VideoVAEError, OSError, ValueError, RuntimeError) as exc:
            error = exc
        agree(ranks, error)

        verbose = not getattr(args, "quiet", False)  # the CLI's -q: no per-video lines
        records, stats = _encode_shard(vae, mine, plan, ranks, stop_after, verbose)

        ranks.barrier()  # every output is in place before the manifest describes them
        gathered = ranks.gather((records, stats))
        if ranks.rank == 0:
            _write_reports(plan, jobs, gathered, ranks)
        failed = ranks.total(sum(r["status"] == "failed" for r in records))
        return 1 if failed else 0


def _encode_shard(
    vae, mine: list[Job], plan: Plan, ranks: Ranks, stop_after: int | None, verbose: bool = True
) -> tuple[list[dict], dict]:
    """Encode this rank's videos; returns its manifest records (in shard order) and timing stats.
    Logs a line per video when `verbose`, and a summary line either way."""
    settings, log = plan.settings, _logger(ranks)
    progress = log if verbose else (lambda message: None)
    own = {job.output.name for job in mine} | ({MANIFEST, FAILURES} if ranks.rank == 0 else set())
    _remove_stale_temporaries(plan.out, own)
    records: dict[int, dict] = {}
    for job in mine:
        current = _current_record(job, settings)
        if current is not None:
            records[job.index] = current
    todo = [job for job in mine if job.index not in records]
    log(f"{len(mine)} videos in this shard: {len(records)} already encoded (skipped), {len(todo)} to encode")

    def load(job: Job) -> Clip:  # on the reader thread
        signature = source_signature(job.source, settings.hash_sources)  # before reading: a change later is seen next run
        return dataclasses.replace(read_clip(job.source, settings.max_frames, settings.size), signature=signature)

    start, frames_total, saved = time.perf_counter(), 0, 0
    with open(plan.out / f"failures.rank{ranks.rank}.jsonl", "w", encoding="utf-8") as failures, \
            contextlib.closing(prefetch(todo, load)) as clips:
        for i, (job, clip) in enumerate(clips, start=1):
            t0 = time.perf_counter()
            try:
                record = _encode_one(vae, job, clip, settings)
            except _PER_VIDEO_ERRORS as exc:
                record = _record(job, "failed", reason=_one_line(exc))
                failures.write(json.dumps({"source": str(job.source), "id": job.id, "reason": record["reason"]}) + "\n")
                failures.flush()
            del clip  # at most: this video's latents, one queued video, one being read
            records[job.index] = record
            seconds = max(time.perf_counter() - t0, 1e-9)
            if record["status"] == "failed":
                log(f"{i}/{len(todo)} FAILED {job.source.name}: {record['reason']}")
                continue
            frames_total += record["frames"]
            saved += 1
            progress(f"{i}/{len(todo)} {job.source.name} -> {job.output.name}: {record['frames']} frames "
                f"-> latents {tuple(record['latent_shape'])} in {seconds:.2f}s ({record['frames'] / seconds:.1f} frames/s)")
            if stop_after is not None and saved >= stop_after:
                log(f"{STOP_AFTER_ENV}={stop_after}: exiting abruptly (fault injection)")
                os._exit(STOP_EXIT_CODE)
    seconds = max(time.perf_counter() - start, 1e-9)
    statuses = [r["status"] for r in records.values()]
    log(f"done: {saved} encoded, {statuses.count('skipped')} skipped, {statuses.count('failed')} failed in "
        f"{seconds:.2f}s ({saved / seconds:.3f} videos/s, {frames_total / seconds:.1f} frames/s)")
    stats = {"rank": ranks.rank, "encoded": saved, "frames": frames_total, "seconds": seconds}
    return [records[job.index] for job in mine], stats


def _encode_one(vae, job: Job, clip: Clip | BaseException, settings: Settings) -> dict:
    """Encode one decoded video (or re-raise its decoding error) and save its latent file atomically."""
    from .latent_files import LatentFileMeta, save_latents

    if isinstance(clip, BaseException):
        raise clip
    encoded = encode_clip(vae, clip, settings.policy, settings.tile, settings.max_memory)  # (T_lat, z, h, w)
    meta = LatentFileMeta.of(
        vae, encoded, fps=clip.fps, policy=settings.policy_text, checkpoint_sha256=settings.checkpoint_sha256,
        source=job.source, options=settings.options, source_signature=clip.signature,
    )
    save_latents(job.output, encoded.mean, encoded.logvar, meta)
    return _record(job, "encoded", shape=encoded.mean.shape, frames=encoded.frames, fps=str(clip.fps))


def _write_reports(plan: Plan, jobs: list[Job], gathered: list, ranks: Ranks) -> None:
    """Rank 0: the manifest (every input, in input order) and failures.jsonl, both atomically; the
    per-rank failure files are folded in and removed."""
    from .atomic_write import atomic_output

    by_id = {record["id"]: record for records, _ in gathered for record in records}
    lines = [by_id[job.id] for job in jobs]  # KeyError would mean a rank skipped an input: a bug
    with atomic_output(plan.out / MANIFEST) as tmp:
        tmp.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    failed = [{"source": r["source"], "id": r["id"], "reason": r["reason"]} for r in lines if r["status"] == "failed"]
    with atomic_output(plan.out / FAILURES) as tmp:
        tmp.write_text("".join(json.dumps(line) + "\n" for line in failed), encoding="utf-8")
    for path in plan.out.glob("failures.rank*.jsonl"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    counts = {s: sum(r["status"] == s for r in lines) for s in ("encoded", "skipped", "failed")}
    stats = [s for _, s in gathered]
    seconds = max(s["seconds"] for s in stats)
    videos, frames = sum(s["encoded"] for s in stats), sum(s["frames"] for s in stats)
    print(
        f"{ranks.tag} all ranks: {len(lines)} videos: {counts['encoded']} encoded, {counts['skipped']} skipped, "
        f"{counts['failed']} failed; encode phase {seconds:.2f}s "
        f"({videos / seconds if seconds else 0:.3f} videos/s, {frames / seconds if seconds else 0:.2f} frames/s); "
        f"manifest {plan.out / MANIFEST}" + (f"; failures in {plan.out / FAILURES}" if failed else ""),
        file=sys.stderr, flush=True,
    )


def _logger(ranks: Ranks) -> Callable[[str], None]:
    def log(message: str) -> None:
        print(f"{ranks.tag} {escape_controls(message, keep_lines=False)}", file=sys.stderr, flush=True)

    return log
