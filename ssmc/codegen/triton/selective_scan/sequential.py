"""Mamba-1 selective scan, sequential over L (fla's "fused_recurrent").

Each program owns BLOCK_D channels of one batch row and keeps their N states in registers; it
walks the time steps one by one, fusing softplus(delta + bias), the discretisation
exp(dt A) / dt B u, the readout <C, h>, the D skip and the silu(z) gate, so each input element is
read once and y written once.  Parallelism is batch x dim / BLOCK_D programs.

The kernel walks one time range [chunk * chunk_len, (chunk + 1) * chunk_len) from a given state:
the sequential algorithm is the one-chunk case, and the chunked algorithm (chunked.py) runs it
once per chunk to get chunk-local states and again, from the propagated states, for the output.

With cu_seqlens (problem.py) the walk restarts the state where a sequence starts, from that
sequence's initial state, and stores each sequence's final state at its last step.
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
class SequentialScanConfig(KernelConfig):
    block_d: int | None = pow2_field(None)  # channels per program; None: ~4 states a thread
    num_warps: int = pow2_field(4)
    num_stages: int = 1


@triton.jit
def _sequence_start(seq_idx_ptr, t, seq_h0_ptr, h_re, h_im, mask_dn, offs_d, offs_n, dim,
                    dstate, PAIR: tl.constexpr, HAS_SEQ_H0: tl.constexpr,
                    A_COMPLEX: tl.constexpr):
    """Step t's sequence and its state offsets; where a sequence starts at t, the state it
    continues from is the sequence's initial state (0 without one), not the previous one."""
    seq = tl.load(seq_idx_ptr + t).to(tl.int64)
    prev = tl.load(seq_idx_ptr + tl.maximum(t - 1, 0))
    starts = (seq != prev) | (t == 0)
    seq_offs = ((seq * dim + offs_d[:, None]) * dstate + offs_n[None, :]) * PAIR
    h0_re = tl.zeros_like(h_re)
    h0_im = tl.zeros_like(h_im)
    if HAS_SEQ_H0:  # masked: only a starting step reads memory
        # (where, not `mask_dn & starts`: the interpreter makes the latter an int mask)
        mask_start = tl.where(starts, mask_dn, False)
        h0_re = tl.load(seq_h0_ptr + seq_offs, mask=mask_start, other=0.0)
        if A_COMPLEX:
            h0_im = tl.load(seq_h0_ptr + seq_offs + 1, mask=mask_start, other=0.0)
    return seq, seq_offs, tl.where(starts, h0_re, h_re), tl.where(starts, h0_im, h_im)


@triton.jit
def _store_if_sequence_ends(seq_idx_ptr, t, seqlen, seq, seq_h_out_ptr, seq_offs, h_re, h_im,
                            mask_dn, A_COMPLEX: tl.constexpr):
    """At a sequence's last step, its final state."""
    nxt = tl.load(seq_idx_ptr + tl.minimum(t + 1, seqlen - 1))
    mask_end = tl.where((nxt != seq) | (t == seqlen - 1), mask_dn, False)
    tl.store(seq_h_out_ptr + seq_offs, h_re, mask=mask_end)
    if A_COMPLEX:
        tl.store(seq_h_out_ptr + seq_offs + 1, h_im, mask=mask_end)


