"""The dense / block-diagonal selective SSM (MODELS.md section 4, the linear-CDE view) in Triton:
the sequential mat-vec scan.

    h_t = A(x_t) h_{t-1} + u_t,   A(x) = A0 + sum_k x^k A_k   (nb blocks of bs x bs, N = nb bs)

Oracle: `ssmc.semantics.dense.dense_scan_ref` (the scan) and `dense_ssm` (the whole layer).
One program per (block group, batch row): BLOCK_NB blocks of one row, their states
(BLOCK_NB, bs) in registers, the sequence loop serial inside.  Per step each block's transition
is built in registers from x_t and the A_k of the group, which stay in registers for the whole
sequence ((K, BLOCK_NB, bs, bs) values: the transitions are never materialised), then the
block mat-vec h_new[n, i] = sum_j A[n, i, j] h[n, j] + u_t[n, i].  When A_k is too big for
registers (K bs^2 BLOCK_NB above MAX_BUILD_VALUES) or the transition is not linear in x (the
"expm" mode), the caller passes the transitions per step (b, L, nb, bs, bs) instead (variant
GIVEN; `dense_ssm_sequential` computes them with one GEMM, or matrix_exp) and the kernel
only does the mat-vec.

`dense_ssm_sequential` is the whole layer as `codegen.composite.dense` assembles it on the CPU:
u = x W_B^T and y = h W_C^T + D x are library GEMMs (cuBLAS) around the scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ssmc.codegen.triton.common import (FLOAT_DTYPES, KernelConfig, KernelLaunch, LaunchPlan,
                                        check_same_device, check_tensor, grid_dim, next_pow2,
                                        pow2_field)

# A_k values one program keeps in registers to build its transitions (8192 fp32 = 64
# registers a thread at 4 warps); beyond, the transitions are computed outside and streamed.
MAX_BUILD_VALUES = 8192
VALUES_PER_WARP = 2048


@dataclass(frozen=True)
class DenseSequentialConfig(KernelConfig):
    block_nb: int = pow2_field(1)  # blocks per program
    num_warps: int | None = pow2_field(None)  # None: from the tile sizes
    num_stages: int = 1


@triton.jit
def _group_tiles(pid_n, nb, BLOCK_NB: tl.constexpr, BS: tl.constexpr):
    """The program's group of blocks: each state's column n * BS + i in a (.., N) row and each
    block entry's offset (n, i, j) in a (.., nb, bs, bs) array, with their masks."""
    offs_n = pid_n * BLOCK_NB + tl.arange(0, BLOCK_NB)
    offs_i = tl.arange(0, BS)
    mask_n = offs_n < nb
    col = offs_n[:, None] * BS + offs_i[None, :]
    mask_ni = mask_n[:, None] & (offs_i < BS)[None, :]
    ent = (offs_n[:, None, None] * BS + offs_i[None, :, None]) * BS + offs_i[None, None, :]
    mask_ent = mask_n[:, None, None] & (offs_i < BS)[None, :, None] & (offs_i < BS)[None, None, :]
    return col, mask_ni, ent, mask_ent


@triton.jit
def _load_built(A0_ptr, Ak_ptr, ent, mask_ent, offs_k, mask_k, N, BS: tl.constexpr):
    """A0 (group, bs, bs) and A_k (K, group, bs, bs), what the transitions are built from,
    and A_k's offsets and mask (where the backward writes dA_k)."""
    A0 = tl.load(A0_ptr + ent, mask=mask_ent, other=0.0)
    Ak_off = offs_k[:, None, None, None] * (N * BS) + ent[None, :, :, :]
    mask_kent = mask_k[:, None, None, None] & mask_ent[None, :, :, :]
    Ak = tl.load(Ak_ptr + Ak_off, mask=mask_kent, other=0.0)
    return A0, Ak, Ak_off, mask_kent


