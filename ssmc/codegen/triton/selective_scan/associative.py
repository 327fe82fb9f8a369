"""Mamba-1 selective scan as an associative scan of (a, b) pairs (MODELS.md section 2).

h_t = a_t h_{t-1} + b_t with a_t = exp(dt_t A), b_t = dt_t B_t u_t composes associatively:
(a2, b2) o (a1, b1) = (a2 a1, a2 b1 + b2).  Each program owns BLOCK_D channels of one batch row
and walks L in blocks of BLOCK_L; inside a block `tl.associative_scan` runs the BLOCK_L steps as
a log-depth tree over a (BLOCK_D, N, BLOCK_L) tile instead of one after the other, and the state
carried between blocks enters as h = A_cum h_carry + B_cum.  More work than the sequential walk
(the tree), but log-depth inside a block and wide, coalesced (channel, time) tile loads.

Complex A: Triton has no complex type, so the pairs are complex numbers as real pairs and the
scan runs on four tiles (a_re, a_im, b_re, b_im) with the complex product in the combine.
With cu_seqlens (problem.py) a step where a sequence starts becomes (0, a h0_s + b): the scan
then drops everything before it, and each sequence's final state is stored at its last step.
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
    block_d: int | None = pow2_field(None)  # registers grow as block_d * N * block_l (x2 for
    # complex A); None: ~16 tile values a thread
    block_l: int = pow2_field(32)
    num_warps: int = pow2_field(4)
    num_stages: int = 1


@triton.jit
def _first_order_combine(a_left, b_left, a_right, b_right):
    # left is earlier in time: applying left then right gives (a_r a_l, a_r b_l + b_r)
    return a_right * a_left, a_right * b_left + b_right


@triton.jit
def _complex_first_order_combine(ar_left, ai_left, br_left, bi_left,
                                 ar_right, ai_right, br_right, bi_right):
    # (a_r a_l, a_r b_l + b_r) with complex products written out on (re, im) pairs
    return (ar_right * ar_left - ai_right * ai_left,
            ar_right * ai_left + ai_right * ar_left,
            ar_right * br_left - ai_right * bi_left + br_right,
            ar_right * bi_left + ai_right * br_left + bi_right)


@triton.jit
def _load_pair(ptr, offs, mask, COMPLEX: tl.constexpr):
    """(re, im) of an fp32-computed operand; im = 0 for a real one."""
    re = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
    im = tl.zeros_like(re)
    if COMPLEX:
        im = tl.load(ptr + offs + 1, mask=mask, other=0.0).to(tl.float32)
    return re, im


@triton.jit
def _sequence_bounds(seq_idx_ptr, t, mask_l, seqlen):
    """Per step of the block: its sequence, whether one starts there, whether one ends."""
    seq = tl.load(seq_idx_ptr + t, mask=mask_l, other=-1)
    prev = tl.load(seq_idx_ptr + t - 1, mask=mask_l & (t > 0), other=-1)
    nxt = tl.load(seq_idx_ptr + t + 1, mask=(t + 1) < seqlen, other=-1)
    return seq.to(tl.int64), (seq != prev) & mask_l, (seq != nxt) & mask_l


@triton.jit
def _restart(a_re, a_im, b_re, b_im, starts, seq_h0_ptr, seq_offs, mask_dn,
             HAS_SEQ_H0: tl.constexpr, A_COMPLEX: tl.constexpr):
    """Where a sequence starts, the step (a, b) becomes (0, a h0 + b): no earlier state gets
    through, and the sequence's initial state h0 (0 without one) enters instead."""
    mask = mask_dn[:, :, None] & starts[None, None, :]
    if HAS_SEQ_H0:
        h0_re, h0_im = _load_pair(seq_h0_ptr, seq_offs, mask, A_COMPLEX)
        if A_COMPLEX:
            b_re += a_re * h0_re - a_im * h0_im
            b_im += a_re * h0_im + a_im * h0_re
        else:
            b_re += a_re * h0_re
    keep = tl.where(starts, 0.0, 1.0)[None, None, :]
    if A_COMPLEX:
        a_im *= keep
    return a_re * keep, a_im, b_re, b_im


