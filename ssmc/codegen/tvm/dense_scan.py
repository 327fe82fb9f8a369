"""torch-facing dense / block-diagonal scan on the TVM CPU kernel (builder: dense_scan_tir.py).

`dense_scan(u, x=..., A_k=..., A0=...)` runs h_t = (A0 + sum_k x_t^k A_k) h_{t-1} + u_t with the
transition built inside the kernel; `dense_scan(u, A=...)` takes the transitions per step
(b, L, nb, bs, bs).  Everything fp32 on the CPU; the result is h (b, L, N).
"""

from __future__ import annotations

import os

import torch

from ssmc.codegen.tvm import dense_scan_tir as tirb
from ssmc.codegen.tvm.build import CACHE_ENV, DEFAULT_CACHE
from ssmc.codegen.tvm.target import host_target, host_vector_lanes_f32

FAMILY = "dense_scan"
# the modules these kernels are built from (the build cache's key hashes them)
SOURCES = ("dense_scan_tir.py", "grc_tir.py", "tirmath.py", "build.py", "target.py")
_kernels: dict = {}


def get_kernel(sig: tirb.DenseSignature):
    target = host_target()
    key = (sig, id(target), os.environ.get(CACHE_ENV))
    k = _kernels.get(key)
    if k is None:
        k = DEFAULT_CACHE.get(FAMILY, tirb.FUNC_NAME, sig.__dict__, "float32", target, {},
                              lambda: tirb.build_dense_scan(sig), sources=SOURCES)
        _kernels[key] = k
    return k


def _f32(t):
    return t.to(torch.float32).contiguous()


def _need(name, t, shape):
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a tensor of shape {shape}, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor (the TVM backend runs on the host), "
                         f"got {t.device}")
    if t.is_complex():
        raise ValueError(f"{name} must be real, got {t.dtype}")


def dense_scan(u, *, x=None, A_k=None, A0=None, A=None, initial_state=None):
    """Sequential block-diagonal scan.

    u: (b, L, N) inputs; either x (b, L, K), A_k (K, nb, bs, bs) and A0 (nb, bs, bs) (the
    transition A0 + sum_k x^k A_k, built per step in the kernel) or A (b, L, nb, bs, bs);
    initial_state: (b, N).  Returns h (b, L, N) fp32; differentiable (every input) when one
    of them requires grad.
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"u must be a (b, L, N) tensor, got "
                         f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}")
    b, L, N = u.shape
    given = A is not None
    if given:
        if x is not None or A_k is not None or A0 is not None:
            raise ValueError("A: pass either A or (x, A_k, A0), not both")
        if not isinstance(A, torch.Tensor) or A.dim() != 5:
            raise ValueError("A must be a (b, L, nb, bs, bs) tensor")
        nb, bs = A.shape[2], A.shape[3]
        _need("A", A, (b, L, nb, bs, bs))
    else:
        if A_k is None or x is None or A0 is None:
            raise ValueError("x, A_k and A0 are all needed when A is not given")
        if not isinstance(A_k, torch.Tensor) or A_k.dim() != 4:
            raise ValueError("A_k must be a (K, nb, bs, bs) tensor")
        K, nb, bs = A_k.shape[:3]
        _need("A_k", A_k, (K, nb, bs, bs))
        _need("x", x, (b, L, K))
        _need("A0", A0, (nb, bs, bs))
    if nb * bs != N:
        raise ValueError(f"u: last dim {N} must be nb * bs = {nb} * {bs}")
    _need("u", u, (b, L, N))
    if initial_state is not None:
        _need("initial_state", initial_state, (b, N))
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                       for t in (u, x, A_k, A0, A, initial_state)):
        # differentiable: this kernel forward, the adjoint kernel (dense_scan_bwd) backward
        from ssmc.codegen.tvm.dense_scan_bwd import DenseScanFunction

        return DenseScanFunction.apply(u, x, A_k, A0, A, initial_state)
    return forward(u, x, A_k, A0, A, initial_state)


def signature(u, x, A_k, A, initial_state) -> tirb.DenseSignature:
    """The kernel signature of checked arguments (the backward kernel's too)."""
    given = A is not None
    K, nb, bs = (1, A.shape[2], A.shape[3]) if given else A_k.shape[:3]
    return tirb.DenseSignature(K=int(K), nb=int(nb), bs=int(bs), given=given,
                               has_h0=initial_state is not None, lanes=host_vector_lanes_f32())


def forward(u, x, A_k, A0, A, initial_state):
    """The forward kernel on checked arguments: h (b, L, N) fp32."""
    b, L, N = u.shape
    out = torch.empty(b, L, N, dtype=torch.float32)
    if b == 0 or L == 0:
        return out
    sig = signature(u, x, A_k, A, initial_state)
    args = {"u": _f32(u), "out": out}
    if sig.given:
        args["At"] = _f32(A.transpose(-1, -2)).reshape(b, L, sig.nb, sig.bs * sig.bs)
    else:
        args["x"] = _f32(x)
        args["AkT"] = _f32(A_k.transpose(-1, -2)).reshape(sig.K, sig.nb, sig.bs * sig.bs)
        args["A0T"] = _f32(A0.transpose(-1, -2)).reshape(sig.nb, sig.bs * sig.bs)
    if initial_state is not None:
        args["h0"] = _f32(initial_state)
    get_kernel(sig)(*[args[nm] for nm in tirb.arg_names(sig)])
    return out