@triton.jit
def _selective_scan_recurrent_kernel(
    u_ptr, delta_ptr, z_ptr, out_ptr,
    A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr,
    h_in_ptr, h_out_ptr, dt_sum_ptr, seq_idx_ptr, seq_h0_ptr, seq_h_out_ptr,
    dim, seqlen, dstate, chunk_len, chunks,
    stride_A_dim, stride_A_state,
    B_channels_per_group, stride_B_batch, stride_B_group, stride_B_state, stride_B_time,
    C_channels_per_group, stride_C_batch, stride_C_group, stride_C_state, stride_C_time,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DELTA_BIAS: tl.constexpr, A_COMPLEX: tl.constexpr, B_COMPLEX: tl.constexpr,
    C_COMPLEX: tl.constexpr, CONJ_PAIR: tl.constexpr,
    HAS_H_IN: tl.constexpr, HAS_H_OUT: tl.constexpr, WRITE_Y: tl.constexpr,
    HAS_DT_SUM: tl.constexpr, VARLEN: tl.constexpr, HAS_SEQ_H0: tl.constexpr,
    HAS_SEQ_H_OUT: tl.constexpr,
):
    chunk = tl.program_id(0)
    pid_d = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)  # int64: batch * dim * seqlen can pass 2**31

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n < dstate)[None, :]
    # A (re, im) pairs are interleaved: the complex part sits one element after the real one.
    PAIR: tl.constexpr = 2 if A_COMPLEX else 1

    # Time-invariant parameters: loaded once.  Padded states get A = 0, B = 0, so they stay 0.
    A_offs = offs_d[:, None] * stride_A_dim + offs_n[None, :] * stride_A_state
    A_re = tl.load(A_ptr + A_offs, mask=mask_dn, other=0.0) * LOG2E
    A_im = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if A_COMPLEX:
        A_im = tl.load(A_ptr + A_offs + 1, mask=mask_dn, other=0.0)
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + offs_d, mask=mask_d, other=0.0)
    if HAS_D:
        D = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)

    B_base = (B_ptr + batch * stride_B_batch
              + (offs_d // B_channels_per_group)[:, None] * stride_B_group
              + offs_n[None, :] * stride_B_state)
    C_base = (C_ptr + batch * stride_C_batch
              + (offs_d // C_channels_per_group)[:, None] * stride_C_group
              + offs_n[None, :] * stride_C_state)
    row = batch * dim * seqlen + offs_d.to(tl.int64) * seqlen  # (batch, channel, t = 0)
    state_offs = (((batch * chunks + chunk) * dim + offs_d[:, None]) * dstate
                  + offs_n[None, :]) * PAIR

    h_re = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    h_im = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if HAS_H_IN:
        h_re = tl.load(h_in_ptr + state_offs, mask=mask_dn, other=0.0)
        if A_COMPLEX:
            h_im = tl.load(h_in_ptr + state_offs + 1, mask=mask_dn, other=0.0)

    dt_sum = tl.zeros((BLOCK_D,), dtype=tl.float32)  # the chunk's decay is exp(A * dt_sum)
    t_start = chunk * chunk_len
    t_end = tl.minimum(t_start + chunk_len, seqlen)
    for t in range(t_start, t_end):
        u = tl.load(u_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            dt = dt + delta_bias
        if DELTA_SOFTPLUS:
            dt = softplus(dt)
        if HAS_DT_SUM:
            dt_sum += dt  # with cu_seqlens, the carry ignores it for a chunk with a restart
        if VARLEN:
            seq, seq_offs, h_re, h_im = _sequence_start(
                seq_idx_ptr, t, seq_h0_ptr, h_re, h_im, mask_dn, offs_d, offs_n, dim, dstate,
                PAIR, HAS_SEQ_H0, A_COMPLEX)
        dtu = (dt * u)[:, None]
        B_re = tl.load(B_base + t * stride_B_time, mask=mask_dn, other=0.0).to(tl.float32)
        if A_COMPLEX:
            # exp(dt (a + ib)) = 2^(dt a log2 e) (cos(dt b) + i sin(dt b))
            magnitude = tl.exp2(dt[:, None] * A_re)
            angle = dt[:, None] * A_im
            dA_re = magnitude * tl.cos(angle)
            dA_im = magnitude * tl.sin(angle)
            new_re = dA_re * h_re - dA_im * h_im + dtu * B_re
            new_im = dA_re * h_im + dA_im * h_re
            if B_COMPLEX:
                B_im = tl.load(B_base + t * stride_B_time + 1, mask=mask_dn,
                               other=0.0).to(tl.float32)
                new_im += dtu * B_im
            h_re = new_re
            h_im = new_im
        else:
            h_re = tl.exp2(dt[:, None] * A_re) * h_re + dtu * B_re
        if VARLEN:
            if HAS_SEQ_H_OUT:
                _store_if_sequence_ends(seq_idx_ptr, t, seqlen, seq, seq_h_out_ptr, seq_offs,
                                        h_re, h_im, mask_dn, A_COMPLEX)
        if WRITE_Y:
            C_re = tl.load(C_base + t * stride_C_time, mask=mask_dn, other=0.0).to(tl.float32)
            readout = h_re * C_re
            if C_COMPLEX:
                C_im = tl.load(C_base + t * stride_C_time + 1, mask=mask_dn,
                               other=0.0).to(tl.float32)
                readout -= h_im * C_im  # Re(C h)
            y = tl.sum(readout, axis=1)
            if A_COMPLEX and CONJ_PAIR:
                y = 2.0 * y  # the state stands for a conjugate pair
            if HAS_D:
                y += D * u
            if HAS_Z:
                z = tl.load(z_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
                y *= silu(z)
            tl.store(out_ptr + row + t, y.to(out_ptr.dtype.element_ty), mask=mask_d)

    if HAS_H_OUT:
        tl.store(h_out_ptr + state_offs, h_re, mask=mask_dn)
        if A_COMPLEX:
            tl.store(h_out_ptr + state_offs + 1, h_im, mask=mask_dn)
    if HAS_DT_SUM:
        tl.store(dt_sum_ptr + (batch * chunks + chunk) * dim + offs_d, dt_sum, mask=mask_d)


def recurrent_launch(problem: SelectiveScanProblem, *, block_d: int, num_warps: int,
                     num_stages: int, chunk_len: int, chunks: int, out, h_in, h_out,
                     dt_sum=None, write_y: bool = True, seq_h0=None,
                     seq_h_out=None) -> KernelLaunch:
    """One launch of the recurrent kernel over `chunks` time ranges of `chunk_len` steps.
    seq_h0 / seq_h_out: per-sequence initial / final states (cu_seqlens only)."""
    p = problem
    args = {
        "u_ptr": p.u, "delta_ptr": p.delta, "z_ptr": p.z if p.z is not None else p.u,
        "out_ptr": out if out is not None else p.u,
        "A_ptr": p.A, "B_ptr": p.B.data, "C_ptr": p.C.data,
        "D_ptr": p.D if p.D is not None else p.A,
        "delta_bias_ptr": p.delta_bias if p.delta_bias is not None else p.A,
        "h_in_ptr": h_in if h_in is not None else p.A,
        "h_out_ptr": h_out if h_out is not None else p.A,
        "dt_sum_ptr": dt_sum if dt_sum is not None else p.A,
        **p.varlen_args(seq_h0, seq_h_out),
        "dim": p.dim, "seqlen": p.seqlen, "dstate": p.dstate,
        "chunk_len": chunk_len, "chunks": chunks,
        "stride_A_dim": p.A.stride(0), "stride_A_state": p.A.stride(1),
    }
    args.update(p.B.kernel_args("B"))
    args.update(p.C.kernel_args("C"))
    constexprs = {"BLOCK_D": block_d, "BLOCK_N": next_pow2(p.dstate), **p.flags(),
                  "HAS_H_IN": h_in is not None, "HAS_H_OUT": h_out is not None,
                  "WRITE_Y": write_y, "HAS_DT_SUM": dt_sum is not None,
                  "VARLEN": p.varlen, "HAS_SEQ_H0": seq_h0 is not None,
                  "HAS_SEQ_H_OUT": seq_h_out is not None}
    grid = (chunks, grid_dim(p.dim, block_d), p.batch)
    return KernelLaunch(_selective_scan_recurrent_kernel, grid, args, constexprs,
                        num_warps, num_stages)


def plan_sequential(problem: SelectiveScanProblem,
                    config: SequentialScanConfig | None = None) -> LaunchPlan:
    config = config or SequentialScanConfig()
    block_d = config.block_d or auto_block_d(problem.values_per_channel, config.num_warps)
    p = problem
    out = p.new_output()
    h_out = p.new_last_states() if p.return_last_state else None
    # with cu_seqlens the states are per sequence, taken and left at the sequences' ends
    h_in, h_end = (None, None) if p.varlen else (p.initial_state, h_out)
    seq_h0, seq_h_out = (p.initial_state, h_out) if p.varlen else (None, None)
    launch = recurrent_launch(
        p, block_d=block_d, num_warps=config.num_warps, num_stages=config.num_stages,
        chunk_len=max(p.seqlen, 1), chunks=1, out=out, h_in=h_in, h_out=h_end,
        seq_h0=seq_h0, seq_h_out=seq_h_out)
    return LaunchPlan([launch], (out, h_out))


def selective_scan_sequential(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                              delta_softplus=False, return_last_state=False,
                              initial_state=None, conj_pair=True, cu_seqlens=None,
                              config: SequentialScanConfig | None = None):
    """Mamba-1 selective scan (mamba-ssm's `selective_scan_fn` arguments), sequential over L.

    Returns out (batch, dim, L) in u's dtype, and with return_last_state the fp32 (complex64 for
    complex A) final state (batch, dim, N).  cu_seqlens (num_seqs + 1,): sequences packed in
    one row (batch 1); initial and final states are then (num_seqs, dim, N)."""
    problem = selective_scan_problem(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                     return_last_state, initial_state, conj_pair, cu_seqlens)
    out, h_out = plan_sequential(problem, config).run()
    return pick(problem, out, h_out)
