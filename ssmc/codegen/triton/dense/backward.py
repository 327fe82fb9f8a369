"""Dense / block-diagonal scan backward in Triton: the adjoint scan, backward in t.

With the forward (sequential.py) h_t = A_t h_{t-1} + u_t per block, A_t = A0 + sum_k x_t^k A_k
(built in the kernel) or given per step, and q_t the gradient of the output h_t:

    g_t = q_t + A_{t+1}^T g_{t+1}   (g_L = q_L)        du_t = g_t,   dh0 = A_1^T g_1
    dA_t = g_t h_{t-1}^T   ->  given A: dA_t itself;  built: dA0 = sum dA_t,
                               dA_k = sum x_t^k dA_t,  dx_t^k = <A_k, dA_t> (over the blocks)

Memory: the trajectory h (b, L, N) fp32 is the scan's output, which the layer keeps anyway
(y = h W_C^T: autograd saves it for W_C's gradient), so the kernel reads h_{t-1} from it;
recomputing from checkpoints would save no memory here and cost a second sweep.

One program per (block group, batch row), like the forward: the group's A_k and A0 stay in
registers (the same size limit, sequential.MAX_BUILD_VALUES), A_t is rebuilt per step and
A_t^T g_t carried to the next (earlier) step.  Reductions are per-program partials summed in
torch (deterministic, no atomics), as ssmc.codegen.triton.selective_scan.backward does:
dA_k, dA0 per batch row ((b, K, nb, bs, bs), (b, nb, bs, bs): a program owns its group's
blocks), dx per (step, group) ((b, L, groups, K)).

`dense_scan_trainable` is `dense_scan_sequential` that autograd differentiates: the op
``ssmc::dense_scan_triton`` (the Triton forward) whose autograd formula is the op
``ssmc::dense_scan_bwd_triton`` (this kernel), both triton_ops on a device (common.library_op,
so torch.compile traces training through them); `dense_ssm_trainable` the whole
layer around it, whose projections (W_B, W_C, D) and transition building outside the kernel
("expm", A_k too big for registers) are torch ops autograd differentiates.
"""

from __future__ import annotations

import json
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ssmc.codegen.triton.common import (FLOAT_DTYPES, KernelLaunch, LaunchPlan, cast_grads,
                                        config_json, grid_dim, interpreting, next_pow2,
                                        run_traceable, trainable_ops)
from ssmc.codegen.triton.dense.sequential import (VALUES_PER_WARP, DenseSequentialConfig,
                                                  _built_transition, _group_tiles, _load_built,
                                                  _pad_blocks, _readout, _scan_operands,
                                                  dense_scan_sequential, plan_dense_scan)


@triton.jit
def _dense_scan_bwd_kernel(
    gh_ptr, h_ptr, x_ptr, Ak_ptr, A0_ptr, At_ptr, h0_ptr,
    gu_ptr, gx_ptr, gAk_ptr, gA0_ptr, gAt_ptr, gh0_ptr,
    seqlen, nb, K, groups,
    BLOCK_NB: tl.constexpr, BS: tl.constexpr, BLOCK_K: tl.constexpr,
    GIVEN: tl.constexpr, HAS_H0: tl.constexpr,
):
    pid_n = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    N = nb * BS
    col, mask_ni, ent, mask_ent = _group_tiles(pid_n, nb, BLOCK_NB, BS)
    offs_k = tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    if not GIVEN:
        A0, Ak, Ak_off, mask_kent = _load_built(A0_ptr, Ak_ptr, ent, mask_ent, offs_k, mask_k,
                                                N, BS)
        gAk = tl.zeros((BLOCK_K, BLOCK_NB, BS, BS), dtype=tl.float32)
        gA0 = tl.zeros((BLOCK_NB, BS, BS), dtype=tl.float32)
        x_row = x_ptr + row * seqlen * K + offs_k
        gx_row = gx_ptr + (row * seqlen * groups + pid_n) * K + offs_k
    h_first = tl.zeros((BLOCK_NB, BS), dtype=tl.float32)  # h before step 1
    if HAS_H0:
        h_first = tl.load(h0_ptr + row * N + col, mask=mask_ni, other=0.0)
    io = row * seqlen * N + col
    carry = tl.zeros((BLOCK_NB, BS), dtype=tl.float32)  # A_{t+1}^T g_{t+1}
    for k in range(0, seqlen):
        t = seqlen - 1 - k
        g = tl.load(gh_ptr + io + t * N, mask=mask_ni, other=0.0) + carry
        tl.store(gu_ptr + io + t * N, g, mask=mask_ni)
        h_prev = tl.load(h_ptr + io + tl.maximum(t - 1, 0) * N, mask=mask_ni, other=0.0)
        h_prev = tl.where(t > 0, h_prev, h_first)
        gA = g[:, :, None] * h_prev[:, None, :]  # dA_t[n, i, j] = g[n, i] h_{t-1}[n, j]
        if GIVEN:
            At = tl.load(At_ptr + (row * seqlen + t) * (N * BS) + ent, mask=mask_ent,
                         other=0.0).to(tl.float32)
            tl.store(gAt_ptr + (row * seqlen + t) * (N * BS) + ent, gA, mask=mask_ent)
        else:
            xt, At = _built_transition(x_row, t, K, mask_k, A0, Ak)
            gA0 += gA
            gAk += xt[:, None, None, None] * gA[None, :, :, :]
            gx = tl.sum(tl.sum(tl.sum(Ak * gA[None, :, :, :], axis=3), axis=2), axis=1)
            tl.store(gx_row + t * groups * K, gx, mask=mask_k)
        carry = tl.sum(At * g[:, :, None], axis=1)  # A_t^T g_t
    if HAS_H0:
        tl.store(gh0_ptr + row * N + col, carry, mask=mask_ni)
    if not GIVEN:
        tl.store(gA0_ptr + row * (N * BS) + ent, gA0, mask=mask_ent)
        tl.store(gAk_ptr + row * K * (N * BS) + Ak_off, gAk, mask=mask_kent)


