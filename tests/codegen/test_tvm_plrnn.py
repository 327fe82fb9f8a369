"""The TVM PLRNN kernel (ssmc.codegen.tvm.plrnn) against the oracles plrnn_ref and
causal_conv_direct / causal_conv_fft (values and gradients: the backward is the adjoint
recurrence kernel), and `ssmc.compile` of ir/convssm.yaml running it (inference and training).
Kernels are specialised on (M, K_in, fused taps, z0) and symbolic in b and L."""

import pytest
import torch

pytest.importorskip("tvm")

import ssmc  # noqa: E402
from ssmc.codegen.tvm.plrnn import plrnn  # noqa: E402
from ssmc.codegen.tvm.plrnn_tir import PlrnnConfig  # noqa: E402
from ssmc.paths import zoo_dir  # noqa: E402
from ssmc.runtime import plrnn_op  # noqa: E402, F401  (defines the ssmc::plrnn ops)
from ssmc.semantics.model import build_reference  # noqa: E402
from ssmc.semantics.recurrence import (causal_conv_direct, hrf_double_gamma,  # noqa: E402
                                       plrnn_ref)


def make(b, L, K, M, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, L, K, generator=g).to(dtype)
    A = 0.5 + 0.4 * torch.rand(M, generator=g)
    W = torch.randn(M, M, generator=g) * 0.5 / M ** 0.5  # diagonal ignored by both
    h0 = 0.1 * torch.randn(M, generator=g)
    C = torch.randn(M, K, generator=g) / K ** 0.5
    return s, A, W, h0, C


@pytest.mark.parametrize("b,L,K,M", [(5, 33, 3, 16), (2, 1, 2, 5), (3, 7, 1, 1), (9, 20, 4, 24),
                                     (1, 64, 3, 8)])
@pytest.mark.parametrize("z0", ["none", "batch", "shared"])
def test_recurrence_matches_oracle(tol, b, L, K, M, z0):
    args = make(b, L, K, M, seed=b + L + M)
    init = {"none": None, "batch": torch.randn(b, M), "shared": torch.randn(M)}[z0]
    z = plrnn(*args, z0=init)
    ref = plrnn_ref(*args, z0=init)
    assert z.shape == ref.shape == (b, L, M) and z.dtype == ref.dtype
    torch.testing.assert_close(z, ref, **tol[torch.float32])


def test_relu_regime_is_exercised(tol):
    """Large weights: many units switch sign, so the relu branch matters."""
    s, A, W, h0, C = make(4, 30, 3, 16)
    W = W * 4
    z = plrnn(s, A, W, h0, C)
    ref = plrnn_ref(s, A, W, h0, C)
    assert (ref < 0).float().mean() > 0.2
    torch.testing.assert_close(z, ref, **tol[torch.float32])


