"""The transposed Vandermonde product of S4D in torch: the kernel-generation step's backward
on devices without a kernel (and float64 parameters on them).  See ssmc.runtime.vandermonde for
what the sums are for; the forward is ssmc.codegen.composite.diagonal.vandermonde_kernel, whose
blocking this transposes."""

from __future__ import annotations

import torch

from ssmc.codegen.composite.diagonal import _block
from ssmc.semantics.diagonal import as_work


def chunk_powers(Abar: torch.Tensor, e: torch.Tensor):
    """Abar^e (d, n, len(e)) in float64 for a float64 vector of integers e: (re, im) for a
    complex Abar (polar form: no rounding accumulates along e), (value, None) for a real one."""
    if Abar.is_complex():
        A = Abar.to(torch.complex128)
        # Abar == 0: log|0| = -inf; the floor keeps 0^0 = 1 (not nan) and 0^e = 0
        logr = torch.log(A.abs()).clamp(min=-1e30)[..., None]
        theta = torch.angle(A)[..., None]
        mag = torch.exp(logr * e)
        return mag * torch.cos(theta * e), mag * torch.sin(theta * e)
    return torch.pow(Abar.to(torch.float64)[..., None], e), None


def torch_vandermonde_bwd(Abar: torch.Tensor, gK: torch.Tensor):
    """(V0, V1) by a blocked transposed Vandermonde in torch: with l = m T + j,
    sum_l g_l Abar^l = sum_m Abar^(mT) sum_j g_(mT+j) Abar^j, one (M x T) @ (T x n) matmul per
    channel on two small float64 power tables (the forward's blocking, transposed)."""
    (Abar,) = as_work(Abar)
    real = torch.float64 if Abar.dtype in (torch.float64, torch.complex128) else torch.float32
    d, n = Abar.shape
    L = gK.shape[1]
    if L == 0:
        z = torch.zeros(d, n, dtype=Abar.dtype, device=Abar.device)
        return z, z.clone()
    T = _block(L)
    M = -(-L // T)
    g = gK.new_zeros(d, M * T + 1, dtype=real)
    g[:, :L] = gK
    # V1's weights (l + 1) g_(l+1) next to g: both go through one matmul
    h = g[:, 1:] * torch.arange(1, M * T + 1, dtype=real, device=g.device)
    G = torch.cat([g[:, :M * T], h], 0).reshape(2 * d, M, T)
    dev = Abar.device
    Pr, Pi = chunk_powers(Abar, torch.arange(T, dtype=torch.float64, device=dev))
    Qr, Qi = chunk_powers(Abar, torch.arange(M, dtype=torch.float64, device=dev) * T)

    def tile_sums(P):  # (d, n, T) -> (2, d, M, n): sum_j G[., m, j] P[., n, j]
        return torch.bmm(G, P.transpose(1, 2).to(real).repeat(2, 1, 1)).reshape(2, d, M, n)

    Rr = tile_sums(Pr).to(torch.float64)
    Qr = Qr.transpose(1, 2)  # (d, M, n)
    if Pi is None:
        V = (Rr * Qr).sum(2)
        # copies: two views of one tensor would alias (the ops forbid aliased outputs)
        return V[0].to(real, copy=True), V[1].to(real, copy=True)
    Ri = tile_sums(Pi).to(torch.float64)
    Qi = Qi.transpose(1, 2)
    V = torch.complex((Rr * Qr - Ri * Qi).sum(2), (Rr * Qi + Ri * Qr).sum(2)).to(Abar.dtype)
    return V[0].clone(), V[1].clone()
