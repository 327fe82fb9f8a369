"""Gradients of the Triton 2-D SSM (ssmc.codegen.triton.ssm2d.backward: the reverse wavefront)
against the float64 autograd of the oracle ssmc.semantics.ssm2d.ssm2d_ref, against the TVM
CPU backward, and `ssmc.compile(chimera)` for a GPU target training through them.

Through the interpreter (TRITON_INTERPRET=1, set by conftest) on tiny grids: each diagonal's
tile ops run in numpy, and the backward walks the diagonals two or three times (checkpoint
sweep, recompute, adjoint), so shapes stay at a few cells a side; `chunk` forces several
recompute chunks (a partial last one included) where the default would take the whole grid.
"""

import pytest
import torch
import torch.nn.functional as F

from ssmc.codegen.ssm2d_recurrence import recompute_rows
from ssmc.codegen.triton.common import interpreting
from ssmc.codegen.triton.ssm2d import Ssm2dWavefrontConfig
from ssmc.codegen.triton.ssm2d import backward as bwd
from ssmc.codegen.triton.ssm2d.backward import (Ssm2dWavefrontBwdConfig,
                                                plan_ssm2d_wavefront_bwd,
                                                ssm2d_wavefront_autograd)
from ssmc.semantics.ssm2d import ssm2d_ref, ssm2d_wavefront as ssm2d_wavefront_ref

from .kernelutil import (assert_param_grads_close, compile_plans, compiled_with_reference,
                         opcheck_triton_ops, spy, ssm2d_operands)

pytestmark = pytest.mark.skipif(not interpreting() and not torch.cuda.is_available(),
                                reason="needs a GPU or TRITON_INTERPRET=1")
DEV = "cuda" if not interpreting() else "cpu"
FWD = Ssm2dWavefrontConfig(block_c=4, block_d=2)
NAMES = ("x", "A1", "A2", "A3", "A4", "B1", "B2", "C1", "C2", "dt_t", "dt_v", "D")
SELECTIVE = dict(bc=("cell",) * 4, dt=("cell", "cell"))  # Chimera's selective operand forms
TIME_INVARIANT = dict(bc=("d",) * 4, dt=("d", "d"))


def make(b, T, V, d, N, bc=("d",) * 4, dt=("d", "d"), seed=0, softplus=False):
    """kernelutil.ssm2d_operands (D included) on DEV."""
    return [a.to(DEV) for a in ssm2d_operands(b, T, V, d, N, bc, dt, seed, softplus)]


def grads(args, bidirectional, softplus=False, chunk=None, seed=0, has_D=True):
    """(kernel gradients fp32, float64 reference gradients) of <y, gy> for every input."""
    args = args if has_D else args[:11] + [None]
    g = torch.Generator().manual_seed(seed + 1)
    gy = torch.randn(*args[0].shape, generator=g).to(DEV)
    ins = [None if a is None else a.detach().clone().requires_grad_(True) for a in args]
    y = ssm2d_wavefront_autograd(*ins[:11], D=ins[11], bidirectional=bidirectional,
                                 dt_softplus=softplus, config=FWD,
                                 bwd_config=Ssm2dWavefrontBwdConfig(block_c=4, block_d=2,
                                                                    chunk_rows=chunk))
    leaves = [a for a in ins if a is not None]
    got = torch.autograd.grad(y, leaves, gy)
    ref = [None if a is None else a.detach().cpu().double().requires_grad_(True) for a in args]
    dts = [F.softplus(t) for t in ref[9:11]] if softplus else ref[9:11]
    r = ssm2d_ref(*ref[:9], *dts, D=ref[11], bidirectional=bidirectional)
    torch.testing.assert_close(y.cpu().double(), r, rtol=6e-4, atol=2e-3)
    want = torch.autograd.grad(r, [a for a in ref if a is not None], gy.cpu().double())
    return got, want


