"""The diagonal time-invariant SSM (S4D, and the polar / LRU form: MODELS.md sections 1, 5)
assembled for speed, channels-last.  The meaning is ``ssmc.semantics.diagonal`` (s4d_kernel +
s4d_fft_conv, or s4d_recurrence), given the discrete parameters (Abar, Bbar, C): both
parameterisations reach these paths through `DiagonalSSM.discrete()`, so polar needs nothing
of its own here.

* "fft": the convolution kernel K[l] = scale Re sum_n (C Bbar)_n Abar_n^l by a *blocked*
  Vandermonde product: with l = m T + j, Abar^l = Abar^{mT} Abar^j, so per channel
  K[m, j] = Re sum_n (C Bbar Abar^{mT})_n (Abar^j)_n, one (M x n) @ (n x T) matmul (batched over
  channels; complex as a real matmul of twice the depth).  Only the two small power tables
  (d, n, T + M) need powers, taken in float64 (exp(l log Abar)), so no rounding accumulates along
  l and the big (d, n, L) power tensor of the oracle is never formed.  CPU tensors that need no
  gradient (eager inference) take K from the TVM Vandermonde kernel instead
  (ssmc.codegen.tvm.vandermonde: chunked powers, no matmul over padded blocks; compiled
  s4d_complex b2 L1024 inference 23 -> 12 ms, load 1.5).  Then y = K * u + D u by rfft /
  irfft of length 2L (torch) along time.
* "sequential": the TVM CPU recurrence kernel (ssmc.codegen.tvm.diagonal_scan), C folded into
  the input, channels vectorised.
"""

from __future__ import annotations

import math

import torch

from ssmc.semantics.diagonal import as_work, work_dtype

ALGORITHMS = ("fft", "sequential")


def _block(L: int) -> int:
    """T ~ sqrt(L) (a power of two, 16..256): balances the two power tables."""
    return int(min(256, max(16, 1 << max(0, math.ceil(math.log2(max(L, 1)) / 2)))))


