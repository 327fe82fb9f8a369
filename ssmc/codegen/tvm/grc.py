"""torch-facing GRC elementwise kernels on the TVM CPU backend (builders in grc_tir.py).

Both take fp32, row-contiguous CPU tensors (the callers in ssmc.codegen.composite.nested
allocate them so) and run through DLPack without copies.
"""

from __future__ import annotations

import os

import torch

from ssmc.codegen.grc_args import check_epilogue, check_rows, width
from ssmc.codegen.tvm import grc_tir as tirb
from ssmc.codegen.tvm.build import CACHE_ENV, DEFAULT_CACHE
from ssmc.codegen.tvm.target import host_target, host_vector_lanes_f32

# the modules these kernels are built from (the build cache's key hashes them)
SOURCES = ("grc_tir.py", "tirmath.py", "build.py", "target.py")
_kernels: dict = {}
PARALLEL = os.environ.get("SSMC_GRC_PARALLEL", "0") == "1"  # see grc_tir: serial by default


def _get(func: str, signature: dict, build):
    target = host_target()
    key = (func, tuple(sorted(signature.items())), id(target), os.environ.get(CACHE_ENV))
    k = _kernels.get(key)
    if k is None:
        k = DEFAULT_CACHE.get(func, func, signature, "float32", target,
                              {"lanes": signature["lanes"]}, build, sources=SOURCES)
        _kernels[key] = k
    return k


def gelu_(h: torch.Tensor) -> torch.Tensor:
    """h <- GELU(h) in place (the exact erf form of F.gelu); h (P, width) fp32.  Returns h."""
    cols = width(h)
    check_rows("h", h, cols, cpu=True)
    if h.shape[0] == 0:
        return h
    lanes = host_vector_lanes_f32()
    sig = {"width": int(cols), "lanes": lanes, "parallel": PARALLEL}
    _get(tirb.GELU, sig, lambda: tirb.build_gelu(cols, lanes, PARALLEL))(h)
    return h


def grc_epilogue(g: torch.Tensor, lr: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                 eps: float, out: torch.Tensor) -> torch.Tensor:
    """out = LayerNorm(sigmoid(f1) l + sigmoid(f2) r + sigmoid(i) p; w, b, eps) with
    [f1; f2; i; p] = g (P, 4d) and [l; r] = lr (P, 2d); out (P, d).  Returns out."""
    d = check_epilogue(g, lr, out, cpu=True)
    for name, t in (("w", w), ("b", b)):
        if t.shape != (d,) or t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous fp32 (d,)=({d},) tensor; got "
                             f"{tuple(t.shape)} {t.dtype}")
    if out.shape[0] == 0:
        return out
    lanes = host_vector_lanes_f32()
    sig = {"d": int(d), "eps": float(eps), "lanes": lanes, "parallel": PARALLEL}
    _get(tirb.EPILOGUE, sig, lambda: tirb.build_grc_epilogue(d, float(eps), lanes, PARALLEL))(
        g, lr, w, b, out)
    return out
