"""2-D SSM oracle: double loop vs anti-diagonal wavefront, axis decomposition into 1-D scans,
a hand-expanded 2 x 2 grid, dtypes, gradients and the SSM2D module."""

import math

import pytest
import torch

from ssmc.semantics.modules_misc import SSM2D
from ssmc.semantics.selective import selective_scan_ref
from ssmc.semantics.ssm2d import ssm2d_ref, ssm2d_wavefront, zoh_axis


def make_params(b, T, V, d, N, selective, dtype=torch.float64, coupling=0.3):
    """Random parameters in ssm2d's argument order (A1..A4, B1, B2, C1, C2, dt_t, dt_v)."""
    g = lambda *s: torch.randn(*s, dtype=dtype)  # noqa: E731
    A1 = -(torch.rand(d, N, dtype=dtype) + 0.2)
    A4 = -(torch.rand(d, N, dtype=dtype) + 0.2)
    A2, A3 = coupling * g(d, N), coupling * g(d, N)
    if selective:
        B1, B2, C1, C2 = g(b, T, V, N), g(b, T, V, d, N), g(b, T, V, N), g(b, T, V, N)
        dt_t = torch.rand(b, T, V, d, dtype=dtype) + 0.05
        dt_v = torch.rand(b, T, V, d, dtype=dtype) + 0.05
    else:
        B1, B2, C1, C2 = g(d, N), g(d, N), g(d, N), g(d, N)
        dt_t = torch.rand(d, dtype=dtype) + 0.05
        dt_v = torch.rand(d, dtype=dtype) + 0.05
    return [A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v]


GRIDS = [(1, 1), (1, 7), (7, 1), (3, 5), (7, 7)]