@pytest.mark.parametrize("conv", ["fused", "fft", "auto"])
@pytest.mark.parametrize("hrf_form", ["shared", "per_unit"])
@pytest.mark.parametrize("L", [7, 40])
def test_hrf_convolution(tol, conv, hrf_form, L):
    M = 6
    args = make(3, L, 2, M, seed=L)
    h = hrf_double_gamma(2.0, 17)  # 17 taps: more than L = 7 (taps past L never matter)
    hrf = h if hrf_form == "shared" else h * (1 + torch.rand(M, 1))
    z, zc = plrnn(*args, hrf=hrf, conv=conv)
    ref = plrnn_ref(*args)
    torch.testing.assert_close(z, ref, **tol[torch.float32])
    torch.testing.assert_close(zc, causal_conv_direct(ref, hrf), **tol[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_fp32(tol, dtype):
    args = make(3, 12, 3, 16, dtype=dtype)
    z, zc = plrnn(*args, hrf=hrf_double_gamma(2.0, 8))
    ref = plrnn_ref(*args)
    assert z.dtype == zc.dtype == dtype
    torch.testing.assert_close(z.float(), ref.float(), **tol[dtype])
    torch.testing.assert_close(zc.float(), causal_conv_direct(ref.float(), hrf_double_gamma(2.0, 8)),
                               **tol[dtype])


def test_schedule_knobs_do_not_change_values(tol):
    args = make(7, 15, 3, 16)
    ref = plrnn_ref(*args)
    hrf = torch.rand(11)
    zc_ref = causal_conv_direct(ref, hrf)
    for cfg in (PlrnnConfig(traj_block=1, vector_width=4), PlrnnConfig(traj_block=3, threads=2),
                PlrnnConfig(accumulators=3)):
        torch.testing.assert_close(plrnn(*args, config=cfg), ref, **tol[torch.float32])
        z, zc = plrnn(*args, hrf=hrf, conv="fused", config=cfg)
        torch.testing.assert_close(zc, zc_ref, **tol[torch.float32])


def test_empty():
    args = make(0, 5, 2, 3)
    assert plrnn(*args).shape == (0, 5, 3)
    args = make(2, 0, 2, 3)
    z, zc = plrnn(*args, hrf=torch.ones(4))
    assert z.shape == zc.shape == (2, 0, 3)


@pytest.mark.parametrize("change,name", [
    (dict(s=torch.randn(2, 5)), "s"),
    (dict(s=torch.randn(2, 5, 3, dtype=torch.float64)), "s"),
    (dict(A=torch.randn(4, 1)), "A"),
    (dict(W=torch.randn(4, 3)), "W"),
    (dict(h0=torch.randn(3)), "h0"),
    (dict(C=torch.randn(4, 2)), "C"),
    (dict(z0=torch.randn(3, 4)), "z0"),
    (dict(hrf=torch.randn(3, 5)), "hrf"),
    (dict(hrf=torch.randn(0)), "hrf"),
    (dict(conv="direct", hrf=torch.randn(5)), "conv"),
    (dict(config={"traj_block": 2}), "config"),
])
def test_bad_arguments_name_the_argument(change, name):
    s, A, W, h0, C = make(2, 5, 3, 4)
    kw = dict(s=s, A=A, W=W, h0=h0, C=C)
    kw.update(change)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        plrnn(**kw)


# ------------------------------------------------------------------- ssmc.compile(convssm)
@pytest.fixture(scope="module")
def convssm():
    torch.manual_seed(5)
    model = ssmc.compile(zoo_dir() / "convssm.yaml", "cpu", seqlen=64).eval()
    ref = build_reference(model.source_graph).eval()
    ref.load_state_dict(model.state_dict())
    return model, ref


def test_convssm_summary_names_the_kernel(convssm):
    model, _ = convssm
    # the HRF conv node is folded into the recurrence kernel (passes/fuse.py)
    assert model.kernels["plrnn"] == "tvm:recurrence/sequential + conv 'hrf'"
    assert "tvm:recurrence/sequential + conv 'hrf'" in model.summary()


@pytest.mark.parametrize("b,L", [(3, 50), (1, 1), (2, 7)])
def test_convssm_matches_reference(convssm, tol, b, L):
    model, ref = convssm
    node = next(n for _, n, _ in model.graph.walk() if n.OP == "recurrence")
    executor, fn, config = node.meta["run"]
    calls = []
    node.meta["run"] = (executor, lambda *a, **k: calls.append(1) or fn(*a, **k), config)
    try:
        s = torch.randn(b, L, 3)
        with torch.no_grad():
            y, r = model(s), ref(s)
    finally:
        node.meta["run"] = (executor, fn, config)
    assert calls == [1]
    torch.testing.assert_close(y, r, **tol[torch.float32])


def test_convssm_gradients_match_reference(convssm, tol):
    """Training runs the kernel too: forward kernel, adjoint-recurrence kernel backward."""
    model, ref = convssm
    s = torch.randn(2, 9, 3)
    model(s).pow(2).sum().backward()
    ref(s).pow(2).sum().backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, **tol[torch.float32], msg=name)
    assert model.plrnn.W.grad is not None
    model.zero_grad(set_to_none=True)
    ref.zero_grad(set_to_none=True)


@pytest.mark.parametrize("z0_form", ["none", "batch", "shared"])
@pytest.mark.parametrize("b,L,M", [(3, 20, 6), (5, 1, 16), (2, 7, 9)])
def test_gradients_match_oracle_autograd(tol, b, L, M, z0_form):
    s, A, W, h0, C = make(b, L, 3, M, seed=L)
    W = W * 2  # units on both sides of the relu
    z0 = {"none": None, "batch": torch.randn(b, M), "shared": torch.randn(M)}[z0_form]
    ours = [t.clone().requires_grad_() for t in (s, A, W, h0, C)]
    theirs = [t.clone().requires_grad_() for t in (s, A, W, h0, C)]
    z0s = [None if z0 is None else z0.clone().requires_grad_() for _ in range(2)]
    gz = torch.randn(b, L, M)
    (plrnn(*ours, z0=z0s[0]) * gz).sum().backward()
    (plrnn_ref(*theirs, z0=z0s[1]) * gz).sum().backward()
    for name, a, r in zip(("s", "A", "W", "h0", "C", "z0"), ours + z0s[:1], theirs + z0s[1:]):
        if a is not None:
            scale = r.grad.abs().max().clamp(min=1)  # gradients grow along the sequence
            torch.testing.assert_close(a.grad / scale, r.grad / scale, **tol[torch.float32],
                                       msg=name)


def test_gradients_through_the_hrf_convolution(tol):
    s, A, W, h0, C = make(2, 25, 3, 5)
    hrf = hrf_double_gamma(2.0, 9).requires_grad_()
    Wa, Wb = W.clone().requires_grad_(), W.clone().requires_grad_()
    gz = torch.randn(2, 25, 5)
    (plrnn(s, A, Wa, h0, C, hrf=hrf)[1] * gz).sum().backward()
    g_hrf = hrf.grad.clone()
    hrf.grad = None
    (causal_conv_direct(plrnn_ref(s, A, Wb, h0, C), hrf) * gz).sum().backward()
    torch.testing.assert_close(Wa.grad, Wb.grad, **tol[torch.float32])
    torch.testing.assert_close(g_hrf, hrf.grad, **tol[torch.float32])


# ------------------------------------------------------------------- the ssmc::plrnn ops
def _op_args(z0_form="none", hrf_form=None, grad=False, b=3, L=11):
    """ssmc::plrnn's arguments on signatures the tests above build (M 6; K_in 3 without an
    HRF, K_in 2 with 17 fused taps)."""
    M, K = 6, (3 if hrf_form is None else 2)
    s, A, W, h0, C = make(b, L, K, M, seed=4)
    z0 = {"none": None, "batch": torch.randn(b, M), "shared": torch.randn(M)}[z0_form]
    h = hrf_double_gamma(2.0, 17)
    hrf = {None: None, "shared": h, "per_unit": h * (1 + torch.rand(M, 1))}[hrf_form]
    ts = [None if t is None else t.requires_grad_(grad) for t in (s, A, W * 2, h0, C, z0, hrf)]
    taps = 0 if hrf is None else min(17, L)
    return (*ts, taps, "", "")


@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("z0_form,hrf_form", [("none", None), ("batch", None), ("shared", None),
                                              ("none", "shared"), ("none", "per_unit")])
def test_opcheck_plrnn(z0_form, hrf_form, grad):
    torch.library.opcheck(torch.ops.ssmc.plrnn.default,
                          _op_args(z0_form, hrf_form, grad, L=20 if hrf_form else 11))


@pytest.mark.parametrize("z0_form", ["none", "batch", "shared"])
def test_opcheck_plrnn_bwd(z0_form):
    s, A, W, h0, C, z0, _, _, cfg, cache = _op_args(z0_form)
    z, _ = torch.ops.ssmc.plrnn(s, A, W, h0, C, z0, None, 0, cfg, cache)
    for need in ([True] * 6, [False, True, True, False, False, True]):
        torch.library.opcheck(torch.ops.ssmc.plrnn_bwd.default,
                              (torch.randn_like(z), s, A, W, C, z0, z, need, cfg, cache))


def test_plrnn_op_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    for args in (_op_args("batch"), _op_args("none", "per_unit", L=20)):
        want = [t.shape for t in torch.ops.ssmc.plrnn(*args)]
        s, A, W, h0, C, z0 = args[:6]
        z = torch.ops.ssmc.plrnn(*args)[0]
        bwd = (torch.randn_like(z), s, A, W, C, z0, z, [True] * 6, "", "")
        want_b = [t.shape for t in torch.ops.ssmc.plrnn_bwd(*bwd)]
        with FakeTensorMode() as mode:
            fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            assert [t.shape for t in torch.ops.ssmc.plrnn(*fake)] == want
            fb = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in bwd]
            assert [t.shape for t in torch.ops.ssmc.plrnn_bwd(*fb)] == want_b


