"""S4D's discrete parameters, checked and legalised for the Triton kernels.

The interface is the oracle's (`ssmc.semantics.diagonal`): Abar, Bbar, C of shape (dim, N),
complex or all real (S4D-Real).  Triton has no complex type, so every parameter becomes an
fp32 (re, im) pair (a real one gets im = 0; MODELS.md section 5) and the readout is
`scale * Re(sum_n C_n x_n)` with scale 2 for conjugate pairs (complex and conj_pair), else 1.
"""

from __future__ import annotations

import torch

from ssmc.codegen.triton.common import FLOAT_DTYPES, check_flag, check_tensor

PARAM_DTYPES = FLOAT_DTYPES + (torch.complex64, torch.complex128)


def check_params(dim: int | None, Abar, Bbar, C, conj_pair):
    """Returns dim, N; raises ValueError naming the first bad argument."""
    check_tensor("Abar", Abar, dims=(("dim", dim), ("dstate", None)), dtypes=PARAM_DTYPES)
    dim, dstate = Abar.shape
    if dstate < 1:
        raise ValueError("Abar: needs at least one state (dstate >= 1)")
    check_tensor("Bbar", Bbar, dims=(("dim", dim), ("dstate", dstate)), dtypes=PARAM_DTYPES)
    check_tensor("C", C, dims=(("dim", dim), ("dstate", dstate)), dtypes=PARAM_DTYPES)
    check_flag("conj_pair", conj_pair)
    return dim, dstate


def as_pairs(t: torch.Tensor) -> torch.Tensor:
    """(dim, N) real or complex -> (dim, N, 2) fp32 (re, im), contiguous."""
    return torch.view_as_real(t.to(torch.complex64)).contiguous()


def readout_scale(Abar, Bbar, C, conj_pair: bool) -> float:
    """The oracle's readout: 2 Re for conjugate pairs, Re for other complex, plain sum if real."""
    any_complex = Abar.is_complex() or Bbar.is_complex() or C.is_complex()
    return 2.0 if (any_complex and conj_pair) else 1.0


def state_is_complex(Abar, Bbar) -> bool:
    return Abar.is_complex() or Bbar.is_complex()


def polar_powers(Abar: torch.Tensor, L: int, block_l: int, cplx=torch.complex64):
    """What the Vandermonde kernels (forward and backward) need for Abar^l with l = l0 + j,
    l0 a tile start (a multiple of block_l) and 0 <= j < block_l: (log|Abar|, arg Abar) (dim, N)
    for the in-tile power exp(j log|Abar|) (cos, sin)(j arg) and Q (tiles, dim, N, 2) = Abar^l0
    as (re, im), all taken on the host in float64 and then rounded to `cplx`'s precision.  The
    split keeps the kernel's fp32 angle j * arg small for any L: l * arg in fp32 loses about
    l * 6e-8 rad (a relative error near 5e-4 at L 8192 with |Abar| near 1)."""
    A = Abar.to(torch.complex128)
    log_A = torch.log(A)  # log|Abar| + i arg(Abar); a real negative Abar has arg pi
    # Abar == 0: log -inf; a finite floor keeps 0^0 = 1 (not nan) and 0^j = 0
    log_abs = log_A.real.clamp(min=-1e30)
    tiles = max(1, -(-int(L) // int(block_l)))
    e = (torch.arange(tiles, dtype=torch.float64, device=Abar.device) * block_l)[:, None, None]
    Q = torch.exp(e * log_abs) * torch.exp(1j * (e * log_A.imag))  # (tiles, dim, N)
    real = torch.float64 if cplx == torch.complex128 else torch.float32
    return (log_abs.to(real).contiguous(), log_A.imag.to(real).contiguous(),
            torch.view_as_real(Q.to(cplx)).contiguous())
