"""Memory budgets: the tile plan that keeps one chunk's encode or decode under a number of bytes.

    plan = plan_tiles(model, "decode", (1, 16, 5, 128, 128), budget=parse_memory("4GB"))
    plan.tile       # (height, width) in pixels, or None when the untiled chunk fits
    plan.peak       # the bytes that chunk needs with that plan
    plan.minimum    # the smallest budget exact tiling can meet for this chunk

The peak of a plan is not guessed from formulas: the chunk is run on the "meta" device, where
every op makes tensors of the right size and dtype but computes nothing (milliseconds per tile),
and a dispatch mode counts the bytes of the storages alive after each op. The count is of what
videovae allocates while the chunk runs, its output included (the weights and the chunk's input
are there before and are not counted), plus, during each convolution, one more copy of its input
and output: oneDNN reorders them to its blocked layout on CPU in buffers that are not tensors.
The C allocator's slack is not counted: with glibc's default dynamic mmap threshold, freed tile
buffers stay in the heap and peak RSS runs up to 1.3x the count; `return_freed_memory()` (what
`videovae ... --max-memory` does in its own process, as MALLOC_MMAP_THRESHOLD_=1048576 would) brings
it within a few percent (`benchmarks/bench_tiling.py --max-memory` measures both).

Attention is counted as the fused kernels that run it on CPU and CUDA (SDPA's flash and
memory-efficient kernels, memory linear in tokens), not as the math path the meta device would
take, which materialises the (L, L) scores.

The plans tried are the untiled chunk; for a model that streams frames through a chunk (Step-Video
v2, `FamilyModel.streams_frames`), frame by frame, which stores no whole activation and needs
about 0.3x the untiled peak at 1024x1024; then grids of k x k tiles for k = 2 .. MAX_GRID, each tile
a multiple of the model's spatial factor; the first that fits is taken (the fewest tiles: the
fastest). Below the peak of the finest grid, exact tiling cannot go: the whole activations a stage
reads and writes are stored at every grid, and those set the minimum (or the streamed peak, where
it is lower).
"""

from __future__ import annotations

import math
import re
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .errors import OptionError
from .families.spec import FamilyModel
from .tiling import Tiles

MARGIN = 1.01  # a plan's count varies by a few tenths of a percent with the autograd mode (inference_mode makes fewer temporaries)
MAX_GRID = 8  # finest grid tried: 8 x 8 tiles (finer grids save little: the stored activations stay)
OPS = ("encode", "decode")

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(value) -> int:
    """A memory size as a user gives it: bytes (int), or "4GB", "4 GiB", "512MB", "1.5g" -> bytes.
    GB/MB/KB are powers of 10, GiB/MiB/KiB powers of 2."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        unit = match and _UNITS.get(match.group(2).lower())
        if not unit:
            raise OptionError(f"max_memory {value!r} is not a size: give bytes or a number with a unit, such as 4GB, 512MiB")
        size = int(float(match.group(1)) * unit)
    else:
        raise OptionError(f"max_memory must be bytes (int) or a size such as '4GB'; got {value!r}")
    if size <= 0:
        raise OptionError(f"max_memory must be positive; got {value!r}")
    return size


def add_tiling_arguments(parser, *, note: str = "") -> None:
    """--tile HxW or --max-memory SIZE (one of them) on an argparse parser; note ends both helps."""
    from .tiling import tile_arg

    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--tile", type=tile_arg, default=None, metavar="HxW",
                        help="run each chunk tile by tile in space, tiles of HxW pixels (multiples of the model's "
                             f"spatial factor): the same result as untiled, in less memory (default: untiled{note})")
    choice.add_argument("--max-memory", type=memory_arg, default=None, metavar="SIZE",
                        help="or let the tiles be chosen to keep each chunk's working memory under SIZE (4GB, 512MiB, "
                             "...; the weights not counted): exact, the fastest plan that fits; malloc then returns "
                             f"freed memory at once, so that the resident memory tracks SIZE{note}")


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
RETURN_FREED_ABOVE = 1 << 20  # bytes


def return_freed_memory() -> bool:
    """Make glibc's malloc give buffers of 1 MiB and more back to the system as soon as they are
    freed (a fixed mmap threshold, what MALLOC_MMAP_THRESHOLD_=1048576 does at start-up), so that
    the resident memory tracks what is allocated, which is what a memory budget counts. Without it,
    glibc raises its threshold after the first large free and keeps freed tile buffers in the heap.

    Process-wide and for the rest of the process (glibc cannot go back to its dynamic threshold):
    the command line does it for --max-memory in its own process; a program that embeds videovae
    decides for itself. Costs page faults on reused buffers. Returns False where the C library
    has no glibc mallopt (macOS, Windows, musl)."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, RETURN_FREED_ABOVE) == 1


