"""The TVM 2-D SSM kernels (ssmc.codegen.tvm.ssm2d / ssm2d_bwd) as torch.library custom ops.

    ssmc::ssm2d(inputs, sig, config, chunk, cache) -> y (b, T, V, d) fp32
    ssmc::ssm2d_bwd(gy, inputs, sig, config, chunk, cache) -> partials (flat fp32)

`inputs` are the forward kernel's inputs in `ssm2d_bwd_tir.input_names(sig)` order (fp32, the
kernel's layouts; which ones depends on the signature, hence a tensor list), built by
ssmc.codegen.tvm.ssm2d.ssm2d with differentiable torch ops outside the op.  The backward
needs nothing but the inputs (the adjoint kernel recomputes the states from row checkpoints it
makes itself), so the forward returns y alone.  The backward op returns the adjoint kernel's
gradient outputs (per cell, and per-batch-row / per-block partials of the per-channel ones) in
the one flat buffer the kernel wrote; the autograd formula reduces them to the inputs' shapes
with torch ops (ssm2d_bwd.reduce_partials), so one zeroed allocation serves the kernel and no
op output aliases another.  sig / config: `sig_key` / `config_key` strings ("" config = the
host default); chunk: rows per recompute chunk (0 = ssm2d_bwd.chunk_rows); cache: a
plrnn_op.cache_key.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ssmc.runtime.plrnn_op import cache_key, resolve_cache  # noqa: F401  (cache_key: callers)


def sig_key(sig) -> str:
    """An Ssm2dSignature as an op argument (plain string ops, so dynamo traces it)."""
    bits = "".join(str(int(f)) for f in (*sig.dt_cell, sig.has_D, sig.bidirectional,
                                          sig.dt_softplus))
    return f"{sig.d},{sig.N},{''.join(str(int(m)) for m in sig.bc)},{bits}"


@functools.lru_cache(maxsize=None)
def _sig(key: str):
    from ssmc.codegen.tvm.ssm2d_tir import Ssm2dSignature

    d, N, bc, bits = key.split(",")
    f = [c == "1" for c in bits]
    return Ssm2dSignature(d=int(d), N=int(N), bc=tuple(int(c) for c in bc), dt_cell=(f[0], f[1]),
                          has_D=f[2], bidirectional=f[3], dt_softplus=f[4])


def config_key(config) -> str:
    if config is None:
        return ""
    return f"{config.channel_block},{config.vector_width},{config.order},{config.threads}"


@functools.lru_cache(maxsize=None)
def _config(key: str):
    from ssmc.codegen.tvm.ssm2d import default_config
    from ssmc.codegen.tvm.ssm2d_tir import Ssm2dConfig

    if not key:
        return default_config()
    cb, vw, order, threads = key.split(",")
    return Ssm2dConfig(channel_block=int(cb), vector_width=int(vw), order=order,
                       threads=int(threads))


def _args(sig, inputs) -> dict:
    from ssmc.codegen.tvm.ssm2d_bwd_tir import input_names

    names = input_names(sig)
    if len(inputs) != len(names):
        raise ValueError(f"ssmc::ssm2d: {len(names)} inputs ({', '.join(names)}) for this "
                         f"signature; got {len(inputs)}")
    return {n: t.detach() for n, t in zip(names, inputs)}  # DLPack exports no grad tensors


@torch.library.custom_op("ssmc::ssm2d", mutates_args=())
def ssm2d_op(inputs: list[Tensor], sig: str, config: str, chunk: int, cache: str) -> Tensor:
    from ssmc.codegen.tvm.ssm2d import run_forward

    s = _sig(sig)
    return run_forward(s, _config(config), _args(s, inputs), cache=resolve_cache(cache))


@ssm2d_op.register_fake
def _ssm2d_fake(inputs, sig, config, chunk, cache):
    x = inputs[0]
    return x.new_empty(x.shape, dtype=torch.float32)


@torch.library.custom_op("ssmc::ssm2d_bwd", mutates_args=())
def ssm2d_bwd_op(gy: Tensor, inputs: list[Tensor], sig: str, config: str, chunk: int,
                 cache: str) -> Tensor:
    from ssmc.codegen.tvm import ssm2d_bwd

    s = _sig(sig)
    return ssm2d_bwd.run_kernel(s, _config(config), _args(s, inputs), gy, chunk or None,
                                resolve_cache(cache))


@ssm2d_bwd_op.register_fake
def _ssm2d_bwd_fake(gy, inputs, sig, config, chunk, cache):
    from ssmc.codegen.tvm.ssm2d_bwd import partial_shapes

    b, T, V, _ = inputs[0].shape
    n = sum(math.prod(s) for s in partial_shapes(_sig(sig), _config(config), b, T, V).values())
    return gy.new_empty(n, dtype=torch.float32)


def _setup(ctx, inputs, output):
    tensors, sig, config, chunk, cache = inputs
    ctx.save_for_backward(*tensors)
    ctx.args = (sig, config, chunk, cache)


def _backward(ctx, gy):
    from ssmc.codegen.tvm.ssm2d_bwd import reduce_partials
    from ssmc.codegen.tvm.ssm2d_bwd_tir import input_names

    sig, config, chunk, cache = ctx.args
    tensors = ctx.saved_tensors
    flat = torch.ops.ssmc.ssm2d_bwd(gy, list(tensors), sig, config, chunk, cache)
    names = input_names(_sig(sig))
    grads = reduce_partials(_sig(sig), _config(config), flat,
                            {n: tuple(t.shape) for n, t in zip(names, tensors)})
    need = ctx.needs_input_grad[0]
    # one flag per tensor of the list, or one for the whole list (torch versions differ)
    need = list(need) if isinstance(need, (list, tuple)) else [need] * len(names)
    return ([grads.get(n) if w else None for n, w in zip(names, need)], None, None, None, None)


ssm2d_op.register_autograd(_backward, setup_context=_setup)


__all__ = ["ssm2d_op", "ssm2d_bwd_op", "sig_key", "config_key", "cache_key"]
