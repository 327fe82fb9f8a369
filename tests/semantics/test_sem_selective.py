"""Mamba-1 selective scan: the sequential oracle (selective_scan_ref) against the log-depth
associative scan (selective_scan_assoc), the generic scan against a loop, and the module."""

import pytest
import torch
import torch.nn.functional as F

from ssmc.semantics.modules_ssm import Mamba1SSM, SelectiveSSM
from ssmc.semantics.scan_assoc import assoc_scan, linear_scan_assoc, selective_scan_assoc
from ssmc.semantics.selective import selective_scan_ref

b, d, N = 2, 4, 3


def inputs(L, bc="shared", cplx=False, dtype=torch.float32):
    u = torch.randn(b, d, L, dtype=dtype)
    delta = 0.5 * torch.randn(b, d, L, dtype=dtype)
    A = -(0.5 + torch.rand(d, N, dtype=dtype))
    if cplx:
        A = torch.complex(A, torch.randn(d, N, dtype=dtype))
    shape = {"shared": (b, N, L), "grouped": (b, 2, N, L), "invariant": (d, N)}[bc]
    return u, delta, A, torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)


def test_assoc_scan_matches_loop():
    # A non-commutative combine (2x2 matrix products) to catch a swapped operand order.
    M = torch.randn(13, 2, 2, dtype=torch.float64)
    (got,) = assoc_scan((M,), lambda later, earlier: (later[0] @ earlier[0],))
    acc = torch.eye(2, dtype=torch.float64)
    for t in range(13):
        acc = M[t] @ acc
        torch.testing.assert_close(got[t], acc)


@pytest.mark.parametrize("L", [0, 1, 2, 5, 64, 100])
def test_linear_scan_assoc_matches_loop(L):
    a = torch.rand(3, L, dtype=torch.float64)
    x = torch.randn(3, L, dtype=torch.float64)
    h0 = torch.randn(3, dtype=torch.float64)
    got = linear_scan_assoc(a, x, dim=1, initial=h0)
    h, want = h0, []
    for t in range(L):
        h = a[:, t] * h + x[:, t]
        want.append(h)
    want = torch.stack(want, 1) if want else x
    torch.testing.assert_close(got, want)


OPTIONS = {
    "plain": dict(),
    "D-z": dict(D=True, z=True),
    "bias-softplus": dict(delta_bias=True, delta_softplus=True),
    "all": dict(D=True, z=True, delta_bias=True, delta_softplus=True, initial_state=True),
}


def kwargs_for(opts, L, cplx, dtype=torch.float32):
    kw = {}
    if opts.get("D"):
        kw["D"] = torch.randn(d, dtype=dtype)
    if opts.get("z"):
        kw["z"] = torch.randn(b, d, L, dtype=dtype)
    if opts.get("delta_bias"):
        kw["delta_bias"] = torch.randn(d, dtype=dtype) - 1
    if opts.get("delta_softplus"):
        kw["delta_softplus"] = True
    if opts.get("initial_state"):
        sdt = (torch.complex128 if dtype == torch.float64 else torch.complex64) if cplx else dtype
        kw["initial_state"] = torch.randn(b, d, N, dtype=sdt)
    return kw


# Every option set at L = 1 and 7; L = 1000 (long enough for a wrong decay to show) with all on.
SCAN_CASES = [(L, o) for L in (1, 7) for o in OPTIONS] + [(1000, "all")]


@pytest.mark.parametrize("bc", ["shared", "grouped", "invariant"])
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("L, opts", SCAN_CASES, ids=[f"L{L}-{o}" for L, o in SCAN_CASES])
def test_sequential_matches_associative(L, opts, cplx, bc, tol):
    u, delta, A, B, C = inputs(L, bc, cplx)
    kw = kwargs_for(OPTIONS[opts], L, cplx)
    y1, s1 = selective_scan_ref(u, delta, A, B, C, return_last_state=True, **kw)
    y2, s2 = selective_scan_assoc(u, delta, A, B, C, return_last_state=True, **kw)
    torch.testing.assert_close(y2, y1, **tol[torch.float32])
    torch.testing.assert_close(s2, s1, **tol[torch.complex64 if cplx else torch.float32])