def memory_arg(text: str) -> int:
    """The argparse type of --max-memory SIZE: bytes."""
    import argparse

    try:
        return parse_memory(text)
    except OptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def format_bytes(size: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{int(size)} B"


@dataclass(frozen=True)
class MemoryPlan:
    """tile: (height, width) pixels, or None (untiled); peak: bytes the chunk needs with it;
    minimum: the smallest budget exact tiling meets for this chunk (the finest grid's peak). Both
    are counted peaks; the minimum has a 1% margin (`MARGIN`), so that asking for it always works."""

    tile: tuple[int, int] | None
    peak: int
    minimum: int
    budget: int
    stream: bool = False  # frame by frame through the chunk (`FamilyModel.streams_frames`), untiled in space


_CONVOLUTIONS = (torch.ops.aten.convolution.default, torch.ops.aten.mkldnn_convolution.default)


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages that ops create while any tensor on them is alive, in two
    classes: whole activations (a tensor whose last two sides are the frame's at some level, one of
    `whole`) and the rest (windows, statistics). `events` holds (whole, rest) after each allocation,
    and during each convolution with its input and output counted once more (oneDNN's reorders).
    The storages of `given` (the chunk's input) are there before and never counted, views of them
    (a streamed chunk's frames) included."""

    def __init__(self, whole: set[tuple[int, int]], given: tuple[Tensor, ...] = ()):
        super().__init__()
        self.whole_sides = whole
        self.live = [0, 0]  # whole, rest
        self.events: list[tuple[int, int]] = []
        self._storages: dict[int, list[int]] = {}  # storage id -> [nbytes, class, tensors alive on it]
        self._given = {t.untyped_storage()._cdata for t in given}

    def _release(self, key: int) -> None:
        entry = self._storages[key]
        entry[2] -= 1
        if entry[2] == 0:
            self.live[entry[1]] -= entry[0]
            del self._storages[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _CONVOLUTIONS:
            # oneDNN reorders a conv's input and output to its blocked layout, in buffers that are no
            # tensors: count them as there for the conv's duration
            kind = 0 if tuple(out.shape[-2:]) in self.whole_sides else 1
            transient = [0, 0]
            transient[kind] = args[0].untyped_storage().nbytes() + out.numel() * out.element_size()
            self.events.append((self.live[0] + transient[0], self.live[1] + transient[1]))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key in self._given:
                    continue
                entry = self._storages.get(key)
                if entry is None:
                    kind = 0 if t.ndim >= 4 and tuple(t.shape[-2:]) in self.whole_sides else 1
                    entry = self._storages[key] = [storage.nbytes(), kind, 0]
                    self.live[kind] += entry[0]
                    self.events.append((self.live[0], self.live[1]))
                entry[2] += 1
                weakref.finalize(t, self._release, key)
        return out


class _FusedAttention(TorchFunctionMode):
    """SDPA on meta tensors as the fused kernels run it: the output, no (L, L) scores."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            q, _, v = args[:3]
            return q.new_empty((*q.shape[:-1], v.shape[-1]))
        return func(*args, **(kwargs or {}))


class _Method(nn.Module):
    """Calls model.<name> as its forward, so that functional_call can swap in meta parameters."""

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model, self.name = model, name

    def forward(self, *args, **kwargs):
        return getattr(self.model, self.name)(*args, **kwargs)


def _simulate(model: FamilyModel, op: str, shape: tuple[int, ...], tile: tuple[int, int] | None,
              whole: set[tuple[int, int]], stream: bool = False) -> list[tuple[int, int]]:
    """Run `op` on one chunk of `shape` on the meta device: the (whole, rest) bytes after each allocation."""
    wrapper = _Method(model, f"{op}_chunk")
    state = model.state_dict()
    meta = {f"model.{name}": torch.empty_like(t, device="meta") for name, t in state.items()}
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    x = torch.empty(shape, dtype=dtype, device="meta")
    s = model.frame_layout.spatial_factor
    tiles = Tiles(_frame_size(model, op, shape), tile, s) if tile is not None else None
    counter = _LiveBytes(whole, given=(x,))
    with torch.no_grad(), _FusedAttention(), counter:
        kwargs = {"tiles": tiles, "stream": True} if stream else {"tiles": tiles}
        out = functional_call(wrapper, meta, (x,), kwargs, strict=False)
        del out
    return counter.events or [(0, 0)]


def _frame_size(model: FamilyModel, op: str, shape: tuple[int, ...]) -> tuple[int, int]:
    s = 1 if op == "encode" else model.frame_layout.spatial_factor
    return shape[-2] * s, shape[-1] * s


def _level_sides(size: tuple[int, int], spatial_factor: int) -> set[tuple[int, int]]:
    """The (h, w) of every level's whole activation for a frame of `size` (factors 1 .. 2 S)."""
    sides, f = set(), 1
    while f <= 2 * spatial_factor:
        sides.add((-(-size[0] // f), -(-size[1] // f)))
        f *= 2
    return sides


def chunk_peak(model: FamilyModel, op: str, shape: tuple[int, ...], tile: tuple[int, int] | None,
               *, stream: bool = False) -> int:
    """Bytes allocated while `op` runs one chunk of `shape` (channels-first: (B, C, T, H, W) for
    encode, (B, z, T_lat, h, w) for decode) with tiles of `tile` pixels (None: untiled), or frame by
    frame with `stream` (a model that `streams_frames`), the output included, the weights and the
    input not.

    Runs on the meta device: nothing is computed. A grid of more than 3 x 3 tiles is not run
    tile by tile: every tile's workspace is one of a 3 x 3 grid's (corner, edge or interior), and
    the whole activations grow with the frame's area, so a frame of 3 x 3 tiles is run and its
    whole-activation bytes are scaled up to the real frame at every moment of the run."""
    if op not in OPS:
        raise OptionError(f"op must be one of {', '.join(OPS)}; got {op!r}")
    s = model.frame_layout.spatial_factor
    size = _frame_size(model, op, shape)
    if stream:
        if tile is not None:
            raise OptionError("a chunk streams frame by frame untiled in space: give a tile or stream, not both")
        return max(w + r for w, r in _simulate(model, op, shape, None, set(), stream=True))
    if tile is None or Tiles(size, tile, s).count <= 9:
        return max(w + r for w, r in _simulate(model, op, shape, tile, set()))
    small = (min(size[0], 3 * tile[0]), min(size[1], 3 * tile[1]))
    f = 1 if op == "encode" else s
    small_shape = (*shape[:-2], small[0] // f, small[1] // f)
    scale = (size[0] * size[1]) / (small[0] * small[1])
    events = _simulate(model, op, small_shape, tile, _level_sides(small, s))
    return int(max(w * scale + r for w, r in events))


def grid_tile(size: tuple[int, int], grid: int, align: int) -> tuple[int, int]:
    """The tile (multiples of align) that cuts a frame of `size` pixels into about grid x grid tiles."""
    def side_tile(side: int) -> int:
        per_tile = -(-side // grid)
        return max(align, -(-per_tile // align) * align)

    return side_tile(size[0]), side_tile(size[1])


def plan_tiles(model: FamilyModel, op: str, shape: tuple[int, ...], budget: int) -> MemoryPlan:
    """The fastest exact plan for one chunk of `shape` (as in `chunk_peak`) within `budget` bytes:
    untiled if it fits; else, for a model that `streams_frames`, frame by frame through the chunk
    if that fits (its peak is far below any grid's: the chunk's whole activations are never
    stored); else the coarsest k x k grid (k <= MAX_GRID) that does. Raises OptionError naming the
    minimum when even the finest plan needs more."""
    s = model.frame_layout.spatial_factor
    size = (shape[-2], shape[-1]) if op == "encode" else (shape[-2] * s, shape[-1] * s)
    peaks: dict[tuple[int, int] | None, int] = {}

    def peak(tile):
        if tile not in peaks:
            peaks[tile] = chunk_peak(model, op, shape, tile)
        return peaks[tile]

    grids = (grid_tile(size, k, s) for k in range(2, MAX_GRID + 1))
    tilings = [t for t in dict.fromkeys(grids) if t[0] < size[0] or t[1] < size[1]]  # coarse to fine
    streamed = chunk_peak(model, op, shape, None, stream=True) if model.streams_frames else None

    def least() -> int:
        return min(p for p in (peaks[None], streamed, peak(tilings[-1]) if tilings else None) if p is not None)

    if peak(None) <= budget:
        return MemoryPlan(None, peaks[None], math.ceil(least() * MARGIN), budget)
    minimum = math.ceil(least() * MARGIN)  # what to ask for: fits in any autograd mode
    if streamed is not None and streamed <= budget:
        return MemoryPlan(None, streamed, minimum, budget, stream=True)
    if least() > budget:
        if streamed is not None and streamed == least():
            finest = "frame by frame through the chunk"
        else:
            finest = f"tiles of {tilings[-1][0]}x{tilings[-1][1]}" if tilings else "untiled: the frame is one tile"
        what = f"{shape[2]} frames" if op == "encode" else f"{shape[2]} latent frames"
        raise OptionError(
            f"max_memory {format_bytes(budget)} is below the {format_bytes(minimum)} that exact tiling needs to {op} "
            f"a chunk of {what} of {size[0]}x{size[1]} pixels (its finest plan, {finest}; sizes are height x width): "
            f"give at least {format_bytes(minimum)}, or fewer frames per chunk"
        )
    low, high = 0, len(tilings) - 1  # the finest fits: find the coarsest that does (peaks fall as tiles shrink)
    while low < high:
        middle = (low + high) // 2
        if peak(tilings[middle]) <= budget:
            high = middle
        else:
            low = middle + 1
    return MemoryPlan(tilings[low], peak(tilings[low]), minimum, budget)
