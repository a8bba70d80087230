"""The fused group norm: Triton kernels (run on CPU by the Triton interpreter, which tests/conftest.py
switches on before import) against the PyTorch reference, the dispatcher, and the argument checks.

Tolerances: float32 atol 1e-5; bfloat16 / float16 within one unit in the last place of the output
dtype (the interpreter truncates fp32 -> bf16 instead of rounding; a GPU rounds).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import triton
import triton.language as tl

import videovae_kernels
import videovae_kernels.group_norm  # noqa: F401  (the module; the package exports the function)
from videovae_kernels import group_norm_triton as gnt
from videovae_kernels.group_norm import group_norm
from videovae_kernels.group_norm_torch import group_norm_torch
from videovae_kernels.group_norm_triton import _tile_coords, _tile_offsets, group_norm_triton
from conftest import norm_backend

gn_module = sys.modules["videovae_kernels.group_norm"]

# The interpreter runs CPU tensors; with TRITON_INTERPRET=0 on a GPU machine the same tests run on CUDA.
# (A mark, not a module-level skip: benchmarks/bench_groupnorm.py imports this module for its baseline.)
DEVICE = "cpu" if gnt._is_interpreted() else "cuda"
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="compiled Triton kernels need a GPU (or TRITON_INTERPRET=1)")


# --------------------------------------------------------------------------------------------
# Baselines shared with benchmarks/bench_groupnorm.py (STYLE.md, point 7)
# --------------------------------------------------------------------------------------------
def eager_group_norm_silu(x: torch.Tensor, num_groups: int, weight, bias, eps: float = 1e-5) -> torch.Tensor:
    """What a model does without the fused op: native F.group_norm over (C/G, T, H, W), then F.silu."""
    return torch.nn.functional.silu(torch.nn.functional.group_norm(x, num_groups, weight, bias, eps))


def make_input(shape, dtype=torch.float32, layout="contiguous", *, mean=0.5, std=2.0, seed=0, device=DEVICE):
    """A random tensor with a shifted mean, in `layout` ('contiguous' or 'channels_last')."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * std + mean).to(dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last_3d if x.ndim == 5 else torch.channels_last)
    return x.to(device)


def affine(C: int, seed: int = 1, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(C, generator=gen) * 0.5 + 1).to(device), (torch.randn(C, generator=gen) * 0.3).to(device)


def ulp(t: torch.Tensor) -> torch.Tensor:
    """The spacing of t's dtype at each |value| (float32 result)."""
    a = t.abs()
    return (torch.nextafter(a, torch.full_like(a, float("inf"))) - a).float()


def assert_close_ulp(actual: torch.Tensor, expected: torch.Tensor, ulps: float = 1.0):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    err = (actual.float() - expected.float()).abs()
    bound = ulps * ulp(expected)
    worst = (err - bound).argmax()
    assert bool((err <= bound).all()), (
        f"{int((err > bound).sum())} of {err.numel()} elements beyond {ulps} ulp; worst: got "
        f"{actual.flatten()[worst].item()}, expected {expected.flatten()[worst].item()}")


