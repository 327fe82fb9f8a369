"""Chimera's 2-D SSM (MODELS.md section 6) as an anti-diagonal wavefront in Triton.

Oracle: `ssmc.semantics.ssm2d.ssm2d_wavefront` / `ssm2d_ref`.  Per channel and state:

    h1[t, v] = E1 h1[t-1, v] + G1 (A2 h2[t-1, v] + B1 x[t, v])    E1 = exp(dt_t A1),
    h2[t, v] = E4 h2[t, v-1] + G4 (A3 h1[t, v-1] + B2 x[t, v])    G1 = expm1(dt_t A1) / A1
    y[t, v]  = sum_n C1 h1 + C2 h2        (+ D x, added by the launcher)

Cells with t + v = s depend only on cells of diagonal s - 1, so a program walks the T + V - 1
diagonals in order and computes each diagonal's cells together: (BLOCK_C cells, BLOCK_D
channels, BLOCK_N states) tiles.  The states of a whole diagonal live in a per-program slot
buffer (global memory that stays in L1/L2), indexed by v + 1 with slot 0 a zero guard: cell
(t, v) reads slot v + 1 (cell (t-1, v)) and slot v (cell (t, v-1)) of the previous diagonal's
buffer and writes slot v + 1 of the other one (double buffering; a block barrier between
diagonals).  Slots a diagonal does not reach were never written: zero, which is exactly the
grid's boundary.  One program per (channel block, batch row, direction); the backward-v
direction reads the grid mirrored in v and writes its own output plane, which the launcher
adds to the forward one.

Operands are addressed through strides so that one kernel serves every form the oracle takes:
B/C as (d, N), (b, T, V, N) or (b, T, V, d, N), dt as (d,) or (b, T, V, d) (a stride of 0 for
a broadcast axis).  E and G are computed per cell (an exp per state and axis); expm1 is a Taylor
polynomial near 0 (no libdevice under the interpreter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ssmc.codegen.triton.common import (FLOAT_DTYPES, KernelConfig, KernelLaunch, LaunchPlan,
                                        check_flag, check_same_device, check_tensor, grid_dim,
                                        next_pow2, pow2_field, run_traceable)

EXPM1_SMALL = tl.constexpr(0.25)  # |x| below: x (1 + x/2 + ... + x^5/720), truncation < 5e-8 relative


@dataclass(frozen=True)
class Ssm2dWavefrontConfig(KernelConfig):
    block_c: int = pow2_field(16)  # cells of a diagonal per tile
    block_d: int = pow2_field(4)  # channels per program
    num_warps: int = pow2_field(4)
    num_stages: int = 1


@triton.jit
def _expm1(x, e):
    small = x * (1.0 + x * (0.5 + x * (1.0 / 6 + x * (1.0 / 24 + x * (1.0 / 120
                                                                        + x * (1.0 / 720))))))
    return tl.where(tl.abs(x) < EXPM1_SMALL, small, e - 1.0)


@triton.jit
def _step(raw, DT_SOFTPLUS: tl.constexpr):
    """The step of a cell: raw, or F.softplus(raw) (x above 20 stays x)."""
    if DT_SOFTPLUS:
        return tl.where(raw > 20.0, raw, tl.log(1.0 + tl.exp(tl.minimum(raw, 20.0))))
    return raw


@triton.jit
def _axis_terms(dt, A, Ac, cross, B, xv):
    """(e, g, q) of one axis's ZOH update: e = exp(dt A), g = expm1(dt A) / A,
    q = Ac cross + B x (the cross state held)."""
    dA = dt * A
    e = tl.exp(dA)
    return e, _expm1(dA, e) / A, Ac * cross + B * xv


@triton.jit
def _axis_update(own, cross, xv, dt, A, Ac, B):
    """One axis's state update: e own + g q (the backward's recompute runs this same
    function)."""
    e, g, q = _axis_terms(dt, A, Ac, cross, B, xv)
    return e * own + g * q


@triton.jit
def _operand(ptr, bi, t, vp, offs_d, offs_n, s, mask):
    """A (cells, channels, states) tile of a stride-addressed operand, strides s = (b, t, v, d,
    n) (stride 0 = broadcast)."""
    off = (bi * s[0] + t.to(tl.int64)[:, None, None] * s[1]
           + vp.to(tl.int64)[:, None, None] * s[2] + offs_d[None, :, None] * s[3]
           + offs_n[None, None, :] * s[4])
    return tl.load(ptr + off, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _cell_step(ptr, bi, t, vp, offs_d, s, m2, DT_SOFTPLUS: tl.constexpr):
    """(raw, step) of a (cells, channels) tile of dt_t or dt_v, strides s = (b, t, v, d)."""
    off = (bi * s[0] + t.to(tl.int64)[:, None] * s[1] + vp.to(tl.int64)[:, None] * s[2]
           + offs_d[None, :] * s[3])
    raw = tl.load(ptr + off, mask=m2, other=0.0).to(tl.float32)
    return raw, _step(raw, DT_SOFTPLUS)


@triton.jit
def _program_tile(A1_ptr, A2_ptr, A3_ptr, A4_ptr, pid_d, dim, dstate, BLOCK_C: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """The program's offsets (cells of a tile, channels, states), the mask and offsets of its
    (channels, states) parameter tile, and A1..A4 as (1, channels, states) (masked: A1 = A4 =
    -1, A2 = A3 = 0, finite and harmless)."""
    offs_c = tl.arange(0, BLOCK_C)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_dn = (offs_d < dim)[:, None] & (offs_n < dstate)[None, :]
    par = offs_d[:, None] * dstate + offs_n[None, :]
    A1 = tl.load(A1_ptr + par, mask=mask_dn, other=-1.0)[None, :, :]
    A2 = tl.load(A2_ptr + par, mask=mask_dn, other=0.0)[None, :, :]
    A3 = tl.load(A3_ptr + par, mask=mask_dn, other=0.0)[None, :, :]
    A4 = tl.load(A4_ptr + par, mask=mask_dn, other=-1.0)[None, :, :]
    return offs_c, offs_d, offs_n, mask_dn, par, A1, A2, A3, A4


@triton.jit
def _diagonal_tile(s, c0, v_hi, t0, offs_c, offs_d, mask_dn, dirn, bi, T, V, dim):
    """The tile of cells c0.. of diagonal s of the rows from t0: v, ok (v <= v_hi), the row r
    within them, t = t0 + r, vp (v mirrored for the backward-v direction), the (cells,
    channels, states) and (cells, channels) masks, and each cell's offset in a (b, T, V, d)
    array."""
    v = c0 + offs_c
    ok = v <= v_hi
    r = s - v
    t = t0 + r
    vp = tl.where(dirn == 0, v, V - 1 - v)
    m3 = ok[:, None, None] & mask_dn[None, :, :]
    m2 = ok[:, None] & (offs_d < dim)[None, :]
    cell = ((bi * T + t.to(tl.int64)) * V + vp.to(tl.int64)) * dim
    return v, ok, r, t, vp, m3, m2, cell


@triton.jit
def _cell_inputs(x_ptr, B1_ptr, B2_ptr, dtt_ptr, dtv_ptr, cell, bi, t, vp, offs_d, offs_n,
                 sB1, sB2, sdt_t, sdt_v, m2, m3, DT_SOFTPLUS: tl.constexpr):
    """What a tile of cells reads to update its states: x and the two steps as (cells,
    channels, 1), the raw steps (cells, channels), B1 and B2 (cells, channels, states)."""
    xv = tl.load(x_ptr + cell[:, None] + offs_d[None, :], mask=m2, other=0.0)
    rawt, dtt = _cell_step(dtt_ptr, bi, t, vp, offs_d, sdt_t, m2, DT_SOFTPLUS)
    rawv, dtv = _cell_step(dtv_ptr, bi, t, vp, offs_d, sdt_v, m2, DT_SOFTPLUS)
    B1 = _operand(B1_ptr, bi, t, vp, offs_d, offs_n, sB1, m3)
    B2 = _operand(B2_ptr, bi, t, vp, offs_d, offs_n, sB2, m3)
    return (xv.to(tl.float32)[:, :, None], dtt[:, :, None], dtv[:, :, None], rawt, rawv, B1,
            B2)


@triton.jit
def _ssm2d_wavefront_kernel(
    x_ptr, out_ptr, ws_ptr,
    A1_ptr, A2_ptr, A3_ptr, A4_ptr,
    B1_ptr, B2_ptr, C1_ptr, C2_ptr, dtt_ptr, dtv_ptr,
    T, V, dim, dstate,
    sB1_b, sB1_t, sB1_v, sB1_d, sB1_n,
    sB2_b, sB2_t, sB2_v, sB2_d, sB2_n,
    sC1_b, sC1_t, sC1_v, sC1_d, sC1_n,
    sC2_b, sC2_t, sC2_v, sC2_d, sC2_n,
    sdt_t_b, sdt_t_t, sdt_t_v, sdt_t_d,
    sdt_v_b, sdt_v_t, sdt_v_v, sdt_v_d,
    BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr,
):
    pid_d = tl.program_id(0)
    bi = tl.program_id(1).to(tl.int64)
    dirn = tl.program_id(2)
    nb = tl.num_programs(1)
    offs_c, offs_d, offs_n, mask_dn, par, A1, A2, A3, A4 = _program_tile(
        A1_ptr, A2_ptr, A3_ptr, A4_ptr, pid_d, dim, dstate, BLOCK_C, BLOCK_D, BLOCK_N)
    sB1 = (sB1_b, sB1_t, sB1_v, sB1_d, sB1_n)
    sB2 = (sB2_b, sB2_t, sB2_v, sB2_d, sB2_n)
    sC1 = (sC1_b, sC1_t, sC1_v, sC1_d, sC1_n)
    sC2 = (sC2_b, sC2_t, sC2_v, sC2_d, sC2_n)
    sdt_t = (sdt_t_b, sdt_t_t, sdt_t_v, sdt_t_d)
    sdt_v = (sdt_v_b, sdt_v_t, sdt_v_v, sdt_v_d)

    # this program's slots: [buffer 2][state 2][V + 1][BLOCK_D][BLOCK_N]
    prog = (dirn * nb + bi) * tl.num_programs(0) + pid_d
    plane = (V + 1) * BLOCK_D * BLOCK_N
    ws = ws_ptr + prog.to(tl.int64) * (4 * plane)
    tile = tl.arange(0, BLOCK_D)[None, :, None] * BLOCK_N + offs_n[None, None, :]
    out = out_ptr + dirn.to(tl.int64) * nb * T * V * dim

    for s in range(0, T + V - 1):
        rd = ws + (s % 2) * (2 * plane)
        wr = ws + ((s + 1) % 2) * (2 * plane)
        v_lo = tl.maximum(s - T + 1, 0)
        v_hi = tl.minimum(s, V - 1)
        for c0 in range(v_lo, v_hi + 1, BLOCK_C):
            # (no `_` for unused values: the compiler would see one loop variable change type)
            v, ok, r, t, vp, m3, m2, cell = _diagonal_tile(s, c0, v_hi, 0, offs_c, offs_d,
                                                           mask_dn, dirn, bi, T, V, dim)
            xv, dtt, dtv, rawt, rawv, B1, B2 = _cell_inputs(
                x_ptr, B1_ptr, B2_ptr, dtt_ptr, dtv_ptr, cell, bi, t, vp, offs_d, offs_n,
                sB1, sB2, sdt_t, sdt_v, m2, m3, DT_SOFTPLUS)
            slot_up = (v + 1).to(tl.int64)[:, None, None] * (BLOCK_D * BLOCK_N) + tile
            slot_left = v.to(tl.int64)[:, None, None] * (BLOCK_D * BLOCK_N) + tile
            up1 = tl.load(rd + slot_up, mask=m3, other=0.0)
            up2 = tl.load(rd + plane + slot_up, mask=m3, other=0.0)
            left1 = tl.load(rd + slot_left, mask=m3, other=0.0)
            left2 = tl.load(rd + plane + slot_left, mask=m3, other=0.0)
            h1 = _axis_update(up1, up2, xv, dtt, A1, A2, B1)
            h2 = _axis_update(left2, left1, xv, dtv, A4, A3, B2)
            tl.store(wr + slot_up, h1, mask=m3)
            tl.store(wr + plane + slot_up, h2, mask=m3)
            C1 = _operand(C1_ptr, bi, t, vp, offs_d, offs_n, sC1, m3)
            C2 = _operand(C2_ptr, bi, t, vp, offs_d, offs_n, sC2, m3)
            y = tl.sum(C1 * h1 + C2 * h2, axis=2)
            tl.store(out + cell[:, None] + offs_d[None, :], y, mask=m2)
        tl.debug_barrier()  # the next diagonal reads what every thread wrote


# --------------------------------------------------------------------------- the launcher

def _strides_bc(name, t, b, T, V, d, N):
    """(tensor, strides (b, t, v, d, n)) of B/C in one of its three forms."""
    if t.dim() == 2:
        check_tensor(name, t, dims=(("dim", d), ("dstate", N)), dtypes=FLOAT_DTYPES)
        return t, (0, 0, 0, t.stride(0), t.stride(1))
    if t.dim() == 4:
        check_tensor(name, t, dims=(("batch", b), ("T", T), ("V", V), ("dstate", N)),
                     dtypes=FLOAT_DTYPES)
        return t, (t.stride(0), t.stride(1), t.stride(2), 0, t.stride(3))
    check_tensor(name, t, dims=(("batch", b), ("T", T), ("V", V), ("dim", d), ("dstate", N)),
                 dtypes=FLOAT_DTYPES)
    return t, tuple(t.stride())


def _strides_dt(name, t, b, T, V, d):
    if isinstance(t, torch.Tensor) and t.dim() == 1:
        check_tensor(name, t, dims=(("dim", d),), dtypes=FLOAT_DTYPES)
        return t, (0, 0, 0, t.stride(0))
    check_tensor(name, t, dims=(("batch", b), ("T", T), ("V", V), ("dim", d)),
                 dtypes=FLOAT_DTYPES)
    return t, tuple(t.stride())


def _operand_args(b, T, V, d, N, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v) -> dict:
    """The arguments both kernels (forward and backward) take for A1..A4 (fp32), B1, B2, C1,
    C2 and the steps (any of their forms, checked here): pointers and strides."""
    args = {f"{nm}_ptr": A.float().contiguous()
            for nm, A in (("A1", A1), ("A2", A2), ("A3", A3), ("A4", A4))}
    for nm, t in (("B1", B1), ("B2", B2), ("C1", C1), ("C2", C2)):
        t, st = _strides_bc(nm, t, b, T, V, d, N)
        args[f"{nm}_ptr"] = t
        args.update({f"s{nm}_{ax}": s for ax, s in zip("btvdn", st)})
    for nm, t, ptr, key in (("dt_t", dt_t, "dtt_ptr", "sdt_t"), ("dt_v", dt_v, "dtv_ptr", "sdt_v")):
        t, st = _strides_dt(nm, t, b, T, V, d)
        args[ptr] = t
        args.update({f"{key}_{ax}": s for ax, s in zip("btvd", st)})
    return args


def plan_ssm2d_wavefront(x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v, D=None,
                         bidirectional=False, dt_softplus=False,
                         config: Ssm2dWavefrontConfig | None = None):
    """The launch plan (see `ssm2d_wavefront`); outputs (out planes (ndir, b, T, V, d) fp32,)."""
    config = config or Ssm2dWavefrontConfig()
    check_tensor("x", x, dims=(("batch", None), ("T", None), ("V", None), ("dim", None)),
                 dtypes=FLOAT_DTYPES)
    b, T, V, d = x.shape
    check_tensor("A1", A1, dims=(("dim", d), ("dstate", None)), dtypes=FLOAT_DTYPES)
    N = A1.shape[1]
    for name, A in (("A2", A2), ("A3", A3), ("A4", A4)):
        check_tensor(name, A, dims=(("dim", d), ("dstate", N)), dtypes=FLOAT_DTYPES)
    check_tensor("D", D, dims=(("dim", d),), dtypes=FLOAT_DTYPES, optional=True)
    check_flag("bidirectional", bidirectional)
    check_flag("dt_softplus", dt_softplus)
    args = _operand_args(b, T, V, d, N, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v)
    check_same_device("x", x, A1=A1, A2=A2, A3=A3, A4=A4, D=D, B1=B1, B2=B2, C1=C1, C2=C2,
                      dt_t=dt_t, dt_v=dt_v)
    ndir = 2 if bidirectional else 1
    block_d = min(config.block_d, next_pow2(d))
    block_n = next_pow2(N)
    grid = (grid_dim(d, block_d), b, ndir)
    f32 = dict(dtype=torch.float32, device=x.device)
    out = torch.empty((ndir, b, T, V, d), **f32)
    programs = grid[0] * grid[1] * grid[2]
    ws = torch.zeros((programs, 2, 2, V + 1, block_d, block_n), **f32)
    args.update({"x_ptr": x.contiguous(), "out_ptr": out, "ws_ptr": ws,
                 "T": T, "V": V, "dim": d, "dstate": N})
    launch = KernelLaunch(_ssm2d_wavefront_kernel, grid, args,
                          {"BLOCK_C": config.block_c, "BLOCK_D": block_d, "BLOCK_N": block_n,
                           "DT_SOFTPLUS": dt_softplus},
                          config.num_warps, config.num_stages)
    return LaunchPlan([launch], (out,))


def ssm2d_wavefront(x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v, D=None,
                    bidirectional=False, dt_softplus=False,
                    config: Ssm2dWavefrontConfig | None = None, traceable: bool = False):
    """2-D SSM by wavefront (the oracle `ssm2d_ref`'s arguments and result): x (b, T, V, d);
    A1..A4 (d, N); B1, B2, C1, C2 (d, N), (b, T, V, N) or (b, T, V, d, N); dt_t, dt_v (d,) or
    (b, T, V, d), positive (or, with dt_softplus, their pre-activation); D (d,).  Returns
    y (b, T, V, d) in x's dtype.  traceable: launch through wrap_triton (inside a triton_op)."""
    if isinstance(x, torch.Tensor) and x.dim() == 4 and 0 in x.shape:
        check_tensor("x", x, dtypes=FLOAT_DTYPES)
        return x.new_zeros(x.shape)
    plan = plan_ssm2d_wavefront(x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v, D,
                                bidirectional, dt_softplus, config)
    (out,) = run_traceable(plan) if traceable else plan.run()
    y = out.sum(0) if out.shape[0] > 1 else out[0]
    if D is not None:
        y = y + x.float() * D.float()
    return y.to(x.dtype)