def plan_dense_scan_backward(gh, h, x=None, A_k=None, A0=None, A=None, initial_state=None,
                             config: DenseSequentialConfig | None = None):
    """The launch and its outputs (a dict, fp32): gu (b, L, N); gh0 (b, N) or None; given A:
    gA (b, L, nb, bs, bs); built: partials gx (b, L, groups, K), gAk (b, K, nb, bs, bs),
    gA0 (b, nb, bs, bs).  Blocks must be a power of two (dense_scan_trainable pads them)."""
    config = config or DenseSequentialConfig()
    b, L, N = h.shape
    given = A is not None
    nb, bs = (A.shape[2], A.shape[3]) if given else (A_k.shape[1], A_k.shape[2])
    K = 1 if given else A_k.shape[0]
    if bs != next_pow2(bs):
        raise ValueError(f"A_k / A: block size {bs} is not a power of two")
    block_nb = min(config.block_nb, next_pow2(nb))
    groups = grid_dim(nb, block_nb)
    block_k = next_pow2(K)
    f32 = dict(dtype=torch.float32, device=h.device)
    out = {"gu": torch.empty((b, L, N), **f32),
           "gh0": None if initial_state is None else torch.empty((b, N), **f32),
           "gA": torch.empty((b, L, nb, bs, bs), **f32) if given else None,
           "gx": None if given else torch.empty((b, L, groups, K), **f32),
           "gAk": None if given else torch.empty((b, K, nb, bs, bs), **f32),
           "gA0": None if given else torch.empty((b, nb, bs, bs), **f32)}
    dummy = out["gu"]
    # twice the forward's registers when built: A_k and its gradient accumulator
    values = block_nb * bs * bs * (1 if given else 2 * block_k + 2)
    num_warps = config.num_warps or max(1, min(8, next_pow2(values // VALUES_PER_WARP)))

    def arg(t, cast=False):
        if t is None:
            return dummy
        return (t.float() if cast else t).contiguous()

    args = {"gh_ptr": arg(gh, True), "h_ptr": arg(h, True), "x_ptr": arg(x),
            "Ak_ptr": arg(A_k, True), "A0_ptr": arg(A0, True), "At_ptr": arg(A),
            "h0_ptr": arg(initial_state, True),
            "gu_ptr": out["gu"], "gx_ptr": out["gx"] if not given else dummy,
            "gAk_ptr": out["gAk"] if not given else dummy,
            "gA0_ptr": out["gA0"] if not given else dummy,
            "gAt_ptr": out["gA"] if given else dummy,
            "gh0_ptr": out["gh0"] if initial_state is not None else dummy,
            "seqlen": L, "nb": nb, "K": K, "groups": groups}
    launch = KernelLaunch(_dense_scan_bwd_kernel, (groups, b), args,
                          {"BLOCK_NB": block_nb, "BS": bs, "BLOCK_K": block_k, "GIVEN": given,
                           "HAS_H0": initial_state is not None},
                          num_warps, config.num_stages)
    return LaunchPlan([launch], (out,))


def dense_scan_bwd_triton(gh: Tensor, h: Tensor, x: Optional[Tensor], A_k: Optional[Tensor],
                          A0: Optional[Tensor], A: Optional[Tensor],
                          initial_state: Optional[Tensor], block_nb: int, num_warps: int
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(du, dx, dA_k, dA0, dA, dinitial_state), fp32; an empty tensor for what the call has
    not got.  num_warps 0: the launcher's choice."""
    cfg = DenseSequentialConfig(block_nb=block_nb, num_warps=num_warps or None)
    out = run_traceable(plan_dense_scan_backward(gh, h, x, A_k, A0, A, initial_state, cfg))[0]
    def empty():  # a fresh one each: an op's outputs must not alias one another
        return h.new_empty((0,))

    if A is not None:
        built = (empty(), empty(), empty(), out["gA"])
    else:
        built = (out["gx"].sum(2), out["gAk"].sum(0), out["gA0"].sum(0), empty())
    return (out["gu"], *built, out["gh0"] if out["gh0"] is not None else empty())


def dense_scan_triton(u: Tensor, x: Optional[Tensor], A_k: Optional[Tensor],
                      A0: Optional[Tensor], A: Optional[Tensor],
                      initial_state: Optional[Tensor], config: str) -> Tensor:
    """ssmc::dense_scan_triton's body: `dense_scan_sequential` on power-of-two blocks, h (b, L,
    N) fp32; config: DenseSequentialConfig's knobs as JSON."""
    cfg = DenseSequentialConfig.from_dict(json.loads(config)) if config else None
    (h,) = run_traceable(plan_dense_scan(u, x, A_k, A0, A, initial_state, cfg))
    return h


def _setup(ctx, inputs, output):
    *tensors, config = inputs
    u, x, A_k, A0, A, initial_state = tensors
    ctx.save_for_backward(output, x, A_k, A0, A, initial_state)
    ctx.config = DenseSequentialConfig.from_dict(json.loads(config)) if config else \
        DenseSequentialConfig()
    ctx.dtypes = [None if t is None else t.dtype for t in tensors]


def _backward(ctx, gh):
    """The adjoint kernel (ssmc::dense_scan_bwd_triton); gradients in the inputs' dtypes."""
    h, x, A_k, A0, A, h0 = ctx.saved_tensors
    cfg = ctx.config
    grads = triton_bwd_op()(gh, h, x, A_k, A0, A, h0, cfg.block_nb, cfg.num_warps or 0)
    return (*cast_grads(grads, ctx.dtypes, ctx.needs_input_grad), None)


_FWD_OP, _BWD_OP = trainable_ops("dense_scan", dense_scan_triton, dense_scan_bwd_triton,
                                 _backward, _setup)


def triton_bwd_op():
    """ssmc::dense_scan_bwd_triton (common.library_op)."""
    return _BWD_OP


def triton_op():
    """ssmc::dense_scan_triton (common.library_op) with the adjoint kernel as its autograd formula:
    torch.compile traces training through both kernels."""
    return _FWD_OP


def applies(u) -> bool:
    """Whether the Triton pair runs: on a GPU (or the CPU under the interpreter), a non-empty
    batch and sequence."""
    on_device = u.device.type == "cuda" or (u.device.type == "cpu" and interpreting())
    return on_device and u.dim() == 3 and 0 not in u.shape[:2]


def dense_scan_trainable(u, *, x=None, A_k=None, A0=None, A=None, initial_state=None,
                         config: DenseSequentialConfig | None = None):
    """`dense_scan_sequential` (same arguments, h (b, L, N) fp32) that autograd
    differentiates.  Blocks that are not a power of two are zero-padded by torch ops outside
    the Function (autograd takes the padding back off the gradients)."""
    if not applies(u):
        return dense_scan_sequential(u, x=x, A_k=A_k, A0=A0, A=A, initial_state=initial_state,
                                     config=config)
    blocks = A if A is not None else A_k
    bs = blocks.shape[-1]
    BS = next_pow2(bs)
    if bs != BS:
        b, L, N = u.shape
        nb = N // bs
        p = _pad_blocks(u, x, A_k, A0, A, initial_state, nb, bs, BS)
        h = dense_scan_trainable(p[0], x=p[1], A_k=p[2], A0=p[3], A=p[4], initial_state=p[5],
                                 config=config)
        return h.reshape(b, L, nb, BS)[..., :bs].reshape(b, L, N)
    return triton_op()(u, x, A_k, A0, A, initial_state, config_json(config))


def dense_ssm_trainable(x, A_k, W_B, W_C, D=None, mode="linear", initial_state=None,
                        return_final_state=False, A_0=None, config=None):
    """`dense_ssm_sequential` (the layer: ssmc.semantics.dense.dense_ssm's arguments and
    results) that autograd differentiates: the scan on the Triton pair, the projections and
    any transitions built outside the kernel as torch ops."""
    from ssmc.codegen.composite.dense import _check, dense_ssm_associative

    b, L, d, nb, bs = _check(x, A_k, W_B, W_C, D, mode, "sequential", initial_state, A_0)
    if x.dtype not in FLOAT_DTYPES or not applies(x):
        return dense_ssm_associative(x, A_k, W_B, W_C, D, mode, initial_state,
                                     return_final_state, A_0)
    ops = _scan_operands(x, A_k, W_B, mode, initial_state, A_0, config)
    h = dense_scan_trainable(**ops, config=config)
    y = _readout(h, x, W_C, D)
    return (y, h[:, -1]) if return_final_state else y


__all__ = ["dense_scan_bwd_triton", "dense_scan_trainable", "dense_scan_triton",
           "dense_ssm_trainable", "plan_dense_scan_backward", "triton_bwd_op", "triton_op"]