# --------------------------------------------------------------------------------------------
# Triton vs reference
# --------------------------------------------------------------------------------------------
# (shape, groups, per_frame, layout, tile, options). Small tiles split each group over many
# programs; sizes are chosen so that no group is a multiple of the tile.
CASES = {
    # C/G = 3, per clip: 189 positions per group, 256-element tiles (4 ch x 64 positions)
    "cg3-clip-contig": ((2, 12, 3, 7, 9), 4, False, "contiguous", 256, dict(silu=True)),
    "cg3-frame-cl": ((2, 12, 3, 7, 9), 4, True, "channels_last", 128, dict(silu=True)),
    # C/G = 1 and 16
    "cg1-frame-contig": ((1, 16, 4, 6, 10), 16, True, "contiguous", 128, dict(affine=False)),
    "cg16-clip-cl": ((1, 16, 4, 6, 10), 1, False, "channels_last", 128, dict(silu=True)),
    # tiles smaller than a group's channels: C/G = 16 split over 2 channel tiles (x 12 positions)
    "cg16-split-channels": ((2, 16, 2, 2, 3), 1, False, "contiguous", 8, dict(silu=True)),
    "no-affine-cg3-clip": ((1, 12, 3, 5, 7), 4, False, "contiguous", 64, dict(affine=False, silu=True)),
    "cg5-frame-contig": ((1, 20, 3, 11, 13), 4, True, "contiguous", 256, dict(silu=False)),
    "cg7-clip-cl": ((1, 14, 5, 5, 7), 2, False, "channels_last", 512, dict(silu=True)),
    # small units packed several per tile (BLOCK_U > 1), 160 units (not a power of 2)
    "packed-units": ((2, 32, 5, 4, 4), 16, True, "contiguous", 1024, dict(silu=True)),
    # residual and front pad
    "residual-pad-frame-cl": ((1, 12, 5, 6, 7), 4, True, "channels_last", 64,
                              dict(silu=True, residual=True, front_pad=2, bias=False)),
    "residual-pad-clip-contig": ((2, 8, 3, 5, 9), 2, False, "contiguous", 128,
                                 dict(silu=False, residual=True, front_pad=1, weight=False)),
    "pad-only-clip-cl": ((1, 6, 4, 5, 5), 3, False, "channels_last", 64, dict(silu=True, front_pad=2)),
    # 4D (N, C, H, W)
    "4d-contig": ((3, 10, 9, 13), 5, False, "contiguous", 64, dict(silu=True)),
    "4d-cl-residual": ((2, 10, 9, 13), 5, False, "channels_last", 128, dict(silu=True, residual=True)),
}


def _run_both(x, groups, per_frame, tile, opts, residual=None):
    C = x.shape[1]
    w, b = affine(C)
    if not opts.get("affine", True):
        w = b = None
    if not opts.get("weight", True):
        w = None
    if not opts.get("bias", True):
        b = None
    kw = dict(per_frame=per_frame, silu=opts.get("silu", False), residual=residual, front_pad=opts.get("front_pad", 0))
    got = norm_backend(group_norm_triton, x, groups, w, b, 1e-5, tile=tile, **kw)
    want = norm_backend(group_norm_torch, x, groups, w, b, 1e-5, **kw)
    return got, want, (w, b, kw)


@pytest.mark.parametrize("case", list(CASES))
def test_float32_matches_reference(case):
    shape, groups, per_frame, layout, tile, opts = CASES[case]
    x = make_input(shape, layout=layout)
    residual = make_input(shape, layout=layout, seed=7) if opts.get("residual") else None
    got, want, _ = _run_both(x, groups, per_frame, tile, opts, residual)
    if residual is not None:
        (got, got_sum), (want, want_sum) = got, want
        torch.testing.assert_close(got_sum, want_sum, atol=0, rtol=0)
        assert got_sum.stride() == want_sum.stride()
    assert got.shape == want.shape and got.dtype == want.dtype
    assert got.stride() == want.stride(), "output must keep the input's memory format"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    if opts.get("front_pad"):
        assert bool((got[:, :, : opts["front_pad"]] == 0).all())


