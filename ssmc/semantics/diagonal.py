"""Diagonal time-invariant SSM (S4D, MODELS.md section 1) and its polar form (section 5).

Layouts: u, y are (b, d, L) (channels before time, like the selective-scan oracles); per-channel
parameters are (d, n) with n the number of stored modes.  A, B, C are complex, or all real for
S4D-Real with a real state.  Outputs take the dtype of u.

Computation precision: fp32 / complex64, unless an argument is float64 / complex128 (then 64-bit,
so that float64 gradchecks mean something); fp16 / bf16 inputs are computed in fp32.

Readout: with complex modes and ``conj_pair`` each stored mode stands for a conjugate pair, so
y = 2 Re(sum_n C_n x_n); without it y = Re(sum_n C_n x_n); with a real state y = sum_n C_n x_n.
"""

from __future__ import annotations

import torch

from ssmc.semantics.init import polar_gamma

__all__ = [
    "work_dtype", "as_work", "discretize_zoh", "discretize_bilinear", "discretize",
    "polar_discrete", "s4d_kernel", "s4d_fft_conv", "s4d_recurrence",
]


_WIDE = (torch.float64, torch.complex128)


def work_dtype(*ts) -> torch.dtype:
    """The real computation dtype for these tensors: float64 if any is 64-bit, else float32."""
    return torch.float64 if any(t is not None and t.dtype in _WIDE for t in ts) else torch.float32


def as_work(*ts):
    """Cast each tensor (None passes) to the computation dtype shared by all of them, keeping
    real tensors real and complex ones complex."""
    real = work_dtype(*ts)
    cplx = torch.complex128 if real == torch.float64 else torch.complex64
    return tuple(None if t is None else t.to(cplx if t.is_complex() else real) for t in ts)