def vandermonde_kernel(Abar, Bbar, C, L: int, conj_pair: bool = True, block: int | None = None):
    """K (d, L) = scale Re sum_n C_n Bbar_n Abar_n^l (semantics.diagonal.s4d_kernel's meaning);
    real (float64 for 64-bit parameters, else float32)."""
    if not isinstance(L, int) or L < 0:
        raise ValueError(f"L must be an int >= 0, got {L!r}")
    if block is not None and (not isinstance(block, int) or block < 1):
        raise ValueError(f"block must be a positive int, got {block!r}")
    Abar, Bbar, C = as_work(Abar, Bbar, C)
    real = work_dtype(Abar, Bbar, C)
    d, n = Abar.shape
    dev = Abar.device
    cplx = any(t.is_complex() for t in (Abar, Bbar, C))
    if L == 0:
        return torch.zeros(d, 0, dtype=real, device=dev)
    T = block or _block(L)
    Mb = -(-L // T)
    j = torch.arange(T, dtype=torch.float64, device=dev)
    mT = torch.arange(Mb, dtype=torch.float64, device=dev) * T
    if cplx:
        # polar form with real float64 ops (torch's complex exp is ~40x slower on the CPU)
        A64 = Abar.to(torch.complex128)
        logr, theta = torch.log(A64.abs())[..., None], torch.angle(A64)[..., None]

        def powers(e):  # Abar^e for a float64 vector e: (re, im), each (d, n, len(e))
            mag = torch.exp(logr * e)
            return mag * torch.cos(theta * e), mag * torch.sin(theta * e)

        Pr, Pi = powers(j)
        Qr, Qi = powers(mT)
        CB = (C.to(torch.complex128) * Bbar.to(torch.complex128))[..., None]
        Xr, Xi = CB.real * Qr - CB.imag * Qi, CB.real * Qi + CB.imag * Qr
        scale = 2.0 if conj_pair else 1.0
        Xm = torch.cat([Xr, -Xi], dim=1).transpose(1, 2).to(real)  # (d, M, 2n)
        Pm = torch.cat([Pr, Pi], dim=1).to(real)  # (d, 2n, T)
        K = torch.bmm(Xm, Pm)
    else:
        A64 = Abar.to(torch.float64)[..., None]
        P = torch.pow(A64, j)
        X = (C * Bbar).to(torch.float64)[..., None] * torch.pow(A64, mT)
        scale = 1.0
        K = torch.bmm(X.transpose(1, 2).to(real), P.to(real))
    K = K.reshape(d, Mb * T)[:, :L]
    return K * scale if scale != 1.0 else K


def fft_conv_bld(u, K, D=None):
    """y[t] = sum_{l<=t} K[l] u[t-l] + D u[t] along time of a channels-last u (b, L, d);
    K (d, L).  Output in u's dtype (computed in K's dtype)."""
    L = u.shape[1]
    uf = u.to(K.dtype)
    n = 2 * L
    # transforms along a contiguous time axis (measured 2x faster than along dim 1 of (b, L, d))
    Uf = torch.fft.rfft(uf.transpose(1, 2), n=n)  # (b, d, n/2+1)
    Kf = torch.fft.rfft(K, n=n)  # (d, n/2+1)
    y = torch.fft.irfft(Uf * Kf, n=n)[..., :L].transpose(1, 2)
    if D is not None:
        y = y + uf * D.to(K.dtype)
    return y.to(u.dtype)


def diagonal_ssm_fast(u, Abar, Bbar, C, D=None, conj_pair: bool = True,
                      algorithm: str = "fft", config=None):
    """y (b, L, d) for u (b, L, d) and discrete (d, n) parameters: "fft" (Vandermonde + FFT, any
    device; see _fft_kernel) or "sequential" (the TVM CPU recurrence, fp32, scheduled by
    `config`, a tvm.diagonal_scan_tir.DiagonalScanConfig; None = the host default)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"u must be a (b, L, d) tensor, got "
                         f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}")
    b, L, d = u.shape
    if not isinstance(Abar, torch.Tensor) or Abar.dim() != 2 or Abar.shape[0] != d:
        raise ValueError(f"Abar must be (d, n) with d={d}")
    if algorithm == "sequential" and u.device.type == "cpu" \
            and work_dtype(u, Abar, Bbar, C, D) == torch.float32:
        from ssmc.codegen.tvm.diagonal_scan import diagonal_scan

        return diagonal_scan(u, Abar, Bbar, C, D, conj_pair, config=config)
    K = _fft_kernel(Abar, Bbar, C, L, conj_pair)
    if D is not None:
        D = D.to(K.dtype)
    return fft_conv_bld(u, K, D)


def _fft_kernel(Abar, Bbar, C, L: int, conj_pair: bool):
    """K by the TVM kernel for CPU parameters that need no gradient (not under torch.compile:
    the call is opaque to dynamo), else by vandermonde_kernel (differentiable, any device)."""
    params = (Abar, Bbar, C)
    if all(t.device.type == "cpu" for t in params) and not torch.compiler.is_compiling() \
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in params)):
        try:
            from ssmc.codegen.tvm.vandermonde import vandermonde_fwd
        except ImportError:  # no TVM on this machine
            pass
        else:
            return vandermonde_fwd(Abar, Bbar, C, L, conj_pair)
    return vandermonde_kernel(Abar, Bbar, C, L, conj_pair)


def diagonal_fft(u, Abar, Bbar, C, D=None, conj_pair: bool = True):
    """diagonal_ssm_fast by the FFT path (dispatch entry; differentiable, any device)."""
    return diagonal_ssm_fast(u, Abar, Bbar, C, D, conj_pair, "fft")


def diagonal_sequential(u, Abar, Bbar, C, D=None, conj_pair: bool = True, config=None):
    """diagonal_ssm_fast by the TVM recurrence (dispatch entry; CPU fp32, forward only)."""
    return diagonal_ssm_fast(u, Abar, Bbar, C, D, conj_pair, "sequential", config)
