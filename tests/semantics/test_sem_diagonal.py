"""S4D oracle: Vandermonde kernel vs the recurrence's impulse response, FFT convolution vs the
recurrence and vs a direct causal convolution, discretisations vs the continuous system,
polar form, the module (fft vs recurrence, dtypes, gradients, validation)."""

import cmath
import math

import pytest
import torch

from ssmc.semantics import init as I
from ssmc.semantics.diagonal import (discretize, discretize_bilinear, discretize_zoh,
                                     polar_discrete, s4d_fft_conv, s4d_kernel, s4d_recurrence)
from ssmc.semantics.modules_ssm import DiagonalSSM

d, n = 3, 4


def params(init, dtype=torch.float32, dt=None):
    """A (d, n) from an S4D init, B = 1, C ~ N(0, 1) (complex unless init == 'real-state')."""
    if init == "real-state":
        A = I.s4d_real(n).expand(d, n).to(dtype)
        B = torch.ones(d, n, dtype=dtype)
        C = torch.randn(d, n, dtype=dtype)
    else:
        cd = torch.complex128 if dtype == torch.float64 else torch.complex64
        A = I.s4d_init(init, n).expand(d, n).to(cd)
        B = torch.ones(d, n, dtype=cd)
        C = I.complex_normal((d, n)).to(cd)
    if dt is None:
        dt = torch.exp(I.log_dt_init(d)).to(dtype)
    return A, B, C, dt


INITS = ["lin", "inv", "legs", "real", "real-state"]