@pytest.mark.parametrize("T,V", GRIDS, ids=[f"T{t}-V{v}" for t, v in GRIDS])
@pytest.mark.parametrize("selective", [False, True], ids=["real", "selective"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["fwd", "bidir"])
def test_loop_matches_wavefront(T, V, selective, bidirectional):
    b, d, N = 2, 3, 4
    x = torch.randn(b, T, V, d, dtype=torch.float64)
    p = make_params(b, T, V, d, N, selective)
    D = torch.randn(d, dtype=torch.float64)
    y_loop = ssm2d_ref(x, *p, D=D, bidirectional=bidirectional)
    y_wave = ssm2d_wavefront(x, *p, D=D, bidirectional=bidirectional)
    assert y_loop.shape == (b, T, V, d)
    assert torch.isfinite(y_loop).all()
    torch.testing.assert_close(y_wave, y_loop, rtol=1e-10, atol=1e-10)


def test_loop_matches_wavefront_fp32(tol):
    x = torch.randn(2, 6, 5, 4)
    p = [q.float() for q in make_params(2, 6, 5, 4, 8, True)]
    torch.testing.assert_close(ssm2d_wavefront(x, *p, bidirectional=True),
                               ssm2d_ref(x, *p, bidirectional=True), **tol[torch.float32])


def test_hand_expanded_2x2():
    """The recurrence of MODELS.md section 6 written out cell by cell with Python floats."""
    A1, A2, A3, A4, B1, B2, C1, C2, dtt, dtv, D = -0.7, 0.4, -0.3, -1.3, 0.9, 1.1, 0.5, -0.8, \
        0.3, 0.6, 0.25
    x = [[0.3, -1.2], [2.0, 0.7]]
    a1, gt = math.exp(dtt * A1), (math.exp(dtt * A1) - 1) / A1
    a4, gv = math.exp(dtv * A4), (math.exp(dtv * A4) - 1) / A4
    a2, b1, a3, b2 = gt * A2, gt * B1, gv * A3, gv * B2
    h1, h2 = {}, {}
    h1[0, 0], h2[0, 0] = b1 * x[0][0], b2 * x[0][0]
    h1[0, 1] = b1 * x[0][1]
    h2[0, 1] = a3 * h1[0, 0] + a4 * h2[0, 0] + b2 * x[0][1]
    h1[1, 0] = a1 * h1[0, 0] + a2 * h2[0, 0] + b1 * x[1][0]
    h2[1, 0] = b2 * x[1][0]
    h1[1, 1] = a1 * h1[0, 1] + a2 * h2[0, 1] + b1 * x[1][1]
    h2[1, 1] = a3 * h1[1, 0] + a4 * h2[1, 0] + b2 * x[1][1]
    want = torch.tensor([[C1 * h1[t, v] + C2 * h2[t, v] + D * x[t][v] for v in range(2)]
                         for t in range(2)], dtype=torch.float64)
    s = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731  (d, N) = (1, 1)
    args = [s(A1), s(A2), s(A3), s(A4), s(B1), s(B2), s(C1), s(C2),
            torch.tensor([dtt], dtype=torch.float64), torch.tensor([dtv], dtype=torch.float64)]
    xt = torch.tensor(x, dtype=torch.float64)[None, :, :, None]
    Dt = torch.tensor([D], dtype=torch.float64)
    for fn in (ssm2d_ref, ssm2d_wavefront):
        torch.testing.assert_close(fn(xt, *args, D=Dt)[0, :, :, 0], want, rtol=1e-12, atol=1e-12)


def _scan_1d(u, dt, A, Bbar, C):
    """One axis as mamba's selective scan: u, dt (batch, L, d); Bbar, C (batch, L, d, N).

    selective_scan_ref applies dt * B (Euler); ZOH's Bbar = G B is passed as B' = Bbar / dt.
    """
    Bp = (Bbar / dt[..., None]).permute(0, 2, 3, 1)  # (batch, groups = d, N, L)
    return selective_scan_ref(u.transpose(1, 2), dt.transpose(1, 2), A, Bp,
                              C.permute(0, 2, 3, 1)).transpose(1, 2)


@pytest.mark.parametrize("selective", [False, True], ids=["real", "selective"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["fwd", "bidir"])
def test_zero_coupling_is_two_1d_scans(selective, bidirectional, tol):
    b, T, V, d, N = 2, 5, 4, 3, 4
    x = torch.randn(b, T, V, d)
    p = [q.float() for q in make_params(b, T, V, d, N, selective, coupling=0.0)]
    A1, _, _, A4, B1, B2, C1, C2, dt_t, dt_v = p
    full = lambda q: q.unsqueeze(3) if q.dim() == 4 else q  # noqa: E731  (b,T,V,N) -> (b,T,V,1,N)
    shape5 = (b, T, V, d, N)
    dtt = dt_t.expand(b, T, V, d)
    dtv = dt_v.expand(b, T, V, d)
    Bb1 = (torch.expm1(dtt[..., None] * A1) / A1) * full(B1).expand(shape5)  # ZOH, by hand
    Bb2 = (torch.expm1(dtv[..., None] * A4) / A4) * full(B2).expand(shape5)
    Cc1, Cc2 = full(C1).expand(shape5), full(C2).expand(shape5)

    def along_t(q):  # (b, T, V, ...) -> (b*V, T, ...): each column is a sequence
        return q.transpose(1, 2).reshape(b * V, T, *q.shape[3:])

    def along_v(q):  # (b, T, V, ...) -> (b*T, V, ...): each row is a sequence
        return q.reshape(b * T, V, *q.shape[3:])

    y_t = _scan_1d(along_t(x), along_t(dtt), A1, along_t(Bb1), along_t(Cc1))
    y_t = y_t.reshape(b, V, T, d).transpose(1, 2)
    fl = lambda q: q.flip(2)  # noqa: E731
    y_v = _scan_1d(along_v(x), along_v(dtv), A4, along_v(Bb2), along_v(Cc2)).reshape(b, T, V, d)
    want = y_t + y_v
    if bidirectional:  # the t scan is the same both ways; the v scan runs on the flipped rows
        want = want + y_t + _scan_1d(along_v(fl(x)), along_v(fl(dtv)), A4, along_v(fl(Bb2)),
                                     along_v(fl(Cc2))).reshape(b, T, V, d).flip(2)
    for fn in (ssm2d_ref, ssm2d_wavefront):
        torch.testing.assert_close(fn(x, *p, bidirectional=bidirectional), want,
                                   **tol[torch.float32])
    # negative control: with a coupling the split no longer holds
    p[1] = torch.full_like(p[1], 0.5)
    assert not torch.allclose(ssm2d_ref(x, *p, bidirectional=bidirectional), want, atol=1e-2)


def test_zoh_axis_limits():
    A = torch.tensor([-1e-9, -2.0], dtype=torch.float64)
    dt = torch.tensor([0.1, 0.1], dtype=torch.float64)
    E, cross, Bb = zoh_axis(A, torch.zeros(2, dtype=torch.float64),
                            torch.ones(2, dtype=torch.float64), dt)
    torch.testing.assert_close(Bb[0], dt[0], rtol=1e-8, atol=0)  # G -> dt as A -> 0
    want = torch.tensor((1 - math.exp(-0.2)) / 2, dtype=torch.float64)
    torch.testing.assert_close(Bb[1], want)
    assert (cross == 0).all()
    torch.testing.assert_close(E, torch.exp(dt * A))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_returns_input_dtype(dtype, tol):
    x = torch.randn(2, 4, 3, 5).to(dtype)
    p = [q.float() for q in make_params(2, 4, 3, 5, 4, True)]
    y = ssm2d_ref(x, *p, bidirectional=True)
    assert y.dtype == dtype
    ref = ssm2d_ref(x.float(), *p, bidirectional=True)
    torch.testing.assert_close(y.float(), ref, **tol[dtype])


def test_gradcheck_float64():
    b, T, V, d, N = 1, 2, 3, 2, 2
    x = torch.randn(b, T, V, d, dtype=torch.float64, requires_grad=True)
    p = make_params(b, T, V, d, N, True)
    p = [q.requires_grad_() for q in p]

    def f(x, *p):
        return ssm2d_ref(x, *p, D=torch.ones(d, dtype=torch.float64), bidirectional=True)

    assert torch.autograd.gradcheck(f, (x, *p), fast_mode=True)


@pytest.mark.parametrize("selective", [False, True], ids=["real", "selective"])
def test_module_backward_reaches_every_parameter(selective):
    m = SSM2D(4, 3, selective=selective)
    x = torch.randn(2, 3, 4, 4)
    y = m(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, m(x, method="loop"), rtol=1e-5, atol=1e-6)
    (y * torch.randn_like(y)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_module_low_precision(dtype, tol):
    m = SSM2D(4, 3, selective=True)
    x = torch.randn(1, 3, 3, 4).to(dtype)
    y = m(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), m(x.float()), **tol[dtype])


def test_module_on_meta_counts_parameters():
    d, N = 8, 4
    m = SSM2D(d, N, device="meta")
    assert all(p.is_meta for p in m.parameters())
    assert sum(p.numel() for p in m.parameters()) == 8 * d * N + 3 * d
    with torch.device("meta"):
        ms = SSM2D(d, N, selective=True)
    assert sum(p.numel() for p in ms.parameters()) == 4 * d * N + d + d * 4 * N + 2 * d * d + 2 * d


@pytest.mark.parametrize("kw,name", [
    (dict(d_model=0, d_state=4), "d_model"),
    (dict(d_model=4, d_state=0), "d_state"),
    (dict(d_model=4, d_state=2.5), "d_state"),
    (dict(d_model=4, d_state=4, dt_min=0.2, dt_max=0.1), "dt_min"),
])
def test_module_validation(kw, name):
    with pytest.raises(ValueError, match=name):
        SSM2D(**kw)