@triton.jit
def _selective_scan_associative_kernel(
    u_ptr, delta_ptr, z_ptr, out_ptr,
    A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr,
    h_in_ptr, h_out_ptr, seq_idx_ptr, seq_h0_ptr, seq_h_out_ptr,
    dim, seqlen, dstate,
    stride_A_dim, stride_A_state,
    B_channels_per_group, stride_B_batch, stride_B_group, stride_B_state, stride_B_time,
    C_channels_per_group, stride_C_batch, stride_C_group, stride_C_state, stride_C_time,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DELTA_BIAS: tl.constexpr, A_COMPLEX: tl.constexpr, B_COMPLEX: tl.constexpr,
    C_COMPLEX: tl.constexpr, CONJ_PAIR: tl.constexpr,
    HAS_H_IN: tl.constexpr, HAS_H_OUT: tl.constexpr,
    VARLEN: tl.constexpr, HAS_SEQ_H0: tl.constexpr, HAS_SEQ_H_OUT: tl.constexpr,
):
    pid_d = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_l = tl.arange(0, BLOCK_L)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n < dstate)[None, :]
    # complex values are (re, im) pairs: the imaginary part sits one element after the real one
    PAIR: tl.constexpr = 2 if A_COMPLEX else 1

    A_re, A_im = _load_pair(A_ptr, offs_d[:, None] * stride_A_dim
                            + offs_n[None, :] * stride_A_state, mask_dn, A_COMPLEX)
    A_re *= LOG2E
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
    state_offs = ((batch * dim + offs_d[:, None]) * dstate + offs_n[None, :]) * PAIR

    h_re = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    h_im = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if HAS_H_IN:
        h_re, h_im = _load_pair(h_in_ptr, state_offs, mask_dn, A_COMPLEX)
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
        B_re, B_im = _load_pair(B_base, t[None, None, :] * stride_B_time, mask_dnl, B_COMPLEX)
        dtu = (dt * u)[:, None, :]
        b_re = dtu * B_re
        a_re = tl.exp2(dt[:, None, :] * A_re[:, :, None])
        # the imaginary tiles stay unused (and are compiled away) for a real A
        a_im = tl.zeros_like(a_re)
        b_im = tl.zeros_like(b_re)
        if A_COMPLEX:  # exp(dt (x + iy)) = e^(dt x) (cos(dt y) + i sin(dt y))
            angle = dt[:, None, :] * A_im[:, :, None]
            a_im = a_re * tl.sin(angle)
            a_re = a_re * tl.cos(angle)
            b_im = dtu * B_im
        if VARLEN:
            seq, starts, ends = _sequence_bounds(seq_idx_ptr, t, mask_l, seqlen)
            seq_offs = ((seq[None, None, :] * dim + offs_d[:, None, None]) * dstate
                        + offs_n[None, :, None]) * PAIR
            a_re, a_im, b_re, b_im = _restart(a_re, a_im, b_re, b_im, starts, seq_h0_ptr,
                                              seq_offs, mask_dn, HAS_SEQ_H0, A_COMPLEX)
        if A_COMPLEX:
            a_re, a_im, b_re, b_im = tl.associative_scan(
                (a_re, a_im, b_re, b_im), axis=2, combine_fn=_complex_first_order_combine)
            hs_re = a_re * h_re[:, :, None] - a_im * h_im[:, :, None] + b_re
            hs_im = a_re * h_im[:, :, None] + a_im * h_re[:, :, None] + b_im
        else:
            a_re, b_re = tl.associative_scan((a_re, b_re), axis=2,
                                             combine_fn=_first_order_combine)
            hs_re = a_re * h_re[:, :, None] + b_re
            hs_im = tl.zeros_like(hs_re)
        C_re, C_im = _load_pair(C_base, t[None, None, :] * stride_C_time, mask_dnl, C_COMPLEX)
        readout = hs_re * C_re
        if C_COMPLEX:
            readout -= hs_im * C_im  # Re(C h)
        y = tl.sum(readout, axis=1)
        if A_COMPLEX and CONJ_PAIR:
            y = 2.0 * y  # the state stands for a conjugate pair
        if HAS_D:
            y += D[:, None] * u
        if HAS_Z:
            z = tl.load(z_ptr + io, mask=mask_dl, other=0.0).to(tl.float32)
            y *= silu(z)
        tl.store(out_ptr + io, y.to(out_ptr.dtype.element_ty), mask=mask_dl)
        if VARLEN:
            if HAS_SEQ_H_OUT:
                mask_end = mask_dn[:, :, None] & ends[None, None, :]
                tl.store(seq_h_out_ptr + seq_offs, hs_re, mask=mask_end)
                if A_COMPLEX:
                    tl.store(seq_h_out_ptr + seq_offs + 1, hs_im, mask=mask_end)
        h_re = tl.sum(tl.where(is_last, hs_re, 0.0), axis=2)
        if A_COMPLEX:
            h_im = tl.sum(tl.where(is_last, hs_im, 0.0), axis=2)

    if HAS_H_OUT:
        tl.store(h_out_ptr + state_offs, h_re, mask=mask_dn)
        if A_COMPLEX:
            tl.store(h_out_ptr + state_offs + 1, h_im, mask=mask_dn)


