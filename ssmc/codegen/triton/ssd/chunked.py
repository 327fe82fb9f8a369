"""Mamba-2 SSD in the chunked matmul form (MODELS.md section 3).

With a scalar decay per head, a chunk of Q steps is two small matmuls: inside the chunk
y = (Lmask o C B^T) (dt x) with Lmask_ij = exp(dAcs_i - dAcs_j) for i >= j, and across chunks
only the (headdim x dstate) end states travel, L / Q sequential steps.  Four kernels:
  1. dt:            dt + dt_bias, softplus, dt_limit clamp; dAcs = cumsum(dt A) inside each chunk
  2. chunk state:   state_c = sum_j exp(dAcs_last - dAcs_j) dt_j x_j B_j^T        (tl.dot)
  3. state passing: entering_c = exp(dAcs_last of c-1) entering_{c-1} + state_{c-1}   (in place)
  4. chunk scan:    y = exp(dAcs_i) C_i entering_c + sum_{j<=i} (C_i.B_j) Lmask_ij dt_j x_j
                    + D x, then * silu(z)                                          (tl.dot)
seq_idx (packed sequences) must be nondecreasing along L, as in mamba-ssm: positions whose
seq_idx differs never exchange state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ssmc.codegen.triton.common import (KernelConfig, KernelLaunch, LaunchPlan, grid_dim,
                                        interpreting, next_pow2, pow2_field)
from ssmc.codegen.triton.elementwise import silu, softplus
from ssmc.codegen.triton.ssd.problem import SsdProblem, ssd_problem

DOT_PRECISIONS = ("ieee", "tf32")


@triton.jit
def _dot_operand(v, dot_t: tl.constexpr, ROUND_VIA_FP32: tl.constexpr):
    # Tensor-core operands are the inputs' dtype.  Triton 3.9's interpreter gets tl.dot on
    # bf16 wrong, so there the operand is rounded to bf16 and multiplied in fp32: the same
    # products (bf16 x bf16 is exact in fp32) and the same fp32 accumulation.
    if ROUND_VIA_FP32:
        return v.to(dot_t).to(tl.float32)
    return v.to(dot_t)


@dataclass(frozen=True)
class SsdChunkedConfig(KernelConfig):
    chunk: int = pow2_field(64)  # Q: steps per chunk (used when chunk_size is not given)
    # output rows (time steps) per program, <= chunk.  None: 64 for 16-bit inputs, 16 for fp32
    # (the program keeps a (block_m, dstate) tile of C: fp32 at 64 x 128 spilled on sm_90,
    # at 32 x 128 on sm_86/sm_89 -- see `python -m ssmc.codegen.triton.aot ssd.chunked all`)
    block_m: int | None = pow2_field(None)
    block_k: int = pow2_field(32)  # time steps per inner matmul step, <= chunk
    block_p: int = pow2_field(32)  # headdim columns per program
    block_h: int = pow2_field(16)  # heads per program in the dt kernel
    block_state: int = pow2_field(256)  # state elements per program in state passing
    dot_precision: str = "ieee"  # fp32 inputs: exact "ieee" or tensor-core "tf32"
    num_warps: int = pow2_field(4)
    num_stages: int = 2

    def __post_init__(self):
        super().__post_init__()
        for name in ("chunk", "block_m", "block_k", "block_p"):
            if getattr(self, name) is not None and getattr(self, name) < 16:
                raise ValueError(f"{name}: tl.dot needs at least 16, got {getattr(self, name)}")
        if self.dot_precision not in DOT_PRECISIONS:
            raise ValueError(f"dot_precision: expected one of {DOT_PRECISIONS}, "
                             f"got {self.dot_precision!r}")


@triton.jit
def _ssd_dt_kernel(
    dt_ptr, dt_bias_ptr, A_ptr, dt_out_ptr, dA_cumsum_ptr,
    seqlen, heads, chunks, dt_min, dt_max,
    stride_dt_batch, stride_dt_time, stride_dt_head,
    CHUNK: tl.constexpr, BLOCK_H: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, HAS_DT_LIMIT: tl.constexpr,
):
    chunk = tl.program_id(0)
    pid_h = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_q = tl.arange(0, CHUNK)
    t = chunk * CHUNK + offs_q
    mask_h = offs_h < heads
    mask = mask_h[:, None] & (t < seqlen)[None, :]
    dt = tl.load(dt_ptr + batch * stride_dt_batch + t[None, :] * stride_dt_time
                 + offs_h[:, None] * stride_dt_head, mask=mask, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + offs_h, mask=mask_h, other=0.0)[:, None]
    if DT_SOFTPLUS:
        dt = softplus(dt)
    if HAS_DT_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    dt = tl.where(mask, dt, 0.0)  # steps past the end: no decay, no input
    A = tl.load(A_ptr + offs_h, mask=mask_h, other=0.0)
    dA_cumsum = tl.cumsum(dt * A[:, None], axis=1)
    out = ((batch * heads + offs_h[:, None]) * chunks + chunk) * CHUNK + offs_q[None, :]
    tl.store(dt_out_ptr + out, dt, mask=mask_h[:, None])
    tl.store(dA_cumsum_ptr + out, dA_cumsum, mask=mask_h[:, None])


@triton.jit
def _ssd_chunk_state_kernel(
    x_ptr, B_ptr, dt_ptr, dA_cumsum_ptr, seq_idx_ptr, states_ptr,
    seqlen, heads, headdim, dstate, chunks, heads_per_group,
    stride_x_batch, stride_x_time, stride_x_head,
    stride_B_batch, stride_B_time, stride_B_group,
    CHUNK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_SEQ_IDX: tl.constexpr, DOT_PRECISION: tl.constexpr, ROUND_VIA_FP32: tl.constexpr,
):
    pid_p = tl.program_id(0)
    chunk = tl.program_id(1)
    batch_head = tl.program_id(2)
    batch = (batch_head // heads).to(tl.int64)
    head = batch_head % heads
    group = head // heads_per_group
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < headdim
    mask_n = offs_n < dstate

    dt_row = ((batch * heads + head) * chunks + chunk) * CHUNK
    chunk_end = tl.minimum((chunk + 1) * CHUNK, seqlen) - 1
    dA_last = tl.load(dA_cumsum_ptr + dt_row + CHUNK - 1)  # padded steps add 0: == at chunk_end
    if HAS_SEQ_IDX:
        seq_last = tl.load(seq_idx_ptr + batch * seqlen + chunk_end)

    x_base = x_ptr + batch * stride_x_batch + head * stride_x_head
    B_base = B_ptr + batch * stride_B_batch + group * stride_B_group
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, CHUNK, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        t = chunk * CHUNK + offs_k
        mask_k = t < seqlen
        xT = tl.load(x_base + t[None, :] * stride_x_time + offs_p[:, None],
                     mask=mask_p[:, None] & mask_k[None, :], other=0.0)
        Bk = tl.load(B_base + t[:, None] * stride_B_time + offs_n[None, :],
                     mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        dA_k = tl.load(dA_cumsum_ptr + dt_row + offs_k)
        dt_k = tl.load(dt_ptr + dt_row + offs_k)
        weight = tl.exp(dA_last - dA_k) * dt_k
        if HAS_SEQ_IDX:
            seq_k = tl.load(seq_idx_ptr + batch * seqlen + t, mask=mask_k, other=-1)
            weight = tl.where(seq_k == seq_last, weight, 0.0)
        dot_t = x_ptr.dtype.element_ty
        xw = _dot_operand(xT.to(tl.float32) * weight[None, :], dot_t, ROUND_VIA_FP32)
        acc += tl.dot(xw, _dot_operand(Bk, dot_t, ROUND_VIA_FP32),
                      input_precision=DOT_PRECISION)

    out = (((batch * chunks + chunk) * heads + head) * headdim + offs_p[:, None]) * dstate \
        + offs_n[None, :]
    tl.store(states_ptr + out, acc, mask=mask_p[:, None] & mask_n[None, :])


@triton.jit
def _ssd_state_passing_kernel(
    states_ptr, dA_cumsum_ptr, seq_idx_ptr, initial_ptr, final_ptr,
    seqlen, heads, chunks, state_size,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr,
    HAS_INITIAL: tl.constexpr, HAS_FINAL: tl.constexpr, HAS_SEQ_IDX: tl.constexpr,
):
    pid = tl.program_id(0)
    batch_head = tl.program_id(1)
    batch = (batch_head // heads).to(tl.int64)
    head = batch_head % heads
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < state_size  # headdim * dstate, flattened
    single = (batch * heads + head) * state_size + offs
    s = tl.zeros((BLOCK,), dtype=tl.float32)
    if HAS_INITIAL:
        s = tl.load(initial_ptr + single, mask=mask, other=0.0)
    if HAS_SEQ_IDX:
        seq_prev = tl.load(seq_idx_ptr + batch * seqlen)
    for c in range(0, chunks):
        ptr = states_ptr + ((batch * chunks + c) * heads + head) * state_size + offs
        local = tl.load(ptr, mask=mask, other=0.0)
        tl.store(ptr, s, mask=mask)  # in place: now the state entering chunk c
        decay = tl.exp(tl.load(dA_cumsum_ptr + ((batch * heads + head) * chunks + c) * CHUNK
                               + CHUNK - 1))
        if HAS_SEQ_IDX:
            seq_last = tl.load(seq_idx_ptr + batch * seqlen
                               + tl.minimum((c + 1) * CHUNK, seqlen) - 1)
            decay = tl.where(seq_last == seq_prev, decay, 0.0)  # a new sequence began
            seq_prev = seq_last
        s = decay * s + local
    if HAS_FINAL:
        tl.store(final_ptr + single, s, mask=mask)


@triton.jit
def _ssd_chunk_scan_kernel(
    x_ptr, z_ptr, out_ptr, B_ptr, C_ptr, D_ptr, dt_ptr, dA_cumsum_ptr, seq_idx_ptr, states_ptr,
    seqlen, heads, headdim, dstate, chunks, heads_per_group,
    stride_x_batch, stride_x_time, stride_x_head,
    stride_B_batch, stride_B_time, stride_B_group,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_SEQ_IDX: tl.constexpr, DOT_PRECISION: tl.constexpr, ROUND_VIA_FP32: tl.constexpr,
):
    pid = tl.program_id(0)
    chunk = tl.program_id(1)
    batch_head = tl.program_id(2)
    p_blocks = tl.cdiv(headdim, BLOCK_P)
    pid_m = pid // p_blocks
    pid_p = pid % p_blocks
    batch = (batch_head // heads).to(tl.int64)
    head = batch_head % heads
    group = head // heads_per_group
    dot_t = x_ptr.dtype.element_ty  # tensor-core operand type: the inputs' own

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    t_m = chunk * CHUNK + offs_m
    mask_m = t_m < seqlen
    mask_p = offs_p < headdim
    mask_n = offs_n < dstate
    dt_row = ((batch * heads + head) * chunks + chunk) * CHUNK
    dA_m = tl.load(dA_cumsum_ptr + dt_row + offs_m)

    # B and C share strides (same shape, both contiguous)
    C_base = C_ptr + batch * stride_B_batch + group * stride_B_group
    B_base = B_ptr + batch * stride_B_batch + group * stride_B_group
    C_m = tl.load(C_base + t_m[:, None] * stride_B_time + offs_n[None, :],
                  mask=mask_m[:, None] & mask_n[None, :], other=0.0)
    C_m = _dot_operand(C_m, dot_t, ROUND_VIA_FP32)

    # The state entering the chunk, decayed to each row: exp(dAcs_i) C_i H^T
    state_offs = (((batch * chunks + chunk) * heads + head) * headdim + offs_p[None, :]) \
        * dstate + offs_n[:, None]
    entering = tl.load(states_ptr + state_offs, mask=mask_n[:, None] & mask_p[None, :],
                       other=0.0)
    acc = tl.dot(C_m, _dot_operand(entering, dot_t, ROUND_VIA_FP32),
                 input_precision=DOT_PRECISION) \
        * tl.exp(dA_m)[:, None]
    if HAS_SEQ_IDX:
        seq_prev = tl.load(seq_idx_ptr + batch * seqlen + tl.maximum(chunk * CHUNK - 1, 0))
        seq_m = tl.load(seq_idx_ptr + batch * seqlen + t_m, mask=mask_m, other=-1)
        acc = tl.where((seq_m == seq_prev)[:, None], acc, 0.0)

    # Inside the chunk: causal, so only columns j <= the block's last row.
    x_base = x_ptr + batch * stride_x_batch + head * stride_x_head
    k_end = tl.minimum((pid_m + 1) * BLOCK_M, CHUNK)
    for k0 in range(0, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        t_k = chunk * CHUNK + offs_k
        mask_k = t_k < seqlen
        B_k = tl.load(B_base + t_k[None, :] * stride_B_time + offs_n[:, None],
                      mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        B_k = _dot_operand(B_k, dot_t, ROUND_VIA_FP32)
        cb = tl.dot(C_m, B_k, input_precision=DOT_PRECISION)
        dA_k = tl.load(dA_cumsum_ptr + dt_row + offs_k)
        dt_k = tl.load(dt_ptr + dt_row + offs_k)
        causal = offs_m[:, None] >= offs_k[None, :]
        # exp of a masked -inf rather than a masked exp: the upper triangle would overflow
        decay = tl.exp(tl.where(causal, dA_m[:, None] - dA_k[None, :], float("-inf")))
        cb = cb * decay * dt_k[None, :]
        if HAS_SEQ_IDX:
            seq_k = tl.load(seq_idx_ptr + batch * seqlen + t_k, mask=mask_k, other=-2)
            cb = tl.where(seq_m[:, None] == seq_k[None, :], cb, 0.0)
        x_k = tl.load(x_base + t_k[:, None] * stride_x_time + offs_p[None, :],
                      mask=mask_k[:, None] & mask_p[None, :], other=0.0)
        acc += tl.dot(_dot_operand(cb, dot_t, ROUND_VIA_FP32),
                      _dot_operand(x_k, dot_t, ROUND_VIA_FP32), input_precision=DOT_PRECISION)

    io = t_m[:, None] * stride_x_time + offs_p[None, :]
    mask_mp = mask_m[:, None] & mask_p[None, :]
    if HAS_D:
        x_m = tl.load(x_base + io, mask=mask_mp, other=0.0).to(tl.float32)
        D = tl.load(D_ptr + head * headdim + offs_p, mask=mask_p, other=0.0)
        acc += x_m * D[None, :]
    if HAS_Z:
        z = tl.load(z_ptr + batch * stride_x_batch + head * stride_x_head + io, mask=mask_mp,
                    other=0.0).to(tl.float32)
        acc *= silu(z)
    tl.store(out_ptr + batch * stride_x_batch + head * stride_x_head + io,
             acc.to(out_ptr.dtype.element_ty), mask=mask_mp)


def plan_ssd_chunked(problem: SsdProblem, config: SsdChunkedConfig | None = None,
                     chunk_size: int | None = None) -> LaunchPlan:
    config = config or SsdChunkedConfig()
    p = problem
    Q = chunk_size or config.chunk
    block_m = config.block_m or (16 if p.x.dtype == torch.float32 else 64)
    block_m, block_k = min(block_m, Q), min(config.block_k, Q)
    block_p = min(config.block_p, max(next_pow2(p.headdim), 16))
    block_n = max(next_pow2(p.dstate), 16)
    chunks = max(triton.cdiv(p.seqlen, Q), 1)
    dev = p.x.device
    f32 = dict(dtype=torch.float32, device=dev)
    dt_out = torch.empty((p.batch, p.heads, chunks, Q), **f32)
    dA_cumsum = torch.empty((p.batch, p.heads, chunks, Q), **f32)
    states = torch.empty((p.batch, chunks, p.heads, p.headdim, p.dstate), **f32)
    final = torch.empty((p.batch, p.heads, p.headdim, p.dstate), **f32) \
        if p.return_final_states else None
    out = torch.empty_like(p.x)
    # When the input dtype is 16-bit the tensor cores take it; fp32 follows the knob.
    precision = config.dot_precision if p.x.dtype == torch.float32 else "ieee"
    round_via_fp32 = interpreting() and p.x.dtype == torch.bfloat16
    seq_idx = p.seq_idx if p.seq_idx is not None else dt_out  # unused stand-in pointer
    unused = p.A
    heads_per_group = p.heads // p.groups
    x_strides = {"stride_x_batch": p.x.stride(0), "stride_x_time": p.x.stride(1),
                 "stride_x_head": p.x.stride(2)}
    B_strides = {"stride_B_batch": p.B.stride(0), "stride_B_time": p.B.stride(1),
                 "stride_B_group": p.B.stride(2)}
    W, S = config.num_warps, config.num_stages

    lo, hi = p.dt_limit
    dt_launch = KernelLaunch(
        _ssd_dt_kernel, (chunks, grid_dim(p.heads, config.block_h), p.batch),
        {"dt_ptr": p.dt, "dt_bias_ptr": p.dt_bias if p.dt_bias is not None else unused,
         "A_ptr": p.A, "dt_out_ptr": dt_out, "dA_cumsum_ptr": dA_cumsum,
         "seqlen": p.seqlen, "heads": p.heads, "chunks": chunks,
         "dt_min": lo, "dt_max": min(hi, 3.0e38),
         "stride_dt_batch": p.dt.stride(0), "stride_dt_time": p.dt.stride(1),
         "stride_dt_head": p.dt.stride(2)},
        {"CHUNK": Q, "BLOCK_H": config.block_h, "HAS_DT_BIAS": p.dt_bias is not None,
         "DT_SOFTPLUS": p.dt_softplus, "HAS_DT_LIMIT": p.has_dt_limit}, W, 1)
    state_launch = KernelLaunch(
        _ssd_chunk_state_kernel, (grid_dim(p.headdim, block_p), chunks, p.batch * p.heads),
        {"x_ptr": p.x, "B_ptr": p.B, "dt_ptr": dt_out, "dA_cumsum_ptr": dA_cumsum,
         "seq_idx_ptr": seq_idx, "states_ptr": states, "seqlen": p.seqlen, "heads": p.heads,
         "headdim": p.headdim, "dstate": p.dstate, "chunks": chunks,
         "heads_per_group": heads_per_group, **x_strides, **B_strides},
        {"CHUNK": Q, "BLOCK_K": block_k, "BLOCK_P": block_p, "BLOCK_N": block_n,
         "HAS_SEQ_IDX": p.seq_idx is not None, "DOT_PRECISION": precision,
         "ROUND_VIA_FP32": round_via_fp32}, W, S)
    state_size = p.headdim * p.dstate
    block_state = min(config.block_state, next_pow2(state_size))
    passing_launch = KernelLaunch(
        _ssd_state_passing_kernel, (grid_dim(state_size, block_state), p.batch * p.heads),
        {"states_ptr": states, "dA_cumsum_ptr": dA_cumsum, "seq_idx_ptr": seq_idx,
         "initial_ptr": p.initial_states if p.initial_states is not None else unused,
         "final_ptr": final if final is not None else unused,
         "seqlen": p.seqlen, "heads": p.heads, "chunks": chunks, "state_size": state_size},
        {"CHUNK": Q, "BLOCK": block_state, "HAS_INITIAL": p.initial_states is not None,
         "HAS_FINAL": final is not None, "HAS_SEQ_IDX": p.seq_idx is not None}, W, 1)
    scan_launch = KernelLaunch(
        _ssd_chunk_scan_kernel,
        (grid_dim(Q, block_m) * grid_dim(p.headdim, block_p), chunks, p.batch * p.heads),
        {"x_ptr": p.x, "z_ptr": p.z if p.z is not None else p.x, "out_ptr": out,
         "B_ptr": p.B, "C_ptr": p.C, "D_ptr": p.D if p.D is not None else unused,
         "dt_ptr": dt_out, "dA_cumsum_ptr": dA_cumsum, "seq_idx_ptr": seq_idx,
         "states_ptr": states, "seqlen": p.seqlen, "heads": p.heads, "headdim": p.headdim,
         "dstate": p.dstate, "chunks": chunks, "heads_per_group": heads_per_group,
         **x_strides, **B_strides},
        {"CHUNK": Q, "BLOCK_M": block_m, "BLOCK_K": block_k, "BLOCK_P": block_p,
         "BLOCK_N": block_n, "HAS_D": p.D is not None, "HAS_Z": p.z is not None,
         "HAS_SEQ_IDX": p.seq_idx is not None, "DOT_PRECISION": precision,
         "ROUND_VIA_FP32": round_via_fp32}, W, S)
    return LaunchPlan([dt_launch, state_launch, passing_launch, scan_launch], (out, final))


def ssd_chunked(x, dt, A, B, C, chunk_size=None, D=None, z=None, dt_bias=None,
                initial_states=None, seq_idx=None, dt_softplus=False,
                dt_limit=(0.0, float("inf")), return_final_states=False,
                config: SsdChunkedConfig | None = None):
    """Mamba-2 SSD (mamba-ssm's `mamba_chunk_scan_combined` arguments; `chunk_size` defaults to
    config.chunk).  Returns y (batch, seqlen, heads, headdim) in x's dtype, and with
    return_final_states the fp32 final states (batch, heads, headdim, dstate)."""
    config = config or SsdChunkedConfig()
    Q = config.chunk if chunk_size is None else chunk_size
    problem = ssd_problem(x, dt, A, B, C, Q, D, z, dt_bias, initial_states, seq_idx,
                          dt_softplus, dt_limit, return_final_states)
    out, final = plan_ssd_chunked(problem, config, Q).run()
    return (out, final) if return_final_states else out