@pytest.mark.parametrize("hrf_form", ["shared", "per_unit"])
def test_plrnn_op_fused_hrf_gradients_match_oracle(tol, hrf_form):
    """The op's own convolution adjoint (the fused form: what a direct caller gets) against
    autograd of the oracle: gradients of s, W and the HRF through both outputs."""
    s, A, W, h0, C, z0, hrf, taps, cfg, cache = _op_args("none", hrf_form, grad=True, L=20)
    gz, gzc = torch.randn(3, 20, 6), torch.randn(3, 20, 6)
    z, zc = torch.ops.ssmc.plrnn(s, A, W, h0, C, None, hrf, taps, cfg, cache)
    got = torch.autograd.grad((z * gz).sum() + (zc * gzc).sum(), [s, W, hrf])
    zr = plrnn_ref(s, A, W, h0, C)
    want = torch.autograd.grad((zr * gz).sum() + (causal_conv_direct(zr, hrf) * gzc).sum(),
                               [s, W, hrf])
    for name, a, r in zip(("s", "W", "hrf"), got, want):
        scale = r.abs().max().clamp(min=1)
        torch.testing.assert_close(a / scale, r / scale, **tol[torch.float32], msg=name)


def test_convssm_trains_under_torch_compile_fullgraph(convssm, monkeypatch):
    """torch.compile(fullgraph=True) of a compiled convssm: training runs the TVM forward and
    adjoint kernels through the ops (no graph break), inference the fused-HRF kernel; loss,
    gradients and outputs as eager."""
    import ssmc.codegen.tvm.plrnn as tp

    model, _ = convssm
    calls = []
    fwd, bwd = tp._forward, tp._backward_kernel
    monkeypatch.setattr(tp, "_forward", lambda *a: calls.append("fwd") or fwd(*a))
    monkeypatch.setattr(tp, "_backward_kernel", lambda *a: calls.append("bwd") or bwd(*a))
    s = torch.randn(2, 9, 3)
    params = [p for p in model.parameters() if p.requires_grad]
    want = model(s).pow(2).sum()
    gw = torch.autograd.grad(want, params)
    with torch.no_grad():
        yw = model(s)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    calls.clear()
    got = compiled(s).pow(2).sum()
    gg = torch.autograd.grad(got, params)
    assert calls == ["fwd", "bwd"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(gg, gw):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    calls.clear()
    with torch.no_grad():
        torch.testing.assert_close(compiled(s), yw, rtol=1e-5, atol=1e-5)
    assert calls == ["fwd"]
    s2 = torch.randn(3, 13, 3)  # another shape: a recompile with symbolic sizes
    torch.testing.assert_close(compiled(s2).pow(2).sum(), model(s2).pow(2).sum(), rtol=1e-5,
                               atol=1e-5)
    torch._dynamo.reset()
