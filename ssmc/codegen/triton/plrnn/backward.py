"""PLRNN backward in Triton: the adjoint recurrence, backward in t, over the forward's trajectory.

The math is the TVM path's (the ssmc::plrnn_bwd op, ssmc.runtime.plrnn_op; its docstring
states it): with G_t the gradient reaching z_t from the loss and every later step,

    G_t = gz_t + A G_{t+1} + [z_t > 0] W_o^T G_{t+1}          (G_{L+1} = 0)
    ds_t = C^T G_t,  dA = sum G_t z_{t-1},  dW = offdiag(sum G_t relu(z_{t-1})^T),
    dh0 = sum G_t,   dC = sum G_t s_t^T,    dz0 = A G_1 + [z0 > 0] W_o^T G_1

Memory: the trajectory z (b, L, M) is the forward's output, so autograd holds it anyway; the
kernel reads z_{t-1} from it each step (z_t is the previous iteration's) instead of
recomputing states.  The forward runs in fp32 for this (s cast up), so the relu masks are the
fp32 forward's exactly.

One program per BLOCK_B trajectories, like the forward (sequential.py): W_o, A and C stay in
registers; the step is the W_o^T mat-vec and the C^T mat-vec as broadcast products.  The
parameter sums over trajectories and time are per-program partials in registers, written once
at the end and summed in torch (deterministic, no atomics), as in
ssmc.codegen.triton.selective_scan.backward.

`plrnn_trainable` is the differentiable entry: the op ``ssmc::plrnn_triton`` (the Triton
forward) whose autograd formula is the op ``ssmc::plrnn_bwd_triton`` (the kernel below); both
are triton_ops on a device (common.library_op), so torch.compile traces training through them.
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
from ssmc.codegen.triton.plrnn.sequential import (PlrnnSequentialConfig, _auto_block_b,
                                                  _auto_warps, _load_params, _trajectory_tiles,
                                                  plan_plrnn, plrnn_sequential)


@triton.jit
def _plrnn_bwd_kernel(
    gz_ptr, z_ptr, s_ptr, A_ptr, W_ptr, C_ptr, z0_ptr,
    gs_ptr, gA_ptr, gW_ptr, gh0_ptr, gC_ptr, gz0_ptr,
    batch, seqlen, M, K_in, z0_sb,
    BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_Z0: tl.constexpr,
):
    pid = tl.program_id(0)
    b64, offs_m, offs_k, mask_bm, mask_bk = _trajectory_tiles(pid, batch, M, K_in, BLOCK_B,
                                                              BLOCK_M, BLOCK_K)
    # padded units and trajectories: zero parameters and gz, so their adjoint stays 0;
    # z_first: z before step 1
    A, W, C, z_first = _load_params(A_ptr, W_ptr, C_ptr, z0_ptr, z0_sb, b64, offs_m, offs_k,
                                    mask_bm, M, K_in, BLOCK_B, BLOCK_M, HAS_Z0)
    mask_m = offs_m < M
    mask_mm = mask_m[:, None] & mask_m[None, :]
    mask_mk = mask_m[:, None] & (offs_k < K_in)[None, :]
    seq_row = b64[:, None] * seqlen * M + offs_m[None, :]  # (b, t = 0, m) of a (b, L, M) array
    s_row = b64[:, None] * seqlen * K_in + offs_k[None, :]

    gA = tl.zeros((BLOCK_B, BLOCK_M), dtype=tl.float32)
    gh0 = tl.zeros((BLOCK_B, BLOCK_M), dtype=tl.float32)
    gW = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    gC = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    G = tl.zeros((BLOCK_B, BLOCK_M), dtype=tl.float32)  # G_{t+1}
    z = tl.load(z_ptr + seq_row + (seqlen - 1) * M, mask=mask_bm, other=0.0)  # z_t
    for k in range(0, seqlen):
        t = seqlen - 1 - k
        # z_{t-1}: the trajectory's row t - 1, the initial state before step 1
        z_prev = tl.load(z_ptr + seq_row + tl.maximum(t - 1, 0) * M, mask=mask_bm, other=0.0)
        z_prev = tl.where(t > 0, z_prev, z_first)
        back = tl.sum(G[:, :, None] * W, axis=1)  # W_o^T G_{t+1}
        G = tl.load(gz_ptr + seq_row + t * M, mask=mask_bm, other=0.0) \
            + A * G + tl.where(z > 0, back, 0.0)
        gs = tl.sum(G[:, :, None] * C, axis=1)  # C^T G_t
        tl.store(gs_ptr + s_row + t * K_in, gs, mask=mask_bk)
        st = tl.load(s_ptr + s_row + t * K_in, mask=mask_bk, other=0.0)
        gA += G * z_prev
        gh0 += G
        gW += tl.sum(G[:, :, None] * tl.maximum(z_prev, 0.0)[:, None, :], axis=0)
        gC += tl.sum(G[:, :, None] * st[:, None, :], axis=0)
        z = z_prev
    # per-program partials; torch sums them over the programs
    tl.store(gA_ptr + pid * M + offs_m, tl.sum(gA, axis=0), mask=mask_m)
    tl.store(gh0_ptr + pid * M + offs_m, tl.sum(gh0, axis=0), mask=mask_m)
    tl.store(gW_ptr + pid * M * M + offs_m[:, None] * M + offs_m[None, :], gW, mask=mask_mm)
    tl.store(gC_ptr + pid * M * K_in + offs_m[:, None] * K_in + offs_k[None, :], gC,
             mask=mask_mk)
    if HAS_Z0:  # dz0 = A G_1 + [z0 > 0] W_o^T G_1, per trajectory
        back = tl.sum(G[:, :, None] * W, axis=1)
        gz0 = A * G + tl.where(z_first > 0, back, 0.0)
        tl.store(gz0_ptr + b64[:, None] * M + offs_m[None, :], gz0, mask=mask_bm)


def plan_plrnn_backward(gz, z, s, A, W, C, z0=None, config: PlrnnSequentialConfig | None = None):
    """The launch and its outputs: gs (b, L, K_in), per-program partials gA (P, M),
    gW (P, M, M) (diagonal not yet zeroed), gh0 (P, M), gC (P, M, K_in), and gz0 (b, M) or
    None.  All fp32; inputs cast to fp32 contiguous here."""
    config = config or PlrnnSequentialConfig()
    b, L, M = z.shape
    k_in = s.shape[-1]
    f32 = dict(dtype=torch.float32, device=z.device)
    block_b = config.block_b or _auto_block_b(b)
    block_m, block_k = next_pow2(M), next_pow2(k_in)
    num_warps = config.num_warps or _auto_warps(block_b * block_m * max(block_m, block_k))
    P = grid_dim(b, block_b)
    z0c = None if z0 is None else z0.float().expand(b, M).contiguous()
    out = {"gs": torch.empty((b, L, k_in), **f32), "gA": torch.empty((P, M), **f32),
           "gW": torch.empty((P, M, M), **f32), "gh0": torch.empty((P, M), **f32),
           "gC": torch.empty((P, M, k_in), **f32),
           "gz0": None if z0 is None else torch.empty((b, M), **f32)}
    Wo = W.float() * (1 - torch.eye(M, **f32))
    Af = A.float().contiguous()
    args = {"gz_ptr": gz.float().contiguous(), "z_ptr": z.float().contiguous(),
            "s_ptr": s.float().contiguous(), "A_ptr": Af, "W_ptr": Wo.contiguous(),
            "C_ptr": C.float().contiguous(), "z0_ptr": z0c if z0c is not None else Af,
            "gs_ptr": out["gs"], "gA_ptr": out["gA"], "gW_ptr": out["gW"],
            "gh0_ptr": out["gh0"], "gC_ptr": out["gC"],
            "gz0_ptr": out["gz0"] if z0 is not None else Af,
            "batch": b, "seqlen": L, "M": M, "K_in": k_in, "z0_sb": M}
    launch = KernelLaunch(_plrnn_bwd_kernel, (P,), args,
                          {"BLOCK_B": block_b, "BLOCK_M": block_m, "BLOCK_K": block_k,
                           "HAS_Z0": z0 is not None}, num_warps, config.num_stages)
    return LaunchPlan([launch], (out,))


def plrnn_bwd_triton(gz: Tensor, z: Tensor, s: Tensor, A: Tensor, W: Tensor, C: Tensor,
                     z0: Optional[Tensor], block_b: int, num_warps: int
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(ds, dA, dW, dh0, dC, dz0) in fp32, dz0 per trajectory (b, M) (empty without z0);
    block_b / num_warps 0: the launcher's choice."""
    cfg = PlrnnSequentialConfig(block_b=block_b or None, num_warps=num_warps or None)
    out = run_traceable(plan_plrnn_backward(gz, z, s, A, W, C, z0, cfg))[0]
    M = A.shape[0]
    eye = torch.eye(M, dtype=torch.float32, device=z.device)
    return (out["gs"], out["gA"].sum(0), out["gW"].sum(0) * (1 - eye), out["gh0"].sum(0),
            out["gC"].sum(0), out["gz0"] if z0 is not None else z.new_empty((0,)))


