"""The PLRNN latent recurrence (MODELS.md section 8) in Triton, optionally fused with the causal
HRF convolution of its trajectory (convSSM's read-out).

    z_t  = A z_{t-1} + W_o relu(z_{t-1}) + C s_t + h0        (W_o: W with its diagonal zeroed)
    zc_t = sum_{j < K} hrf[:, j] z_{t-j}                      (z before the first step: 0)

Oracle: `ssmc.semantics.recurrence.plrnn_ref` and `causal_conv_direct`.  relu makes the map
non-associative, so each trajectory is sequential in t; the parallelism is across trajectories.
One program owns BLOCK_B trajectories: their (BLOCK_B, M) latent states, the M x M matrix W_o,
A, h0 and C stay in registers for the whole sequence; each step is the input drive (a (M, K_in)
mat-vec of s_t) and the W_o mat-vec of relu(z), both as broadcast products reduced over their
last axis.

The fused convolution keeps the last TAPS outputs in a register ring (BLOCK_B, TAPS, M), TAPS a
power of two >= K: z_t goes to slot t mod TAPS (a select over the ring), and slot r then holds
the output of lag (t - r) mod TAPS, so zc_t is the ring times the taps read at those lags (a
(TAPS, M) gather of the zero-padded taps, L1-resident) summed over the ring.  Slots never
written hold zeros: the convolution's causal boundary.  Longer kernels than FUSE_MAX_TAPS run
by torch's FFT after the kernel (`causal_conv_fft`), like the TVM kernel does beyond its limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ssmc.codegen.triton.common import (FLOAT_DTYPES, KernelConfig, KernelLaunch, LaunchPlan,
                                        check_flag, check_same_device, check_tensor, grid_dim,
                                        next_pow2, pow2_field)

# Taps convolved in the kernel; beyond, torch's FFT after it.  The ring costs
# BLOCK_B * TAPS * M fp32 registers per program (64 taps, M 16: 1024 per trajectory).
FUSE_MAX_TAPS = 64
# fp32 values per program the launcher aims at when it picks warps (registers per thread ~
# this / (32 * num_warps)): the ring, W_o broadcast over the block's trajectories, the state.
VALUES_PER_WARP = 1024


@dataclass(frozen=True)
class PlrnnSequentialConfig(KernelConfig):
    block_b: int | None = pow2_field(None)  # trajectories per program; None: from the batch
    num_warps: int | None = pow2_field(None)  # None: from the tile sizes
    num_stages: int = 1


@triton.jit
def _trajectory_tiles(pid, batch, M, K_in, BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    """The program's trajectories (int64), latent units and inputs, and the masks of the
    (trajectories, units) and (trajectories, inputs) tiles."""
    offs_b = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    mask_b = offs_b < batch
    mask_bm = mask_b[:, None] & (offs_m < M)[None, :]
    mask_bk = mask_b[:, None] & (offs_k < K_in)[None, :]
    return offs_b.to(tl.int64), offs_m, offs_k, mask_bm, mask_bk


@triton.jit
def _load_params(A_ptr, W_ptr, C_ptr, z0_ptr, z0_sb, b64, offs_m, offs_k, mask_bm, M, K_in,
                 BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, HAS_Z0: tl.constexpr):
    """A (1, M), W_o (1, M, M), C (1, M, K_in) (masked rows/columns 0: the padded latent units
    stay 0 for ever) and the state before step 1 (0 without z0; z0_sb = 0: one initial state
    for every trajectory)."""
    mask_m = offs_m < M
    A = tl.load(A_ptr + offs_m, mask=mask_m, other=0.0)[None, :]
    W = tl.load(W_ptr + offs_m[:, None] * M + offs_m[None, :],
                mask=mask_m[:, None] & mask_m[None, :], other=0.0)[None, :, :]
    C = tl.load(C_ptr + offs_m[:, None] * K_in + offs_k[None, :],
                mask=mask_m[:, None] & (offs_k < K_in)[None, :], other=0.0)[None, :, :]
    z = tl.zeros((BLOCK_B, BLOCK_M), dtype=tl.float32)
    if HAS_Z0:
        z = tl.load(z0_ptr + b64[:, None] * z0_sb + offs_m[None, :], mask=mask_bm, other=0.0)
    return A, W, C, z


@triton.jit
def _plrnn_kernel(
    s_ptr, z_ptr, zc_ptr, A_ptr, W_ptr, h0_ptr, C_ptr, z0_ptr, H_ptr,
    batch, seqlen, M, K_in,
    s_sb, s_sl, s_sk, z0_sb,
    BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    TAPS: tl.constexpr, HAS_Z0: tl.constexpr, WRITE_Z: tl.constexpr,
):
    b64, offs_m, offs_k, mask_bm, mask_bk = _trajectory_tiles(tl.program_id(0), batch, M, K_in,
                                                              BLOCK_B, BLOCK_M, BLOCK_K)
    A, W, C, z = _load_params(A_ptr, W_ptr, C_ptr, z0_ptr, z0_sb, b64, offs_m, offs_k, mask_bm,
                              M, K_in, BLOCK_B, BLOCK_M, HAS_Z0)
    h0 = tl.load(h0_ptr + offs_m, mask=offs_m < M, other=0.0)[None, :]
    s_row = s_ptr + b64[:, None] * s_sb + offs_k[None, :] * s_sk
    out_row = b64[:, None] * seqlen * M + offs_m[None, :]
    if TAPS > 0:
        offs_r = tl.arange(0, TAPS)
        ring = tl.zeros((BLOCK_B, TAPS, BLOCK_M), dtype=tl.float32)
    for t in range(0, seqlen):
        st = tl.load(s_row + t * s_sl, mask=mask_bk, other=0.0).to(tl.float32)
        drive = tl.sum(st[:, None, :] * C, axis=2) + h0
        r = tl.maximum(z, 0.0)
        z = A * z + tl.sum(r[:, None, :] * W, axis=2) + drive
        out = out_row + t * M
        if WRITE_Z:
            tl.store(z_ptr + out, z.to(z_ptr.dtype.element_ty), mask=mask_bm)
        if TAPS > 0:
            slot = t % TAPS
            ring = tl.where((offs_r == slot)[None, :, None], z[:, None, :], ring)
            lag = (t - offs_r + TAPS) % TAPS
            taps = tl.load(H_ptr + lag[:, None] * BLOCK_M + offs_m[None, :])
            zc = tl.sum(ring * taps[None, :, :], axis=1)
            tl.store(zc_ptr + out, zc.to(zc_ptr.dtype.element_ty), mask=mask_bm)


# --------------------------------------------------------------------------- the launcher

def _auto_block_b(batch: int) -> int:
    """Trajectories per program: one while that leaves a program per trajectory on a GPU's
    ~100 SMs (each step is latency-bound: fewer trajectories a program, shorter steps), more
    for big batches (up to 16, so the grid stays a few waves)."""
    return min(16, next_pow2(max(1, -(-int(batch) // 256))))


def _auto_warps(values: int) -> int:
    return max(1, min(8, next_pow2(max(1, values // VALUES_PER_WARP))))


def plan_plrnn(s, A, W, h0, C, z0=None, hrf=None, return_trajectory=True,
               config: PlrnnSequentialConfig | None = None):
    """The launch plan (see `plrnn_sequential`).  Outputs (z or None, zc or None), in s's
    dtype; zc only when `hrf` is convolved in the kernel (taps <= FUSE_MAX_TAPS)."""
    config = config or PlrnnSequentialConfig()
    check_tensor("s", s, dims=(("batch", None), ("seqlen", None), ("K_in", None)),
                 dtypes=FLOAT_DTYPES)
    b, L, k_in = s.shape
    check_tensor("A", A, dims=(("M", None),), dtypes=FLOAT_DTYPES)
    M = A.shape[0]
    check_tensor("W", W, dims=(("M", M), ("M", M)), dtypes=FLOAT_DTYPES)
    check_tensor("h0", h0, dims=(("M", M),), dtypes=FLOAT_DTYPES)
    check_tensor("C", C, dims=(("M", M), ("K_in", k_in)), dtypes=FLOAT_DTYPES)
    if z0 is not None:
        dims = (("M", M),) if getattr(z0, "ndim", 2) == 1 else (("batch", b), ("M", M))
        check_tensor("z0", z0, dims=dims, dtypes=FLOAT_DTYPES)
    if hrf is not None:
        dims = (("K", None),) if getattr(hrf, "ndim", 2) == 1 else (("M", M), ("K", None))
        check_tensor("hrf", hrf, dims=dims, dtypes=FLOAT_DTYPES)
        if hrf.shape[-1] < 1:
            raise ValueError("hrf: needs at least one tap, got 0")
    check_flag("return_trajectory", return_trajectory)
    check_same_device("s", s, A=A, W=W, h0=h0, C=C, z0=z0, hrf=hrf)
    f32 = dict(dtype=torch.float32, device=s.device)
    taps = 0 if hrf is None else min(int(hrf.shape[-1]), max(int(L), 1))
    fused = 0 < taps <= FUSE_MAX_TAPS
    write_z = return_trajectory or not fused
    block_b = config.block_b or _auto_block_b(b)
    block_m = next_pow2(M)
    ring = next_pow2(taps) if fused else 0
    num_warps = config.num_warps or _auto_warps(
        block_b * block_m * (max(block_m, next_pow2(k_in)) + 2 * ring))
    A32 = A.float().contiguous()
    Wo = W.float() * (1 - torch.eye(M, **f32))  # the diagonal belongs to A
    z = torch.empty((b, L, M), dtype=s.dtype, device=s.device) if write_z else None
    zc = torch.empty((b, L, M), dtype=s.dtype, device=s.device) if fused else None
    H = None
    if fused:  # H[lag, m] = hrf[m, lag], zero for the ring's lags beyond the kernel
        H = torch.zeros((ring, block_m), **f32)
        H[:taps, :M] = hrf.float().expand(M, hrf.shape[-1])[:, :taps].t()
    z0c = None if z0 is None else z0.float().contiguous()
    args = {"s_ptr": s, "z_ptr": z if z is not None else A32,
            "zc_ptr": zc if zc is not None else A32, "A_ptr": A32,
            "W_ptr": Wo.contiguous(), "h0_ptr": h0.float().contiguous(),
            "C_ptr": C.float().contiguous(), "z0_ptr": z0c if z0c is not None else A32,
            "H_ptr": H if H is not None else A32, "batch": b, "seqlen": L, "M": M,
            "K_in": k_in, "s_sb": s.stride(0), "s_sl": s.stride(1), "s_sk": s.stride(2),
            "z0_sb": 0 if z0c is None or z0c.dim() == 1 else z0c.stride(0)}
    launch = KernelLaunch(_plrnn_kernel, (grid_dim(b, block_b),), args,
                          {"BLOCK_B": block_b, "BLOCK_M": block_m,
                           "BLOCK_K": next_pow2(k_in), "TAPS": ring,
                           "HAS_Z0": z0 is not None, "WRITE_Z": write_z},
                          num_warps, config.num_stages)
    return LaunchPlan([launch], (z, zc))


def plrnn_sequential(s, A, W, h0, C, z0=None, *, hrf=None, return_trajectory=True,
                     config: PlrnnSequentialConfig | None = None):
    """PLRNN latent trajectory (the oracle `plrnn_ref`'s arguments): s (b, L, K_in); A (M,);
    W (M, M) (its diagonal is ignored); h0 (M,); C (M, K_in); z0 (b, M), (M,) or None.
    Returns z (b, L, M) in s's dtype.  With `hrf` ((K,) shared or (M, K) per latent unit) it
    also convolves the trajectory causally: returns (z, hrf * z), or only hrf * z when
    return_trajectory=False (then z is never written when the kernel convolves).
    Forward only: no autograd (callers run the reference with gradients)."""
    if isinstance(s, torch.Tensor) and s.dim() == 3 and 0 in s.shape[:2]:
        check_tensor("s", s, dtypes=FLOAT_DTYPES)
        z = s.new_zeros(s.shape[0], s.shape[1], A.shape[0])
        if hrf is None:
            return z
        return (z, z.clone()) if return_trajectory else z
    plan = plan_plrnn(s, A, W, h0, C, z0, hrf, return_trajectory, config)
    z, zc = plan.run()
    if hrf is None:
        return z
    if zc is None:  # too many taps for the ring: torch's FFT on the kernel's trajectory
        from ssmc.semantics.recurrence import causal_conv_fft

        zc = causal_conv_fft(z, hrf)
    return (z, zc) if return_trajectory else zc