def _broadcast_dt(dt: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """dt (d,) -> (d, 1) so that it scales every mode of its channel; dt (d, n) stays."""
    return dt[..., None] if dt.dim() == A.dim() - 1 else dt


def discretize_zoh(A, B, dt):
    """Zero-order hold: Abar = exp(dt A), Bbar = (Abar - 1) / A * B.

    A, B: (d, n) complex or real (A != 0); dt: (d,) or (d, n) positive.
    Returns Abar, Bbar (d, n).
    """
    A, B, dt = as_work(A, B, dt)
    dtA = _broadcast_dt(dt, A) * A
    Abar = torch.exp(dtA)
    # expm1 keeps (Abar - 1) accurate when dt |A| is tiny (real A only: no complex expm1).
    num = Abar - 1 if Abar.is_complex() else torch.expm1(dtA)
    return Abar, num / A * B


def discretize_bilinear(A, B, dt):
    """Bilinear (Tustin): Abar = (1 + dt A / 2) / (1 - dt A / 2), Bbar = dt B / (1 - dt A / 2).

    Shapes as discretize_zoh.
    """
    A, B, dt = as_work(A, B, dt)
    dt = _broadcast_dt(dt, A)
    half = dt * A / 2
    denom = 1 - half
    return (1 + half) / denom, dt * B / denom


_DISCRETIZE = {"zoh": discretize_zoh, "bilinear": discretize_bilinear}


def discretize(A, B, dt, method: str = "zoh"):
    """Dispatch on method in {"zoh", "bilinear"}."""
    if method not in _DISCRETIZE:
        raise ValueError(f"discretization must be one of {sorted(_DISCRETIZE)}, got {method!r}")
    return _DISCRETIZE[method](A, B, dt)


def polar_discrete(nu, phi, B, normalize: bool = True):
    """Polar (LRU-style) discrete parameters: Abar = r e^{i theta}, r = exp(-exp(nu)),
    theta = exp(phi), so |Abar| < 1 for every real nu.

    There is no step size: the recurrence is already discrete.  With ``normalize`` the input is
    scaled by gamma = sqrt(1 - r^2) (the LRU's normalisation, here a function of nu rather than
    a separate parameter), so Bbar = gamma B.  nu, phi: (d, n) real; B: (d, n).
    Returns Abar (d, n) complex64, Bbar (d, n) complex64.
    """
    nu, phi, B = as_work(nu, phi, B)
    r = torch.exp(-torch.exp(nu))
    theta = torch.exp(phi)
    Abar = torch.polar(r, theta)
    Bbar = B.to(Abar.dtype)
    if normalize:
        Bbar = Bbar * polar_gamma(nu)
    return Abar, Bbar


def _readout(s: torch.Tensor, conj_pair: bool) -> torch.Tensor:
    if not s.is_complex():
        return s
    return s.real * 2 if conj_pair else s.real


def s4d_kernel(Abar, Bbar, C, L: int, conj_pair: bool = True) -> torch.Tensor:
    """Convolution kernel by a Vandermonde product: K[l] = 2 Re sum_n C_n Bbar_n Abar_n^l.

    (Re without conj_pair; no Re for real parameters.)  Abar, Bbar, C: (d, n).
    Returns K (d, L) real (float32; float64 for 64-bit inputs).  Abar_n^l is evaluated
    directly as a power for every l, not by repeated multiplication, so it is independent of
    the recurrence.
    """
    Abar, Bbar, C = as_work(Abar, Bbar, C)
    ell = torch.arange(L, dtype=work_dtype(Abar), device=Abar.device)
    # complex: Abar^l = exp(l log Abar); real: pow handles a negative base with integral l.
    V = Abar[..., None] ** (ell.to(Abar.dtype) if Abar.is_complex() else ell)  # (d, n, L)
    CB = C * Bbar
    if CB.is_complex() and not V.is_complex():
        V = V.to(CB.dtype)
    K = torch.einsum("dn,dnl->dl", CB, V)
    return _readout(K, conj_pair)


def s4d_fft_conv(u, K, D=None) -> torch.Tensor:
    """Causal convolution y[t] = sum_{l<=t} K[l] u[t-l] (+ D u[t]) by an FFT of length 2L.

    u: (b, d, L); K: (d, L) real; D: (d,) or None.  Returns (b, d, L) in u's dtype.  The
    zero padding to 2L makes the circular convolution of the FFT a linear (causal) one.
    """
    dtype_in = u.dtype
    uf, K, D = as_work(u, K, D)
    L = uf.shape[-1]
    n = 2 * L
    y = torch.fft.irfft(torch.fft.rfft(uf, n=n) * torch.fft.rfft(K, n=n), n=n)[..., :L]
    if D is not None:
        y = y + uf * D[:, None]
    return y.to(dtype_in)


def s4d_recurrence(u, Abar, Bbar, C, D=None, conj_pair: bool = True, initial_state=None,
                   return_final_state: bool = False):
    """Sequential recurrence x_t = Abar x_{t-1} + Bbar u_t, y_t = readout(C x_t) + D u_t.

    u: (b, d, L); Abar, Bbar, C: (d, n); D: (d,); initial_state: (b, d, n).
    Returns y (b, d, L) in u's dtype [, final state (b, d, n) in the computation dtype].
    """
    dtype_in = u.dtype
    uf, Abar, Bbar, C, D = as_work(u, Abar, Bbar, C, D)
    b, d, L = uf.shape
    state_dtype = torch.promote_types(Abar.dtype, Bbar.dtype)
    x = torch.zeros(b, d, Abar.shape[-1], dtype=state_dtype, device=uf.device)
    if initial_state is not None:
        x = x + initial_state.to(state_dtype)
    ys = []
    for t in range(L):
        x = Abar * x + Bbar * uf[:, :, t, None]
        ys.append(_readout((C * x).sum(-1), conj_pair))
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(b, d, 0)
    if D is not None:
        y = y + uf * D[:, None]
    y = y.to(dtype_in)
    return (y, x) if return_final_state else y
