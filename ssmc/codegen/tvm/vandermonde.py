"""torch-facing S4D Vandermonde kernel and its transpose on the TVM CPU kernels (builders:
vandermonde_tir.py).

`vandermonde_fwd(Abar, Bbar, C, L, conj_pair)` -> K (d, L) = scale Re sum_n C_n Bbar_n Abar_n^l
(semantics.diagonal.s4d_kernel's meaning); `vandermonde_bwd(Abar, gK)` -> (V0, V1) (d, n), the
transposed Vandermonde sums V0_n = sum_l g_l Abar_n^l, V1_n = sum_l l g_l Abar_n^(l-1), from which
ssmc.runtime.vandermonde forms the parameter gradients.  Complex parameters (any of the three)
give a complex state, else real (S4D-Real).  Computed in float32, or float64 when an argument
is 64-bit; the chunk-start powers in float64 (see vandermonde_tir's docstring).
"""

from __future__ import annotations

import os

import torch

from ssmc.codegen.tvm import vandermonde_tir as tirb
from ssmc.codegen.tvm.build import DEFAULT_CACHE, KernelCache
from ssmc.codegen.tvm.target import host_vector_lanes_f32
from ssmc.semantics.diagonal import as_work, work_dtype

FAMILY = "s4d_vandermonde"
SOURCES = ("vandermonde_tir.py", "grc_tir.py", "tirmath.py", "build.py", "target.py")
CHUNK = 64  # T: the products' rounding accumulates over T steps; 64 keeps it ~1e-6 in fp32
# Serial kernels for small problems: they run between torch's FFTs, and on the shared 2-core VM
# a parallel launch waits for the busy core.  Measured (32 modes, medians of 7 interleaved, load
# 1.3 / 4.6): d 64 L 1024 fwd+bwd 1.0 ms either way (load 1.3) but 2.4 vs 8.2 ms parallel at
# load 4.6; d 256 L 4096 16 ms serial vs 9 ms parallel, d 1024 L 4096 59 vs 33 ms (load 1.3).
# So: parallel from PARALLEL_WORK mode-steps (d n L) on; SSMC_VANDERMONDE_PARALLEL=0/1 forces.
PARALLEL_WORK = 1 << 22
PARALLEL_ENV = "SSMC_VANDERMONDE_PARALLEL"


class _NoConfig:  # KernelCache.memoized wants a config object; these kernels have no knobs
    def as_dict(self):
        return {}

    def __hash__(self):
        return 0

    def __eq__(self, other):
        return isinstance(other, _NoConfig)


_NO_CONFIG = _NoConfig()


def get_kernel(sig: tirb.VandermondeSignature, backward: bool, cache: KernelCache | None = None):
    cache = cache if cache is not None else DEFAULT_CACHE
    if backward:
        return cache.memoized(FAMILY + "_bwd", tirb.BWD_NAME, sig, _NO_CONFIG,
                              lambda: tirb.build_vandermonde_bwd(sig), sources=SOURCES)
    return cache.memoized(FAMILY, tirb.FWD_NAME, sig, _NO_CONFIG,
                          lambda: tirb.build_vandermonde_fwd(sig), sources=SOURCES)


def _check(Abar, others):
    if not isinstance(Abar, torch.Tensor) or Abar.dim() != 2:
        raise ValueError(f"Abar must be a (d, n) tensor, got "
                         f"{tuple(Abar.shape) if isinstance(Abar, torch.Tensor) else Abar!r}")
    if Abar.device.type != "cpu":
        raise ValueError(f"the TVM Vandermonde kernels run on the CPU, got {Abar.device}")
    for name, t in others:
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(Abar.shape):
            raise ValueError(f"{name} must have Abar's shape {tuple(Abar.shape)}, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else t!r}")


def _parts(t):
    """(d, n) real or complex -> float64 (re, im) transposed to (n, d) (im None if real)."""
    t = t.t()
    if t.is_complex():
        return t.real.to(torch.float64).contiguous(), t.imag.to(torch.float64).contiguous()
    return t.to(torch.float64).contiguous(), None


