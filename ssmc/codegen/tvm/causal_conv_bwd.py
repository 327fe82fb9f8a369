"""torch-facing backward of the depthwise causal conv1d (+ SiLU) on a TVM CPU kernel
(causal_conv_bwd_tir.py); the forward is decode.causal_conv1d.

`causal_conv1d_bwd` checks and views its operands as decode.py does for the forward (fp32, CPU,
last axis contiguous; strided views such as the x half of in_proj's output are read in place),
looks the kernel up (memory, the disk cache of build.py, a build) and calls it; torch only sums
the kernel's per-batch-row dw / dbias partials.
"""

from __future__ import annotations

import functools
import os

import torch

from ssmc.codegen.tvm import causal_conv_bwd_tir as bwdb
from ssmc.codegen.tvm.build import CACHE_ENV, DEFAULT_CACHE, KernelCache
from ssmc.codegen.tvm.config import Config, default_config, legalize
from ssmc.codegen.tvm.decode import _compact, _f32_view, _weight
from ssmc.codegen.tvm.target import host_target

FAMILY = "causal_conv1d_bwd"
# the modules a kernel of this family is built from (its cache key hashes them)
SOURCES = ("causal_conv_bwd_tir.py", "causal_conv_tir.py", "selective_scan_tir.py", "tirmath.py",
           "config.py")
_kernels: dict = {}


@functools.lru_cache(maxsize=None)
def default_bwd_config() -> Config:
    """The forward's defaults (decode.py): blocks of two host vectors, one task per block."""
    return legalize(default_config("llvm"), "llvm")


def bwd_kernel(sig: bwdb.ConvBwdSignature, config: Config | None = None,
               cache: KernelCache | None = None):
    """The compiled backward for `sig` (args: bwdb.arg_names(sig)); config: a tuned Config
    (channel_block, vector_width, threads, exp_degree), None = the defaults."""
    cfg = default_bwd_config() if config is None else legalize(config, "llvm")
    cache = cache if cache is not None else DEFAULT_CACHE
    key = (sig, cfg, id(cache), cache.root, os.environ.get(CACHE_ENV))
    kernel = _kernels.get(key)
    if kernel is None:
        kernel = cache.get(FAMILY, bwdb.FUNC_NAME, dict(sig.__dict__), "float32", host_target(),
                           cfg.as_dict(), lambda: bwdb.build(sig, cfg), sources=SOURCES)
        _kernels[key] = kernel
    return kernel


def causal_conv1d_bwd(gy, x, weight, bias=None, activation: str | None = "silu",
                      config: Config | None = None, *, grad_x: bool = True,
                      grad_weight: bool = True, grad_bias: bool = True,
                      cache: KernelCache | None = None):
    """Gradients of y = act(causal_conv1d(x, weight, bias)) (decode.causal_conv1d's meaning)
    given gy = dL/dy: returns (dx (b, L, c), dweight (weight's shape), dbias (c,) or None), fp32.

    x, gy (b, L, c) channels-last (strided views with a contiguous last axis are read in
    place); weight (c, 1, k) or (c, k); bias (c,) or None; activation 'silu' or 'identity' /
    None.  grad_x / grad_weight / grad_bias: which gradients to compute (the others come back
    as None, and the kernel skips dx, or dw and dbias, when none of them is asked for)."""
    x = _f32_view("x", x, 3)
    gy = _f32_view("gy", gy, 3)
    b, L, c = x.shape
    if tuple(gy.shape) != (b, L, c):
        raise ValueError(f"gy: expected x's shape {(b, L, c)}, got {tuple(gy.shape)}")
    w = _weight(weight, c)
    k = w.shape[-1]
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f"bias: expected ({c},), got {tuple(bias.shape)}")
    activation = activation or "identity"
    grad_bias = grad_bias and bias is not None
    params = grad_weight or grad_bias
    dx = torch.empty(b, L, c, dtype=torch.float32) if grad_x else None
    dw = db = None
    if not (grad_x or params):
        return None, None, None
    if b == 0 or L == 0:
        if dx is not None:
            dx.zero_()
        return (dx, torch.zeros(weight.shape, dtype=torch.float32) if grad_weight else None,
                torch.zeros(c, dtype=torch.float32) if grad_bias else None)
    sig = bwdb.ConvBwdSignature(c=c, k=k, has_bias=bias is not None, activation=activation,
                                grad_x=grad_x, grad_params=params)
    named = {"x": x, "gy": gy, "weight": w, "dx": dx}
    if bias is not None:
        named["bias"] = _compact("bias", bias)
    if params:
        named["dw"] = torch.empty(b, k, c, dtype=torch.float32)
        if bias is not None:
            named["db"] = torch.empty(b, c, dtype=torch.float32)
    bwd_kernel(sig, config, cache)(*[named[nm] for nm in bwdb.arg_names(sig)])
    if grad_weight:
        dw = named["dw"].sum(0).t().reshape(weight.shape)
    if grad_bias:
        db = named["db"].sum(0)
    return dx, dw, db
