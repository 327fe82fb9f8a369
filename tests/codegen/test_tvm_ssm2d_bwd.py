"""Gradients of the TVM 2-D SSM (ssmc.codegen.tvm.ssm2d_bwd: the adjoint kernel) against the
autograd of the oracle ssmc.semantics.ssm2d.ssm2d_ref, and `ssmc.compile(chimera)` training
through them.

The oracle's gradients are taken in float64 (a tighter reference than its own fp32 autograd);
the kernel's (fp32) must match them within the fp32 tolerance.  The kernels are fp32 only, so
there is no float64 gradcheck of the kernel: fp64 inputs run the reference (the executor
returns NotImplemented, `ssm2d` refuses them), whose float64 gradcheck is below; the fp64
comparison here is the kernel's check.  Every distinct operand-form / flag / order combination
is one forward and one backward build (a few seconds, then the disk cache); grid sizes vary
freely within a build.
"""

import itertools

import pytest
import torch

pytest.importorskip("tvm")

import ssmc  # noqa: E402
from ssmc.codegen.tvm import ssm2d_bwd  # noqa: E402
from ssmc.codegen.tvm.ssm2d import default_config, ssm2d  # noqa: E402
from ssmc.paths import zoo_dir  # noqa: E402
from ssmc.runtime import ssm2d_op  # noqa: E402  (defines the ssmc::ssm2d ops)
from ssmc.semantics.model import build_reference  # noqa: E402
from ssmc.semantics.ssm2d import ssm2d_ref  # noqa: E402

from .kernelutil import assert_param_grads_close  # noqa: E402


def make(b, T, V, d, N, bc=("d",) * 4, dt=("d", "d"), seed=0):
    """Random operands (as test_tvm_ssm2d.make): bc / dt give each operand's form, 'd' per
    channel, 'cell' per cell (B/C shared by the channels), 'full' (b, T, V, d, N)."""
    g = torch.Generator().manual_seed(seed)

    def rn(*s):
        return torch.randn(*s, generator=g)

    x = rn(b, T, V, d)
    A1, A4 = -(0.5 + torch.rand(d, N, generator=g)), -(0.5 + torch.rand(d, N, generator=g))
    A2, A3 = 0.3 * rn(d, N), 0.3 * rn(d, N)
    shapes = {"d": (d, N), "cell": (b, T, V, N), "full": (b, T, V, d, N)}
    B1, B2, C1, C2 = (rn(*shapes[f]) for f in bc)
    # steps from tiny (expm1 near 0) to large (|dt A| > 1)
    dts = [torch.rand(*((d,) if f == "d" else (b, T, V, d)), generator=g) * 1.5 + 1e-3
           for f in dt]
    return (x, A1, A2, A3, A4, B1, B2, C1, C2, dts[0], dts[1])

NAMES = ("x", "A1", "A2", "A3", "A4", "B1", "B2", "C1", "C2", "dt_t", "dt_v", "D")
SELECTIVE = dict(bc=("cell",) * 4, dt=("cell", "cell"))  # Chimera's selective operand forms
TIME_INVARIANT = dict(bc=("d",) * 4, dt=("d", "d"))


