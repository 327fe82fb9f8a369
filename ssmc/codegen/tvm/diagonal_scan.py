"""torch-facing diagonal recurrence on the TVM CPU kernel (builder: diagonal_scan_tir.py)."""

from __future__ import annotations

import os

import torch

from ssmc.codegen.tvm import diagonal_scan_tir as tirb
from ssmc.codegen.tvm.build import CACHE_ENV, DEFAULT_CACHE
from ssmc.codegen.tvm.target import host_target, host_vector_lanes_f32

FAMILY = "diagonal_scan"
# the modules these kernels are built from (the build cache's key hashes them)
SOURCES = ("diagonal_scan_tir.py", "grc_tir.py", "tirmath.py", "build.py",
           "target.py")
_kernels: dict = {}


def get_kernel(sig: tirb.DiagonalSignature, mode_unroll: int = tirb.UNROLL_MODES):
    target = host_target()
    key = (sig, mode_unroll, id(target), os.environ.get(CACHE_ENV))
    k = _kernels.get(key)
    if k is None:
        k = DEFAULT_CACHE.get(FAMILY, tirb.FUNC_NAME, sig.__dict__, "float32", target,
                              {"mode_unroll": mode_unroll},
                              lambda: tirb.build_diagonal_scan(sig, mode_unroll),
                              sources=SOURCES)
        _kernels[key] = k
    return k


def _f32t(t):  # (d, n) -> (n, d) contiguous fp32
    return t.t().to(torch.float32).contiguous()


def diagonal_scan(u, Abar, Bbar, C, D=None, conj_pair: bool = True,
                  config: tirb.DiagonalScanConfig | None = None):
    """y_t = readout(C x_t) + D u_t with x_t = Abar x_{t-1} + Bbar u_t, channels-last.

    u: (b, L, d) real; Abar, Bbar, C: (d, n) complex (or all real: a real state); D: (d,).
    readout: 2 Re with conj_pair, Re without, the identity for a real state.
    config: a DiagonalScanConfig (None: the host default).
    Returns y (b, L, d) in u's dtype (computed in fp32)."""
    if config is not None and not isinstance(config, tirb.DiagonalScanConfig):
        raise ValueError(f"config must be a DiagonalScanConfig, got {type(config).__name__}")
    config = config or tirb.DiagonalScanConfig()
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"u must be a (b, L, d) tensor, got "
                         f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}")
    if u.device.type != "cpu" or u.is_complex():
        raise ValueError(f"u must be a real CPU tensor, got {u.dtype} on {u.device}")
    b, L, d = u.shape
    if not isinstance(Abar, torch.Tensor) or Abar.dim() != 2 or Abar.shape[0] != d:
        raise ValueError(f"Abar must be (d, n) with d={d}, got "
                         f"{tuple(Abar.shape) if isinstance(Abar, torch.Tensor) else Abar!r}")
    n = Abar.shape[1]
    for name, t in (("Bbar", Bbar), ("C", C)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (d, n):
            raise ValueError(f"{name} must have shape ({d}, {n}), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else t!r}")
    if D is not None and (not isinstance(D, torch.Tensor) or tuple(D.shape) != (d,)):
        raise ValueError(f"D must have shape ({d},)")
    cplx = any(t.is_complex() for t in (Abar, Bbar, C))
    if cplx:
        Abar, Bbar, C = (t.to(torch.complex64) for t in (Abar, Bbar, C))
    cb = C * Bbar
    sig = tirb.DiagonalSignature(d=int(d), n=int(n), complex_state=cplx,
                                 scale=2.0 if (cplx and conj_pair) else 1.0,
                                 has_D=D is not None,
                                 lanes=config.vector_width or host_vector_lanes_f32())
    out = torch.empty(b, L, d, dtype=torch.float32)
    if b and L:
        args = {"u": u.to(torch.float32).contiguous(), "out": out}
        if cplx:
            args.update(a_re=_f32t(Abar.real), a_im=_f32t(Abar.imag), cb_re=_f32t(cb.real),
                        cb_im=_f32t(cb.imag))
        else:
            args.update(a_re=_f32t(Abar), cb_re=_f32t(cb))
        if D is not None:
            args["D"] = D.to(torch.float32).contiguous()
        get_kernel(sig, config.mode_unroll)(*[args[nm] for nm in tirb.arg_names(sig)])
    return out if u.dtype == torch.float32 else out.to(u.dtype)