LOW_PRECISION_CASES = ["cg3-clip-contig", "cg3-frame-cl", "cg16-split-channels", "packed-units",
                       "residual-pad-frame-cl", "residual-pad-clip-contig", "4d-cl-residual"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", LOW_PRECISION_CASES)
def test_16bit_within_one_ulp(case, dtype):
    shape, groups, per_frame, layout, tile, opts = CASES[case]
    x = make_input(shape, dtype, layout)
    residual = make_input(shape, dtype, layout, seed=7) if opts.get("residual") else None
    got, want, (w, b, kw) = _run_both(x, groups, per_frame, tile, opts, residual)
    if residual is not None:
        (got, got_sum), (want, want_sum) = got, want
        assert_close_ulp(got_sum, want_sum)
        # The statistics are of the stored sum, which may differ by one ulp from the reference's
        # under the interpreter (truncating bf16 store): compare y against the reference run on it.
        kw = dict(kw, residual=None)
        want = norm_backend(group_norm_torch, got_sum, groups, w, b, 1e-5, **kw)
    assert got.dtype == dtype and got.stride() == want.stride()
    assert_close_ulp(got, want)


def test_non_flattenable_strides_are_copied_and_slices_along_t_are_not():
    """A slice along T (channel stride != T*H*W) runs in place; a slice along W, whose positions do
    not flatten to one stride, goes through a contiguous copy. Both match the reference."""
    full = make_input((1, 8, 6, 5, 12))
    w, b = affine(8)
    for x in (full[:, :, 1:5], full[..., 2:9]):
        for per_frame in (False, True):
            got = norm_backend(group_norm_triton, x, 4, w, b, 1e-5, per_frame=per_frame, silu=True, residual=None, front_pad=1, tile=64)
            want = norm_backend(group_norm_torch, x, 4, w, b, 1e-5, per_frame=per_frame, silu=True, front_pad=1)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def _naive_sum_sumsq_group_norm(x: torch.Tensor, groups: int, tile: int) -> torch.Tensor:
    """Per-clip GN from per-tile sum and sum of squares in float32, as a naive kernel would do it."""
    B, C = x.shape[:2]
    g = x.reshape(B, groups, -1, tile)                       # (B, G, tiles, tile)
    s1 = g.sum(-1).sum(-1)                                   # (B, G)
    s2 = (g * g).sum(-1).sum(-1)
    n = g.shape[-2] * tile
    mean = s1 / n
    var = (s2 / n - mean * mean).clamp_min(0)
    y = (g - mean[..., None, None]) * torch.rsqrt(var + 1e-5)[..., None, None]
    return y.reshape(x.shape)


def test_badly_conditioned_mean_over_std_1000():
    """mean/std = 1000: Chan's combination of per-tile (count, mean, M2) stays within 1e-3 of the
    reference; the naive sum/sum-of-squares form on the same tiles is off by far more."""
    x = make_input((1, 4, 4, 32, 32), mean=1000.0, std=1.0, seed=3)   # one group of 16384 elements
    got = norm_backend(group_norm_triton, x, 1, None, None, 1e-5, per_frame=False, silu=False, residual=None, front_pad=0, tile=256)
    want = norm_backend(group_norm_torch, x, 1, None, None, 1e-5)
    err = (got - want).abs().max().item()
    assert err < 1e-3, err
    naive_err = (_naive_sum_sumsq_group_norm(x, 1, 256) - want).abs().max().item()
    assert naive_err > 1e-2, f"the naive form should fail this case; its error is only {naive_err}"


# --------------------------------------------------------------------------------------------
# int64 indexing
# --------------------------------------------------------------------------------------------
@triton.jit
def _offset_probe(out_ptr, pid, n_units, G, F, CG, S, tiles_per_unit, tiles_s, sb, sc, st, ss,
                  BLOCK_U: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    # The kernels' own index code, run for program `pid` (an int32, as tl.program_id is).
    u, b, g, f, c, s, part, u_ok, c_ok, s_ok = _tile_coords(
        pid, n_units, G, F, CG, S, tiles_per_unit, tiles_s, BLOCK_U, BLOCK_C, BLOCK_S)
    offs = _tile_offsets(b, g, f, c, s, CG, sb, sc, st, ss)
    i = (tl.arange(0, BLOCK_U)[:, None, None] * (BLOCK_C * BLOCK_S)
         + tl.arange(0, BLOCK_C)[None, :, None] * BLOCK_S + tl.arange(0, BLOCK_S)[None, None, :])
    tl.store(out_ptr + i, offs)


@triton.jit
def _offset_probe_int32(out_ptr, pid, n_units, G, F, CG, S, tiles_per_unit, tiles_s, sb, sc, st, ss,
                        BLOCK_U: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    # Control: the same arithmetic without the int64 casts.
    part = pid % tiles_per_unit
    u = (pid // tiles_per_unit) * BLOCK_U + tl.arange(0, BLOCK_U)
    c = (part // tiles_s) * BLOCK_C + tl.arange(0, BLOCK_C)
    s = (part % tiles_s) * BLOCK_S + tl.arange(0, BLOCK_S)
    g = u % G
    f = (u // G) % F
    b = (u // G) // F
    base = b * sb + g * CG * sc + f * st
    offs = base[:, None, None] + (c * sc)[None, :, None] + (s * ss)[None, None, :]
    i = (tl.arange(0, BLOCK_U)[:, None, None] * (BLOCK_C * BLOCK_S)
         + tl.arange(0, BLOCK_C)[None, :, None] * BLOCK_S + tl.arange(0, BLOCK_S)[None, None, :])
    tl.store(out_ptr + i, offs.to(tl.int64))


@pytest.mark.skipif(DEVICE != "cpu", reason="probes the interpreter's integer arithmetic")
@pytest.mark.parametrize("per_frame", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_offsets_are_int64_at_the_tail_of_a_4e9_element_tensor(per_frame, layout):
    """Method: nothing of 2^31 elements is allocated. The kernels compute every address with the
    shared helpers `_tile_coords` and `_tile_offsets`; a probe kernel calls them for the LAST
    programs of the launch a (16, 64, 17, 512, 512) tensor (4.5e9 elements) would get, with that
    tensor's strides, and stores the offsets it computed (pointer arithmetic is never done, so no
    memory is touched). They must equal exact Python integers, which exceed 2^31. Every stride and
    the program id fit in int32 (the interpreter types them int32, as a GPU launch does), so only
    the products overflow: the control probe, the same arithmetic without the int64 casts, gets
    them wrong, which shows the interpreter's int32 arithmetic wraps like a GPU's."""
    B, C, T, H, W = 16, 64, 17, 512, 512
    G = 32
    CG = C // G
    if layout == "contiguous":
        sb, sc, st, sh, sw = C * T * H * W, T * H * W, H * W, W, 1
    else:  # channels-last-3d
        sb, sc, st, sh, sw = T * H * W * C, 1, H * W * C, W * C, C
    assert max(sb, sc, st, sw) < 2**31 and B * sb > 2**32
    F = T if per_frame else 1
    S = H * W if per_frame else T * H * W
    n_units = B * G * F
    block_u, block_c, block_s = gnt.tile_shape(n_units, CG, S, gnt.GPU_TILE)
    tiles_s = triton.cdiv(S, block_s)
    tiles_per_unit = triton.cdiv(CG, block_c) * tiles_s
    n_programs = triton.cdiv(n_units, block_u) * tiles_per_unit
    assert n_programs < 2**31

    for pid in (n_programs - 1, n_programs - tiles_per_unit // 2):
        args = (pid, n_units, G, F, CG, S, tiles_per_unit, tiles_s, sb, sc, st, sw)
        got = torch.empty((block_u, block_c, block_s), dtype=torch.int64)
        _offset_probe[(1,)](got, *args, BLOCK_U=block_u, BLOCK_C=block_c, BLOCK_S=block_s)

        # Exact offsets in Python integers: the same tile's units, channels and positions.
        ub, part = divmod(pid, tiles_per_unit)
        tc, ts = divmod(part, tiles_s)
        u = torch.arange(block_u, dtype=torch.int64) + ub * block_u
        c = torch.arange(block_c, dtype=torch.int64) + tc * block_c
        s = torch.arange(block_s, dtype=torch.int64) + ts * block_s
        g, f, b = u % G, (u // G) % F, (u // G) // F
        base = b * sb + g * CG * sc + f * st
        want = base[:, None, None] + (c * sc)[None, :, None] + (s * sw)[None, None, :]
        assert want.max().item() > 2**31 + 2**30
        assert torch.equal(got, want)

        control = torch.empty_like(got)
        _offset_probe_int32[(1,)](control, *args, BLOCK_U=block_u, BLOCK_C=block_c, BLOCK_S=block_s)
        assert not torch.equal(control, want), "int32 arithmetic should have wrapped"


_COMPILE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import videovae_kernels.group_norm_triton as m

    def ttir(kernel, types, constexprs):
        names = kernel.arg_names
        sig = {n: types(n) for n in names}
        for n in constexprs:
            sig[n] = "constexpr"
        src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(n),): v for n, v in constexprs.items()})
        return triton.compile(src, target=GPUTarget("cuda", 80, 32), options={"num_warps": 8}).asm["ttir"]

    blocks = dict(BLOCK_U=2, BLOCK_C=4, BLOCK_S=512)
    out = {
        "stats": ttir(m._gn_stats_kernel,
                      lambda n: "*bf16" if n in ("x_ptr", "r_ptr", "sum_ptr") else "*fp32" if n.endswith("_ptr") else "i32",
                      dict(HAS_RESIDUAL=True, **blocks)),
        "apply": ttir(m._gn_apply_kernel,
                      lambda n: "*bf16" if n in ("x_ptr", "out_ptr", "w_ptr", "b_ptr") else "*fp32" if n.endswith("_ptr") else "i32",
                      dict(HAS_WEIGHT=True, HAS_BIAS=True, APPLY_SILU=True, **blocks)),
        "combine": ttir(m._gn_combine_kernel,
                        lambda n: "*fp32" if n.endswith("_ptr") else "fp32" if n == "eps" else "i32",
                        dict(BLOCK_U=4, BLOCK_P=256)),
    }
    json.dump(out, sys.stdout)
    """
)


def test_kernels_compile_for_sm80_with_int64_address_arithmetic(tmp_path):
    """Method: compile the three kernels for an sm_80 GPU (no GPU needed: Triton builds TTIR -> PTX ->
    cubin on the host) in a subprocess without TRITON_INTERPRET, with every size and stride typed
    int32 as a real launch would, and read the TTIR: every integer multiply and every pointer offset
    must be 64-bit. This also proves the kernels compile for real hardware, which the interpreter
    (lenient about types) cannot."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    for name, ir in json.loads(proc.stdout).items():
        muls = [line for line in ir.splitlines() if "arith.muli" in line]
        ptrs = [line for line in ir.splitlines() if "tt.addptr" in line]
        assert muls and ptrs, name
        bad = [line.strip() for line in muls + ptrs if "i32" in line.split(" : ")[-1]]
        assert not bad, f"{name}: 32-bit index arithmetic:\n" + "\n".join(bad)


# --------------------------------------------------------------------------------------------
# Dispatcher and argument checks
# --------------------------------------------------------------------------------------------
@pytest.fixture
def spies(monkeypatch):
    """Counts calls reaching each backend: the CPU path (`group_norm_cpu`) or the Triton entry (which
    the dispatcher imports at call time)."""
    calls = {"torch": 0, "triton": 0}

    def spy(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(gn_module, "group_norm_cpu", spy("torch", gn_module.group_norm_cpu))
    monkeypatch.setattr(gnt, "group_norm_triton", spy("triton", group_norm_triton))
    return calls


@pytest.mark.parametrize("value, backend", [(None, "torch"), ("auto", "torch"), ("", "torch"), ("torch", "torch"),
                                            ("triton", "triton"), (" Triton ", "triton"), ("TORCH", "torch")])
def test_dispatcher_honours_videovae_kernels_on_cpu(monkeypatch, spies, value, backend):
    if value is None:
        monkeypatch.delenv("VIDEOVAE_KERNELS", raising=False)
    else:
        monkeypatch.setenv("VIDEOVAE_KERNELS", value)
    x = make_input((1, 8, 3, 5, 5), device="cpu")
    w, b = affine(8, device="cpu")
    assert videovae_kernels.backend_for(x) == backend
    y = group_norm(x, 4, w, b, per_frame=True, silu=True, front_pad=1)
    assert spies == {"torch": int(backend == "torch"), "triton": int(backend == "triton")}
    torch.testing.assert_close(y, norm_backend(group_norm_torch, x, 4, w, b, per_frame=True, silu=True, front_pad=1), atol=1e-5, rtol=0)


def test_dispatcher_rejects_unknown_backend(monkeypatch):
    monkeypatch.setenv("VIDEOVAE_KERNELS", "cuda")
    x = make_input((1, 4, 2, 3, 3), device="cpu")
    with pytest.raises(ValueError, match=r"VIDEOVAE_KERNELS='cuda' is not one of auto, torch, triton"):
        group_norm(x, 2)


@pytest.mark.parametrize("make, kwargs, error, message", [
    (lambda: torch.zeros(2, 4, 5), {}, ValueError, r"takes \(B, C, T, H, W\) or \(N, C, H, W\); got a 3D tensor of shape \(2, 4, 5\)"),
    (lambda: torch.zeros(1, 4, 2, 3, 3, dtype=torch.int32), {}, TypeError, "floating-point tensor; got torch.int32"),
    (lambda: torch.zeros(1, 6, 2, 3, 3), dict(num_groups=4), ValueError, "6 channels do not split into 4 groups"),
    (lambda: torch.zeros(1, 4, 2, 3, 3), dict(weight=torch.ones(3)), ValueError, r"weight must have shape \(4,\); got \(3,\)"),
    (lambda: torch.zeros(1, 4, 2, 3, 3), dict(bias=torch.ones(4, 1)), ValueError, r"bias must have shape \(4,\); got \(4, 1\)"),
    (lambda: torch.zeros(1, 4, 2, 3, 3), dict(residual=torch.zeros(1, 4, 3, 3, 3)), ValueError,
     r"residual shape \(1, 4, 3, 3, 3\) differs from x \(1, 4, 2, 3, 3\)"),
    (lambda: torch.zeros(1, 4, 3, 3), dict(per_frame=True), ValueError, r"per_frame and front_pad need a 5D"),
    (lambda: torch.zeros(1, 4, 3, 3), dict(front_pad=2), ValueError, r"per_frame and front_pad need a 5D"),
    (lambda: torch.zeros(1, 4, 2, 3, 3), dict(front_pad=-1), ValueError, "front_pad must be >= 0; got -1"),
])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_argument_checks_name_the_problem(monkeypatch, make, kwargs, error, message, backend):
    monkeypatch.setenv("VIDEOVAE_KERNELS", backend)
    kwargs = dict(kwargs)
    groups = kwargs.pop("num_groups", 2)
    with pytest.raises(error, match=message):
        group_norm(make(), groups, **kwargs)


def test_triton_path_rejects_what_it_does_not_support():
    x = make_input((1, 4, 2, 3, 3))
    with pytest.raises(TypeError, match="supports float32, bfloat16 and float16; got torch.float64"):
        norm_backend(group_norm_triton, x.double(), 2, None, None, per_frame=False, silu=False, residual=None, front_pad=0)
    with pytest.raises(TypeError, match="residual dtype torch.float16 differs from x's torch.float32"):
        norm_backend(group_norm_triton, x, 2, None, None, per_frame=False, silu=False, residual=x.half(), front_pad=0)
    with pytest.raises(ValueError, match="tile must be a power of 2; got 48"):
        norm_backend(group_norm_triton, x, 2, None, None, per_frame=False, silu=False, residual=None, front_pad=0, tile=48)


# --------------------------------------------------------------------------------------------
# The model, end to end, on the Triton path
# --------------------------------------------------------------------------------------------
def test_stepvideo_v2_decode_with_triton_kernels_matches_fixture(monkeypatch, spies):
    """VIDEOVAE_KERNELS=triton: every norm of the tiny Step-Video v2 decoder runs the Triton kernels
    (interpreted on CPU); the 17-frame decode matches the reference output within 1e-4."""
    import videovae
    from safetensors.torch import load_file

    fixtures = os.path.join(os.path.dirname(__file__), "fixtures", "stepvideo")
    io = load_file(os.path.join(fixtures, "stepvideo_v2_tiny_io.safetensors"))
    vae = videovae.load(os.path.join(fixtures, "stepvideo_v2_tiny.safetensors"), dtype=torch.float32)
    monkeypatch.setenv("VIDEOVAE_KERNELS", "triton")
    with torch.no_grad():
        out = vae.decode(io["mean_17f"])
    assert spies["triton"] > 0 and spies["torch"] == 0
    assert out.shape == io["dec_17f"].shape
    torch.testing.assert_close(out.float(), io["dec_17f"], atol=1e-4, rtol=0)