def plrnn_triton(s: Tensor, A: Tensor, W: Tensor, h0: Tensor, C: Tensor, z0: Optional[Tensor],
                 config: str) -> Tensor:
    """ssmc::plrnn_triton's body: the Triton forward in fp32 (s cast up, so the backward's
    relu masks are this forward's exactly); config: PlrnnSequentialConfig's knobs as JSON."""
    cfg = PlrnnSequentialConfig.from_dict(json.loads(config)) if config else None
    z, _ = run_traceable(plan_plrnn(s.float(), A, W, h0, C, z0, config=cfg))
    return z


def _setup(ctx, inputs, output):
    s, A, W, h0, C, z0, config = inputs
    ctx.save_for_backward(s, A, W, C, z0, output)
    ctx.config = PlrnnSequentialConfig.from_dict(json.loads(config)) if config else \
        PlrnnSequentialConfig()
    ctx.dtypes = [None if t is None else t.dtype for t in (s, A, W, h0, C, z0)]
    ctx.z0_shared = z0 is not None and z0.dim() == 1


def _backward(ctx, gz):
    """The adjoint kernel (ssmc::plrnn_bwd_triton); gradients in the inputs' dtypes."""
    s, A, W, C, z0, z = ctx.saved_tensors
    cfg = ctx.config
    grads = list(triton_bwd_op()(gz, z, s, A, W, C, z0, cfg.block_b or 0, cfg.num_warps or 0))
    if z0 is None:
        grads[5] = None
    elif ctx.z0_shared:
        grads[5] = grads[5].sum(0)
    return (*cast_grads(grads, ctx.dtypes, ctx.needs_input_grad), None)


