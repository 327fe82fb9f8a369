"""Gradients of Chimera's 2-D SSM wavefront (wavefront.py) in Triton: the reverse wavefront.

The algorithm is the CPU backward's (ssmc.codegen.tvm.ssm2d_bwd_tir's docstring: the adjoint
equations, messages, row chunks and checkpoints); this file is its Triton rendering, over the
forward kernel's own arguments (x, A1..A4 (d, N), B1, B2, C1, C2 in their three forms, dt_t,
dt_v per channel or per cell, raw when DT_SOFTPLUS).  Per cell, axis k (h1 along t: own
h1[t-1, v], cross h2[t-1, v]; h2 along v: own h2[t, v-1], cross h1[t, v-1]), with G the total
gradient reaching its new state h = e own + g q, q = Ac cross + B x, e = exp(dt A),
g = expm1(dt A) / A:

    G1 = gy C1 + (msgs from (t+1, v) and (t, v+1)),   G2 likewise with C2
    to the predecessor:  own e G,  cross g Ac G
    dz = (G own + G q / A) e:   dA += dz dt - G q g / A,   ddt = dz A (x softplus' = sigmoid)
    dAc += g G cross,   dB = g G x,   dx += g G B,   dC = gy h,   (dx += D gy, dD: in torch)

Layout of the messages, different from the CPU kernel's so that a whole diagonal's cells run
at once: what a cell sends up (to (t-1, v)) sits in slot U[v], what it sends left (to
(t, v-1)) in slot L[r] (r the cell's row in its chunk); no two cells of a diagonal share a v
or an r.  The slots are double-buffered by the parity of the cell's global diagonal t + v
(written to buffer (t + v) % 2, read from the other, which its two senders on diagonal
t + v + 1 wrote): a cell's read and its overwrite of the same slot would otherwise race when
a small tile is replicated across warps; a barrier between diagonals orders the rest.  U[v]
crosses chunk boundaries as it is (column v's cells run in decreasing t, and the parity is
global); reads at t = T - 1 and v = V - 1 are masked to zero (the grid's edge).

States: recomputed, never saved by the forward (which keeps one diagonal).  Per program a
buffer H of K + 1 rows x (V + 1) columns x 2 states x (BLOCK_D, BLOCK_N): row 0 the row above
the chunk (its checkpoint), column 0 a zero guard.  With nc = ceil(T / K) > 1 chunks, a first
forward sweep over chunks 0..nc - 2 writes the checkpoints (every K-th row); then, for the
chunks in reverse, the chunk's rows are recomputed into H (the forward's `_axis_update`, same
wavefront) and the adjoint walks its diagonals downwards.  K: ssm2d_recurrence.recompute_rows
(the whole grid when it fits TASK_BUDGET bytes a program, else about sqrt(T) rows).

One program per (channel block, batch row, direction) as in the forward.  No atomics: every
gradient is written to a per-program or per-direction partial that `finish` sums in torch --
x and the steps per (direction, cell, channel); A's and (d, N) B/C per (direction, batch row);
shared B/C (b, T, V, N) per (direction, cell, channel block); full B/C per (direction, cell).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ssmc.codegen.ssm2d_recurrence import recompute_rows
from ssmc.codegen.triton.common import (KernelConfig, KernelLaunch, LaunchPlan, config_json,
                                        grid_dim, interpreting, next_pow2, pow2_field,
                                        run_traceable, trainable_ops)
from ssmc.codegen.triton.ssm2d.wavefront import (Ssm2dWavefrontConfig, _axis_terms,
                                                 _axis_update, _cell_inputs, _diagonal_tile,
                                                 _operand, _operand_args, _program_tile,
                                                 ssm2d_wavefront)

# B/C forms (constexpr): where a cell's gradient term goes
BC_PARAM, BC_SHARED, BC_FULL = 0, 1, 2
# bytes of recomputed states (H) per program before the grid is cut into row chunks: on a GPU
# H lives in L2 (tens of MB shared by the programs), a few hundred KB each keeps it there
TASK_BUDGET = 256 << 10


@dataclass(frozen=True)
class Ssm2dWavefrontBwdConfig(KernelConfig):
    # cells of a diagonal per tile: 8 (the forward's 16 spilled 180 registers on sm_90 at
    # N 16, block_d 4: the adjoint keeps ~30 tiles live; 8 compiles to 226, no spills)
    block_c: int = pow2_field(8)
    block_d: int = pow2_field(4)  # channels per program
    num_warps: int = pow2_field(4)
    num_stages: int = 1
    chunk_rows: int | None = None  # rows per recompute chunk; None: recompute_rows

    def __post_init__(self):
        super().__post_init__()
        if self.chunk_rows is not None and (not isinstance(self.chunk_rows, int)
                                            or self.chunk_rows < 1):
            raise ValueError(f"chunk_rows: must be a positive int or None, got "
                             f"{self.chunk_rows!r}")


# --------------------------------------------------------------------------- kernel

@triton.jit
def _copy_row(src, dst, ncol, tile, offs_c, BLOCK_C: tl.constexpr, SL: tl.constexpr):
    """dst[col, state] = src[col, state] for the first ncol columns of a row."""
    for c0 in range(0, ncol, BLOCK_C):
        col = c0 + offs_c
        m = (col < ncol)[:, None, None] & (tile >= 0)
        off = col.to(tl.int64)[:, None, None] * (2 * SL) + tile
        tl.store(dst + off, tl.load(src + off, mask=m, other=0.0), mask=m)
        tl.store(dst + SL + off, tl.load(src + SL + off, mask=m, other=0.0), mask=m)


@triton.jit
def _store_bc(ptr, g, FORM: tl.constexpr, cell, pid_d, nblk, offs_d, offs_n, dim, dstate,
              m3, mcn):
    """A per-cell B/C gradient term g (cells, channels, states): shared B/C summed over the
    block's channels into (.., cell, block, N); full B/C as it is.  (d, N) B/C: accumulated by
    the caller."""
    if FORM == 1:
        off = (cell[:, None] * nblk + pid_d) * dstate + offs_n[None, :]
        tl.store(ptr + off, tl.sum(g, axis=1), mask=mcn)
    if FORM == 2:
        off = ((cell[:, None, None] * dim + offs_d[None, :, None]) * dstate
               + offs_n[None, None, :])
        tl.store(ptr + off, g, mask=m3)


@triton.jit
def _axis_adjoint(G, own, cross, xv, dt, A, Ac, B):
    """The adjoint of one axis's update (wavefront._axis_update) for the total gradient G of
    its new state: e (own's factor), w = g G (to cross through Ac, to B by x, to x by B),
    dz (the derivative by dt A), and the tile's dA and dAc summed over its cells."""
    e, g, q = _axis_terms(dt, A, Ac, cross, B, xv)
    w = g * G
    dz = (G * own + G * q / A) * e
    return e, w, dz, tl.sum(dz * dt - w * q / A, axis=0), tl.sum(w * cross, axis=0)


@triton.jit
def _ssm2d_wavefront_bwd_kernel(
    x_ptr, gy_ptr,
    A1_ptr, A2_ptr, A3_ptr, A4_ptr,
    B1_ptr, B2_ptr, C1_ptr, C2_ptr, dtt_ptr, dtv_ptr,
    gcell_ptr, gpar_ptr, gB1_ptr, gB2_ptr, gC1_ptr, gC2_ptr,
    H_ptr, ck_ptr, msg_ptr,
    T, V, dim, dstate, K, nc,
    sB1_b, sB1_t, sB1_v, sB1_d, sB1_n,
    sB2_b, sB2_t, sB2_v, sB2_d, sB2_n,
    sC1_b, sC1_t, sC1_v, sC1_d, sC1_n,
    sC2_b, sC2_t, sC2_v, sC2_d, sC2_n,
    sdt_t_b, sdt_t_t, sdt_t_v, sdt_t_d,
    sdt_v_b, sdt_v_t, sdt_v_v, sdt_v_d,
    FB1: tl.constexpr, FB2: tl.constexpr, FC1: tl.constexpr, FC2: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr,
):
    pid_d = tl.program_id(0)
    bi = tl.program_id(1).to(tl.int64)
    dirn = tl.program_id(2)
    nb = tl.num_programs(1)
    nblk = tl.num_programs(0)
    ndir = tl.num_programs(2)
    offs_c, offs_d, offs_n, mask_dn, par, A1, A2, A3, A4 = _program_tile(
        A1_ptr, A2_ptr, A3_ptr, A4_ptr, pid_d, dim, dstate, BLOCK_C, BLOCK_D, BLOCK_N)
    sB1 = (sB1_b, sB1_t, sB1_v, sB1_d, sB1_n)
    sB2 = (sB2_b, sB2_t, sB2_v, sB2_d, sB2_n)
    sC1 = (sC1_b, sC1_t, sC1_v, sC1_d, sC1_n)
    sC2 = (sC2_b, sC2_t, sC2_v, sC2_d, sC2_n)
    sdt_t = (sdt_t_b, sdt_t_t, sdt_t_v, sdt_t_d)
    sdt_v = (sdt_v_b, sdt_v_t, sdt_v_v, sdt_v_d)

    # this program's workspaces (fp32): a state plane SL, a column of 2 states, a row of V + 1
    # columns; H (K + 1 rows), checkpoints (nc rows), messages [2 buffers][U (V columns),
    # L (K rows)]
    SL: tl.constexpr = BLOCK_D * BLOCK_N
    CS: tl.constexpr = 2 * SL
    RS = (V + 1) * CS
    prog = ((dirn * nb + bi) * nblk + pid_d).to(tl.int64)
    Hb = H_ptr + prog * (K + 1) * RS
    CKb = ck_ptr + prog * nc * RS
    MB = (V + K) * CS  # one message buffer
    Mb = msg_ptr + prog * 2 * MB
    tile = tl.arange(0, BLOCK_D)[None, :, None] * BLOCK_N + offs_n[None, None, :]
    plane = (ndir * nb * T * V * dim).to(tl.int64)  # one of gcell's (gx, gdt_t, gdt_v)

    zero = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    gA1, gA2, gA3, gA4 = zero, zero, zero, zero
    gB1p, gB2p, gC1p, gC2p = zero, zero, zero, zero  # (d, N) B/C

    # passes 0..nc-2: the checkpoint sweep (chunks in order, forward only); then the chunks
    # in reverse, each recomputed and then run backwards
    for it in range(0, 2 * nc - 1):
        sweep = it < nc - 1
        jj = tl.where(sweep, it, 2 * nc - 2 - it)
        t0 = jj * K
        kc = tl.minimum(K, T - t0)
        _copy_row(CKb + jj.to(tl.int64) * RS, Hb, V + 1, tile, offs_c, BLOCK_C, SL)
        tl.debug_barrier()
        for s in range(0, kc + V - 1):  # recompute: the forward's wavefront, into H
            v_lo = tl.maximum(s - kc + 1, 0)
            v_hi = tl.minimum(s, V - 1)
            for c0 in range(v_lo, v_hi + 1, BLOCK_C):
                v, ok, r, t, vp, m3, m2, cell = _diagonal_tile(s, c0, v_hi, t0, offs_c, offs_d,
                                                               mask_dn, dirn, bi, T, V, dim)
                xv, dtt, dtv, rawt, rawv, B1, B2 = _cell_inputs(
                    x_ptr, B1_ptr, B2_ptr, dtt_ptr, dtv_ptr, cell, bi, t, vp, offs_d, offs_n,
                    sB1, sB2, sdt_t, sdt_v, m2, m3, DT_SOFTPLUS)
                here = Hb + (r + 1).to(tl.int64)[:, None, None] * RS \
                    + (v + 1).to(tl.int64)[:, None, None] * CS + tile
                up = here - RS
                left = here - CS
                up1 = tl.load(up, mask=m3, other=0.0)
                up2 = tl.load(up + SL, mask=m3, other=0.0)
                left1 = tl.load(left, mask=m3, other=0.0)
                left2 = tl.load(left + SL, mask=m3, other=0.0)
                tl.store(here, _axis_update(up1, up2, xv, dtt, A1, A2, B1), mask=m3)
                tl.store(here + SL, _axis_update(left2, left1, xv, dtv, A4, A3, B2), mask=m3)
            tl.debug_barrier()
        # the sweep: the chunk's last row is the next chunk's checkpoint
        _copy_row(Hb + K * RS, CKb + (jj + 1).to(tl.int64) * RS, tl.where(sweep, V + 1, 0),
                  tile, offs_c, BLOCK_C, SL)
        n_adj = tl.where(sweep, 0, kc + V - 1)
        for ss in range(0, n_adj):  # the adjoint: diagonals downwards
            s = kc + V - 2 - ss
            wpar = (t0 + s) % 2  # this diagonal's message buffer; it reads the other one
            Uw = Mb + wpar * MB
            Ur = Mb + (1 - wpar) * MB
            v_lo = tl.maximum(s - kc + 1, 0)
            v_hi = tl.minimum(s, V - 1)
            for c0 in range(v_lo, v_hi + 1, BLOCK_C):
                v, ok, r, t, vp, m3, m2, cell = _diagonal_tile(s, c0, v_hi, t0, offs_c, offs_d,
                                                               mask_dn, dirn, bi, T, V, dim)
                xv, dtt, dtv, rawt, rawv, B1, B2 = _cell_inputs(
                    x_ptr, B1_ptr, B2_ptr, dtt_ptr, dtv_ptr, cell, bi, t, vp, offs_d, offs_n,
                    sB1, sB2, sdt_t, sdt_v, m2, m3, DT_SOFTPLUS)
                gy = tl.load(gy_ptr + cell[:, None] + offs_d[None, :], mask=m2,
                             other=0.0)[:, :, None]
                C1 = _operand(C1_ptr, bi, t, vp, offs_d, offs_n, sC1, m3)
                C2 = _operand(C2_ptr, bi, t, vp, offs_d, offs_n, sC2, m3)
                here = Hb + (r + 1).to(tl.int64)[:, None, None] * RS \
                    + (v + 1).to(tl.int64)[:, None, None] * CS + tile
                h1 = tl.load(here, mask=m3, other=0.0)
                h2 = tl.load(here + SL, mask=m3, other=0.0)
                up1 = tl.load(here - RS, mask=m3, other=0.0)
                up2 = tl.load(here - RS + SL, mask=m3, other=0.0)
                left1 = tl.load(here - CS, mask=m3, other=0.0)
                left2 = tl.load(here - CS + SL, mask=m3, other=0.0)
                u_at = v.to(tl.int64)[:, None, None] * CS + tile  # U[v]
                l_at = (V + r).to(tl.int64)[:, None, None] * CS + tile  # L[r]
                mu = m3 & (t < T - 1)[:, None, None]  # the last row has no cell below
                ml = m3 & (v < V - 1)[:, None, None]  # the last column none to the right
                G1 = gy * C1 + tl.load(Ur + u_at, mask=mu, other=0.0) \
                    + tl.load(Ur + l_at, mask=ml, other=0.0)
                G2 = gy * C2 + tl.load(Ur + u_at + SL, mask=mu, other=0.0) \
                    + tl.load(Ur + l_at + SL, mask=ml, other=0.0)
                # axis t: h1 = e1 up1 + g1 (A2 up2 + B1 x)
                # axis v: h2 = e4 left2 + g4 (A3 left1 + B2 x)
                e1, w1, dz1, dA1, dA2 = _axis_adjoint(G1, up1, up2, xv, dtt, A1, A2, B1)
                e4, w4, dz4, dA4, dA3 = _axis_adjoint(G2, left2, left1, xv, dtv, A4, A3, B2)
                gA1 += dA1
                gA2 += dA2
                gA3 += dA3
                gA4 += dA4
                # messages: up (to h1, h2 of (t-1, v)) and left (to h1, h2 of (t, v-1))
                tl.store(Uw + u_at, e1 * G1, mask=m3)
                tl.store(Uw + u_at + SL, w1 * A2, mask=m3)
                tl.store(Uw + l_at, w4 * A3, mask=m3)
                tl.store(Uw + l_at + SL, e4 * G2, mask=m3)
                # per cell and channel: x, the steps (through softplus: x its sigmoid)
                gdt_t = tl.sum(dz1 * A1, axis=2)
                gdt_v = tl.sum(dz4 * A4, axis=2)
                if DT_SOFTPLUS:
                    gdt_t *= tl.where(rawt > 20.0, 1.0, tl.sigmoid(rawt))
                    gdt_v *= tl.where(rawv > 20.0, 1.0, tl.sigmoid(rawv))
                gcell = ((dirn * nb + bi) * T + t.to(tl.int64)) * V + vp.to(tl.int64)
                at = gcell[:, None] * dim + offs_d[None, :]
                tl.store(gcell_ptr + at, tl.sum(w1 * B1 + w4 * B2, axis=2), mask=m2)
                tl.store(gcell_ptr + plane + at, gdt_t, mask=m2)
                tl.store(gcell_ptr + 2 * plane + at, gdt_v, mask=m2)
                # B/C: by form
                mcn = ok[:, None] & (offs_n < dstate)[None, :]
                gb1 = w1 * xv
                gb2 = w4 * xv
                gc1 = gy * h1
                gc2 = gy * h2
                if FB1 == 0:
                    gB1p += tl.sum(gb1, axis=0)
                if FB2 == 0:
                    gB2p += tl.sum(gb2, axis=0)
                if FC1 == 0:
                    gC1p += tl.sum(gc1, axis=0)
                if FC2 == 0:
                    gC2p += tl.sum(gc2, axis=0)
                _store_bc(gB1_ptr, gb1, FB1, gcell, pid_d, nblk, offs_d, offs_n, dim, dstate,
                          m3, mcn)
                _store_bc(gB2_ptr, gb2, FB2, gcell, pid_d, nblk, offs_d, offs_n, dim, dstate,
                          m3, mcn)
                _store_bc(gC1_ptr, gc1, FC1, gcell, pid_d, nblk, offs_d, offs_n, dim, dstate,
                          m3, mcn)
                _store_bc(gC2_ptr, gc2, FC2, gcell, pid_d, nblk, offs_d, offs_n, dim, dstate,
                          m3, mcn)
            tl.debug_barrier()

    # per (direction, batch row): A1..A4, then the (d, N) B1, B2, C1, C2
    gp = gpar_ptr + (dirn * nb + bi) * 8 * dim * dstate + par
    tl.store(gp, gA1, mask=mask_dn)
    tl.store(gp + dim * dstate, gA2, mask=mask_dn)
    tl.store(gp + 2 * dim * dstate, gA3, mask=mask_dn)
    tl.store(gp + 3 * dim * dstate, gA4, mask=mask_dn)
    tl.store(gp + 4 * dim * dstate, gB1p, mask=mask_dn)
    tl.store(gp + 5 * dim * dstate, gB2p, mask=mask_dn)
    tl.store(gp + 6 * dim * dstate, gC1p, mask=mask_dn)
    tl.store(gp + 7 * dim * dstate, gC2p, mask=mask_dn)


# --------------------------------------------------------------------------- the launcher

BC_NAMES = ("B1", "B2", "C1", "C2")
INPUT_NAMES = ("x", "A1", "A2", "A3", "A4", "B1", "B2", "C1", "C2", "dt_t", "dt_v", "D")


def _form(t: torch.Tensor) -> int:
    return {2: BC_PARAM, 4: BC_SHARED, 5: BC_FULL}[t.dim()]


def plan_ssm2d_wavefront_bwd(grad_y, x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v,
                             bidirectional=False, dt_softplus=False,
                             config: Ssm2dWavefrontBwdConfig | None = None):
    """The launch plan of the backward for output gradient grad_y (b, T, V, d) of
    `ssm2d_wavefront` on these arguments (D's terms are torch's: `finish`).  Outputs: (gcell
    (3, ndir, b, T, V, d): gx, gdt_t, gdt_v per direction and cell; gpar (ndir, b, 8, d, N):
    A1..A4 and the (d, N) B/C per direction and batch row; the per-cell partials of B1, B2,
    C1, C2 in their forms, None for (d, N))."""
    config = config or Ssm2dWavefrontBwdConfig()
    b, T, V, d = x.shape
    N = A1.shape[1]
    ndir = 2 if bidirectional else 1
    block_d = min(config.block_d, next_pow2(d))
    block_n = next_pow2(N)
    nblk = grid_dim(d, block_d)
    grid = (nblk, b, ndir)
    programs = nblk * b * ndir
    row = (V + 1) * 2 * block_d * block_n  # floats of one row of H
    K = config.chunk_rows or recompute_rows(T, row * 4, TASK_BUDGET)
    K = max(1, min(int(K), T))
    nc = (T + K - 1) // K
    f32 = dict(dtype=torch.float32, device=x.device)
    # zeroed: H's guard column and the first checkpoint (the rows above the grid) must be 0
    H = torch.zeros((programs, K + 1, row), **f32)
    ck = torch.zeros((programs, nc, row), **f32)
    msg = torch.empty((programs, 2, (V + K) * 2 * block_d * block_n), **f32)
    gcell = torch.empty((3, ndir, b, T, V, d), **f32)
    gpar = torch.empty((ndir, b, 8, d, N), **f32)
    parts = {}
    for nm, t in zip(BC_NAMES, (B1, B2, C1, C2)):
        form = _form(t)
        parts[nm] = None if form == BC_PARAM else \
            torch.empty((ndir, b, T, V, nblk, N) if form == BC_SHARED else
                        (ndir, b, T, V, d, N), **f32)
    args = _operand_args(b, T, V, d, N, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v)
    args.update({"x_ptr": x.contiguous(), "gy_ptr": grad_y.float().contiguous(),
                 "gcell_ptr": gcell, "gpar_ptr": gpar,
                 **{f"g{nm}_ptr": gpar if p is None else p for nm, p in parts.items()},
                 "H_ptr": H, "ck_ptr": ck, "msg_ptr": msg,
                 "T": T, "V": V, "dim": d, "dstate": N, "K": K, "nc": nc})
    const = {f"F{nm}": _form(t) for nm, t in zip(BC_NAMES, (B1, B2, C1, C2))}
    const.update({"BLOCK_C": config.block_c, "BLOCK_D": block_d, "BLOCK_N": block_n,
                  "DT_SOFTPLUS": dt_softplus})
    launch = KernelLaunch(_ssm2d_wavefront_bwd_kernel, grid, args, const, config.num_warps,
                          config.num_stages)
    return LaunchPlan([launch], (gcell, gpar, parts))


def finish(outputs, grad_y, x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v, D) -> tuple:
    """The kernel's partials -> the gradient of every input, in its shape and dtype (D's terms
    here: dx += D gy, dD = sum gy x)."""
    gcell, gpar, parts = outputs
    gpar = gpar.sum((0, 1))  # (8, d, N)
    gx = gcell[0].sum(0)
    if D is not None:
        gx = gx + grad_y.float() * D.float()
    grads = [gx.to(x.dtype)]
    grads += [gpar[k].to(A.dtype) for k, A in enumerate((A1, A2, A3, A4))]
    for k, (nm, t) in enumerate(zip(BC_NAMES, (B1, B2, C1, C2))):
        form, p = _form(t), parts[nm]
        g = gpar[4 + k] if form == BC_PARAM else p.sum((0, 4)) if form == BC_SHARED \
            else p.sum(0)
        grads.append(g.to(t.dtype))
    for k, dt in enumerate((dt_t, dt_v)):
        g = gcell[1 + k]
        grads.append((g.sum((0, 1, 2, 3)) if dt.dim() == 1 else g.sum(0)).to(dt.dtype))
    grads.append(None if D is None else
                 (grad_y.float() * x.float()).sum((0, 1, 2)).to(D.dtype))
    return tuple(grads)


def ssm2d_wavefront_backward(grad_y, x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v, D=None,
                             bidirectional=False, dt_softplus=False,
                             config: Ssm2dWavefrontBwdConfig | None = None,
                             traceable: bool = False) -> tuple:
    """Gradients of `ssm2d_wavefront`'s y (its arguments) for output gradient grad_y, in
    INPUT_NAMES order (None for an absent D)."""
    ins = (x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v)
    if 0 in x.shape:
        return tuple(torch.zeros_like(t) for t in ins) + \
            (None if D is None else torch.zeros_like(D),)
    plan = plan_ssm2d_wavefront_bwd(grad_y, *ins, bidirectional=bidirectional,
                                    dt_softplus=dt_softplus, config=config)
    return finish(run_traceable(plan) if traceable else plan.run(), grad_y, *ins, D)


def ssm2d_wavefront_triton(x: Tensor, A1: Tensor, A2: Tensor, A3: Tensor, A4: Tensor,
                           B1: Tensor, B2: Tensor, C1: Tensor, C2: Tensor, dt_t: Tensor,
                           dt_v: Tensor, D: Optional[Tensor], bidirectional: bool,
                           dt_softplus: bool, config: str, bwd_config: str) -> Tensor:
    """ssmc::ssm2d_wavefront_triton's body: `ssm2d_wavefront`; config / bwd_config: the
    forward's and the backward's knobs as JSON ('' for the defaults)."""
    cfg = Ssm2dWavefrontConfig.from_dict(json.loads(config)) if config else None
    return ssm2d_wavefront(x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v, D, bidirectional,
                           dt_softplus, cfg, traceable=True)


def ssm2d_wavefront_bwd_triton(grad_y: Tensor, x: Tensor, A1: Tensor, A2: Tensor, A3: Tensor,
                               A4: Tensor, B1: Tensor, B2: Tensor, C1: Tensor, C2: Tensor,
                               dt_t: Tensor, dt_v: Tensor, D: Optional[Tensor],
                               bidirectional: bool, dt_softplus: bool, config: str
                               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                          Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """ssmc::ssm2d_wavefront_bwd_triton's body: the gradients of every input in INPUT_NAMES
    order (D's empty without D); config: Ssm2dWavefrontBwdConfig's knobs as JSON."""
    cfg = Ssm2dWavefrontBwdConfig.from_dict(json.loads(config)) if config else None
    grads = ssm2d_wavefront_backward(grad_y, x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v, D,
                                     bidirectional, dt_softplus, cfg, traceable=True)
    # an op's outputs may not alias one another: the (d, N) ones (A's, B/C's per channel) are
    # views of one sum
    return tuple(x.new_empty((0,)) if g is None else g.clone() if g.dim() == 2 else g
                 for g in grads)


def _setup(ctx, inputs, output):
    *ins, bidirectional, dt_softplus, _, bwd_config = inputs
    ctx.save_for_backward(*ins)
    ctx.opts = (bidirectional, dt_softplus, bwd_config)


def _backward(ctx, gy):
    grads = triton_bwd_op()(gy, *ctx.saved_tensors, *ctx.opts)
    need = ctx.needs_input_grad
    return (*[g if w else None for g, w in zip(grads, need[:12])], None, None, None, None)


_FWD_OP, _BWD_OP = trainable_ops("ssm2d_wavefront", ssm2d_wavefront_triton,
                                 ssm2d_wavefront_bwd_triton, _backward, _setup)


def triton_bwd_op():
    """ssmc::ssm2d_wavefront_bwd_triton (common.library_op)."""
    return _BWD_OP


def triton_op():
    """ssmc::ssm2d_wavefront_triton (common.library_op) with the reverse wavefront as its
    autograd formula: torch.compile traces training through both kernels."""
    return _FWD_OP


def ssm2d_wavefront_autograd(x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v, D=None,
                             bidirectional=False, dt_softplus=False, config=None,
                             bwd_config: Ssm2dWavefrontBwdConfig | None = None):
    """`ssm2d_wavefront` (same arguments and result), differentiable and traceable: with grad
    mode on and an input that requires grad, or under torch.compile, through the op
    ssmc::ssm2d_wavefront_triton; otherwise the kernel directly (no op overhead)."""
    ins = (x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v, D)
    grad = torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                           for t in ins)
    if grad or torch.compiler.is_compiling():
        return triton_op()(*ins, bool(bidirectional), bool(dt_softplus), config_json(config),
                           config_json(bwd_config))
    return ssm2d_wavefront(*ins[:11], D=D, bidirectional=bidirectional,
                           dt_softplus=dt_softplus, config=config)


def applies(x) -> bool:
    """Whether the Triton kernels run on x's device (a GPU, or the CPU under the interpreter)."""
    return x.device.type == "cuda" or (x.device.type == "cpu" and interpreting())


__all__ = ["Ssm2dWavefrontBwdConfig", "applies", "finish", "plan_ssm2d_wavefront_bwd",
           "ssm2d_wavefront_autograd", "ssm2d_wavefront_backward", "ssm2d_wavefront_bwd_triton",
           "ssm2d_wavefront_triton", "triton_bwd_op", "triton_op"]
