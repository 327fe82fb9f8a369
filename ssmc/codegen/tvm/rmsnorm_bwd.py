"""torch-facing backward of the rmsnorm kernel (decode.rmsnorm) on the CPU (TVM; builder:
rmsnorm_bwd_tir.py): dx, dweight and, for the gated norm, dz from the output's gradient and the
forward's inputs (the statistics are recomputed, nothing is saved).  Thin like decode.py: it
checks what the kernel assumes (fp32, CPU, last axis contiguous: strided views are read in
place, anything else is copied), looks the kernel up (memory, then the disk cache of build.py,
then a build) and calls it.  The kernel writes dweight as per-chunk partials (chunks of rows
that run in parallel); they are summed here, in a fixed order (deterministic).
"""

from __future__ import annotations

import os

import torch

from ssmc.codegen.tvm import decode
from ssmc.codegen.tvm import rmsnorm_bwd_tir as bwdb
from ssmc.codegen.tvm import rmsnorm_tir as normb
from ssmc.codegen.tvm.build import CACHE_ENV, DEFAULT_CACHE
from ssmc.codegen.tvm.target import host_target

FAMILY = "rmsnorm_bwd"
# the modules the kernel is built from (the build cache's key hashes them)
SOURCES = ("rmsnorm_bwd_tir.py", "rmsnorm_tir.py", "tirmath.py")
# dweight partials: one per chunk of at least ROWS_PER_CHUNK rows, at most MAX_CHUNKS of them
# (a function of the row count only, so the sum is the same on any number of threads)
ROWS_PER_CHUNK = 16
MAX_CHUNKS = 64

_kernels: dict = {}
_norms: dict = {}  # (D, eps, groups, gated, parallel) -> kernel


def norm_bwd_kernel(sig: normb.NormSignature):
    """The compiled backward for `sig` (args: rmsnorm_bwd_tir.arg_names(sig))."""
    key = (sig, DEFAULT_CACHE.root, os.environ.get(CACHE_ENV))
    kernel = _kernels.get(key)
    if kernel is None:
        kernel = DEFAULT_CACHE.get(FAMILY, bwdb.FUNC_NAME, dict(sig.__dict__), "float32",
                                   host_target(), {}, lambda: bwdb.build(sig), sources=SOURCES)
        _kernels[key] = kernel
    return kernel


def num_chunks(rows: int) -> int:
    return max(1, min(MAX_CHUNKS, -(-rows // ROWS_PER_CHUNK)))


def rmsnorm_bwd(gy, x, weight, eps: float, z=None, groups: int = 1):
    """The gradients of y = decode.rmsnorm(x, weight, eps, z, groups) given gy (x's shape):
    (dx, dweight, dz or None), fp32 (dx and dz contiguous in x's shape, dweight (D,)).  x, z
    and gy may be strided views whose last axis is contiguous."""
    D = x.shape[-1]
    if tuple(weight.shape) != (D,):
        raise ValueError(f"weight: expected shape ({D},), got {tuple(weight.shape)}")
    for name, t in (("gy", gy), ("z", z)):
        if t is not None and tuple(t.shape) != tuple(x.shape):
            raise ValueError(f"{name}: expected x's shape {tuple(x.shape)}, got {tuple(t.shape)}")
    rows = x.numel() // D if D else 0
    dx = torch.empty(x.shape, dtype=torch.float32)
    dz = torch.empty(x.shape, dtype=torch.float32) if z is not None else None
    if rows == 0:
        if dz is not None:
            dz.zero_()
        return dx, torch.zeros(D, dtype=torch.float32), dz
    chunks = num_chunks(rows)
    par = chunks > 1
    key = (D, float(eps), groups, z is not None, par)
    kernel = _norms.get(key)
    if kernel is None:
        vw = decode._config(False).vector_width  # (~10 us: not on every call)
        kernel = norm_bwd_kernel(normb.NormSignature(D=D, eps=float(eps), groups=groups,
                                                     gated=z is not None, parallel=par,
                                                     vector_width=vw))
        _norms[key] = kernel
    dw_part = torch.empty(chunks, D, dtype=torch.float32)
    args = [_rows("x", x, rows, D)] + ([_rows("z", z, rows, D)] if z is not None else [])
    args += [_rows("gy", gy, rows, D), decode._opt(weight), dx.view(rows, D)]
    if dz is not None:
        args.append(dz.view(rows, D))
    kernel(*args, dw_part)
    return dx, dw_part.sum(0), dz


def _rows(name, t, rows, D):
    """t as (rows, D) fp32 rows with a unit last stride, a view where it can be (a gradient
    autograd expanded from a scalar has stride 0 everywhere: copied)."""
    t = decode._f32_view(name, t, t.dim()).reshape(rows, D)
    return t if t.stride(-1) == 1 else t.contiguous()