@pytest.mark.parametrize("conj_pair", [True, False])
def test_complex_readout_convention(conj_pair, tol):
    u, delta, A, B, C = inputs(9, cplx=True)
    y1 = selective_scan_ref(u, delta, A, B, C, conj_pair=conj_pair)
    y2 = selective_scan_assoc(u, delta, A, B, C, conj_pair=conj_pair)
    torch.testing.assert_close(y2, y1, **tol[torch.float32])


def test_state_carries_across_calls(tol):
    u, delta, A, B, C = inputs(20, "grouped")
    y, s = selective_scan_assoc(u, delta, A, B, C, return_last_state=True)
    y1, s1 = selective_scan_ref(u[..., :11], delta[..., :11], A, B[..., :11], C[..., :11],
                                return_last_state=True)
    y2, s2 = selective_scan_ref(u[..., 11:], delta[..., 11:], A, B[..., 11:], C[..., 11:],
                                return_last_state=True, initial_state=s1)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y, **tol[torch.float32])
    torch.testing.assert_close(s2, s, **tol[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype, tol):
    u, delta, A, B, C = (t.to(dtype) for t in inputs(50, "grouped"))
    kw = dict(D=torch.randn(d).to(dtype), z=torch.randn(b, d, 50).to(dtype),
              delta_bias=torch.randn(d).to(dtype), delta_softplus=True)
    got = selective_scan_assoc(u, delta, A, B, C, **kw)
    assert got.dtype == dtype
    want = selective_scan_ref(*(t.float() for t in (u, delta, A, B, C)),
                              **{k: v.float() if torch.is_tensor(v) else v for k, v in kw.items()})
    torch.testing.assert_close(got.float(), want, **tol[dtype])


@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
def test_gradcheck_associative(cplx):
    u, delta, A, B, C = inputs(4, "grouped", cplx, torch.float64)
    D, z = torch.randn(d, dtype=torch.float64), torch.randn(b, d, 4, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D, z)]

    def f(u, delta, A, B, C, D, z):
        return selective_scan_assoc(u, delta, A, B, C, D=D, z=z, delta_softplus=True)

    assert torch.autograd.gradcheck(f, leaves, fast_mode=True)


def test_gradients_agree_between_formulations():
    u, delta, A, B, C = inputs(12, "shared")
    grads = []
    for fn in (selective_scan_ref, selective_scan_assoc):
        leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
        fn(*leaves, delta_softplus=True).square().sum().backward()
        grads.append([t.grad for t in leaves])
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g2, g1, rtol=1e-3, atol=1e-4)


# --- the module -------------------------------------------------------------------------------

def module_inputs(m, L=10, dtype=torch.float32):
    gN = m.groups * m.d_state
    return (torch.randn(b, L, m.d_inner, dtype=dtype), torch.randn(b, L, m.d_inner, dtype=dtype),
            torch.randn(b, L, gN, dtype=dtype), torch.randn(b, L, gN, dtype=dtype))


MODULE_CASES = {
    "default": dict(),
    "grouped": dict(groups=2),
    "complex": dict(complex=True),
    "complex-pair": dict(complex=True, conj_pair=True),
    "no-bias-no-softplus-no-D": dict(delta_bias=False, delta_softplus=False, D=False),
    "start": dict(start=dict(k=3)),
}


