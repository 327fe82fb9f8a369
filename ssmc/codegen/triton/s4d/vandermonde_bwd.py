"""The transpose of S4D's Vandermonde kernel in Triton: what the kernel-generation step's
gradients need (the backward of `s4d_kernel_vandermonde`).

For an output gradient g (dim, L) real, per mode:

    V0_n = sum_l g_l Abar_n^l,      V1_n = sum_l l g_l Abar_n^(l-1) = sum_l (l+1) g_(l+1) Abar_n^l

(ssmc.runtime.vandermonde turns V0, V1 into the gradients of Abar, Bbar, C).  A program takes a
(BLOCK_D, BLOCK_L) tile of g at a time, like the forward's tile of K, walks the N modes and
adds each mode's sums over the tile into its own partial; it walks TILES tiles along L, so the
partials (programs along L, dim, N, 4), which the host adds up in float64 (deterministic, no
atomics), are 1/TILES of the tiles.  No (dim, N, L) tensor is formed.

**Powers.**  As in the forward, every (d, l) of a tile is independent (no serial chain for a
GPU to wait on), but the power is split at the tile: Abar^(l0 + j) = Abar^l0 * Abar^j, with
Abar^l0 taken on the host in float64 (one complex number per (tile, mode)) and Abar^j in polar
form, exp(j log|Abar|) (cos(j arg) + i sin(j arg)), for j < BLOCK_L only.  So the phase handed
to cos / sin stays below BLOCK_L * pi however long L is (the forward's l * arg loses ~l * 1e-7
rad in fp32), at the price of one complex multiply.  Dtype: the parameters' (float32, or
float64 for float64 gradchecks, which the interpreter and GPUs both run).
Oracle: autograd through `ssmc.semantics.diagonal.s4d_kernel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ssmc.codegen.triton.common import (KernelConfig, KernelLaunch, LaunchPlan, check_tensor,
                                        grid_dim, pow2_field, run_traceable)
from ssmc.codegen.triton.s4d.params import PARAM_DTYPES, polar_powers

BWD_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class VandermondeBwdConfig(KernelConfig):
    block_d: int = pow2_field(16)
    block_l: int = pow2_field(64)
    # tiles a program walks (its sums stay in its partial): fewer partials for the host to add
    tiles: int = pow2_field(8)
    num_warps: int = pow2_field(4)
    num_stages: int = 1


@triton.jit
def _s4d_vandermonde_bwd_kernel(
    log_abs_ptr, arg_ptr, Q_ptr, G_ptr, S_ptr,
    dim, dstate, seqlen, n_tiles,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, TILES: tl.constexpr,
):
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    j = tl.arange(0, BLOCK_L)
    jf = j.to(tl.float32)[None, :]
    row = offs_d[:, None].to(tl.int64) * seqlen
    out = S_ptr + ((pid_l.to(tl.int64) * dim + offs_d) * dstate) * 4
    for t in range(0, TILES):
        tile = pid_l * TILES + t
        offs_l = tile * BLOCK_L + j
        g = tl.load(G_ptr + row + offs_l[None, :],
                    mask=mask_d[:, None] & (offs_l < seqlen)[None, :], other=0.0)
        # the V1 weight (l+1) g_(l+1): exact in fp32 for l < 2^24
        g1 = tl.load(G_ptr + row + offs_l[None, :] + 1,
                     mask=mask_d[:, None] & (offs_l + 1 < seqlen)[None, :], other=0.0)
        g1 = g1 * (offs_l + 1).to(tl.float32)[None, :]
        # past the last tile g is 0: read the last tile's powers (in bounds), they add nothing
        q_tile = tl.minimum(tile, n_tiles - 1).to(tl.int64)
        for n in range(0, dstate):
            mode = offs_d * dstate + n
            log_abs = tl.load(log_abs_ptr + mode, mask=mask_d, other=0.0)[:, None]
            arg = tl.load(arg_ptr + mode, mask=mask_d, other=0.0)[:, None]
            # Abar^l0 of this tile, (re, im)
            q = (q_tile * dim + offs_d) * dstate + n
            q_re = tl.load(Q_ptr + q * 2, mask=mask_d, other=0.0)[:, None]
            q_im = tl.load(Q_ptr + q * 2 + 1, mask=mask_d, other=0.0)[:, None]
            magnitude = tl.exp(jf * log_abs)
            phase = jf * arg
            c = magnitude * tl.cos(phase)
            s = magnitude * tl.sin(phase)
            p_re = q_re * c - q_im * s
            p_im = q_re * s + q_im * c
            # this program's partial, (BLOCK_D,) x 4: read-modify-write by its own program only
            # (the tile's g stays in registers across the modes; the sums go through L1/L2)
            o = out + n * 4
            tl.store(o, tl.load(o, mask=mask_d) + tl.sum(g * p_re, axis=1), mask=mask_d)
            tl.store(o + 1, tl.load(o + 1, mask=mask_d) + tl.sum(g * p_im, axis=1),
                     mask=mask_d)
            tl.store(o + 2, tl.load(o + 2, mask=mask_d) + tl.sum(g1 * p_re, axis=1),
                     mask=mask_d)
            tl.store(o + 3, tl.load(o + 3, mask=mask_d) + tl.sum(g1 * p_im, axis=1),
                     mask=mask_d)


def _work_dtypes(Abar, gK):
    wide = Abar.dtype in (torch.float64, torch.complex128) or gK.dtype == torch.float64
    return (torch.float64, torch.complex128) if wide else (torch.float32, torch.complex64)


def plan_vandermonde_bwd(Abar, gK, config: VandermondeBwdConfig | None = None) -> LaunchPlan:
    """The launch of the transposed Vandermonde; outputs the per-program partials
    (programs along L, dim, N, 4): [sum g Re p, sum g Im p, sum g1 Re p, sum g1 Im p]."""
    real, cplx = _work_dtypes(Abar, gK)
    # float64 (gradchecks): half the tile, or sm_90 spills (255 registers, 136 spilled)
    config = config or VandermondeBwdConfig(block_l=32 if real == torch.float64 else 64)
    check_tensor("Abar", Abar, dims=(("dim", None), ("dstate", None)),
                 dtypes=PARAM_DTYPES + (torch.float64,))
    dim, dstate = Abar.shape
    if dstate < 1:
        raise ValueError("Abar: needs at least one state (dstate >= 1)")
    check_tensor("gK", gK, dims=(("dim", dim), ("seqlen", None)),
                 dtypes=BWD_DTYPES + (torch.float16, torch.bfloat16))
    if gK.device != Abar.device:
        raise ValueError(f"gK: on {gK.device}, Abar on {Abar.device}")
    L = gK.shape[1]
    tiles = grid_dim(L, config.block_l)
    # no more tiles per program than there are (the loop is unrolled over TILES)
    per_program = min(config.tiles, triton.next_power_of_2(tiles))
    programs = grid_dim(tiles, per_program)
    log_abs, arg, Q = polar_powers(Abar, L, config.block_l, cplx)
    S = torch.zeros((programs, dim, dstate, 4), dtype=real, device=Abar.device)
    launch = KernelLaunch(
        _s4d_vandermonde_bwd_kernel, (programs, grid_dim(dim, config.block_d)),
        {"log_abs_ptr": log_abs, "arg_ptr": arg, "Q_ptr": Q, "G_ptr": gK.to(real).contiguous(), "S_ptr": S,
         "dim": dim, "dstate": dstate, "seqlen": L, "n_tiles": tiles},
        {"BLOCK_D": config.block_d, "BLOCK_L": config.block_l, "TILES": per_program},
        config.num_warps, config.num_stages)
    return LaunchPlan([launch], (S,))


def s4d_vandermonde_bwd(Abar, gK, config: VandermondeBwdConfig | None = None,
                        traceable: bool = False):
    """(V0, V1), each (dim, N): sum_l g_l Abar^l and sum_l l g_l Abar^(l-1) for gK (dim, L)
    real; complex for a complex Abar, else real; float32 work (complex64), float64 when Abar
    or gK is 64-bit."""
    real, cplx = _work_dtypes(Abar, gK)
    if gK.shape[-1] == 0:
        z = torch.zeros(Abar.shape, dtype=cplx if Abar.is_complex() else real,
                        device=Abar.device)
        return z, z.clone()
    plan = plan_vandermonde_bwd(Abar, gK, config)
    (S,) = run_traceable(plan) if traceable else plan.run()
    S = S.to(torch.float64).sum(0)  # the programs' partials, added in float64
    if Abar.is_complex():
        V0, V1 = torch.complex(S[..., 0], S[..., 1]), torch.complex(S[..., 2], S[..., 3])
        return V0.to(cplx), V1.to(cplx)
    # copies: two views of S would alias (the ops forbid aliased outputs)
    return S[..., 0].to(real, copy=True), S[..., 2].to(real, copy=True)
