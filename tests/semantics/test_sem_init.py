"""Initialisers: closed forms written out by hand, the HiPPO-LegS eigenproblem by a dense eig,
distributions by their moments, determinism and meta tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from ssmc.semantics import init as I


def test_s4d_lin_closed_form():
    A = I.s4d_lin(4)
    assert A.dtype == torch.complex64
    want = torch.tensor([-0.5 + 0j, -0.5 + 1j * math.pi, -0.5 + 2j * math.pi, -0.5 + 3j * math.pi])
    torch.testing.assert_close(A, want.to(torch.complex64))


def test_s4d_inv_closed_form():
    # n_modes = 2 -> N = 4: imag = (4/pi)(4/1 - 1) and (4/pi)(4/3 - 1).
    A = I.s4d_inv(2)
    want = torch.tensor([-0.5 + 1j * 12 / math.pi, -0.5 + 1j * 4 / (3 * math.pi)])
    torch.testing.assert_close(A, want.to(torch.complex64))


def test_s4d_real_closed_form():
    A = I.s4d_real(3)
    assert not A.is_complex()
    torch.testing.assert_close(A, torch.tensor([-1.0, -2.0, -3.0]))


def _legs_by_loops(N):
    """HiPPO-LegS written entry by entry (HiPPO paper): -sqrt(2n+1)sqrt(2k+1) below the diagonal,
    -(n+1) on it, 0 above."""
    A = torch.zeros(N, N, dtype=torch.float64)
    for n in range(N):
        for k in range(N):
            if n > k:
                A[n, k] = -math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1)
            elif n == k:
                A[n, k] = -(n + 1)
    return A


def test_hippo_legs_matrix():
    torch.testing.assert_close(I.hippo_legs(6), _legs_by_loops(6))


@pytest.mark.parametrize("n_modes", [1, 4, 16])
def test_s4d_legs_is_normal_part_spectrum(n_modes):
    N = 2 * n_modes
    P = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)
    normal = _legs_by_loops(N) + torch.outer(P, P)  # -1/2 I + skew: the NPLR normal part
    ev = torch.linalg.eigvals(normal)  # general (non-Hermitian) solver: an independent route
    want = ev[ev.imag > 0]
    want = want[torch.argsort(want.imag)]
    got = I.s4d_legs(n_modes)
    assert got.shape == (n_modes,)
    torch.testing.assert_close(got.real, torch.full((n_modes,), -0.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(got.imag.double(), want.imag, rtol=1e-5, atol=1e-5)


def test_s4d_legs_tends_to_inv():
    # S4D-Inv approximates S4D-LegS's imaginary parts (the S4D paper's asymptotic formula):
    # at N = 64 the two agree within about 22% on every mode (measured), the same order and
    # the same N^2 scale; a wrong eigenproblem (a different matrix, a sign) would be far off.
    legs, inv = I.s4d_legs(32).imag, I.s4d_inv(32).imag.flip(0)
    assert (((legs - inv).abs() / legs) < 0.25).all()


def test_s4d_init_dispatch_and_errors():
    torch.testing.assert_close(I.s4d_init("lin", 3), I.s4d_lin(3))
    with pytest.raises(ValueError, match="init"):
        I.s4d_init("hippo", 3)
    with pytest.raises(ValueError, match="n_modes"):
        I.s4d_lin(0)


def test_log_uniform_range_and_moments():
    g = torch.Generator().manual_seed(0)
    x = I.log_uniform((20000,), 1e-3, 1e-1, generator=g)
    assert x.min() >= 1e-3 * (1 - 1e-6) and x.max() <= 1e-1 * (1 + 1e-6)
    logs = torch.log(x.double())
    # log x ~ U[log 1e-3, log 1e-1]: mean at the midpoint, variance (width^2)/12.
    width = math.log(1e-1) - math.log(1e-3)
    assert abs(logs.mean().item() - (math.log(1e-3) + width / 2)) < 0.05
    assert abs(logs.var().item() - width ** 2 / 12) < 0.05 * width ** 2 / 12


def test_log_dt_and_generator_determinism():
    a = I.log_dt_init(8, generator=torch.Generator().manual_seed(3))
    b = I.log_dt_init(8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert (a >= math.log(1e-3) - 1e-6).all() and (a <= math.log(1e-1) + 1e-6).all()


def test_inverse_softplus_roundtrip():
    y = torch.logspace(-4, 1, 50, dtype=torch.float64)
    torch.testing.assert_close(F.softplus(I.inverse_softplus(y)), y)


def test_mamba_dt_bias_lands_in_range():
    bias = I.mamba_dt_bias(1000, 1e-3, 1e-1, generator=torch.Generator().manual_seed(1))
    dt = F.softplus(bias.double())
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 1e-1 * (1 + 1e-4)
    floored = F.softplus(I.mamba_dt_bias(100, 1e-6, 1e-5, dt_init_floor=1e-4).double())
    torch.testing.assert_close(floored, torch.full((100,), 1e-4, dtype=torch.float64), rtol=1e-4,
                               atol=0)


def test_mamba_A_log():
    A = -torch.exp(I.mamba_A_log(3, 5))
    torch.testing.assert_close(A, -torch.arange(1.0, 6.0).expand(3, 5))


def test_polar_init_ring_and_phase():
    g = torch.Generator().manual_seed(0)
    nu, phi = I.polar_init((20000,), 0.5, 0.9, 1.0, generator=g)
    r = torch.exp(-torch.exp(nu.double()))
    theta = torch.exp(phi.double())
    assert r.min() >= 0.5 - 1e-6 and r.max() <= 0.9 + 1e-6
    assert theta.min() >= 0 and theta.max() <= 1.0 + 1e-6
    # uniform on the ring: r^2 ~ U[0.25, 0.81]; theta ~ U[0, 1].
    assert abs((r ** 2).mean().item() - 0.53) < 0.01
    assert abs(theta.mean().item() - 0.5) < 0.01


def test_polar_init_endpoints_stay_finite():
    nu, phi = I.polar_init((100,), 1.0, 1.0, 2 * math.pi)  # r = 1 exactly is clamped below 1
    assert torch.isfinite(nu).all() and torch.isfinite(phi).all()
    with pytest.raises(ValueError, match="r_min"):
        I.polar_init((3,), 0.9, 0.5)


def test_polar_gamma_matches_naive():
    nu = torch.linspace(-6, 2, 50, dtype=torch.float64)
    r = torch.exp(-torch.exp(nu))
    torch.testing.assert_close(I.polar_gamma(nu), torch.sqrt(1 - r ** 2))


def test_complex_normal_moments():
    C = I.complex_normal((50000,), generator=torch.Generator().manual_seed(0))
    assert C.dtype == torch.complex64
    assert abs((C.abs() ** 2).mean().item() - 1.0) < 0.03
    assert abs(C.real.var().item() - 0.5) < 0.02 and abs(C.imag.var().item() - 0.5) < 0.02


def test_meta_device():
    assert I.s4d_legs(8, device="meta").is_meta
    assert I.log_dt_init(4, device="meta").shape == (4,)
    assert all(t.is_meta for t in I.polar_init((2, 3), device="meta"))
