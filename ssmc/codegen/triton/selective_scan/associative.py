"""Mamba-1 selective scan as an associative scan of (a, b) pairs (MODELS.md section 2).

h_t = a_t h_{t-1} + b_t with a_t = exp(dt_t A), b_t = dt_t B_t u_t composes associatively:
(a2, b2) o (a1, b1) = (a2 a1, a2 b1 + b2).  Each program owns BLOCK_D channels of one batch row
and walks L in blocks of BLOCK_L; inside a block `tl.associative_scan` runs the BLOCK_L steps as
a log-depth tree over a (BLOCK_D, N, BLOCK_L) tile instead of one after the other, and the state
carried between blocks enters as h = A_cum h_carry + B_cum.  More work than the sequential walk
(the tree), but log-depth inside a block and wide, coalesced (channel, time) tile loads.
Real A only.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

from ssmc.codegen.triton.common import (KernelConfig, KernelLaunch, LaunchPlan, auto_block_d,
                                        grid_dim, next_pow2, pow2_field)
from ssmc.codegen.triton.elementwise import LOG2E, silu, softplus
from ssmc.codegen.triton.selective_scan.problem import (SelectiveScanProblem, pick,
                                                        selective_scan_problem)


@dataclass(frozen=True)
class AssociativeScanConfig(KernelConfig):
    block_d: int | None = pow2_field(None)  # registers grow as block_d * N * block_l;
    # None: ~16 tile values a thread
    block_l: int = pow2_field(32)
    num_warps: int = pow2_field(4)
    num_stages: int = 1


@triton.jit
def _first_order_combine(a_left, b_left, a_right, b_right):
    # left is earlier in time: applying left then right gives (a_r a_l, a_r b_l + b_r)
    return a_right * a_left, a_right * b_left + b_right


@triton.jit
def _selective_scan_associative_kernel(
    u_ptr, delta_ptr, z_ptr, out_ptr,
    A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr,
    h_in_ptr, h_out_ptr,
    dim, seqlen, dstate,
    stride_A_dim, stride_A_state,
    B_channels_per_group, stride_B_batch, stride_B_group, stride_B_state, stride_B_time,
    C_channels_per_group, stride_C_batch, stride_C_group, stride_C_state, stride_C_time,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DELTA_BIAS: tl.constexpr, HAS_H_IN: tl.constexpr, HAS_H_OUT: tl.constexpr,
):
    pid_d = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_l = tl.arange(0, BLOCK_L)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n < dstate)[None, :]

    A = tl.load(A_ptr + offs_d[:, None] * stride_A_dim + offs_n[None, :] * stride_A_state,
                mask=mask_dn, other=0.0) * LOG2E
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + offs_d, mask=mask_d, other=0.0)
    if HAS_D:
        D = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)

    # (channel, state, time) tiles of B and C
    B_base = (B_ptr + batch * stride_B_batch
              + (offs_d // B_channels_per_group)[:, None, None] * stride_B_group
              + offs_n[None, :, None] * stride_B_state)
    C_base = (C_ptr + batch * stride_C_batch
              + (offs_d // C_channels_per_group)[:, None, None] * stride_C_group
              + offs_n[None, :, None] * stride_C_state)
    row = batch * dim * seqlen + offs_d.to(tl.int64) * seqlen
    state_offs = (batch * dim + offs_d[:, None]) * dstate + offs_n[None, :]

    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if HAS_H_IN:
        h = tl.load(h_in_ptr + state_offs, mask=mask_dn, other=0.0)
    is_last = (offs_l == BLOCK_L - 1)[None, None, :]

    for l0 in range(0, seqlen, BLOCK_L):
        t = l0 + offs_l
        mask_l = t < seqlen
        mask_dl = mask_d[:, None] & mask_l[None, :]
        mask_dnl = mask_dn[:, :, None] & mask_l[None, None, :]
        io = row[:, None] + t[None, :]
        u = tl.load(u_ptr + io, mask=mask_dl, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + io, mask=mask_dl, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            dt = dt + delta_bias[:, None]
        if DELTA_SOFTPLUS:
            dt = softplus(dt)
        # Steps past the end become the identity (a = 1, b = 0), so the block's last column is
        # the state after the last real step.
        dt = tl.where(mask_dl, dt, 0.0)
        Bt = tl.load(B_base + t[None, None, :] * stride_B_time, mask=mask_dnl,
                     other=0.0).to(tl.float32)
        a = tl.exp2(dt[:, None, :] * A[:, :, None])
        b = (dt * u)[:, None, :] * Bt
        a_cum, b_cum = tl.associative_scan((a, b), axis=2, combine_fn=_first_order_combine)
        hs = a_cum * h[:, :, None] + b_cum
        Ct = tl.load(C_base + t[None, None, :] * stride_C_time, mask=mask_dnl,
                     other=0.0).to(tl.float32)
        y = tl.sum(hs * Ct, axis=1)
        if HAS_D:
            y += D[:, None] * u
        if HAS_Z:
            z = tl.load(z_ptr + io, mask=mask_dl, other=0.0).to(tl.float32)
            y *= silu(z)
        tl.store(out_ptr + io, y.to(out_ptr.dtype.element_ty), mask=mask_dl)
        h = tl.sum(tl.where(is_last, hs, 0.0), axis=2)

    if HAS_H_OUT:
        tl.store(h_out_ptr + state_offs, h, mask=mask_dn)


def plan_associative(problem: SelectiveScanProblem,
                     config: AssociativeScanConfig | None = None) -> LaunchPlan:
    config = config or AssociativeScanConfig()
    p = problem
    if p.is_complex:
        raise ValueError("A: complex A is not supported by the associative scan; use the "
                         "sequential or chunked algorithm")
    block_d = config.block_d or auto_block_d(next_pow2(p.dstate) * config.block_l,
                                             config.num_warps, per_thread=16)
    out = p.new_output()
    h_out = p.new_states(1) if p.return_last_state else None
    args = {
        "u_ptr": p.u, "delta_ptr": p.delta, "z_ptr": p.z if p.z is not None else p.u,
        "out_ptr": out, "A_ptr": p.A, "B_ptr": p.B.data, "C_ptr": p.C.data,
        "D_ptr": p.D if p.D is not None else p.A,
        "delta_bias_ptr": p.delta_bias if p.delta_bias is not None else p.A,
        "h_in_ptr": p.initial_state if p.initial_state is not None else p.A,
        "h_out_ptr": h_out if h_out is not None else p.A,
        "dim": p.dim, "seqlen": p.seqlen, "dstate": p.dstate,
        "stride_A_dim": p.A.stride(0), "stride_A_state": p.A.stride(1),
    }
    args.update(p.B.kernel_args("B"))
    args.update(p.C.kernel_args("C"))
    flags = p.flags()
    constexprs = {
        "BLOCK_D": block_d, "BLOCK_N": next_pow2(p.dstate), "BLOCK_L": config.block_l,
        **{k: flags[k] for k in ("DELTA_SOFTPLUS", "HAS_D", "HAS_Z", "HAS_DELTA_BIAS")},
        "HAS_H_IN": p.initial_state is not None, "HAS_H_OUT": h_out is not None,
    }
    launch = KernelLaunch(_selective_scan_associative_kernel,
                          (grid_dim(p.dim, block_d), p.batch), args, constexprs,
                          config.num_warps, config.num_stages)
    return LaunchPlan([launch], (out, h_out))


def selective_scan_associative(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                               delta_softplus=False, return_last_state=False,
                               initial_state=None, conj_pair=True,
                               config: AssociativeScanConfig | None = None):
    """Mamba-1 selective scan (mamba-ssm's `selective_scan_fn` arguments) by blocked
    associative scan; real A.  Returns like `selective_scan_sequential`."""
    problem = selective_scan_problem(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                     return_last_state, initial_state, conj_pair)
    out, h_out = plan_associative(problem, config).run()
    return pick(problem, out, h_out)