@pytest.mark.parametrize("case", MODULE_CASES)
def test_module_matches_associative(case, tol):
    m = SelectiveSSM(4, 3, **MODULE_CASES[case]).eval()
    x, delta, B, C = module_inputs(m)
    z = torch.randn_like(x)
    y = m(x, delta, B, C, z=z)
    # The same layer written directly with the associative scan in its own layout.
    g, n = m.groups, m.d_state
    to_scan = lambda M: M.reshape(b, 10, g, n).permute(0, 2, 3, 1)  # noqa: E731
    want = selective_scan_assoc(x.transpose(1, 2), delta.transpose(1, 2), m.A(), to_scan(B),
                                to_scan(C), D=m.D, z=z.transpose(1, 2), delta_bias=m.delta_bias,
                                delta_softplus=m.delta_softplus, conj_pair=m.conj_pair)
    torch.testing.assert_close(y, want.transpose(1, 2), **tol[torch.float32])


def test_module_final_state_and_initial_state(tol):
    m = SelectiveSSM(4, 3)
    x, delta, B, C = module_inputs(m, 12)
    y, s = m(x, delta, B, C, return_final_state=True)
    y1, s1 = m(x[:, :5], delta[:, :5], B[:, :5], C[:, :5], return_final_state=True)
    y2 = m(x[:, 5:], delta[:, 5:], B[:, 5:], C[:, 5:], initial_state=s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, **tol[torch.float32])
    assert s.shape == (b, 4, 3)


def test_module_params_and_init():
    m = SelectiveSSM(6, 4)
    assert isinstance(m, Mamba1SSM)
    assert {k: tuple(v.shape) for k, v in m.named_parameters()} == {
        "A_log": (6, 4), "D": (6,), "delta_bias": (6,)}
    torch.testing.assert_close(m.A(), -torch.arange(1.0, 5.0).expand(6, 4))
    dt = F.softplus(m.delta_bias)
    assert (dt >= 1e-3 * 0.999).all() and (dt <= 1e-1 * 1.001).all()
    c = SelectiveSSM(6, 4, complex=True)
    assert {k for k, _ in c.named_parameters()} == {"A_log", "A_imag", "D", "delta_bias"}
    assert c.A().is_complex()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_module_low_precision(dtype, tol):
    m = SelectiveSSM(4, 3, groups=2)
    ins = module_inputs(m, 20)
    y = m(*(t.to(dtype) for t in ins))
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), m(*(t.to(dtype).float() for t in ins)), **tol[dtype])


@pytest.mark.parametrize("case", MODULE_CASES)
def test_module_backward_reaches_every_parameter(case):
    m = SelectiveSSM(4, 3, **MODULE_CASES[case]).train()
    m(*module_inputs(m), z=torch.randn(b, 10, 4)).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_module_meta_and_determinism():
    meta = SelectiveSSM(8, 4, complex=True, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    assert sum(p.numel() for p in meta.parameters()) == 8 * 4 * 2 + 8 + 8
    torch.manual_seed(5)
    a = SelectiveSSM(8, 4)
    torch.manual_seed(5)
    assert torch.equal(a.delta_bias, SelectiveSSM(8, 4).delta_bias)


@pytest.mark.parametrize("kwargs, name", [
    (dict(d_inner=6, d_state=4, groups=4), "groups"),
    (dict(d_inner=0, d_state=4), "d_inner"),
    (dict(d_inner=4, d_state=0), "d_state"),
    (dict(d_inner=4, d_state=4, variant="s4"), "variant"),
    (dict(d_inner=4, d_state=4, start=dict(k=-1)), "k"),
    (dict(d_inner=4, d_state=4, start=dict(k=1, mode="swap")), "mode"),
    (dict(d_inner=4, d_state=4, start=dict(k=1, sigma=-1.0)), "sigma"),
    (dict(d_inner=4, d_state=4, dt_min=1.0, dt_max=0.1), "dt_min"),
])
def test_module_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SelectiveSSM(**kwargs)


def test_module_forward_validation():
    m = SelectiveSSM(4, 3, groups=2)
    x, delta, B, C = module_inputs(m)
    with pytest.raises(ValueError, match="B"):
        m(x, delta, B[..., :3], C)
    with pytest.raises(ValueError, match="delta"):
        m(x, delta[:, :4], B, C)
    with pytest.raises(ValueError, match="variant"):
        Mamba1SSM(4, 3, variant="ssd")