@pytest.mark.parametrize("conj_pair", [True, False])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("init", INITS)
def test_kernel_is_impulse_response(init, disc, conj_pair):
    A, B, C, dt = params(init)
    Abar, Bbar = discretize(A, B, dt, disc)
    L = 64
    K = s4d_kernel(Abar, Bbar, C, L, conj_pair)
    impulse = torch.zeros(1, d, L)
    impulse[..., 0] = 1.0
    y = s4d_recurrence(impulse, Abar, Bbar, C, None, conj_pair)
    torch.testing.assert_close(K, y[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("conj_pair, factor", [(True, 2), (False, 1)])
def test_kernel_closed_form_one_mode(conj_pair, factor):
    # One mode by Python's complex arithmetic: K[l] = factor * Re(C Bbar Abar^l).
    a, bb, c, dt = complex(-0.3, 2.0), complex(0.5, -0.2), complex(1.1, 0.7), 0.1
    Abar = cmath.exp(dt * a)
    Bbar = (Abar - 1) / a * bb
    want = torch.tensor([[factor * (c * Bbar * Abar ** l).real for l in range(6)]],
                        dtype=torch.float64)
    t = lambda z: torch.tensor([[z]], dtype=torch.complex128)  # noqa: E731
    Ab, Bb = discretize_zoh(t(a), t(bb), torch.tensor([dt], dtype=torch.float64))
    torch.testing.assert_close(s4d_kernel(Ab, Bb, t(c), 6, conj_pair), want)
    real = s4d_kernel(torch.tensor([[0.5]]), torch.tensor([[2.0]]), torch.tensor([[3.0]]), 4)
    torch.testing.assert_close(real, torch.tensor([[6.0, 3.0, 1.5, 0.75]]))  # no Re, no 2


@pytest.mark.parametrize("L", [1, 7, 1000])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("init", INITS)
def test_fft_conv_matches_recurrence(init, disc, L, tol):
    A, B, C, dt = params(init)
    Abar, Bbar = discretize(A, B, dt, disc)
    D = torch.randn(d)
    u = torch.randn(2, d, L)
    want = s4d_recurrence(u, Abar, Bbar, C, D)
    got = s4d_fft_conv(u, s4d_kernel(Abar, Bbar, C, L), D)
    torch.testing.assert_close(got, want, **tol[torch.float32])


def test_fft_conv_long_sequence(tol):
    # L = 4097: one past a power of two, the FFT length 2L = 8194 is not a power of two.
    A, B, C, dt = params("inv")
    Abar, Bbar = discretize(A, B, dt, "zoh")
    u = torch.randn(1, d, 4097)
    want = s4d_recurrence(u, Abar, Bbar, C)
    got = s4d_fft_conv(u, s4d_kernel(Abar, Bbar, C, 4097))
    torch.testing.assert_close(got, want, **tol[torch.float32])


def test_fft_conv_matches_direct_convolution():
    u = torch.randn(2, d, 50, dtype=torch.float64)
    K = torch.randn(d, 50, dtype=torch.float64)
    D = torch.randn(d, dtype=torch.float64)
    want = torch.zeros_like(u)
    for t in range(50):
        for s in range(t + 1):
            want[..., t] += K[:, s] * u[..., t - s]
    want += D[:, None] * u
    torch.testing.assert_close(s4d_fft_conv(u, K, D), want)


def test_zoh_is_exact_for_constant_input():
    # x(dt) = e^{A dt} x0 + int_0^dt e^{A s} ds B u, the integral by a fine trapezoid rule.
    A, B, _, dt = params("lin", torch.float64)
    Abar, Bbar = discretize_zoh(A, B, dt)
    s = torch.linspace(0, 1, 20001, dtype=torch.float64)[:, None, None] * dt[:, None]
    integral = torch.trapezoid(torch.exp(s * A), s, dim=0) * B
    torch.testing.assert_close(Bbar, integral, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(Abar, torch.exp(dt[:, None] * A))


def test_bilinear_agrees_with_zoh_to_third_order():
    # Tustin's Abar is the (1,1) Pade approximant of exp(dt A): error O((dt |A|)^3).
    A, B, _, _ = params("lin", torch.float64)
    for dt in (1e-2, 1e-3):
        dtv = torch.full((d,), dt, dtype=torch.float64)
        za, zb = discretize_zoh(A, B, dtv)
        ba, bb = discretize_bilinear(A, B, dtv)
        scale = (dt * A.abs().max()).item() ** 3
        assert (za - ba).abs().max() <= scale
        assert (zb - bb).abs().max() <= scale * dt * 10  # Bbar carries one more factor of dt


def test_discretize_rejects_unknown():
    A, B, _, dt = params("lin")
    with pytest.raises(ValueError, match="discretization"):
        discretize(A, B, dt, "euler")


def test_polar_discrete():
    nu, phi = I.polar_init((d, n))
    B = torch.randn(d, n, dtype=torch.complex64)
    Abar, Bbar = polar_discrete(nu, phi, B)
    r = torch.exp(-torch.exp(nu))
    torch.testing.assert_close(Abar.abs(), r)
    torch.testing.assert_close(torch.angle(Abar), torch.remainder(torch.exp(phi) + math.pi,
                                                                  2 * math.pi) - math.pi)
    torch.testing.assert_close(Bbar, B * torch.sqrt(1 - r ** 2), rtol=1e-4, atol=1e-6)
    assert (Abar.abs() < 1).all()
    _, Braw = polar_discrete(nu, phi, B, normalize=False)
    torch.testing.assert_close(Braw, B)


def test_polar_normalisation_keeps_state_variance():
    # White input through x_t = a x_{t-1} + gamma u_t: stationary E|x|^2 = gamma^2/(1-r^2) = 1.
    nu, phi = I.polar_init((1, 3), 0.9, 0.99)
    Abar, Bbar = polar_discrete(nu, phi, torch.ones(1, 3, dtype=torch.complex64))
    u = torch.randn(64, 1, 4000)
    _, x = s4d_recurrence(u, Abar, Bbar, torch.ones(1, 3), return_final_state=True)
    assert ((x.abs() ** 2).mean(0) - 1).abs().max() < 0.35


def test_recurrence_initial_and_final_state():
    A, B, C, dt = params("lin")
    Abar, Bbar = discretize(A, B, dt, "zoh")
    u = torch.randn(2, d, 20)
    y_full, x_full = s4d_recurrence(u, Abar, Bbar, C, return_final_state=True)
    y1, x1 = s4d_recurrence(u[..., :8], Abar, Bbar, C, return_final_state=True)
    y2, x2 = s4d_recurrence(u[..., 8:], Abar, Bbar, C, initial_state=x1, return_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y_full)
    torch.testing.assert_close(x2, x_full)


def test_gradcheck_kernel_and_conv():
    A, B, C, dt = params("lin", torch.float64)
    L = 5
    u = torch.randn(1, d, L, dtype=torch.float64)
    D = torch.randn(d, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (A, C, dt, u, D)]

    def fft_path(A, C, dt, u, D):
        Abar, Bbar = discretize_zoh(A, B, dt)
        return s4d_fft_conv(u, s4d_kernel(Abar, Bbar, C, L), D)

    def rec_path(A, C, dt, u, D):
        Abar, Bbar = discretize_bilinear(A, B, dt)
        return s4d_recurrence(u, Abar, Bbar, C, D)

    assert torch.autograd.gradcheck(fft_path, leaves, fast_mode=True)
    assert torch.autograd.gradcheck(rec_path, leaves, fast_mode=True)


# --- the module -------------------------------------------------------------------------------

MODULE_CASES = {
    "lin-zoh": dict(),
    "inv-bilinear": dict(init="inv", discretization="bilinear"),
    "legs-nopair": dict(init="legs", conj_pair=False),
    "real-complex": dict(init="real"),
    "real-state": dict(complex=False, init="real"),
    "polar": dict(parameterization="polar"),
    "fixed-dt-B-noD": dict(learn_dt=False, learn_B=False, D=False),
}


@pytest.mark.parametrize("case", MODULE_CASES)
def test_module_fft_matches_recurrence(case, tol):
    m = DiagonalSSM(4, 8, **MODULE_CASES[case])
    u = torch.randn(2, 33, 4)
    y_fft = m(u)
    m.method = "recurrence"
    torch.testing.assert_close(y_fft, m(u), **tol[torch.float32])
    assert y_fft.shape == u.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["fft", "recurrence"])
def test_module_low_precision_inputs(method, dtype, tol):
    m = DiagonalSSM(4, 8, method=method)
    u = torch.randn(2, 40, 4).to(dtype)
    y = m(u)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), m(u.float()), **tol[dtype])