def assert_grads_close(got, want, tol):
    """Each gradient within the fp32 tolerance, atol relative to its magnitude (sums over
    many cells and states reach O(100))."""
    for name, a, b in zip(NAMES, got, want):
        assert a.shape == b.shape and a.dtype == torch.float32, name
        t = dict(tol[torch.float32])
        t["atol"] *= max(1.0, b.abs().max().item() / 10)
        torch.testing.assert_close(a.cpu().double(), b, **t, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("b,T,V,d,N,forms,bidirectional,chunk", [
    (1, 1, 3, 2, 2, SELECTIVE, False, None),       # T = 1
    (1, 4, 1, 3, 2, dict(bc=("full",) * 4, dt=("d", "d")), True, 3),  # V = 1, full B/C, a
    # 2-channel block and a 1-channel tail
    (1, 7, 2, 2, 2, TIME_INVARIANT, True, 3),      # T = 7: chunks 3 + 3 + 1
    (2, 2, 7, 2, 3, SELECTIVE, False, None),       # V = 7, two batch rows, one chunk
], ids=["T1", "V1-full", "T7-lti-chunks", "V7-selective"])
def test_gradients_match_reference(tol, b, T, V, d, N, forms, bidirectional, chunk):
    args = make(b, T, V, d, N, **forms, seed=T * V)
    assert_grads_close(*grads(args, bidirectional, chunk=chunk), tol)


def test_mixed_forms_no_D_and_softplus(tol):
    """Every B/C form at once, a per-cell and a per-channel step through softplus (raw values
    on both sides of its threshold), no D, chunks of 2 rows."""
    args = make(1, 5, 3, 2, 3, bc=("cell", "d", "full", "d"), dt=("cell", "d"), seed=5,
                softplus=True)
    got, want = grads(args, True, softplus=True, chunk=2, has_D=False)
    assert len(got) == 11
    assert_grads_close(got, want, tol)


def test_chunks_are_bitwise_the_same():
    """The recompute from checkpoints gives the very states of the one-chunk recompute: the
    per-cell gradients do not depend on the chunking (the per-channel sums add the cells in
    another order), and a run repeats bit for bit (no atomics)."""
    args = make(1, 4, 2, 2, 2, **SELECTIVE, seed=2)
    runs = [grads(args, False, chunk=c)[0] for c in (None, 1, None)]
    for name, a, o, again in zip(NAMES, *runs):
        assert torch.equal(a, again), name
        if a.dim() >= 4:  # x, per-cell B/C and steps
            assert torch.equal(a, o), name
        else:
            torch.testing.assert_close(a, o, rtol=1e-6, atol=1e-6, msg=name)


def test_matches_the_tvm_backward(tol):
    """The same gradients as the CPU backward (ssmc.codegen.tvm.ssm2d_bwd) on Chimera's
    selective bidirectional forms with softplus steps (one TVM build, then its disk cache)."""
    pytest.importorskip("tvm")
    from ssmc.codegen.tvm.ssm2d import ssm2d as tvm_ssm2d

    # d 8, N 4: the signature of test_tvm_ssm2d_bwd's softplus case (its build is cached);
    # one channel block (the interpreter's cost is per program and diagonal)
    args = make(1, 3, 3, 8, 4, **SELECTIVE, seed=7, softplus=True)
    gy = torch.randn(args[0].shape).to(DEV)
    ins = [a.detach().clone().requires_grad_(True) for a in args]
    y = ssm2d_wavefront_autograd(*ins[:11], D=ins[11], bidirectional=True, dt_softplus=True,
                                 config=Ssm2dWavefrontConfig(block_d=8),
                                 bwd_config=Ssm2dWavefrontBwdConfig(block_d=8, chunk_rows=2))
    got = torch.autograd.grad(y, ins, gy)
    cpu = [a.detach().cpu().clone().requires_grad_(True) for a in args]
    yt = tvm_ssm2d(*cpu[:11], D=cpu[11], bidirectional=True, dt_softplus=True)
    want = torch.autograd.grad(yt, cpu, gy.cpu())
    torch.testing.assert_close(y.cpu(), yt, **tol[torch.float32])
    for name, a, b in zip(NAMES, got, want):
        t = dict(tol[torch.float32])
        t["atol"] *= max(1.0, b.abs().max().item() / 10)
        torch.testing.assert_close(a.cpu(), b, **t, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.slow  # the compiled chimera below passes such views too
def test_strided_views_of_projection_outputs(tol):
    """B/C and the raw steps as views into one projection output (what the executor passes):
    the kernel reads them through their strides and autograd assembles the split's
    gradient."""
    b, T, V, d, N = 1, 3, 3, 2, 2
    x, A1, A2, A3, A4, *_ = make(b, T, V, d, N)
    proj = torch.randn(b, T, V, 4 * N + 2 * d).to(DEV).requires_grad_(True)
    B1, B2, C1, C2, dtt, dtv = proj.split([N, N, N, N, d, d], dim=-1)
    y = ssm2d_wavefront_autograd(x, A1, A2, A3, A4, B1, B2, C1, C2, dtt, dtv,
                                 bidirectional=True, dt_softplus=True, config=FWD)
    gy = torch.randn_like(y)
    (gk,) = torch.autograd.grad(y, [proj], gy)
    p64 = proj.detach().cpu().double().requires_grad_(True)
    B1, B2, C1, C2, dtt, dtv = p64.split([N, N, N, N, d, d], dim=-1)
    r = ssm2d_ref(*(a.cpu().double() for a in (x, A1, A2, A3, A4)), B1, B2, C1, C2,
                  F.softplus(dtt), F.softplus(dtv), bidirectional=True)
    (gr,) = torch.autograd.grad(r, [p64], gy.cpu().double())
    torch.testing.assert_close(gk.cpu().double(), gr, **tol[torch.float32])


def test_half_inputs(tol):
    """fp16 inputs: computed in fp32, each gradient comes back in its input's dtype."""
    args = [a.half() if a.dim() > 2 else a for a in make(1, 3, 3, 2, 2, **SELECTIVE)]
    ins = [a.clone().requires_grad_(True) for a in args]
    y = ssm2d_wavefront_autograd(*ins[:11], D=ins[11], bidirectional=True, config=FWD)
    assert y.dtype == torch.float16
    gs = torch.autograd.grad(y.float().sum(), ins)
    ref = [a.detach().cpu().float().requires_grad_(True) for a in args]
    gr = torch.autograd.grad(ssm2d_ref(*ref[:11], D=ref[11], bidirectional=True).sum(), ref)
    for name, a, i, r in zip(NAMES, gs, ins, gr):
        assert a.dtype == i.dtype, name
        torch.testing.assert_close(a.cpu().float(), r, rtol=3e-3,
                                   atol=5e-3 * max(1, r.abs().max()),
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_only_requested_gradients_and_no_grad_path(monkeypatch):
    """No backward kernel without grad mode; with only x requiring grad, the others get none."""
    calls = spy(monkeypatch, bwd, "ssm2d_wavefront_backward")
    args = make(1, 2, 2, 2, 2)
    args[0].requires_grad_(True)
    with torch.no_grad():
        y = ssm2d_wavefront_autograd(*args[:11], D=args[11], config=FWD)
    assert y.grad_fn is None
    y = ssm2d_wavefront_autograd(*args[:11], D=args[11], config=FWD)
    y.sum().backward()
    assert len(calls) == 1 and args[0].grad is not None and args[1].grad is None


@pytest.mark.parametrize("tier", ["interpreter", pytest.param("device", marks=pytest.mark.gpu)])
def test_opcheck_triton_ops(monkeypatch, tier):
    """opcheck of ssmc::ssm2d_wavefront_triton (its autograd formula too) and
    ssmc::ssm2d_wavefront_bwd_triton on the arguments a training call passes them, with the
    selective forms and D: triton_ops on a device (gpu tier), custom_ops under the
    interpreter."""
    if (tier == "device") == interpreting():
        pytest.skip(f"the {tier} run")
    opcheck_triton_ops(monkeypatch, bwd, lambda: grads(make(1, 2, 3, 2, 2, **SELECTIVE), True))


def test_recompute_rows():
    row = 17 * 2 * 4 * 16 * 4  # V 16, block_d 4, N 16
    assert recompute_rows(12, row, 256 << 10) == 12  # all states fit
    assert recompute_rows(1, row, 0) == 1
    assert recompute_rows(1024, row, 64 << 10) == 32  # sqrt(T) when few rows fit
    assert recompute_rows(1024, row, 1 << 20) == (1 << 20) // row - 1  # as many as fit


def test_plan_on_meta_tensors():
    """Chimera's size: one launch over (channel blocks, batch, directions), recompute chunks
    of about sqrt(T) rows, per-program partials of the shared B/C."""
    kw = dict(dtype=torch.float16, device="meta")
    b, T, V, d, N = 2, 1024, 64, 16, 16
    x = torch.empty(b, T, V, d, **kw)
    p = torch.empty(d, N, device="meta")
    bc = torch.empty(b, T, V, N, **kw)
    plan = plan_ssm2d_wavefront_bwd(x, x, p, p, p, p, bc, bc, bc, p, x, x,
                                    bidirectional=True, dt_softplus=True)
    (launch,) = plan.launches
    assert launch.grid == (4, b, 2)
    assert launch.args["K"] == 32 and launch.args["nc"] == 32
    gcell, gpar, parts = plan.outputs
    assert gcell.shape == (3, 2, b, T, V, d) and gpar.shape == (2, b, 8, d, N)
    assert parts["B1"].shape == (2, b, T, V, 4, N) and parts["C2"] is None


# ------------------------------------------------------------------- ssmc.compile(chimera)
@pytest.mark.skipif(not interpreting(), reason="the interpreter runs CPU tensors")
def test_compiled_chimera_for_sm90_trains_through_the_triton_backward(tol, monkeypatch):
    """A training step of chimera compiled for sm_90 runs the Triton forward and backward
    (here through the interpreter, on CPU tensors), and every parameter's gradient matches
    the eager reference model's."""
    model, ref = compiled_with_reference("chimera", "sm_90", dims={"variates": 3}, seqlen=3,
                                         batch=1)
    model.train()
    ref.train()
    assert model.kernels == {"ssm2d": "triton:ssm2d/wavefront"}
    calls = spy(monkeypatch, bwd, "ssm2d_wavefront_backward")
    x = torch.randn(1, 3, 3, 1)
    model(x).square().mean().backward()
    ref(x).square().mean().backward()
    assert len(calls) == 1
    assert_param_grads_close(model, ref, tol)


# ------------------------------------------------------------------- bigger: -m slow / gpu
@pytest.mark.slow
def test_time_invariant_backward_compiles_for_sm90_and_gfx942():
    """Chimera's time-invariant form (B/C per channel, one step per channel), which the
    registered family (ssm2d.backward: the selective form, in test_triton_aot.py) does not
    compile: no register spills on sm_90.  (gfx942 spills some SGPRs into VGPR lanes -- the
    ~50 scalar arguments -- which is not memory traffic, so it is only compiled.)"""
    compiled = compile_plans("""
from ssmc.codegen.triton.families import _ssm2d_bwd_example
from ssmc.codegen.triton.ssm2d.backward import plan_ssm2d_wavefront_bwd
p = e(16, 16)
kw = dict(_ssm2d_bwd_example(torch.float16), B1=p, B2=p, C1=p, C2=p, dt_t=p[0], dt_v=p[0])
plans = [plan_ssm2d_wavefront_bwd(**kw)]
""")
    assert [row[1:3] for row in compiled] == [("cuda", "_ssm2d_wavefront_bwd_kernel"),
                                              ("hip", "_ssm2d_wavefront_bwd_kernel")]
    assert compiled[0][-1] == 0, compiled


@pytest.mark.slow
def test_bigger_grid(tol):
    """T 9 in chunks 4 + 4 + 1, V 5, selective with softplus steps, both directions (the
    interpreter's cost grows with programs x diagonals x passes: ~1 min)."""
    args = make(1, 9, 5, 2, 3, **SELECTIVE, seed=11, softplus=True)
    assert_grads_close(*grads(args, True, softplus=True, chunk=4), tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_chimera_sized(tol):
    """On the device at a size where the default config's tiles, channel blocks and chunks
    all matter: b 2, T 96 (default chunks of sqrt(T) rows would not trigger: forced to 10),
    V 24, d 20 (a channel tail), N 16, selective, bidirectional, softplus steps.  Reference:
    the oracle's wavefront formulation in float64 on the GPU (the double loop is too slow)."""
    b, T, V, d, N = 2, 96, 24, 20, 16
    g = torch.Generator().manual_seed(0)
    args = [a.cuda() for a in make(b, T, V, d, N, **SELECTIVE, seed=0, softplus=True)]
    gy = torch.randn(b, T, V, d, generator=g).cuda()
    out = {}
    for chunk in (None, 10):
        ins = [a.detach().clone().requires_grad_(True) for a in args]
        y = ssm2d_wavefront_autograd(*ins[:11], D=ins[11], bidirectional=True,
                                     dt_softplus=True,
                                     bwd_config=Ssm2dWavefrontBwdConfig(chunk_rows=chunk))
        out[chunk] = torch.autograd.grad(y, ins, gy)
    for name, a, o in zip(NAMES, out[None], out[10]):  # per cell: the same bits
        if a.dim() >= 4:
            assert torch.equal(a, o), name
        else:
            torch.testing.assert_close(a, o, rtol=1e-5, atol=1e-5, msg=name)
    ref = [a.detach().double().requires_grad_(True) for a in args]
    r = ssm2d_wavefront_ref(*ref[:9], F.softplus(ref[9]), F.softplus(ref[10]), D=ref[11],
                            bidirectional=True)
    want = torch.autograd.grad(r, ref, gy.double())
    assert_grads_close(out[None], want, tol)
