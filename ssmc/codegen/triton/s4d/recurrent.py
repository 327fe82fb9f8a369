"""S4D as a recurrence: x_t = Abar x_{t-1} + Bbar u_t, y_t = scale Re(C x_t) + D u_t.

Time-invariant, so unlike the selective scan nothing is discretised per step: Abar, Bbar and C
are loaded once per program and each step is one complex multiply-add per state and a
reduction over N.  Each program owns BLOCK_D channels of one batch row, states in registers.
Oracle: `ssmc.semantics.diagonal.s4d_recurrence`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ssmc.codegen.triton.common import (FLOAT_DTYPES, KernelConfig, KernelLaunch, LaunchPlan,
                                        auto_block_d, check_same_device, check_tensor, grid_dim,
                                        next_pow2, pow2_field)
from ssmc.codegen.triton.s4d.params import (PARAM_DTYPES, as_pairs, check_params,
                                            readout_scale, state_is_complex)


@dataclass(frozen=True)
class S4dRecurrentConfig(KernelConfig):
    block_d: int | None = pow2_field(None)  # None: ~4 states a thread
    num_warps: int = pow2_field(4)
    num_stages: int = 1


@triton.jit
def _s4d_recurrent_kernel(
    u_ptr, out_ptr, Abar_ptr, Bbar_ptr, C_ptr, D_ptr, h_in_ptr, h_out_ptr,
    dim, seqlen, dstate, scale,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, STATE_COMPLEX: tl.constexpr,
    HAS_D: tl.constexpr, HAS_H_IN: tl.constexpr, HAS_H_OUT: tl.constexpr,
):
    pid_d = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n < dstate)[None, :]
    # parameters are (dim, N, 2) (re, im) pairs
    pair = (offs_d[:, None] * dstate + offs_n[None, :]) * 2
    A_re = tl.load(Abar_ptr + pair, mask=mask_dn, other=0.0)
    A_im = tl.load(Abar_ptr + pair + 1, mask=mask_dn, other=0.0)
    B_re = tl.load(Bbar_ptr + pair, mask=mask_dn, other=0.0)
    B_im = tl.load(Bbar_ptr + pair + 1, mask=mask_dn, other=0.0)
    C_re = tl.load(C_ptr + pair, mask=mask_dn, other=0.0)
    C_im = tl.load(C_ptr + pair + 1, mask=mask_dn, other=0.0)
    if HAS_D:
        D = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)

    state = ((batch * dim + offs_d[:, None]) * dstate + offs_n[None, :]) * 2
    h_re = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    h_im = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if HAS_H_IN:
        h_re = tl.load(h_in_ptr + state, mask=mask_dn, other=0.0)
        h_im = tl.load(h_in_ptr + state + 1, mask=mask_dn, other=0.0)
    row = batch * dim * seqlen + offs_d.to(tl.int64) * seqlen
    for t in range(0, seqlen):
        u = tl.load(u_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        if STATE_COMPLEX:
            new_re = A_re * h_re - A_im * h_im + B_re * u[:, None]
            h_im = A_re * h_im + A_im * h_re + B_im * u[:, None]
            h_re = new_re
            y = tl.sum(C_re * h_re - C_im * h_im, axis=1)
        else:  # S4D-Real: the imaginary parts are all zero
            h_re = A_re * h_re + B_re * u[:, None]
            y = tl.sum(C_re * h_re, axis=1)
        y = y * scale
        if HAS_D:
            y += D * u
        tl.store(out_ptr + row + t, y.to(out_ptr.dtype.element_ty), mask=mask_d)
    if HAS_H_OUT:
        tl.store(h_out_ptr + state, h_re, mask=mask_dn)
        tl.store(h_out_ptr + state + 1, h_im, mask=mask_dn)


def plan_s4d_recurrent(u, Abar, Bbar, C, D=None, conj_pair=True, initial_state=None,
                       return_final_state=False, config: S4dRecurrentConfig | None = None):
    config = config or S4dRecurrentConfig()
    check_tensor("u", u, dims=(("batch", None), ("dim", None), ("seqlen", None)),
                 dtypes=FLOAT_DTYPES)
    batch, dim, seqlen = u.shape
    _, dstate = check_params(dim, Abar, Bbar, C, conj_pair)
    check_tensor("D", D, dims=(("dim", dim),), dtypes=FLOAT_DTYPES, optional=True)
    check_tensor("initial_state", initial_state,
                 dims=(("batch", batch), ("dim", dim), ("dstate", dstate)),
                 dtypes=PARAM_DTYPES, optional=True)
    check_same_device("u", u, Abar=Abar, Bbar=Bbar, C=C, D=D, initial_state=initial_state)
    u = u.contiguous()
    out = torch.empty_like(u)
    h_in = None if initial_state is None else as_pairs(initial_state)
    h_out = u.new_empty((batch, dim, dstate, 2), dtype=torch.float32) \
        if return_final_state else None
    A2 = as_pairs(Abar)
    complex_state = state_is_complex(Abar, Bbar)
    block_d = config.block_d or auto_block_d(next_pow2(dstate) * (2 if complex_state else 1),
                                             config.num_warps)
    launch = KernelLaunch(
        _s4d_recurrent_kernel, (grid_dim(dim, block_d), batch),
        {"u_ptr": u, "out_ptr": out, "Abar_ptr": A2, "Bbar_ptr": as_pairs(Bbar),
         "C_ptr": as_pairs(C), "D_ptr": D.float().contiguous() if D is not None else A2,
         "h_in_ptr": h_in if h_in is not None else A2,
         "h_out_ptr": h_out if h_out is not None else A2,
         "dim": dim, "seqlen": seqlen, "dstate": dstate,
         "scale": readout_scale(Abar, Bbar, C, conj_pair)},
        {"BLOCK_D": block_d, "BLOCK_N": next_pow2(dstate), "STATE_COMPLEX": complex_state,
         "HAS_D": D is not None, "HAS_H_IN": h_in is not None, "HAS_H_OUT": h_out is not None},
        config.num_warps, config.num_stages)
    return LaunchPlan([launch], (out, h_out))


def s4d_recurrent(u, Abar, Bbar, C, D=None, conj_pair=True, initial_state=None,
                  return_final_state=False, config: S4dRecurrentConfig | None = None):
    """S4D recurrence (the oracle `s4d_recurrence`'s arguments).  u: (batch, dim, L);
    Abar, Bbar, C: (dim, N) complex or real; D: (dim,); initial_state: (batch, dim, N).
    Returns y (batch, dim, L) in u's dtype [, final state: complex64, or fp32 when Abar and
    Bbar are real]."""
    plan = plan_s4d_recurrent(u, Abar, Bbar, C, D, conj_pair, initial_state,
                              return_final_state, config)
    out, h_out = plan.run()
    if not return_final_state:
        return out
    final = torch.view_as_complex(h_out) if state_is_complex(Abar, Bbar) else h_out[..., 0]
    return out, final
