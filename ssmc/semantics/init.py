"""Initialisers of the SSM zoo (MODELS.md sections 1, 2 and 5): pure functions returning tensors.

Conventions shared by every function here:

* ``n_modes`` is the number of diagonal states actually stored.  With conjugate pairs
  (S4D's default) ``n_modes`` complex states stand for ``N = 2 * n_modes`` real ones, and the
  formulas of MODELS.md that mention ``N`` use that ``N``.  The same ``N = 2 * n_modes`` is used
  when a caller does not pair the states, so a given ``n_modes`` always yields the same modes
  and only the readout (``2 Re`` or ``Re``) differs.
* Everything is computed on the CPU in float64 (the HiPPO eigenproblem wants it) and returned as
  float32 / complex64 on ``device``.  Passing ``device="meta"`` is allowed and cheap.
* Random draws take an optional ``torch.Generator`` (CPU) so results are reproducible without
  touching the global seed; without one they use the global RNG.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "s4d_lin", "s4d_inv", "s4d_real", "s4d_legs", "s4d_init", "hippo_legs",
    "log_uniform", "log_dt_init", "mamba_A_log", "mamba_dt_bias", "inverse_softplus",
    "polar_init", "polar_gamma", "complex_normal",
]

_CPU = torch.device("cpu")


def _out(t: torch.Tensor, device) -> torch.Tensor:
    """float64 -> float32, complex128 -> complex64, then move."""
    t = t.to(torch.complex64 if t.is_complex() else torch.float32)
    return t if device is None else t.to(device)


def _check_modes(n_modes: int) -> None:
    if not isinstance(n_modes, int) or n_modes < 1:
        raise ValueError(f"n_modes must be a positive int, got {n_modes!r}")


# --- S4D diagonal A (MODELS.md section 1) -------------------------------------------------

def s4d_lin(n_modes: int, *, device=None) -> torch.Tensor:
    """S4D-Lin: A_n = -1/2 + i pi n, n = 0..n_modes-1.  Returns (n_modes,) complex64."""
    _check_modes(n_modes)
    n = torch.arange(n_modes, dtype=torch.float64)
    return _out(torch.complex(torch.full_like(n, -0.5), math.pi * n), device)


def s4d_inv(n_modes: int, *, device=None) -> torch.Tensor:
    """S4D-Inv: A_n = -1/2 + i (N/pi)(N/(2n+1) - 1) with N = 2 n_modes.  (n_modes,) complex64.

    This is the asymptotic form of the HiPPO-LegS spectrum; the imaginary parts decrease
    with n, from about N^2/pi down to about 0.
    """
    _check_modes(n_modes)
    N = 2 * n_modes
    n = torch.arange(n_modes, dtype=torch.float64)
    imag = (N / math.pi) * (N / (2 * n + 1) - 1)
    return _out(torch.complex(torch.full_like(n, -0.5), imag), device)


def s4d_real(n_modes: int, *, device=None) -> torch.Tensor:
    """S4D-Real: A_n = -(n+1), n = 0..n_modes-1.  Returns (n_modes,) float32 (real).

    These are the eigenvalues (= diagonal) of the triangular HiPPO-LegS matrix.
    """
    _check_modes(n_modes)
    return _out(-(torch.arange(n_modes, dtype=torch.float64) + 1), device)


def hippo_legs(N: int) -> torch.Tensor:
    """The HiPPO-LegS state matrix (N, N) float64:
    A_nk = -sqrt(2n+1) sqrt(2k+1) for n > k, -(n+1) for n = k, 0 for n < k."""
    q = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * q + 1)
    A = -torch.tril(r[:, None] * r[None, :], diagonal=-1)
    return A - torch.diag(q + 1)


def s4d_legs(n_modes: int, *, device=None) -> torch.Tensor:
    """S4D-LegS: the diagonal A of the normal part of HiPPO-LegS's normal-plus-low-rank form.

    Exactly what is taken (S4D paper, section 4 / the authors' ``nplr('legs')``):
    with N = 2 n_modes and P_n = sqrt(n + 1/2), the matrix A_legs + P P^T equals
    -1/2 I + S with S real skew-symmetric (entries -/+ sqrt(2n+1)sqrt(2k+1)/2 below/above the
    diagonal).  S's eigenvalues are purely imaginary and come in pairs +-i w; S4D-LegS keeps
    A_n = -1/2 + i w_n for the n_modes eigenvalues with w_n > 0, sorted ascending.
    (Its real part is -1/2 for every mode: the low-rank term P P^T is dropped.)
    Returns (n_modes,) complex64.
    """
    _check_modes(n_modes)
    N = 2 * n_modes
    q = torch.arange(N, dtype=torch.float64)
    P = torch.sqrt(q + 0.5)
    S = hippo_legs(N) + torch.outer(P, P) + 0.5 * torch.eye(N, dtype=torch.float64)
    # i S is Hermitian: its real eigenvalues lambda give S's eigenvalues -i lambda.
    lam = torch.linalg.eigvalsh(1j * S.to(torch.complex128))
    w = torch.sort(-lam).values  # imaginary parts of S's eigenvalues, ascending
    w = w[w > 0][:n_modes]
    return _out(torch.complex(torch.full_like(w, -0.5), w), device)


_S4D_INITS = {"lin": s4d_lin, "inv": s4d_inv, "real": s4d_real, "legs": s4d_legs}


def s4d_init(kind: str, n_modes: int, *, device=None) -> torch.Tensor:
    """Dispatch on kind in {"lin", "inv", "real", "legs"}; see the functions above."""
    if kind not in _S4D_INITS:
        raise ValueError(f"init must be one of {sorted(_S4D_INITS)}, got {kind!r}")
    return _S4D_INITS[kind](n_modes, device=device)


# --- step sizes ---------------------------------------------------------------------------

def log_uniform(shape, lo: float, hi: float, *, generator=None, device=None) -> torch.Tensor:
    """exp(U[log lo, log hi]): log-uniform samples in [lo, hi].  float32."""
    if not 0 < lo <= hi:
        raise ValueError(f"need 0 < lo <= hi, got lo={lo}, hi={hi}")
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=_CPU)
    return _out(torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))), device)


def log_dt_init(d: int, dt_min: float = 1e-3, dt_max: float = 1e-1, *, generator=None,
                device=None) -> torch.Tensor:
    """S4D's log step: log_dt ~ U[log dt_min, log dt_max], shape (d,)."""
    return torch.log(log_uniform((d,), dt_min, dt_max, generator=generator, device=device))


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = y, for y > 0: x = y + log(1 - exp(-y)) (stable via expm1)."""
    return y + torch.log(-torch.expm1(-y))


def mamba_dt_bias(d: int, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4,
                  *, generator=None, device=None) -> torch.Tensor:
    """Mamba's dt bias (d,): inverse-softplus of dt ~ log-uniform[dt_min, dt_max], dt floored
    at dt_init_floor, so that softplus(0 + bias) starts in that range."""
    dt = log_uniform((d,), dt_min, dt_max, generator=generator).double().clamp(min=dt_init_floor)
    return _out(inverse_softplus(dt), device)


def mamba_A_log(d: int, N: int, *, device=None) -> torch.Tensor:
    """Mamba's A_log (d, N) with A = -exp(A_log) = -(1, ..., N) in every channel (S4D-Real)."""
    _check_modes(N)
    a = torch.log(torch.arange(1, N + 1, dtype=torch.float64))
    return _out(a.expand(d, N).contiguous(), device)


# --- polar (LRU-style) parameterisation (MODELS.md section 5) -------------------------------

def polar_init(shape, r_min: float = 0.9, r_max: float = 0.999, max_phase: float = 2 * math.pi,
               *, generator=None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(nu, phi) with a = r e^{i theta}, r = exp(-exp(nu)), theta = exp(phi).

    As in the LRU paper, the eigenvalues are uniform on the ring r_min <= |a| <= r_max
    (r^2 ~ U[r_min^2, r_max^2]) and theta ~ U[0, max_phase].  r is kept strictly below 1 and
    theta strictly above 0 so that nu and phi stay finite.
    """
    if not 0 <= r_min <= r_max <= 1:
        raise ValueError(f"need 0 <= r_min <= r_max <= 1, got r_min={r_min}, r_max={r_max}")
    if max_phase <= 0:
        raise ValueError(f"max_phase must be > 0, got {max_phase}")
    u1 = torch.rand(shape, generator=generator, dtype=torch.float64)
    u2 = torch.rand(shape, generator=generator, dtype=torch.float64)
    r2 = u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2
    minus_log_r = (-0.5 * torch.log(r2)).clamp(min=1e-12)  # -log r = exp(nu) > 0
    theta = (max_phase * u2).clamp(min=1e-12)
    return _out(torch.log(minus_log_r), device), _out(torch.log(theta), device)


def polar_gamma(nu: torch.Tensor) -> torch.Tensor:
    """LRU input normalisation gamma = sqrt(1 - r^2) with r = exp(-exp(nu)).

    Written as sqrt(-expm1(-2 exp(nu))) so it stays accurate as r -> 1.  It makes the
    stationary variance of x_t = a x_{t-1} + gamma b u_t independent of r for white input.
    """
    return torch.sqrt(-torch.expm1(-2 * torch.exp(nu)))


def complex_normal(shape, *, generator=None, device=None) -> torch.Tensor:
    """C ~ N(0, 1) complex: real and imaginary parts independent N(0, 1/2), so E|C|^2 = 1
    (torch.randn's complex convention, as in S4D's code).  complex64."""
    re = torch.randn(shape, generator=generator, dtype=torch.float64)
    im = torch.randn(shape, generator=generator, dtype=torch.float64)
    return _out(torch.complex(re, im) / math.sqrt(2.0), device)