@triton.jit
def _built_transition(x_row, t, K, mask_k, A0, Ak):
    """(x_t, A_t = A0 + sum_k x_t^k A_k) of step t."""
    xt = tl.load(x_row + t * K, mask=mask_k, other=0.0).to(tl.float32)
    return xt, A0 + tl.sum(xt[:, None, None, None] * Ak, axis=0)


@triton.jit
def _dense_scan_kernel(
    u_ptr, out_ptr, x_ptr, Ak_ptr, A0_ptr, At_ptr, h0_ptr,
    seqlen, nb, K,
    BLOCK_NB: tl.constexpr, BS: tl.constexpr, BLOCK_K: tl.constexpr,
    GIVEN: tl.constexpr, HAS_H0: tl.constexpr,
):
    pid_n = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    N = nb * BS
    # state n, i of the group at column n * BS + i; entry (n, i, j) of its blocks at ent
    col, mask_ni, ent, mask_ent = _group_tiles(pid_n, nb, BLOCK_NB, BS)
    if not GIVEN:
        offs_k = tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        A0, Ak, Ak_off, mask_kent = _load_built(A0_ptr, Ak_ptr, ent, mask_ent, offs_k, mask_k, N, BS)
        x_row = x_ptr + row * seqlen * K + offs_k
    h = tl.zeros((BLOCK_NB, BS), dtype=tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + row * N + col, mask=mask_ni, other=0.0)
    io = row * seqlen * N + col
    for t in range(0, seqlen):
        if GIVEN:
            At = tl.load(At_ptr + (row * seqlen + t) * (N * BS) + ent, mask=mask_ent,
                         other=0.0).to(tl.float32)
        else:
            xt, At = _built_transition(x_row, t, K, mask_k, A0, Ak)
        ut = tl.load(u_ptr + io + t * N, mask=mask_ni, other=0.0).to(tl.float32)
        h = tl.sum(At * h[:, None, :], axis=2) + ut
        tl.store(out_ptr + io + t * N, h, mask=mask_ni)


# --------------------------------------------------------------------------- the launcher

def builds_in_kernel(K: int, bs: int, block_nb: int = 1) -> bool:
    """Whether the kernel can keep A_k in registers and build the transitions itself."""
    return next_pow2(K) * block_nb * next_pow2(bs) ** 2 <= MAX_BUILD_VALUES


