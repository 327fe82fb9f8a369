"""Gradients of the TVM 2-D SSM (ssmc.codegen.tvm.ssm2d) on the CPU: an autograd Function
whose forward is the forward kernel and whose backward is the adjoint kernel of ssm2d_bwd_tir.

The Function's inputs are the forward kernel's own arguments (`ssm2d_tir.arg_names`: x, the
per-cell steps or the discretised per-channel E / G / A G, B1..C2 in their forms, D), so the
kernel differentiates exactly what it computes; `ssm2d.ssm2d` builds those arguments from the
user's with differentiable torch ops (discretisation of per-channel steps, A = -exp(A_log),
softplus of per-channel steps, transposes), and autograd chains the kernel's gradients through
them to the user's tensors.  The kernel writes per-cell gradients directly and per-channel ones
as per-batch-row (or per channel block) partials that `backward` sums here.

Memory: the backward recomputes the forward states (ssm2d_bwd_tir's docstring says why) in
chunks of `chunk_rows` rows: the whole grid in one chunk when a task's states ((T + 1) rows of
(V + 1) x 2N x block floats) fit in TASK_CACHE bytes (about an L2), else chunks of
max(sqrt(T), what fits TASK_CACHE) rows, with the checkpoints of the rows between them (one
more forward sweep).  Measured (one thread, b2 T256 V16 d16 N16 selective bidirectional, on a
shared 2-core VM): 16-32-row chunks 33-41 ms against 56-68 ms for the whole grid in H (9 MB a
task: the adjoint's reads leave the caches); the extra sweep costs less than the misses.
"""

from __future__ import annotations

import math

import torch

from ssmc.codegen.tvm import ssm2d_bwd_tir as tirb
from ssmc.codegen.tvm import ssm2d_tir as fw
from ssmc.codegen.tvm.build import DEFAULT_CACHE, KernelCache

FAMILY = "ssm2d_bwd"
SOURCES = ("ssm2d_bwd_tir.py", "ssm2d_tir.py", "selective_scan_bwd_tir.py", "tirmath.py", "build.py",
           "target.py")
# bytes of recomputed states (H) one task keeps before the grid is cut into chunks
TASK_CACHE = 1 << 20


def get_kernel(sig: fw.Ssm2dSignature, config: fw.Ssm2dConfig, target=None,
               cache: KernelCache | None = None):
    """The compiled backward kernel (memory, the disk cache, or a new build)."""
    cache = cache if cache is not None else DEFAULT_CACHE
    return cache.memoized(FAMILY, tirb.FUNC_NAME, sig, config,
                          lambda: tirb.build_ssm2d_bwd(sig, config), target, SOURCES)


def chunk_rows(sig: fw.Ssm2dSignature, config: fw.Ssm2dConfig, T: int, V: int,
               budget: int = TASK_CACHE) -> int:
    """Rows per recompute chunk: T when a task's states fit `budget` bytes, else
    max(ceil(sqrt(T)), the rows that fit)."""
    row = (V + 1) * 2 * sig.N * fw.blocks(sig.d, config).cb * 4
    if (T + 1) * row <= budget:
        return max(T, 1)
    return min(T, max(math.isqrt(T - 1) + 1, budget // row - 1))


def run_backward(sig: fw.Ssm2dSignature, config: fw.Ssm2dConfig, args: dict, gy: torch.Tensor,
                 chunk: int | None = None, cache: KernelCache | None = None) -> dict:
    """One run of the adjoint kernel on the forward kernel's arguments `args` (by name, in its
    layouts) and the output gradient gy (b, T, V, d).  Returns the gradient of every input
    the forward reads, by input name, reduced to the input's shape."""
    x = args["x"]
    b, T, V, _ = x.shape
    K = chunk_rows(sig, config, T, V) if not chunk else max(1, min(int(chunk), T))
    nc = (T + K - 1) // K
    f32 = torch.float32
    kargs = dict(args)
    kargs["gy"] = gy.to(f32).contiguous()
    for name, shape in tirb.workspace_shapes(sig, config, b, V, K, nc).items():
        kargs[name] = torch.empty(shape, dtype=f32)
    # the kernel accumulates into its outputs: one zeroed allocation for all of them (each
    # torch op is a thread-pool round trip, which a loaded machine makes expensive)
    shapes = {g: tirb.grad_shape(sig, config, g, b, T, V) for g in tirb.grad_names(sig)}
    sizes = [math.prod(s) for s in shapes.values()]
    for (g, shape), part in zip(shapes.items(), torch.zeros(sum(sizes), dtype=f32).split(sizes)):
        kargs[g] = part.view(shape)
    get_kernel(sig, config, cache=cache)(*[kargs[n] for n in tirb.arg_names(sig)])
    out = {}
    for g in shapes:
        name, part = g[1:], kargs[g]
        if name in ("x", "dt_t", "dt_v") or part.shape == args[name].shape:
            out[name] = part  # per cell (B/C (b, T, V, d, N) too)
        elif name in fw.BC_NAMES and sig.bc[fw.BC_NAMES.index(name)] == fw.BC_SHARED:
            # over the channel blocks (one block: a view)
            out[name] = part[:, :, :, 0] if part.shape[3] == 1 else part.sum(3)
        else:
            out[name] = part.sum(0)  # over the batch
    return out


class Ssm2dFunction(torch.autograd.Function):
    """y = the forward kernel(*inputs) with the adjoint kernel as its backward.  Inputs: the
    forward kernel's arguments in `tirb.input_names(sig)` order (fp32, the kernel's layouts)."""

    @staticmethod
    def forward(ctx, sig, config, cache, chunk, *inputs):
        from ssmc.codegen.tvm.ssm2d import run_forward

        names = tirb.input_names(sig)
        args = {n: t.detach() for n, t in zip(names, inputs)}  # DLPack exports no grad tensors
        y = run_forward(sig, config, args, cache=cache)
        ctx.save_for_backward(*inputs)
        ctx.sig, ctx.config, ctx.cache, ctx.chunk = sig, config, cache, chunk
        return y

    @staticmethod
    def backward(ctx, gy):
        names = tirb.input_names(ctx.sig)
        args = {n: t.detach() for n, t in zip(names, ctx.saved_tensors)}
        grads = run_backward(ctx.sig, ctx.config, args, gy, chunk=ctx.chunk, cache=ctx.cache)
        need = ctx.needs_input_grad[4:]
        return (None, None, None, None,
                *[grads.get(n) if w else None for n, w in zip(names, need)])


__all__ = ["Ssm2dFunction", "run_backward", "get_kernel", "chunk_rows", "TASK_CACHE"]