def plan_associative(problem: SelectiveScanProblem,
                     config: AssociativeScanConfig | None = None) -> LaunchPlan:
    config = config or AssociativeScanConfig()
    p = problem
    # ~16 tile values a thread; with cu_seqlens 8: the per-sequence state addresses (a 64-bit
    # pointer per tile value) live across the scan, 254 registers on sm_90 at 16, 134 at 8
    block_d = config.block_d or auto_block_d(p.values_per_channel * config.block_l,
                                             config.num_warps, per_thread=8 if p.varlen else 16)
    out = p.new_output()
    h_out = p.new_last_states() if p.return_last_state else None
    # with cu_seqlens the states are per sequence, taken and left at the sequences' ends
    h_in, h_end = (None, None) if p.varlen else (p.initial_state, h_out)
    seq_h0, seq_h_out = (p.initial_state, h_out) if p.varlen else (None, None)
    args = {
        "u_ptr": p.u, "delta_ptr": p.delta, "z_ptr": p.z if p.z is not None else p.u,
        "out_ptr": out, "A_ptr": p.A, "B_ptr": p.B.data, "C_ptr": p.C.data,
        "D_ptr": p.D if p.D is not None else p.A,
        "delta_bias_ptr": p.delta_bias if p.delta_bias is not None else p.A,
        "h_in_ptr": h_in if h_in is not None else p.A,
        "h_out_ptr": h_end if h_end is not None else p.A,
        **p.varlen_args(seq_h0, seq_h_out),
        "dim": p.dim, "seqlen": p.seqlen, "dstate": p.dstate,
        "stride_A_dim": p.A.stride(0), "stride_A_state": p.A.stride(1),
    }
    args.update(p.B.kernel_args("B"))
    args.update(p.C.kernel_args("C"))
    constexprs = {
        "BLOCK_D": block_d, "BLOCK_N": next_pow2(p.dstate), "BLOCK_L": config.block_l,
        **p.flags(), "HAS_H_IN": h_in is not None, "HAS_H_OUT": h_end is not None,
        "VARLEN": p.varlen, "HAS_SEQ_H0": seq_h0 is not None,
        "HAS_SEQ_H_OUT": seq_h_out is not None,
    }
    launch = KernelLaunch(_selective_scan_associative_kernel,
                          (grid_dim(p.dim, block_d), p.batch), args, constexprs,
                          config.num_warps, config.num_stages)
    return LaunchPlan([launch], (out, h_out))


def selective_scan_associative(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                               delta_softplus=False, return_last_state=False,
                               initial_state=None, conj_pair=True, cu_seqlens=None,
                               config: AssociativeScanConfig | None = None):
    """Mamba-1 selective scan (mamba-ssm's `selective_scan_fn` arguments) by blocked
    associative scan; real or complex A.  Takes and returns like
    `selective_scan_sequential`."""
    problem = selective_scan_problem(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                     return_last_state, initial_state, conj_pair, cu_seqlens)
    out, h_out = plan_associative(problem, config).run()
    return pick(problem, out, h_out)