_FWD_OP, _BWD_OP = trainable_ops("plrnn", plrnn_triton, plrnn_bwd_triton, _backward,
                                 _setup)


def triton_bwd_op():
    """ssmc::plrnn_bwd_triton (common.library_op)."""
    return _BWD_OP


def triton_op():
    """ssmc::plrnn_triton (common.library_op) with the adjoint kernel as its autograd formula:
    torch.compile traces training through both kernels."""
    return _FWD_OP


def applies(s) -> bool:
    """Whether the Triton pair runs: fp32/fp16/bf16 on a GPU (or the CPU under the
    interpreter), a non-empty batch and sequence."""
    on_device = s.device.type == "cuda" or (s.device.type == "cpu" and interpreting())
    return on_device and s.dtype in FLOAT_DTYPES and s.dim() == 3 and 0 not in s.shape[:2]


def plrnn_trainable(s, A, W, h0, C, z0=None, *, config: PlrnnSequentialConfig | None = None):
    """`plrnn_sequential` (without the convolution) that autograd differentiates: z (b, L, M)
    in s's dtype.  Empty batches or sequences return zeros (nothing to differentiate)."""
    if not applies(s):
        return plrnn_sequential(s, A, W, h0, C, z0, config=config)
    return triton_op()(s, A, W, h0, C, z0, config_json(config)).to(s.dtype)


__all__ = ["plan_plrnn_backward", "plrnn_bwd_triton", "plrnn_trainable", "plrnn_triton",
           "triton_bwd_op", "triton_op"]