def plan_dense_scan(u, x=None, A_k=None, A0=None, A=None, initial_state=None,
                    config: DenseSequentialConfig | None = None):
    """The launch plan (see `dense_scan_sequential`); outputs (h (b, L, N) fp32,)."""
    config = config or DenseSequentialConfig()
    check_tensor("u", u, dims=(("batch", None), ("seqlen", None), ("N", None)),
                 dtypes=FLOAT_DTYPES)
    b, L, N = u.shape
    given = A is not None
    if given:
        if x is not None or A_k is not None or A0 is not None:
            raise ValueError("A: pass either A or (x, A_k, A0), not both")
        check_tensor("A", A, dims=(("batch", b), ("seqlen", L), ("nb", None), ("bs", None),
                                   ("bs", None)), dtypes=FLOAT_DTYPES)
        nb, bs, K = A.shape[2], A.shape[3], 1
        if A.shape[4] != bs:
            raise ValueError(f"A: blocks must be square, got {tuple(A.shape[3:])}")
    else:
        for name, t in (("x", x), ("A_k", A_k), ("A0", A0)):
            if t is None:
                raise ValueError(f"{name}: required when A is not given")
        check_tensor("A_k", A_k, dims=(("K", None), ("nb", None), ("bs", None), ("bs", None)),
                     dtypes=FLOAT_DTYPES)
        K, nb, bs = A_k.shape[0], A_k.shape[1], A_k.shape[2]
        if A_k.shape[3] != bs:
            raise ValueError(f"A_k: blocks must be square, got {tuple(A_k.shape[2:])}")
        check_tensor("x", x, dims=(("batch", b), ("seqlen", L), ("K", K)), dtypes=FLOAT_DTYPES)
        check_tensor("A0", A0, dims=(("nb", nb), ("bs", bs), ("bs", bs)), dtypes=FLOAT_DTYPES)
    if nb * bs != N:
        raise ValueError(f"u: last dim {N} must be nb * bs = {nb} * {bs}")
    check_tensor("initial_state", initial_state, dims=(("batch", b), ("N", N)),
                 dtypes=FLOAT_DTYPES, optional=True)
    check_same_device("u", u, x=x, A_k=A_k, A0=A0, A=A, initial_state=initial_state)
    block_nb = min(config.block_nb, next_pow2(nb))
    BS = next_pow2(bs)
    if bs != BS:
        raise ValueError(f"A_k / A: block size {bs} is not a power of two (dense_scan_sequential "
                         "pads the blocks)")
    if not given and not builds_in_kernel(K, bs, block_nb):
        raise ValueError(f"A_k: {K} x {block_nb} x {bs} x {bs} values exceed what a program "
                         f"keeps in registers ({MAX_BUILD_VALUES}); pass A per step")
    out = torch.empty((b, L, N), dtype=torch.float32, device=u.device)
    f32 = dict(dtype=torch.float32)
    dummy = out
    block_k = 1 if given else next_pow2(K)
    values = block_nb * BS * BS * (1 if given else block_k + 1)
    num_warps = config.num_warps or max(1, min(8, next_pow2(values // VALUES_PER_WARP)))
    args = {"u_ptr": u.contiguous(), "out_ptr": out,
            "x_ptr": dummy if given else x.contiguous(),
            "Ak_ptr": dummy if given else A_k.to(**f32).contiguous(),
            "A0_ptr": dummy if given else A0.to(**f32).contiguous(),
            "At_ptr": A.contiguous() if given else dummy,
            "h0_ptr": dummy if initial_state is None else initial_state.to(**f32).contiguous(),
            "seqlen": L, "nb": nb, "K": K}
    launch = KernelLaunch(_dense_scan_kernel, (grid_dim(nb, block_nb), b), args,
                          {"BLOCK_NB": block_nb, "BS": BS, "BLOCK_K": block_k, "GIVEN": given,
                           "HAS_H0": initial_state is not None},
                          num_warps, config.num_stages)
    return LaunchPlan([launch], (out,))


def _pad_blocks(u, x, A_k, A0, A, h0, nb: int, bs: int, BS: int):
    """The scan's operands with blocks zero-padded to BS (a power of two): the padded states
    get zero transitions and inputs, so they stay 0 and feed nothing."""
    p = BS - bs

    def blocks(M):  # (..., nb, bs, bs) -> (..., nb, BS, BS)
        return None if M is None else torch.nn.functional.pad(M, (0, p, 0, p))

    def states(v):  # (..., nb * bs) -> (..., nb * BS)
        if v is None:
            return None
        lead = v.shape[:-1]
        return torch.nn.functional.pad(v.reshape(*lead, nb, bs), (0, p)).reshape(*lead, nb * BS)

    return states(u), x, blocks(A_k), blocks(A0), blocks(A), states(h0)


def dense_scan_sequential(u, *, x=None, A_k=None, A0=None, A=None, initial_state=None,
                          config: DenseSequentialConfig | None = None):
    """Sequential block-diagonal scan (ssmc.codegen.tvm.dense_scan's arguments): u (b, L, N);
    either x (b, L, K), A_k (K, nb, bs, bs) and A0 (nb, bs, bs) (the transition
    A0 + sum_k x^k A_k, built in the kernel) or A (b, L, nb, bs, bs); initial_state (b, N).
    Returns h (b, L, N) fp32."""
    if isinstance(u, torch.Tensor) and u.dim() == 3 and 0 in u.shape[:2]:
        return u.new_zeros(u.shape, dtype=torch.float32)
    blocks = A if A is not None else A_k
    bs = blocks.shape[-1] if isinstance(blocks, torch.Tensor) and blocks.dim() >= 2 else 1
    if bs != next_pow2(bs) and u.dim() == 3 and u.shape[-1] % bs == 0:
        b, L, N = u.shape
        nb, BS = N // bs, next_pow2(bs)
        padded = _pad_blocks(u, x, A_k, A0, A, initial_state, nb, bs, BS)
        out = dense_scan_sequential(padded[0], x=padded[1], A_k=padded[2], A0=padded[3],
                                    A=padded[4], initial_state=padded[5], config=config)
        return out.reshape(b, L, nb, BS)[..., :bs].reshape(b, L, N)
    (out,) = plan_dense_scan(u, x, A_k, A0, A, initial_state, config).run()
    return out


def _scan_operands(x, A_k, W_B, mode, initial_state, A_0, config) -> dict:
    """dense_scan_sequential's arguments for the layer: u = x W_B^T (a GEMM) and either the
    operands to build the transitions in the kernel (mode "linear", A_k fits in registers) or
    the transitions themselves (one GEMM, or matrix_exp for "expm")."""
    from ssmc.semantics.dense import dense_transitions

    f32 = torch.float32
    xf = x.to(f32)
    nb, bs = A_k.shape[1], A_k.shape[2]
    cfg = config or DenseSequentialConfig()
    ops = {"u": xf @ W_B.to(f32).t(),
           "initial_state": None if initial_state is None else initial_state.to(f32)}
    if mode == "linear" and builds_in_kernel(x.shape[-1], bs, min(cfg.block_nb, next_pow2(nb))):
        A0 = torch.eye(bs, dtype=f32, device=x.device)
        if A_0 is not None:
            A0 = A0 + A_0.to(f32)
        ops.update(x=x, A_k=A_k, A0=A0.expand(nb, bs, bs))
    else:
        ops["A"] = dense_transitions(xf, A_k, mode, A_0)
    return ops


def _readout(h, x, W_C, D):
    """The layer's output from the scan's states: h W_C^T + D x (fp32), in x's dtype."""
    f32 = torch.float32
    y = h @ W_C.to(f32).t()
    if D is not None:
        y = y + x.to(f32) * D.to(f32)
    return y.to(x.dtype)


def plan_dense_ssm(x, A_k, W_B, W_C, D=None, mode="linear", initial_state=None,
                   return_final_state=False, A_0=None, config=None):
    """The scan's launch plan for `dense_ssm_sequential`'s arguments (what the AOT compile and
    a tuner build; the GEMMs around it are torch's)."""
    from ssmc.codegen.composite.dense import _check

    _check(x, A_k, W_B, W_C, D, mode, "sequential", initial_state, A_0)
    return plan_dense_scan(**_scan_operands(x, A_k, W_B, mode, initial_state, A_0, config),
                           config=config)


def dense_ssm_sequential(x, A_k, W_B, W_C, D=None, mode="linear", initial_state=None,
                         return_final_state=False, A_0=None, config=None):
    """The dense selective SSM (`ssmc.semantics.dense.dense_ssm`'s arguments and results) with
    the scan in Triton and the two projections as torch GEMMs: y (b, L, d) in x's dtype
    [, final state (b, N) fp32].  Forward only (callers run the differentiable associative
    torch scan when gradients are needed); float64 runs that torch scan too."""
    from ssmc.codegen.composite.dense import _check, dense_ssm_associative

    b, L, d, nb, bs = _check(x, A_k, W_B, W_C, D, mode, "sequential", initial_state, A_0)
    if x.dtype not in FLOAT_DTYPES:
        return dense_ssm_associative(x, A_k, W_B, W_C, D, mode, initial_state,
                                     return_final_state, A_0)
    ops = _scan_operands(x, A_k, W_B, mode, initial_state, A_0, config)
    h = dense_scan_sequential(**ops, config=config)
    y = _readout(h, x, W_C, D)
    if not return_final_state:
        return y
    if L > 0:
        last = h[:, -1]
    else:
        h0 = ops["initial_state"]
        last = h0.clone() if h0 is not None else h.new_zeros(b, nb * bs)
    return y, last
