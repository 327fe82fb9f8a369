"""S4D as a long convolution: the Vandermonde kernel in Triton, the convolution by torch.fft.

K[d, l] = scale Re sum_n (C Bbar)_{d,n} Abar_{d,n}^l   (MODELS.md section 1)

Abar^l is evaluated in polar form, not by repeated multiplication: every (d, l) is independent,
so a program computes a (BLOCK_D, BLOCK_L) tile of K and walks the N modes, and rounding does
not accumulate along l.  The power is split at the tile start l0: Abar^(l0 + j) = Abar^l0 *
exp(j log|Abar|) (cos(j arg Abar) + i sin(j arg Abar)), with Abar^l0 and the logarithm taken
on the host in float64 (params.polar_powers, shared with the backward; a real negative Abar has
arg = pi, which gives the (-1)^l of a real power), so the fp32 angle stays below BLOCK_L * pi
for any L.  Special-function cost: one exp, cos and sin per (d, n, l).  Oracles: `ssmc.semantics.diagonal.s4d_kernel`, `s4d_fft_conv`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ssmc.codegen.triton.common import (FLOAT_DTYPES, KernelConfig, KernelLaunch, LaunchPlan,
                                        check_same_device, check_tensor, grid_dim, pow2_field)
from ssmc.codegen.triton.s4d.params import as_pairs, check_params, polar_powers, readout_scale


@dataclass(frozen=True)
class VandermondeConfig(KernelConfig):
    block_d: int = pow2_field(16)
    block_l: int = pow2_field(64)
    num_warps: int = pow2_field(4)
    num_stages: int = 1


@triton.jit
def _s4d_vandermonde_kernel(
    log_abs_ptr, arg_ptr, Q_ptr, CB_ptr, K_ptr,
    dim, dstate, seqlen, scale,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = offs_d < dim
    jf = tl.arange(0, BLOCK_L).to(tl.float32)[None, :]
    K = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    for n in range(0, dstate):
        mode = offs_d * dstate + n
        log_abs = tl.load(log_abs_ptr + mode, mask=mask_d, other=0.0)[:, None]
        arg = tl.load(arg_ptr + mode, mask=mask_d, other=0.0)[:, None]
        cb_re = tl.load(CB_ptr + mode * 2, mask=mask_d, other=0.0)[:, None]
        cb_im = tl.load(CB_ptr + mode * 2 + 1, mask=mask_d, other=0.0)[:, None]
        # w = CB * Abar^l0 (this tile's start), then Re(w * Abar^j)
        q = (pid_l.to(tl.int64) * dim + offs_d) * dstate + n
        q_re = tl.load(Q_ptr + q * 2, mask=mask_d, other=0.0)[:, None]
        q_im = tl.load(Q_ptr + q * 2 + 1, mask=mask_d, other=0.0)[:, None]
        w_re = cb_re * q_re - cb_im * q_im
        w_im = cb_re * q_im + cb_im * q_re
        magnitude = tl.exp(jf * log_abs)
        phase = jf * arg
        K += magnitude * (w_re * tl.cos(phase) - w_im * tl.sin(phase))
    tl.store(K_ptr + offs_d[:, None].to(tl.int64) * seqlen + offs_l[None, :], K * scale,
             mask=mask_d[:, None] & (offs_l < seqlen)[None, :])


def plan_vandermonde(Abar, Bbar, C, L: int, conj_pair=True,
                     config: VandermondeConfig | None = None) -> LaunchPlan:
    config = config or VandermondeConfig()
    dim, dstate = check_params(None, Abar, Bbar, C, conj_pair)
    if not isinstance(L, int) or L < 0:
        raise ValueError(f"L: expected a non-negative int, got {L!r}")
    check_same_device("Abar", Abar, Bbar=Bbar, C=C)
    log_abs, arg, Q = polar_powers(Abar, L, config.block_l)
    CB = as_pairs(C.to(torch.complex64) * Bbar.to(torch.complex64))
    K = torch.empty((dim, L), dtype=torch.float32, device=Abar.device)
    launch = KernelLaunch(
        _s4d_vandermonde_kernel, (grid_dim(L, config.block_l), grid_dim(dim, config.block_d)),
        {"log_abs_ptr": log_abs, "arg_ptr": arg, "Q_ptr": Q, "CB_ptr": CB, "K_ptr": K,
         "dim": dim, "dstate": dstate, "seqlen": L,
         "scale": readout_scale(Abar, Bbar, C, conj_pair)},
        {"BLOCK_D": config.block_d, "BLOCK_L": config.block_l},
        config.num_warps, config.num_stages)
    return LaunchPlan([launch], (K,))


def plan_s4d_conv(u, Abar, Bbar, C, D=None, conj_pair=True,
                  config: VandermondeConfig | None = None) -> LaunchPlan:
    """The Triton launches of `s4d_conv` (its arguments): the Vandermonde kernel for u's
    length; the FFT convolution after it runs in torch, outside the plan."""
    check_tensor("u", u, dims=(("batch", None), ("dim", None), ("seqlen", None)),
                 dtypes=FLOAT_DTYPES)
    return plan_vandermonde(Abar, Bbar, C, u.shape[-1], conj_pair, config)


def s4d_kernel_vandermonde(Abar, Bbar, C, L: int, conj_pair=True,
                           config: VandermondeConfig | None = None) -> torch.Tensor:
    """K (dim, L) fp32 (the oracle `s4d_kernel`'s arguments), computed by the Triton kernel."""
    (K,) = plan_vandermonde(Abar, Bbar, C, L, conj_pair, config).run()
    return K


def fft_causal_conv(u, K, D=None) -> torch.Tensor:
    """y[t] = sum_{l<=t} K[l] u[t-l] (+ D u[t]) with torch.fft.  u: (batch, dim, L); K: (dim, L).
    Zero padding to a power of two >= 2L turns the FFT's circular convolution into a causal one
    and keeps the transform sizes fast.  Returns y in u's dtype."""
    check_tensor("u", u, dims=(("batch", None), ("dim", None), ("seqlen", None)),
                 dtypes=FLOAT_DTYPES)
    _, dim, L = u.shape
    check_tensor("K", K, dims=(("dim", dim), ("seqlen", L)), dtypes=FLOAT_DTYPES)
    check_tensor("D", D, dims=(("dim", dim),), dtypes=FLOAT_DTYPES, optional=True)
    uf = u.float()
    n = triton.next_power_of_2(max(2 * L, 1))
    y = torch.fft.irfft(torch.fft.rfft(uf, n=n) * torch.fft.rfft(K.float(), n=n), n=n)[..., :L]
    if D is not None:
        y = y + uf * D.float()[:, None]
    return y.to(u.dtype)


def s4d_conv(u, Abar, Bbar, C, D=None, conj_pair=True,
             config: VandermondeConfig | None = None) -> torch.Tensor:
    """S4D layer as a convolution: the Vandermonde kernel (Triton) then an FFT convolution.
    Same values as `s4d_recurrent` without an initial state."""
    check_tensor("u", u, dims=(("batch", None), ("dim", None), ("seqlen", None)),
                 dtypes=FLOAT_DTYPES)
    K = s4d_kernel_vandermonde(Abar, Bbar, C, u.shape[-1], conj_pair, config)
    return fft_causal_conv(u, K, D)
