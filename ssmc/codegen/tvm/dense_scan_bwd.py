"""torch-facing backward of the dense / block-diagonal scan (ssmc.codegen.tvm.dense_scan) on a
TVM CPU kernel (builder: dense_scan_bwd_tir.py).

`DenseScanFunction` is what `dense_scan` returns through when an input requires grad: its
forward is the forward kernel, its backward the adjoint kernel, which reads the states from
the forward's output (the trajectory h itself: nothing else is saved) and returns the gradients
of every input: u, x, A_k, A0 (or the per-step A) and the initial state.  The kernel writes
dA_k / dA0 as per-batch-row partials; torch only sums those over the batch (a fixed-order sum:
deterministic) and puts the blocks back as (.., bs, bs).  Computes in fp32; gradients come back
in the inputs' dtypes.
"""

from __future__ import annotations

import os

import torch

from ssmc.codegen.tvm import dense_scan as fwd
from ssmc.codegen.tvm import dense_scan_bwd_tir as tirb
from ssmc.codegen.tvm.build import CACHE_ENV, DEFAULT_CACHE
from ssmc.codegen.tvm.target import host_target

FAMILY = "dense_scan_bwd"
# the modules these kernels are built from (the build cache's key hashes them)
SOURCES = ("dense_scan_bwd_tir.py", "dense_scan_tir.py", "grc_tir.py", "tirmath.py",
           "build.py", "target.py")
_kernels: dict = {}
_F32 = torch.float32


def get_kernel(sig):
    target = host_target()
    key = (sig, id(target), os.environ.get(CACHE_ENV))
    k = _kernels.get(key)
    if k is None:
        k = DEFAULT_CACHE.get(FAMILY, tirb.FUNC_NAME, sig.__dict__, "float32", target, {},
                              lambda: tirb.build_dense_scan_backward(sig), sources=SOURCES)
        _kernels[key] = k
    return k


def run_backward(gh, h, x, A_k, A0, A, initial_state) -> dict:
    """The adjoint kernel on the forward's (checked) arguments, its output h (b, L, N) and the
    output's gradient gh: a dict of fp32 gradients by argument name (u, x, A_k, A0 or A,
    initial_state)."""
    b, L, N = h.shape
    sig = fwd.signature(h, x, A_k, A, initial_state)
    nb, bs, K = sig.nb, sig.bs, sig.K
    bb = bs * bs
    f32 = fwd._f32
    args = {"gh": f32(gh), "h": f32(h), "du": torch.empty(b, L, N, dtype=_F32)}
    if sig.given:
        args["A"] = f32(A).reshape(b, L, nb, bb)
        args["dA"] = torch.empty(b, L, nb, bb, dtype=_F32)
    else:
        Ak = f32(A_k).reshape(K, nb, bb)
        args.update(x=f32(x), Ak=Ak, AkE=Ak.permute(1, 2, 0).contiguous(),
                    A0=f32(A0).reshape(nb, bb), dx=torch.empty(b, L, K, dtype=_F32),
                    dAk=torch.empty(b, nb, bb, K, dtype=_F32),
                    dA0=torch.empty(b, nb, bb, dtype=_F32))
    if sig.has_h0:
        args["h0"] = f32(initial_state)
        args["dh0"] = torch.empty(b, N, dtype=_F32)
    get_kernel(sig)(*[args[nm] for nm in tirb.arg_names(sig)])
    out = {"u": args["du"], "initial_state": args.get("dh0")}
    if sig.given:
        out["A"] = args["dA"].reshape(b, L, nb, bs, bs)
    else:
        out["x"] = args["dx"]
        out["A_k"] = args["dAk"].sum(0).permute(2, 0, 1).reshape(K, nb, bs, bs)
        out["A0"] = args["dA0"].sum(0).reshape(nb, bs, bs)
    return out


class DenseScanFunction(torch.autograd.Function):
    """h = dense_scan(u; x, A_k, A0 | A; initial_state) with the adjoint kernel as backward."""

    @staticmethod
    def forward(ctx, u, x, A_k, A0, A, initial_state):
        h = fwd.forward(u, x, A_k, A0, A, initial_state)
        # not u (only its shape and dtype): h, the output, is all the states
        ctx.save_for_backward(x, A_k, A0, A, initial_state, h)
        ctx.u_meta = (u.shape, u.dtype)
        return h

    @staticmethod
    def backward(ctx, gh):
        x, A_k, A0, A, h0, h = ctx.saved_tensors
        u_shape, u_dtype = ctx.u_meta
        names = ("u", "x", "A_k", "A0", "A", "initial_state")
        dtypes = [u_dtype] + [None if t is None else t.dtype for t in (x, A_k, A0, A, h0)]
        if h.numel() == 0:
            shapes = [u_shape] + [None if t is None else t.shape for t in (x, A_k, A0, A, h0)]
            grads = {nm: None if s is None else torch.zeros(s, dtype=_F32)
                     for nm, s in zip(names, shapes)}
        else:
            grads = run_backward(gh, h, x, A_k, A0, A, h0)
        return tuple(grads.get(nm).to(dt) if need and grads.get(nm) is not None else None
                     for nm, dt, need in zip(names, dtypes, ctx.needs_input_grad))


__all__ = ["DenseScanFunction", "run_backward", "get_kernel"]