def grads(args, D, bidirectional, seed=0, order="wavefront", chunk=None, softplus=False):
    """(kernel gradients, float64 reference gradients) of <y, gy> for every tensor in args
    (and D), with the same random gy."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed + 1)
    x = args[0]
    gy = torch.randn(*x.shape, generator=g)
    ins = [a.detach().clone().requires_grad_(True) for a in args]
    Dk = None if D is None else D.detach().clone().requires_grad_(True)
    y = ssm2d(*ins, D=Dk, bidirectional=bidirectional, dt_softplus=softplus,
              config=default_config().replace(order=order), bwd_chunk=chunk)
    leaves = ins + ([Dk] if D is not None else [])
    got = torch.autograd.grad(y, leaves, gy)
    ref_in = [a.detach().double().requires_grad_(True) for a in args]
    Dr = None if D is None else D.detach().double().requires_grad_(True)
    dts = ref_in[9:11]
    if softplus:
        dts = [F.softplus(t) for t in dts]
    r = ssm2d_ref(*ref_in[:9], *dts, D=Dr, bidirectional=bidirectional)
    torch.testing.assert_close(y.double(), r, rtol=6e-4, atol=2e-3)
    want = torch.autograd.grad(r, ref_in + ([Dr] if D is not None else []), gy.double())
    return got, want


def assert_grads_close(got, want, tol, scale_atol=True):
    """Each gradient within fp32 tolerance; atol relative to the gradient's magnitude (sums
    over many cells and states reach O(100))."""
    for name, a, b in zip(NAMES, got, want):
        assert a.shape == b.shape, name
        assert a.dtype == torch.float32, name
        t = dict(tol[torch.float32])
        if scale_atol:
            t["atol"] = t["atol"] * max(1.0, b.abs().max().item() / 10)
        torch.testing.assert_close(a.double(), b, **t, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("T,V", list(itertools.product((1, 7, 33), (1, 3, 8))))
@pytest.mark.parametrize("forms", [SELECTIVE, TIME_INVARIANT], ids=["selective", "lti"])
def test_grid_sizes(tol, T, V, forms):
    """Every edge of the wavefront: one row, one column, tall, wide; d = 12 is one 8-lane
    block and a 4-lane tail (or one 12-lane block under AVX-512's 16)."""
    args = make(2, T, V, 12, 4, seed=T * 10 + V, **forms)
    assert_grads_close(*grads(args, torch.randn(12), bidirectional=True), tol)


@pytest.mark.parametrize("forms", [SELECTIVE, TIME_INVARIANT], ids=["selective", "lti"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize("coupling", [True, False], ids=["coupled", "uncoupled"])
@pytest.mark.parametrize("has_D", [True, False], ids=["D", "noD"])
def test_flags(tol, forms, bidirectional, coupling, has_D):
    """Selective or not x direction x coupling terms (A2 = A3 = 0: their gradients still
    come out, at zero) x D."""
    args = list(make(2, 7, 5, 8, 4, seed=3, **forms))
    if not coupling:
        args[2], args[3] = torch.zeros_like(args[2]), torch.zeros_like(args[3])
    D = torch.randn(8) if has_D else None
    assert_grads_close(*grads(args, D, bidirectional), tol)


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, None])
@pytest.mark.parametrize("order", ["wavefront", "rows"])
def test_recompute_chunks_and_orders(tol, chunk, order):
    """Chunks of 1..T rows (checkpoints between them) and both loop orders give the same
    gradients; chunk 5 leaves a short last chunk."""
    args = make(1, 12, 4, 8, 4, seed=5, **SELECTIVE)
    got, want = grads(args, torch.randn(8), bidirectional=True, order=order, chunk=chunk)
    assert_grads_close(got, want, tol)


def test_chunks_are_bitwise_the_same():
    """The recompute repeats the forward's arithmetic exactly: chunking changes nothing (in
    row order; a wavefront over chunks sums the per-channel gradients in another order)."""
    args = make(2, 9, 3, 8, 4, seed=6, **SELECTIVE)
    D = torch.randn(8)
    a, _ = grads(args, D, bidirectional=False, chunk=None, order="rows")
    b, _ = grads(args, D, bidirectional=False, chunk=2, order="rows")
    for name, u, v in zip(NAMES, a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=0, msg=name)


def test_mixed_operand_forms(tol):
    """B1 per channel and cell (b, T, V, d, N), B2/C2 (d, N), C1 shared; dt_t per cell, dt_v
    per channel; state 16 with d 16 (full vector blocks: the lane-sum tree)."""
    args = make(2, 6, 4, 16, 16, bc=("full", "d", "cell", "d"), dt=("cell", "d"), seed=7)
    assert_grads_close(*grads(args, None, bidirectional=True), tol)


@pytest.mark.parametrize("dt", [("cell", "cell"), ("d", "d")])
def test_dt_softplus(tol, dt):
    """Pre-activation steps (softplus in the kernel per cell, in torch per channel):
    gradients w.r.t. the pre-activations, both signs and above the threshold 20."""
    x, A1, A2, A3, A4, B1, B2, C1, C2, dtt, dtv = make(2, 5, 4, 8, 4, bc=("cell",) * 4,
                                                       dt=dt, seed=8)
    raw_t, raw_v = 4 * dtt - 3, 4 * dtv - 3
    if dt[0] == "cell":
        raw_t[0, 0, 0, 0] = 25.0  # softplus' linear branch
    args = (x, A1, A2, A3, A4, B1, B2, C1, C2, raw_t, raw_v)
    assert_grads_close(*grads(args, torch.randn(8), True, softplus=True), tol)


def test_strided_views_of_projection_outputs(tol):
    """B/C and dt as views into one projection output (what the executor passes): gradients
    flow back into the projection (autograd assembles the split's gradient)."""
    b, T, V, d, N = 2, 5, 3, 8, 4
    x, A1, A2, A3, A4, *_ = make(b, T, V, d, N)
    proj = torch.randn(b, T, V, 4 * N + 2 * d).requires_grad_(True)
    B1, B2, C1, C2, dtt, dtv = proj.split([N, N, N, N, d, d], dim=-1)
    y = ssm2d(x, A1, A2, A3, A4, B1, B2, C1, C2, dtt, dtv, bidirectional=True,
              dt_softplus=True)
    gy = torch.randn_like(y)
    (gk,) = torch.autograd.grad(y, [proj], gy)
    p64 = proj.detach().double().requires_grad_(True)
    B1, B2, C1, C2, dtt, dtv = p64.split([N, N, N, N, d, d], dim=-1)
    sp = torch.nn.functional.softplus
    r = ssm2d_ref(x.double(), A1.double(), A2.double(), A3.double(), A4.double(), B1, B2, C1,
                  C2, sp(dtt), sp(dtv), bidirectional=True)
    (gr,) = torch.autograd.grad(r, [p64], gy.double())
    torch.testing.assert_close(gk.double(), gr, **tol[torch.float32])


def test_half_inputs(tol):
    """fp16 inputs: computed in fp32, gradients come back in fp16."""
    args = [a.half().requires_grad_(True) for a in make(1, 4, 3, 8, 4, **SELECTIVE)]
    y = ssm2d(*args, bidirectional=True)
    assert y.dtype == torch.float16
    gs = torch.autograd.grad(y.float().sum(), args)
    assert all(g.dtype == torch.float16 and torch.isfinite(g).all() for g in gs)
    ref = [a.detach().float().requires_grad_(True) for a in args]
    gr = torch.autograd.grad(ssm2d_ref(*ref, bidirectional=True).sum(), ref)
    for name, a, r in zip(NAMES, gs, gr):
        torch.testing.assert_close(a.float(), r, rtol=3e-3, atol=5e-3 * max(1, r.abs().max()),
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_only_requested_gradients_and_no_grad_path(monkeypatch):
    """No backward kernel without grad mode; with only x requiring grad, parameters get none."""
    calls = []
    real = ssm2d_bwd.run_kernel
    monkeypatch.setattr(ssm2d_bwd, "run_kernel", lambda *a, **k: calls.append(1) or real(*a, **k))
    args = list(make(1, 3, 2, 8, 4))
    with torch.no_grad():
        args[0].requires_grad_(True)
        y = ssm2d(*args)
    assert y.grad_fn is None
    y = ssm2d(*args)
    y.sum().backward()
    assert calls == [1] and args[0].grad is not None and args[1].grad is None


def test_chunk_rows_budget():
    from ssmc.codegen.tvm.ssm2d_tir import Ssm2dSignature

    sig, cfg = Ssm2dSignature(d=64, N=16), default_config()
    assert ssm2d_bwd.chunk_rows(sig, cfg, 12, 4) == 12  # all states fit
    assert ssm2d_bwd.chunk_rows(sig, cfg, 1, 1) == 1
    assert ssm2d_bwd.chunk_rows(sig, cfg, 1024, 64) == 32  # sqrt(T) when few rows fit
    assert ssm2d_bwd.chunk_rows(sig, cfg, 1024, 64, budget=64 << 20) > 32  # as many as fit


def test_reference_gradcheck_float64():
    """The oracle itself in float64 (the kernels are fp32 only: fp64 runs the reference)."""
    args = [a.double().requires_grad_(True)
            for a in make(1, 3, 2, 2, 2, bc=("cell", "d", "cell", "d"), dt=("cell", "d"))]
    D = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: ssm2d_ref(*a[:-1], D=a[-1], bidirectional=True), (*args, D))


# ------------------------------------------------------------------- ssmc.compile(chimera)
@pytest.fixture(scope="module")
def chimera():
    torch.manual_seed(3)
    model = ssmc.compile(zoo_dir() / "chimera.yaml", "cpu", dims={"variates": 8},
                         seqlen=16).train()
    ref = build_reference(model.source_graph).train()
    ref.load_state_dict(model.state_dict())
    return model, ref


def test_chimera_training_gradients_come_from_the_kernel(chimera, tol, monkeypatch):
    """A training step of the compiled chimera runs the adjoint kernel (not the reference's
    autograd) and every parameter's gradient matches the eager reference model's."""
    model, ref = chimera
    calls = []
    real = ssm2d_bwd.run_kernel
    monkeypatch.setattr(ssm2d_bwd, "run_kernel", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 9, 5, 1)
    model.zero_grad(set_to_none=True)
    ref.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    ref(x).square().mean().backward()
    assert calls == [1]
    assert_param_grads_close(model, ref, tol)
    model.zero_grad(set_to_none=True)
    ref.zero_grad(set_to_none=True)


def test_chimera_trains_under_torch_compile_fullgraph(chimera, monkeypatch):
    """torch.compile(fullgraph=True) of a compiled chimera's training step: the TVM forward
    and adjoint kernels run through the ssmc::ssm2d ops (no graph break), x_proj / dt_proj
    and the rest traced; loss and every gradient as eager."""
    import ssmc.codegen.tvm.ssm2d as tvm_ssm2d

    model, _ = chimera
    calls = []
    fwd, bwd = tvm_ssm2d.run_forward, ssm2d_bwd.run_kernel
    monkeypatch.setattr(tvm_ssm2d, "run_forward",
                        lambda *a, **k: calls.append("fwd") or fwd(*a, **k))
    monkeypatch.setattr(ssm2d_bwd, "run_kernel",
                        lambda *a, **k: calls.append("bwd") or bwd(*a, **k))
    x = torch.randn(2, 9, 5, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    want = model(x).square().mean()
    gw = torch.autograd.grad(want, params)
    torch._dynamo.reset()
    calls.clear()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = compiled(x).square().mean()
    gg = torch.autograd.grad(got, params)
    assert calls == ["fwd", "bwd"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for (name, _), a, b in zip(model.named_parameters(), gg, gw):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    # another shape: the recompile has symbolic sizes (the wrapper's shape checks once
    # rejected them while tracing)
    x2 = torch.randn(3, 7, 5, 1)
    got, want = compiled(x2).square().mean(), model(x2).square().mean()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


# ------------------------------------------------------------------- the ssmc::ssm2d ops
def _op_args(forms, grad=False):
    """ssmc::ssm2d's arguments for test_flags' bidirectional-with-D signatures (d 8, N 4)."""
    from ssmc.codegen.tvm.ssm2d import kernel_args
    from ssmc.codegen.tvm.ssm2d_bwd_tir import input_names

    sig, args = kernel_args(*make(2, 5, 3, 8, 4, seed=12, **forms), D=torch.randn(8),
                            bidirectional=True)
    ins = [args[n].detach().clone().requires_grad_(grad) for n in input_names(sig)]
    return ins, ssm2d_op.sig_key(sig), "", 0, ""


@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("forms", [SELECTIVE, TIME_INVARIANT], ids=["selective", "lti"])
def test_opcheck_ssm2d(forms, grad):
    torch.library.opcheck(torch.ops.ssmc.ssm2d.default, _op_args(forms, grad))


@pytest.mark.parametrize("forms", [SELECTIVE, TIME_INVARIANT], ids=["selective", "lti"])
def test_opcheck_ssm2d_bwd(forms):
    ins, sig, cfg, chunk, cache = _op_args(forms)
    y = torch.ops.ssmc.ssm2d(ins, sig, cfg, chunk, cache)
    for chunk in (0, 2):
        torch.library.opcheck(torch.ops.ssmc.ssm2d_bwd.default,
                              (torch.randn_like(y), ins, sig, cfg, chunk, cache))


def test_ssm2d_op_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    ins, *rest = _op_args(SELECTIVE)
    y = torch.ops.ssmc.ssm2d(ins, *rest)
    flat = torch.ops.ssmc.ssm2d_bwd(torch.randn_like(y), ins, *rest)
    with FakeTensorMode() as mode:
        fins = [mode.from_tensor(t) for t in ins]
        fy = torch.ops.ssmc.ssm2d(fins, *rest)
        fflat = torch.ops.ssmc.ssm2d_bwd(mode.from_tensor(y), fins, *rest)
    assert (fy.shape, fy.dtype, fflat.shape) == (y.shape, y.dtype, flat.shape)