@pytest.mark.parametrize("case", MODULE_CASES)
def test_module_backward_reaches_every_parameter(case):
    m = DiagonalSSM(4, 8, **MODULE_CASES[case])
    m(torch.randn(2, 9, 4)).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_module_parameters_and_init():
    m = DiagonalSSM(5, 8)
    shapes = {k: tuple(v.shape) for k, v in m.named_parameters()}
    assert shapes == {"log_dt": (5,), "A_log_re": (5, 4), "A_im": (5, 4), "B": (5, 4, 2),
                      "C": (5, 4, 2), "D": (5,)}
    torch.testing.assert_close(m.continuous_A()[0], I.s4d_lin(4))
    assert ((m.log_dt >= math.log(1e-3) - 1e-6) & (m.log_dt <= math.log(1e-1) + 1e-6)).all()
    fixed = DiagonalSSM(5, 8, learn_dt=False, learn_B=False)
    assert {"log_dt", "B"} <= {k for k, _ in fixed.named_buffers()}
    polar = DiagonalSSM(5, 8, parameterization="polar")
    assert {k for k, _ in polar.named_parameters()} == {"nu", "phi", "B", "C", "D"}


def test_module_deterministic_and_meta():
    torch.manual_seed(1)
    a = DiagonalSSM(4, 8)
    torch.manual_seed(1)
    b = DiagonalSSM(4, 8)
    for (k, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), k
    meta = DiagonalSSM(4, 8, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in a.parameters())


@pytest.mark.parametrize("kwargs, name", [
    (dict(d_model=0, d_state=4), "d_model"),
    (dict(d_model=4, d_state=5), "d_state"),
    (dict(d_model=4, d_state=4, complex=False), "init"),
    (dict(d_model=4, d_state=4, complex=False, init="real", parameterization="polar"), "polar"),
    (dict(d_model=4, d_state=4, discretization="euler"), "discretization"),
    (dict(d_model=4, d_state=4, method="chunked"), "method"),
    (dict(d_model=4, d_state=4, dt_min=0.2, dt_max=0.1), "dt_min"),
])
def test_module_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DiagonalSSM(**kwargs)
    with pytest.raises(ValueError, match="u must be"):
        DiagonalSSM(4, 4)(torch.randn(2, 3, 5))
