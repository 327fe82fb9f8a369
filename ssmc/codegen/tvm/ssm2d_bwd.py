"""Gradients of the TVM 2-D SSM (ssmc.codegen.tvm.ssm2d) on the CPU: the adjoint kernel of
ssm2d_bwd_tir, which the ssmc::ssm2d_bwd op (ssmc.runtime.ssm2d_op) runs as the backward of
the ssmc::ssm2d op (the forward kernel).

The op's inputs are the forward kernel's own arguments (`ssm2d_tir.arg_names`: x, the
per-cell steps or the discretised per-channel E / G / A G, B1..C2 in their forms, D), so the
kernel differentiates exactly what it computes; `ssm2d.ssm2d` builds those arguments from the
user's with differentiable torch ops (discretisation of per-channel steps, A = -exp(A_log),
softplus of per-channel steps, transposes), and autograd chains the kernel's gradients through
them to the user's tensors.  The kernel writes per-cell gradients directly and per-channel ones
as per-batch-row (or per channel block) partials that `reduce_partials` sums.

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

from ssmc.codegen.ssm2d_recurrence import recompute_rows
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
    """Rows per recompute chunk (ssm2d_recurrence.recompute_rows, the rule the Triton backward
    shares) for a task's rows of (V + 1) cells x 2 states x N x its channel block, fp32."""
    row = (V + 1) * 2 * sig.N * fw.blocks(sig.d, config).cb * 4
    return recompute_rows(T, row, budget)


def partial_shapes(sig: fw.Ssm2dSignature, config: fw.Ssm2dConfig, b: int, T: int,
                   V: int) -> dict:
    """The kernel's gradient outputs ('g' + input name -> shape), in the order they lie in
    run_kernel's buffer."""
    return {g: tirb.grad_shape(sig, config, g, b, T, V) for g in tirb.grad_names(sig)}


def run_kernel(sig: fw.Ssm2dSignature, config: fw.Ssm2dConfig, args: dict, gy: torch.Tensor,
               chunk: int | None = None, cache: KernelCache | None = None) -> torch.Tensor:
    """One run of the adjoint kernel on the forward kernel's arguments `args` (by name, in its
    layouts) and the output gradient gy (b, T, V, d): the kernel's gradient outputs (per cell,
    per-batch-row or per-block partials: partial_shapes) in one flat fp32 buffer."""
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
    shapes = partial_shapes(sig, config, b, T, V)
    sizes = [math.prod(s) for s in shapes.values()]
    flat = torch.zeros(sum(sizes), dtype=f32)
    for (g, shape), part in zip(shapes.items(), flat.split(sizes)):
        kargs[g] = part.view(shape)
    get_kernel(sig, config, cache=cache)(*[kargs[n] for n in tirb.arg_names(sig)])
    return flat


def reduce_partials(sig: fw.Ssm2dSignature, config: fw.Ssm2dConfig, flat: torch.Tensor,
                    arg_shapes: dict) -> dict:
    """run_kernel's buffer -> the gradient of every input the forward reads, by input name,
    reduced to the input's shape (`arg_shapes`: name -> shape); torch ops, so that autograd
    formulas (ssmc.runtime.ssm2d_op) trace them."""
    b, T, V, _ = arg_shapes["x"]
    shapes = partial_shapes(sig, config, b, T, V)
    out = {}
    sizes = [math.prod(s) for s in shapes.values()]
    for (g, shape), part in zip(shapes.items(), flat.split(sizes)):
        name, part = g[1:], part.view(shape)
        if name in ("x", "dt_t", "dt_v") or tuple(part.shape) == tuple(arg_shapes[name]):
            out[name] = part  # per cell (B/C (b, T, V, d, N) too)
        elif name in fw.BC_NAMES and sig.bc[fw.BC_NAMES.index(name)] == fw.BC_SHARED:
            # over the channel blocks (one block: a view)
            out[name] = part[:, :, :, 0] if part.shape[3] == 1 else part.sum(3)
        else:
            out[name] = part.sum(0)  # over the batch
    return out


__all__ = ["run_kernel", "reduce_partials", "partial_shapes", "get_kernel",
           "chunk_rows", "TASK_CACHE"]
