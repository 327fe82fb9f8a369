"""Mamba-1 selective scan backward in Triton: the reverse scan, states recomputed, never stored.

What ssmc.runtime.library registers for ("selective_scan", "cuda"): the op
``ssmc::selective_scan_bwd``'s arguments in, its 9-tuple (du, ddelta, dA, dB, dC, dD, dz,
ddelta_bias, dinitial_state) out.  Real A only; complex A/B/C, float64 and empty inputs return
NotImplemented and the library runs the torch reverse-scan engine (ssmc.runtime.backward).

One program per (channel block, batch row), like the sequential forward (sequential.py):
BLOCK_D channels x N states in registers.  With the forward's definitions

    dt_t = softplus(delta_t + bias),  a_t = exp(dt_t A),  h_t = a_t h_{t-1} + dt_t u_t B_t,
    y_t = <C_t, h_t> + D u_t,         out_t = y_t silu(z_t)

the program walks the chunks of K steps (the forward's checkpoint_every) in reverse.  For each
chunk it first recomputes the chunk's states from the checkpoint (the state entering the
chunk) into a per-program scratch (b, d, K, N) fp32 (one chunk's states, L2-resident), then
walks the chunk backwards with the adjoint carry g (the gradient reaching h_t from later steps;
at the end of the sequence the gradient of the last state):

    gy_t = dout_t silu(z_t),   G_t = g + C_t gy_t,   g <- a_t G_t
    du_t   = dt_t <G_t, B_t> + D gy_t
    ddt_t  = u_t <G_t, B_t> + <G_t a_t h_{t-1}, A>         (then x sigmoid(pre) for softplus)
    dA    += dt_t G_t a_t h_{t-1},    dD += gy_t u_t,      dbias += ddelta_t
    dB_t   = dt_t u_t G_t,  dC_t = gy_t h_t                 (summed over the channels sharing them)
    dz_t   = dout_t y_t silu'(z_t),   dh0 = g after step 0

Checkpoints: the forward's (b, ceil(L / K), d, N) when it saved them, else the kernel
recomputes them first with one forward sweep (RECOMPUTE; the same program, so no other launch
has to run before it).

Mamba-2 SSD runs on the same kernel (ssmc.codegen.triton.ssd.backward), as on the CPU
(ssmc.codegen.tvm.ssd_bwd): HEADS (BwdProblem.head_dim > 0) reads A (heads,) and the effective
step (b, L, heads) per channel's head, one exp per step and channel instead of one per state, and
writes dA per channel (b, d) (summed over the states) and ddelta per channel (b, L, d) fp32 for
torch to sum over each head; HAS_KEEP multiplies the decay of step t by keep[b, t] (seq_idx: 0
resets the state before step t; it works without HEADS too).  Checkpoints are the states before
any reset.

Reductions over channels and batch are per-program partials reduced in torch (deterministic,
no atomics): dA, dD, dbias and time-invariant dB/dC (d, N) per batch row; time-varying
(grouped) dB/dC per (step, channel block) (b, L, blocks, N), then summed over each group's
blocks.  So that a block never straddles two groups, BLOCK_D divides the channels per group
when there are several groups.

Wrapped as the ``torch.library.triton_op`` ``ssmc::selective_scan_bwd_triton`` (kernels through
``wrap_triton`` outside the interpreter), like the forward ops in ssmc.runtime.library.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ssmc.codegen.triton.common import (FLOAT_DTYPES, KernelConfig, KernelLaunch, LaunchPlan,
                                        auto_block_d, grid_dim, interpreting, library_op,
                                        next_pow2, pow2_field, run_traceable)
from ssmc.codegen.triton.elementwise import LOG2E, softplus
from ssmc.codegen.triton.selective_scan.problem import _operand


@dataclass(frozen=True)
class SelectiveScanBwdConfig(KernelConfig):
    block_d: int | None = pow2_field(None)  # channels per program; None: ~4 states a thread
    num_warps: int = pow2_field(4)
    num_stages: int = 1


# --------------------------------------------------------------------------- kernel

@triton.jit
def _step_dt(delta_ptr, off, mask_d, delta_bias, HAS_DELTA_BIAS: tl.constexpr,
             DELTA_SOFTPLUS: tl.constexpr):
    """(pre, dt): delta (+ bias), and the effective step; `off` the channels' offsets of the
    step into delta (u's in Mamba-1, the channels' heads' in SSD mode)."""
    pre = tl.load(delta_ptr + off, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_DELTA_BIAS:
        pre = pre + delta_bias
    dt = pre
    if DELTA_SOFTPLUS:
        dt = softplus(pre)
    return pre, dt


@triton.jit
def _state_step(h, t64, row, dt_row, stride_seq_time, stride_dt_time, stride_B_time, delta_ptr,
                u_ptr, B_base, keep_ptr, mask_d, mask_dn, delta_bias, A2, keep_row,
                HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
                HEADS: tl.constexpr, HAS_KEEP: tl.constexpr):
    """h_t = a_t h_{t-1} + dt_t u_t B_t: the forward recurrence both recomputations run (the
    checkpoints, then each chunk's states); t64 is int64 (L * d can pass 2**31)."""
    _, dt = _step_dt(delta_ptr, dt_row + t64 * stride_dt_time, mask_d, delta_bias,
                     HAS_DELTA_BIAS, DELTA_SOFTPLUS)
    u = tl.load(u_ptr + row + t64 * stride_seq_time, mask=mask_d, other=0.0).to(tl.float32)
    B = tl.load(B_base + t64 * stride_B_time, mask=mask_dn, other=0.0).to(tl.float32)
    a = _decay(dt, A2, keep_ptr, keep_row + t64, HEADS, HAS_KEEP)
    return a * h + (dt * u)[:, None] * B


@triton.jit
def _decay(dt, A2, keep_ptr, keep_off, HEADS: tl.constexpr, HAS_KEEP: tl.constexpr):
    """a_t, to multiply (BLOCK_D, BLOCK_N) states: exp(dt A) per channel and state, or in SSD
    mode (A one scalar per channel's head) one exp per channel, (BLOCK_D, 1); times keep[b, t]
    (0: the state resets before step t) with a keep mask."""
    if HEADS:
        a = tl.exp2(dt * A2)[:, None]
    else:
        a = tl.exp2(dt[:, None] * A2)
    if HAS_KEEP:
        a = a * tl.load(keep_ptr + keep_off)
    return a


@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr, delta_ptr, z_ptr, gout_ptr,
    A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr,
    h0_ptr, glast_ptr, ckpt_ptr, scratch_ptr, keep_ptr,
    gu_ptr, gdelta_ptr, gz_ptr, gA_ptr, gB_ptr, gC_ptr, gD_ptr, gbias_ptr, gh0_ptr,
    dim, seqlen, dstate, chunk_len, chunks, dblocks,
    stride_seq_batch, stride_seq_dim, stride_seq_time,
    stride_A_dim, stride_A_state, head_dim, stride_dt_batch, stride_dt_time,
    B_channels_per_group, stride_B_batch, stride_B_group, stride_B_state, stride_B_time,
    C_channels_per_group, stride_C_batch, stride_C_group, stride_C_state, stride_C_time,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DELTA_BIAS: tl.constexpr, HAS_H0: tl.constexpr, HAS_GLAST: tl.constexpr,
    RECOMPUTE: tl.constexpr, B_VARIES: tl.constexpr, C_VARIES: tl.constexpr,
    HEADS: tl.constexpr, HAS_KEEP: tl.constexpr,
):
    pid_d = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)  # int64: batch * dim * seqlen can pass 2**31
    zero64 = tl.full((), 0, tl.int64)

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_dn = mask_d[:, None] & mask_n[None, :]

    # Padded states get A = 0, B = C = 0 and padded channels u = dout = 0: their state and
    # adjoint stay 0, so they add nothing to the sums over channels or states below.
    if HEADS:  # SSD: A (heads,), dt (b, L, heads): one per channel's head
        offs_h = offs_d // head_dim
        A = tl.load(A_ptr + offs_h * stride_A_dim, mask=mask_d, other=0.0)
        dt_row = batch * stride_dt_batch + offs_h
    else:
        offs_h = offs_d
        A = tl.load(A_ptr + offs_d[:, None] * stride_A_dim + offs_n[None, :] * stride_A_state,
                    mask=mask_dn, other=0.0)
        dt_row = batch * stride_seq_batch + offs_d.to(tl.int64) * stride_seq_dim
    A2 = A * LOG2E
    delta_bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + offs_h, mask=mask_d, other=0.0)
    D = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)

    B_base = (B_ptr + batch * stride_B_batch
              + (offs_d // B_channels_per_group)[:, None] * stride_B_group
              + offs_n[None, :] * stride_B_state)
    C_base = (C_ptr + batch * stride_C_batch
              + (offs_d // C_channels_per_group)[:, None] * stride_C_group
              + offs_n[None, :] * stride_C_state)
    row = batch * stride_seq_batch + offs_d.to(tl.int64) * stride_seq_dim  # (batch, d, t = 0)
    dn = offs_d[:, None] * dstate + offs_n[None, :]
    state_offs = batch * dim * dstate + dn  # (batch, d, n) of a (b, d, N) tensor
    # this program's rows of the chunk scratch (b, d, K, N)
    scratch = scratch_ptr + (batch * dim + offs_d[:, None]).to(tl.int64) * chunk_len * dstate \
        + offs_n[None, :]

    if RECOMPUTE:  # the forward's checkpoints, by one forward sweep
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        if HAS_H0:
            h = tl.load(h0_ptr + state_offs, mask=mask_dn, other=0.0)
        for c in range(0, chunks):
            tl.store(ckpt_ptr + (batch * chunks + c) * dim * dstate + dn, h, mask=mask_dn)
            for t in range(c * chunk_len, tl.minimum(c * chunk_len + chunk_len, seqlen)):
                h = _state_step(h, zero64 + t, row, dt_row, stride_seq_time, stride_dt_time,
                                stride_B_time, delta_ptr, u_ptr, B_base, keep_ptr, mask_d,
                                mask_dn, delta_bias, A2, batch * seqlen, HAS_DELTA_BIAS,
                                DELTA_SOFTPLUS, HEADS, HAS_KEEP)
        tl.debug_barrier()

    g = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # the adjoint carry
    if HAS_GLAST:
        g = tl.load(glast_ptr + state_offs, mask=mask_dn, other=0.0)
    if HEADS:
        gA = tl.zeros((BLOCK_D,), dtype=tl.float32)  # per channel: A is the head's scalar
    else:
        gA = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    gB_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # time-invariant B, C
    gC_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    gD = tl.zeros((BLOCK_D,), dtype=tl.float32)
    gbias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    part_row = (batch * seqlen * dblocks + pid_d) * dstate + offs_n  # (b, L, blocks, N) at t=0

    for cc in range(0, chunks):
        c = chunks - 1 - cc
        s = c * chunk_len
        e = tl.minimum(s + chunk_len, seqlen)
        h_ck = tl.load(ckpt_ptr + (batch * chunks + c) * dim * dstate + dn, mask=mask_dn,
                       other=0.0)
        # 1. the chunk's states h_s .. h_{e-1} into the scratch
        h = h_ck
        for t in range(s, e):
            h = _state_step(h, zero64 + t, row, dt_row, stride_seq_time, stride_dt_time,
                            stride_B_time, delta_ptr, u_ptr, B_base, keep_ptr, mask_d, mask_dn,
                            delta_bias, A2, batch * seqlen, HAS_DELTA_BIAS, DELTA_SOFTPLUS,
                            HEADS, HAS_KEEP)
            tl.store(scratch + (t - s) * dstate, h, mask=mask_dn)
        tl.debug_barrier()
        # 2. backwards through the chunk; h is h_t, h_prev h_{t-1}
        for k in range(0, e - s):
            t = e - 1 - k
            t64 = zero64 + t
            off = row + t64 * stride_seq_time
            pre, dt = _step_dt(delta_ptr, dt_row + t64 * stride_dt_time, mask_d, delta_bias,
                               HAS_DELTA_BIAS, DELTA_SOFTPLUS)
            u = tl.load(u_ptr + off, mask=mask_d, other=0.0).to(tl.float32)
            dout = tl.load(gout_ptr + off, mask=mask_d, other=0.0).to(tl.float32)
            B = tl.load(B_base + t64 * stride_B_time, mask=mask_dn, other=0.0).to(tl.float32)
            C = tl.load(C_base + t64 * stride_C_time, mask=mask_dn, other=0.0).to(tl.float32)
            i = t - s
            h_prev = tl.load(scratch + tl.maximum(i - 1, 0) * dstate, mask=mask_dn, other=0.0)
            h_prev = tl.where(i == 0, h_ck, h_prev)

            gy = dout
            if HAS_Z:
                zv = tl.load(z_ptr + off, mask=mask_d, other=0.0).to(tl.float32)
                sig = tl.sigmoid(zv)
                gy = dout * zv * sig
                y = tl.sum(C * h, axis=1) + D * u
                gz = dout * y * sig * (1.0 + zv * (1.0 - sig))
                tl.store(gz_ptr + off, gz.to(gz_ptr.dtype.element_ty), mask=mask_d)
            G = g + C * gy[:, None]
            dA = _decay(dt, A2, keep_ptr, batch * seqlen + t64, HEADS, HAS_KEEP)
            w = G * dA * h_prev  # the gradient reaching log a_t = dt A
            g_dtu = tl.sum(G * B, axis=1)
            if HEADS:
                w_sum = tl.sum(w, axis=1)
                g_dt = g_dtu * u + w_sum * A
                gA += w_sum * dt
            else:
                g_dt = g_dtu * u + tl.sum(w * A, axis=1)
                gA += w * dt[:, None]
            dtu = dt * u
            gu = g_dtu * dt
            if HAS_D:
                gu += gy * D
                gD += gy * u
            if DELTA_SOFTPLUS:
                g_dt = g_dt * tl.sigmoid(pre)
            gbias += g_dt
            tl.store(gu_ptr + off, gu.to(gu_ptr.dtype.element_ty), mask=mask_d)
            tl.store(gdelta_ptr + off, g_dt.to(gdelta_ptr.dtype.element_ty), mask=mask_d)
            gB_t = G * dtu[:, None]
            gC_t = h * gy[:, None]
            if B_VARIES:
                tl.store(gB_ptr + part_row + t64 * dblocks * dstate, tl.sum(gB_t, axis=0),
                         mask=mask_n)
            else:
                gB_acc += gB_t
            if C_VARIES:
                tl.store(gC_ptr + part_row + t64 * dblocks * dstate, tl.sum(gC_t, axis=0),
                         mask=mask_n)
            else:
                gC_acc += gC_t
            g = G * dA
            h = h_prev
        tl.debug_barrier()  # the next chunk overwrites the scratch

    if HEADS:
        tl.store(gA_ptr + batch * dim + offs_d, gA, mask=mask_d)
    else:
        tl.store(gA_ptr + state_offs, gA, mask=mask_dn)
    if not B_VARIES:
        tl.store(gB_ptr + state_offs, gB_acc, mask=mask_dn)
    if not C_VARIES:
        tl.store(gC_ptr + state_offs, gC_acc, mask=mask_dn)
    if HAS_D:
        tl.store(gD_ptr + batch * dim + offs_d, gD, mask=mask_d)
    if HAS_DELTA_BIAS:
        tl.store(gbias_ptr + batch * dim + offs_d, gbias, mask=mask_d)
    if HAS_H0:
        tl.store(gh0_ptr + state_offs, g, mask=mask_dn)


# --------------------------------------------------------------------------- plan

@dataclass
class BwdProblem:
    """The op's arguments, checked and laid out for the kernel."""

    grad_y: Tensor  # sequences in the op's layout, contiguous
    u: Tensor
    delta: Tensor
    z: Tensor | None
    A: Tensor  # (d, N) fp32
    B: object  # StateSpaceOperand
    C: object
    B_shape: tuple  # B as the op got it: (d, N), or (b, g, N, L) / (b, L, g, N)
    C_shape: tuple
    D: Tensor | None
    delta_bias: Tensor | None
    h0: Tensor | None  # (b, d, N) fp32
    glast: Tensor | None
    checkpoints: Tensor | None  # (b, nc, d, N) fp32, or None: recomputed
    chunk: int
    layout: str
    delta_softplus: bool
    batch: int
    dim: int
    seqlen: int
    dstate: int
    # SSD mode (ssmc.codegen.triton.ssd.backward): channels per head, > 0 when A (heads,) and
    # delta (b, L, heads) are one per head of head_dim channels (layout 'bld')
    head_dim: int = 0
    keep: Tensor | None = None  # (b, L) fp32: the decay of step t times keep[b, t]

    @property
    def chunks(self) -> int:
        return (self.seqlen + self.chunk - 1) // self.chunk

    def seq_strides(self) -> tuple:
        d, L = self.dim, self.seqlen
        return (L * d, 1, d) if self.layout == "bld" else (d * L, L, 1)


def _groups(shape: tuple, layout: str) -> int:
    """Groups of a time-varying B/C as the op takes it ((b, L, g, N) or (b, g, N, L))."""
    return shape[2] if layout == "bld" else shape[1]


def _bc_view(M: Tensor, layout: str) -> Tensor:
    """The op's B/C -> the launchers' (d, N) / (b, g, N, L) view (no copy)."""
    return M if M.dim() == 2 or layout == "bdl" else M.permute(0, 2, 3, 1)


def backward_problem(grad_y, grad_last, u, delta, A, B, C, D, z, delta_bias, initial_state,
                     checkpoints, delta_softplus, layout, checkpoint_every) -> BwdProblem:
    from ssmc.runtime.backward import chunk_length

    if layout == "bld":
        b, L, d = u.shape
    else:
        b, d, L = u.shape
    N = A.shape[1]
    K = int(checkpoint_every) if checkpoint_every > 0 else chunk_length(b, d, N, L)
    K = max(1, min(K, max(L, 1)))  # one chunk no longer than L: the scratch holds K states
    nc = (L + K - 1) // K
    ck = None
    # the forward's, when it saved them every K steps (ceil(L / K) of them; K > L: one)
    if checkpoint_every > 0 and checkpoints is not None and checkpoints.dim() == 4 \
            and checkpoints.shape[1] == nc:
        ck = checkpoints.float().contiguous()

    def f32(t):
        return None if t is None else t.float().contiguous()

    return BwdProblem(
        grad_y=grad_y.contiguous(), u=u.contiguous(), delta=delta.contiguous(),
        z=None if z is None else z.contiguous(), A=A.float().contiguous(),
        B=_operand("B", _bc_view(B, layout), b, d, L, N, False),
        C=_operand("C", _bc_view(C, layout), b, d, L, N, False),
        B_shape=tuple(B.shape), C_shape=tuple(C.shape),
        D=f32(D), delta_bias=f32(delta_bias), h0=f32(initial_state), glast=f32(grad_last),
        checkpoints=ck, chunk=K, layout=layout, delta_softplus=bool(delta_softplus),
        batch=b, dim=d, seqlen=L, dstate=N)


def _block_d(p: BwdProblem, config: SelectiveScanBwdConfig) -> int:
    block = config.block_d or auto_block_d(next_pow2(p.dstate), config.num_warps)
    for shape in (p.B_shape, p.C_shape):
        if len(shape) == 4 and _groups(shape, p.layout) > 1:
            per_group = p.dim // _groups(shape, p.layout)
            block = min(block, per_group & -per_group)  # a power of two dividing it
    return block


def plan_backward(p: BwdProblem, config: SelectiveScanBwdConfig | None = None):
    """One launch and its outputs (a dict of the kernel's result tensors, partials
    unreduced)."""
    config = config or SelectiveScanBwdConfig()
    block_d = _block_d(p, config)
    b, d, L, N = p.batch, p.dim, p.seqlen, p.dstate
    nb = grid_dim(d, block_d)
    f32 = dict(dtype=torch.float32, device=p.u.device)
    recompute = p.checkpoints is None
    b_varies, c_varies = len(p.B_shape) == 4, len(p.C_shape) == 4

    def partial(varies):
        return torch.empty((b, L, nb, N) if varies else (b, d, N), **f32)

    out = {
        "gu": torch.empty(p.u.shape, dtype=p.u.dtype, device=p.u.device),
        "gdelta": torch.empty(p.delta.shape, dtype=p.delta.dtype, device=p.u.device),
        "gz": None if p.z is None else torch.empty(p.z.shape, dtype=p.z.dtype,
                                                   device=p.u.device),
        "gA": torch.empty((b, d, N), **f32), "gB": partial(b_varies), "gC": partial(c_varies),
        "gD": torch.empty((b, d), **f32) if p.D is not None else None,
        "gbias": torch.empty((b, d), **f32) if p.delta_bias is not None else None,
        "gh0": torch.empty((b, d, N), **f32) if p.h0 is not None else None,
    }
    ckpt = p.checkpoints if not recompute else torch.empty((b, p.chunks, d, N), **f32)
    scratch = torch.empty((b, d, p.chunk, N), **f32)
    placeholder = p.A
    sb, sd, st = p.seq_strides()
    if p.head_dim:  # SSD: delta (b, L, heads), A (heads,); per-channel ddt and dA partials
        out["gdelta"] = torch.empty(p.u.shape, **f32)
        out["gA"] = torch.empty((b, d), **f32)
        dt_strides = (p.delta.stride(0), p.delta.stride(1))
        A_strides = (p.A.stride(0), 0)
    else:
        dt_strides = (sb, st)
        A_strides = (p.A.stride(0), p.A.stride(1))
    args = {
        "u_ptr": p.u, "delta_ptr": p.delta, "z_ptr": p.z if p.z is not None else p.u,
        "gout_ptr": p.grad_y, "A_ptr": p.A, "B_ptr": p.B.data, "C_ptr": p.C.data,
        "D_ptr": p.D if p.D is not None else placeholder,
        "delta_bias_ptr": p.delta_bias if p.delta_bias is not None else placeholder,
        "h0_ptr": p.h0 if p.h0 is not None else placeholder,
        "glast_ptr": p.glast if p.glast is not None else placeholder,
        "ckpt_ptr": ckpt, "scratch_ptr": scratch,
        "keep_ptr": p.keep if p.keep is not None else placeholder,
        "gu_ptr": out["gu"], "gdelta_ptr": out["gdelta"],
        "gz_ptr": out["gz"] if out["gz"] is not None else out["gu"],
        "gA_ptr": out["gA"], "gB_ptr": out["gB"], "gC_ptr": out["gC"],
        "gD_ptr": out["gD"] if out["gD"] is not None else placeholder,
        "gbias_ptr": out["gbias"] if out["gbias"] is not None else placeholder,
        "gh0_ptr": out["gh0"] if out["gh0"] is not None else placeholder,
        "dim": d, "seqlen": L, "dstate": N, "chunk_len": p.chunk, "chunks": p.chunks,
        "dblocks": nb, "stride_seq_batch": sb, "stride_seq_dim": sd, "stride_seq_time": st,
        "stride_A_dim": A_strides[0], "stride_A_state": A_strides[1],
        "head_dim": max(p.head_dim, 1), "stride_dt_batch": dt_strides[0],
        "stride_dt_time": dt_strides[1],
    }
    args.update(p.B.kernel_args("B"))
    args.update(p.C.kernel_args("C"))
    constexprs = {
        "BLOCK_D": block_d, "BLOCK_N": next_pow2(N), "DELTA_SOFTPLUS": p.delta_softplus,
        "HAS_D": p.D is not None, "HAS_Z": p.z is not None,
        "HAS_DELTA_BIAS": p.delta_bias is not None, "HAS_H0": p.h0 is not None,
        "HAS_GLAST": p.glast is not None, "RECOMPUTE": recompute,
        "B_VARIES": b_varies, "C_VARIES": c_varies,
        "HEADS": p.head_dim > 0, "HAS_KEEP": p.keep is not None,
    }
    launch = KernelLaunch(_selective_scan_bwd_kernel, (nb, b), args, constexprs,
                          config.num_warps, config.num_stages)
    return LaunchPlan([launch], (out,))


def _reduce_bc(part: Tensor, shape: tuple, layout: str, b: int, L: int) -> Tensor:
    """A B/C partial -> that operand's gradient in its own shape (fp32)."""
    if len(shape) == 2:
        return part.sum(0)  # (b, d, N) -> (d, N)
    g = _groups(shape, layout)
    nb, N = part.shape[2], part.shape[3]
    grad = part.view(b, L, g, nb // g, N).sum(3)  # (b, L, g, N)
    return grad if layout == "bld" else grad.permute(0, 2, 3, 1)


def finish(p: BwdProblem, out: dict, A, B, C, D, z, delta_bias, initial_state) -> tuple:
    """The kernel's outputs -> the op's 9-tuple, in the inputs' dtypes."""
    def empty():
        return p.u.new_empty((0,))

    b, L = p.batch, p.seqlen
    return (
        out["gu"], out["gdelta"],
        out["gA"].sum(0).to(A.dtype),
        _reduce_bc(out["gB"], p.B_shape, p.layout, b, L).to(B.dtype).contiguous(),
        _reduce_bc(out["gC"], p.C_shape, p.layout, b, L).to(C.dtype).contiguous(),
        empty() if D is None else out["gD"].sum(0).to(D.dtype),
        empty() if z is None else out["gz"],
        empty() if delta_bias is None else out["gbias"].sum(0).to(delta_bias.dtype),
        empty() if initial_state is None else out["gh0"].to(initial_state.dtype),
    )


def _config(config: str) -> SelectiveScanBwdConfig | None:
    if not config:
        return None
    raw = {k.lower(): v for k, v in json.loads(config).items()}
    return SelectiveScanBwdConfig.from_dict(
        {k: v for k, v in raw.items() if k in ("block_d", "num_warps", "num_stages")})


def selective_scan_bwd_triton(grad_y: Tensor, grad_last: Optional[Tensor], u: Tensor,
                              delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                              D: Optional[Tensor], z: Optional[Tensor],
                              delta_bias: Optional[Tensor], initial_state: Optional[Tensor],
                              checkpoints: Optional[Tensor], delta_softplus: bool, layout: str,
                              checkpoint_every: int, config: str
                              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                         Tensor, Tensor, Tensor]:
    """The backward on the Triton kernel (real A): ssmc::selective_scan_bwd's 9-tuple.
    config: JSON knobs of SelectiveScanBwdConfig ('' for the defaults)."""
    p = backward_problem(grad_y, grad_last, u, delta, A, B, C, D, z, delta_bias, initial_state,
                         checkpoints, delta_softplus, layout, checkpoint_every)
    out = run_traceable(plan_backward(p, _config(config)))[0]
    return finish(p, out, A, B, C, D, z, delta_bias, initial_state)


_OP = []


def triton_bwd_op():
    """ssmc::selective_scan_bwd_triton (common.library_op), defined on first use."""
    if not _OP:
        _OP.append(library_op("ssmc::selective_scan_bwd_triton", selective_scan_bwd_triton))
    return _OP[0]


def applies(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
            grad_y=None, grad_last=None, **_) -> bool:
    """What the kernel covers: real A/B/C, fp32/fp16/bf16, a non-empty sequence, on a device
    Triton runs on (CUDA/ROCm, or the CPU under TRITON_INTERPRET=1)."""
    if A.is_complex() or B.is_complex() or C.is_complex() or A.dim() != 2:
        return False
    if B.dim() not in (2, 4) or C.dim() not in (2, 4):
        return False
    if u.device.type != "cuda" and not (u.device.type == "cpu" and interpreting()):
        return False
    ts = (u, delta, A, B, C, D, z, delta_bias, initial_state, grad_y, grad_last)
    if any(t is not None and (t.is_complex() or t.dtype not in FLOAT_DTYPES) for t in ts):
        return False
    return u.numel() > 0


def selective_scan_backward(grad_y, grad_last, u, delta, A, B, C, D, z, delta_bias,
                            initial_state, checkpoints, delta_softplus, conj_pair, layout,
                            checkpoint_every, config=""):
    """The ("selective_scan", "cuda") backward: the op's keyword arguments -> its 9-tuple, or
    NotImplemented for what the kernel does not cover (complex A, float64: the library then
    runs the torch engine)."""
    if not applies(u, delta, A, B, C, D, z, delta_bias, initial_state, grad_y, grad_last):
        return NotImplemented
    gl = grad_last if grad_last is not None and grad_last.numel() else None
    ck = checkpoints if checkpoints is not None and checkpoints.numel() else None
    return tuple(triton_bwd_op()(grad_y, gl, u, delta, A, B, C, D, z, delta_bias,
                                 initial_state, ck, bool(delta_softplus), layout,
                                 int(checkpoint_every), config or ""))


__all__ = ["SelectiveScanBwdConfig", "applies", "backward_problem", "plan_backward",
           "selective_scan_backward", "selective_scan_bwd_triton", "triton_bwd_op"]
