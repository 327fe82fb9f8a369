"""Mamba-1 selective scan, chunked two-pass: chunk-local scans, then carry propagation.

The sequential walk has only batch x dim / BLOCK_D programs; for small batches and long L that
leaves most of a GPU idle.  Splitting L into chunks multiplies the parallelism by L / chunk:
  1. local:  every (chunk, channel block, batch) scans its chunk from a zero state and stores the
             chunk-end state and sum(dt) over the chunk (the chunk's decay is exp(A sum(dt)));
  2. carry:  one short walk over the chunks per (channel block, batch) turns local end states
             into the true state entering each chunk: h_c = exp(A s_{c-1}) h_{c-1} + local_{c-1};
  3. output: every chunk scans again from its true entering state and writes y.
Passes 1 and 3 are the recurrent kernel of sequential.py; the second walk costs a recompute of
the scan, bought back by L / chunk times more programs.

With cu_seqlens (batch 1), passes 1 and 3 restart the state where a sequence starts, so a local
end state already holds everything from the chunk's last sequence start on; a chunk with such a
start passes nothing of its entering state on, and the carry multiplies its decay by 0 there.
Per-sequence initial states enter at the restarts, final states leave from pass 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ssmc.codegen.triton.common import (KernelConfig, KernelLaunch, LaunchPlan, auto_block_d,
                                        grid_dim, next_pow2, pow2_field)
from ssmc.codegen.triton.elementwise import LOG2E
from ssmc.codegen.triton.selective_scan.problem import (SelectiveScanProblem, pick,
                                                        selective_scan_problem)
from ssmc.codegen.triton.selective_scan.sequential import recurrent_launch


@dataclass(frozen=True)
class ChunkedScanConfig(KernelConfig):
    block_d: int | None = pow2_field(None)  # None: ~4 states a thread
    chunk: int = pow2_field(128)  # time steps per chunk
    num_warps: int = pow2_field(4)
    num_stages: int = 1


@triton.jit
def _selective_scan_carry_kernel(
    states_ptr, dt_sum_ptr, A_ptr, h_in_ptr, h_out_ptr, keep_ptr,
    dim, dstate, chunks,
    stride_A_dim, stride_A_state,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, A_COMPLEX: tl.constexpr,
    HAS_H_IN: tl.constexpr, HAS_H_OUT: tl.constexpr, VARLEN: tl.constexpr,
):
    pid_d = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n < dstate)[None, :]
    PAIR: tl.constexpr = 2 if A_COMPLEX else 1

    A_offs = offs_d[:, None] * stride_A_dim + offs_n[None, :] * stride_A_state
    A_re = tl.load(A_ptr + A_offs, mask=mask_dn, other=0.0) * LOG2E
    A_im = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if A_COMPLEX:
        A_im = tl.load(A_ptr + A_offs + 1, mask=mask_dn, other=0.0)

    h_re = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    h_im = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    single_offs = ((batch * dim + offs_d[:, None]) * dstate + offs_n[None, :]) * PAIR
    if HAS_H_IN:
        h_re = tl.load(h_in_ptr + single_offs, mask=mask_dn, other=0.0)
        if A_COMPLEX:
            h_im = tl.load(h_in_ptr + single_offs + 1, mask=mask_dn, other=0.0)

    for c in range(0, chunks):
        offs = (((batch * chunks + c) * dim + offs_d[:, None]) * dstate + offs_n[None, :]) * PAIR
        local_re = tl.load(states_ptr + offs, mask=mask_dn, other=0.0)
        tl.store(states_ptr + offs, h_re, mask=mask_dn)  # in place: now the entering state
        dt_sum = tl.load(dt_sum_ptr + (batch * chunks + c) * dim + offs_d, mask=mask_d,
                         other=0.0)
        magnitude = tl.exp2(dt_sum[:, None] * A_re)
        if VARLEN:  # 0 where a sequence starts inside chunk c: its state does not go on
            magnitude *= tl.load(keep_ptr + c)
        if A_COMPLEX:
            local_im = tl.load(states_ptr + offs + 1, mask=mask_dn, other=0.0)
            tl.store(states_ptr + offs + 1, h_im, mask=mask_dn)
            angle = dt_sum[:, None] * A_im
            decay_re = magnitude * tl.cos(angle)
            decay_im = magnitude * tl.sin(angle)
            new_re = decay_re * h_re - decay_im * h_im + local_re
            h_im = decay_re * h_im + decay_im * h_re + local_im
            h_re = new_re
        else:
            h_re = magnitude * h_re + local_re

    if HAS_H_OUT:
        tl.store(h_out_ptr + single_offs, h_re, mask=mask_dn)
        if A_COMPLEX:
            tl.store(h_out_ptr + single_offs + 1, h_im, mask=mask_dn)


def _keep(problem: SelectiveScanProblem, chunk: int, chunks: int):
    """(chunks,) fp32 for cu_seqlens: 0 for a chunk in which a sequence starts, else 1."""
    keep = [1.0] * chunks
    for start, end in zip(problem.cu_seqlens, problem.cu_seqlens[1:]):
        if end > start:  # an empty sequence has no step to restart at
            keep[start // chunk] = 0.0
    return torch.tensor(keep, dtype=torch.float32, device=problem.device)


def plan_chunked(problem: SelectiveScanProblem,
                 config: ChunkedScanConfig | None = None) -> LaunchPlan:
    config = config or ChunkedScanConfig()
    p = problem
    chunks = max(triton.cdiv(p.seqlen, config.chunk), 1)
    out = p.new_output()
    states = p.new_states(chunks)  # chunk-local end states, then (in place) entering states
    dt_sum = p.u.new_empty((p.batch, chunks, p.dim), dtype=states.dtype)
    h_out = p.new_last_states() if p.return_last_state else None
    block_d = config.block_d or auto_block_d(p.values_per_channel, config.num_warps)
    knobs = dict(block_d=block_d, num_warps=config.num_warps,
                 num_stages=config.num_stages, chunk_len=config.chunk, chunks=chunks)
    # with cu_seqlens the states are per sequence: in and out through passes 1 and 3
    h_in, h_end = (None, None) if p.varlen else (p.initial_state, h_out)
    seq_h0, seq_h_out = (p.initial_state, h_out) if p.varlen else (None, None)

    local = recurrent_launch(p, **knobs, out=None, h_in=None, h_out=states, dt_sum=dt_sum,
                             write_y=False, seq_h0=seq_h0)
    carry = KernelLaunch(
        _selective_scan_carry_kernel, (grid_dim(p.dim, block_d), p.batch),
        {"states_ptr": states, "dt_sum_ptr": dt_sum, "A_ptr": p.A,
         "h_in_ptr": h_in if h_in is not None else p.A,
         "h_out_ptr": h_end if h_end is not None else p.A,
         "keep_ptr": _keep(p, config.chunk, chunks) if p.varlen else p.A,
         "dim": p.dim, "dstate": p.dstate, "chunks": chunks,
         "stride_A_dim": p.A.stride(0), "stride_A_state": p.A.stride(1)},
        {"BLOCK_D": block_d, "BLOCK_N": next_pow2(p.dstate), "A_COMPLEX": p.is_complex,
         "HAS_H_IN": h_in is not None, "HAS_H_OUT": h_end is not None, "VARLEN": p.varlen},
        config.num_warps, 1)
    output = recurrent_launch(p, **knobs, out=out, h_in=states, h_out=None, seq_h0=seq_h0,
                              seq_h_out=seq_h_out)
    return LaunchPlan([local, carry, output], (out, h_out))


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                           delta_softplus=False, return_last_state=False, initial_state=None,
                           conj_pair=True, cu_seqlens=None,
                           config: ChunkedScanConfig | None = None):
    """Mamba-1 selective scan (mamba-ssm's `selective_scan_fn` arguments), chunked two-pass.
    Takes and returns like `selective_scan_sequential`."""
    problem = selective_scan_problem(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                     return_last_state, initial_state, conj_pair, cu_seqlens)
    out, h_out = plan_chunked(problem, config).run()
    return pick(problem, out, h_out)
