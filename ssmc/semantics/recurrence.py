"""Nonlinear latent recurrence with a convolved observation: PLRNN + HRF (MODELS.md section 8).

    z_t = A z_{t-1} + W relu(z_{t-1}) + h0 + C s_t      t = 1..L, z_0 given (default 0)
    x_t = B (hrf * z)_t                                 causal convolution along t, per latent

A is diagonal (stored as a vector), W is off-diagonal (its diagonal is masked here, so callers
may pass a full matrix).  relu makes the map piecewise linear and not associative: sequential.

Causal long convolution y[t] = sum_{k=0}^{min(t, K-1)} h[k] u[t-k], two independent ways:
`causal_conv_fft` (zero-padded FFT) and `causal_conv_direct` (grouped F.conv1d).
Everything computes in fp32 (fp64 stays fp64) and returns the input dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _ct(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def offdiag(W: torch.Tensor) -> torch.Tensor:
    """W with its diagonal zeroed (the diagonal part of the linear map belongs to A)."""
    return W * (1 - torch.eye(W.shape[-1], dtype=W.dtype, device=W.device))


def plrnn_ref(s, A, W, h0, C, z0=None) -> torch.Tensor:
    """PLRNN latent trajectory, sequential.

    s: (b, L, K) external inputs; A: (M,); W: (M, M); h0: (M,); C: (M, K);
    z0: (b, M), (M,) or None (zeros).  Returns z_1..z_L: (b, L, M).
    """
    ct = _ct(s)
    sf = s.to(ct)
    A, W, h0, C = (p.to(ct) for p in (A, W, h0, C))
    Wo = offdiag(W)
    b, L, _ = sf.shape
    z = sf.new_zeros(b, A.shape[0]) if z0 is None else z0.to(ct).expand(b, A.shape[0])
    drive = sf @ C.T + h0  # (b, L, M): the input part does not depend on z
    zs = []
    for t in range(L):
        z = A * z + torch.relu(z) @ Wo.T + drive[:, t]
        zs.append(z)
    out = torch.stack(zs, dim=1) if zs else sf.new_zeros(b, 0, A.shape[0])
    return out.to(s.dtype)


def hrf_double_gamma(tr: float = 2.0, length: int | None = None, peak: float = 6.0,
                     undershoot: float = 16.0, ratio: float = 1 / 6, peak_dispersion: float = 1.0,
                     undershoot_dispersion: float = 1.0, kernel_seconds: float = 32.0,
                     dtype=torch.float32, device=None) -> torch.Tensor:
    """SPM's canonical haemodynamic response (spm_hrf with its defaults), sampled every `tr` s.

        hrf(t) = g(t; peak / peak_dispersion, peak_dispersion)
                 - ratio * g(t; undershoot / undershoot_dispersion, undershoot_dispersion)
    with g(t; a, theta) the gamma density of shape a and scale theta, t = 0, tr, 2 tr, ...
    SPM's parameters: delay of response `peak` = 6 s and of undershoot `undershoot` = 16 s
    (these are the gammas' means; the positive lobe's maximum is at (6 - 1) * 1 = 5 s),
    dispersions 1 s, response/undershoot ratio 6 (ratio = 1/6), onset 0, kernel 32 s.
    length: number of taps, default floor(kernel_seconds / tr) + 1 as in SPM.  Normalised to
    unit sum like SPM.  Returns (length,).  SPM evaluates on a TR/16 micro-grid and keeps every
    16th sample, which with onset 0 is exactly this sampling.
    """
    if tr <= 0:
        raise ValueError(f"tr must be positive (seconds per sample), got {tr}")
    if length is None:
        length = int(math.floor(kernel_seconds / tr)) + 1
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    t = torch.arange(length, dtype=torch.float64, device=device) * tr

    def gamma_pdf(shape: float, scale: float) -> torch.Tensor:
        return torch.exp(torch.xlogy(torch.tensor(shape - 1.0, dtype=torch.float64), t)
                         - t / scale - math.lgamma(shape) - shape * math.log(scale))

    h = gamma_pdf(peak / peak_dispersion, peak_dispersion) \
        - ratio * gamma_pdf(undershoot / undershoot_dispersion, undershoot_dispersion)
    return (h / h.sum()).to(dtype)


def _kernel_2d(k: torch.Tensor, c: int) -> torch.Tensor:
    """(K,) shared or (c, K) per channel -> (c, K)."""
    return k.expand(c, k.shape[-1]) if k.dim() == 1 else k


def causal_conv_fft(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal convolution by FFT.  u: (b, L, c) channel-last; k: (c, K) or (K,) -> (b, L, c)."""
    ct = _ct(u)
    b, L, c = u.shape
    kk = _kernel_2d(k.to(ct), c)[:, :L]  # taps beyond L never reach an output
    n = 1 << max(L + kk.shape[1] - 2, 0).bit_length()  # >= L + K - 1: no circular wrap
    U = torch.fft.rfft(u.to(ct).transpose(1, 2), n=n)  # (b, c, n/2+1)
    Kf = torch.fft.rfft(kk, n=n)
    y = torch.fft.irfft(U * Kf, n=n)[..., :L]
    return y.transpose(1, 2).to(u.dtype)


def causal_conv_direct(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal convolution by grouped F.conv1d with K-1 zeros on the left (same args as FFT)."""
    ct = _ct(u)
    b, L, c = u.shape
    kk = _kernel_2d(k.to(ct), c)
    K = kk.shape[1]
    # conv1d correlates: y[t] = sum_j w[j] upad[t + j] with upad[p] = u[p - (K-1)], so w = flip(k)
    w = kk.flip(-1)[:, None, :]
    y = F.conv1d(F.pad(u.to(ct).transpose(1, 2), (K - 1, 0)), w, groups=c)
    return y.transpose(1, 2).to(u.dtype)


def plrnn_observe(z: torch.Tensor, hrf: torch.Tensor, B: torch.Tensor,
                  method: str = "fft") -> torch.Tensor:
    """x_t = B (hrf * z)_t.  z: (b, L, M); hrf: (K,) or (M, K); B: (P, M) -> (b, L, P)."""
    conv = {"fft": causal_conv_fft, "direct": causal_conv_direct}.get(method)
    if conv is None:
        raise ValueError(f"method must be 'fft' or 'direct', got {method!r}")
    zc = conv(z.to(_ct(z)), hrf)
    return (zc @ B.to(zc.dtype).T).to(z.dtype)