def _chunk_power(ar, ai, chunk: int):
    """Abar^chunk, float64 (n, d) (re, im), by the polar form (no rounding accumulates over
    the chunk) from Abar's float64 parts."""
    if ai is None:
        return torch.pow(ar, chunk), None
    # Abar == 0: log|0| = -inf; the floor keeps 0^T = exp(-huge) = 0, not nan
    logr = (0.5 * torch.log(ar * ar + ai * ai)).clamp(min=-1e30)
    mag, phase = torch.exp(chunk * logr), chunk * torch.atan2(ai, ar)
    return mag * torch.cos(phase), mag * torch.sin(phase)


def _parallel(work: int) -> bool:
    forced = os.environ.get(PARALLEL_ENV, "")
    return forced not in ("", "0") if forced else work >= PARALLEL_WORK


def _sig(Abar, cplx, real, chunk, L):
    d, n = Abar.shape
    return tirb.VandermondeSignature(d=int(d), n=int(n), complex_state=cplx, chunk=int(chunk),
                                     dtype="float64" if real == torch.float64 else "float32",
                                     lanes=host_vector_lanes_f32(),
                                     parallel=_parallel(int(d) * int(n) * int(L)))


def vandermonde_fwd(Abar, Bbar, C, L: int, conj_pair: bool = True, chunk: int = CHUNK):
    """K (d, L), real: float32, float64 for 64-bit parameters."""
    _check(Abar, (("Bbar", Bbar), ("C", C)))
    if not isinstance(L, int) or L < 0:
        raise ValueError(f"L must be an int >= 0, got {L!r}")
    Abar, Bbar, C = as_work(Abar, Bbar, C)
    real = work_dtype(Abar, Bbar, C)
    cplx = any(t.is_complex() for t in (Abar, Bbar, C))
    if cplx:  # one complex parameter makes the state complex
        ctype = torch.complex128 if real == torch.float64 else torch.complex64
        Abar = Abar.to(ctype)
    d, _ = Abar.shape
    if L == 0:
        return torch.zeros(d, 0, dtype=real)
    ar, ai = _parts(Abar)
    tr, ti = _chunk_power(ar, ai, chunk)
    wr, wi = _parts(C.to(Abar.dtype) * Bbar.to(Abar.dtype))
    if cplx:
        scale = 2.0 if conj_pair else 1.0
        args = [scale * wr, scale * wi, tr, ti, ar.to(real), ai.to(real)]
    else:
        args = [wr, tr, ar.to(real)]
    out = torch.empty(d, L, dtype=real)
    get_kernel(_sig(Abar, cplx, real, chunk, L), backward=False)(*args, out)
    return out


def vandermonde_bwd(Abar, gK, chunk: int = CHUNK):
    """(V0, V1), each (d, n): sum_l g_l Abar^l and sum_l l g_l Abar^(l-1) for gK (d, L) real;
    complex for a complex Abar; in Abar's work precision (float32 / float64)."""
    _check(Abar, ())
    d, n = Abar.shape
    if not isinstance(gK, torch.Tensor) or gK.dim() != 2 or gK.shape[0] != d or gK.is_complex():
        raise ValueError(f"gK must be a real (d={d}, L) tensor")
    (Abar,) = as_work(Abar)
    real = torch.float64 if Abar.dtype in (torch.float64, torch.complex128) else torch.float32
    cplx = Abar.is_complex()
    L = gK.shape[1]
    if L == 0:
        z = torch.zeros(d, n, dtype=Abar.dtype)
        return z, z.clone()
    g = gK.to(real).contiguous()
    ar, ai = _parts(Abar)
    tr, ti = _chunk_power(ar, ai, chunk)
    ins = [tr, ti, ar.to(real), ai.to(real)] if cplx else [tr, ar.to(real)]
    outs = [torch.empty(n, d, dtype=torch.float64) for _ in range(4 if cplx else 2)]
    get_kernel(_sig(Abar, cplx, real, chunk, L), backward=True)(*ins, g, *outs)
    sums = [o.t() for o in outs]  # float64 totals (n, d) -> (d, n)
    if cplx:
        V0, V1 = torch.complex(sums[0], sums[1]), torch.complex(sums[2], sums[3])
    else:
        V0, V1 = sums
    return V0.to(Abar.dtype), V1.to(Abar.dtype)

