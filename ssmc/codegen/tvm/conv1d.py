"""torch-facing depthwise causal conv1d (+ SiLU), channels-last, on a TVM CPU kernel.

The meaning is ssmc.semantics.glue.causal_conv1d(x, weight, bias, activation_name): x (b, L, c),
weight (c, 1, k) or (c, k), bias (c,).  fp16/bf16 inputs compute in fp32 and return x's dtype.
"""

from __future__ import annotations

import torch

from ssmc.codegen.tvm import conv1d_tir as tirb
from ssmc.codegen.tvm.build import DEFAULT_CACHE
from ssmc.codegen.tvm.checks import check_tensor, describe, fail
from ssmc.codegen.tvm.target import host_target

OP = "causal_conv1d"
FAMILY = "causal_conv1d"
SOURCES = ("conv1d_tir.py", "selective_scan_tir.py", "tirmath.py", "config.py", "build.py",
           "target.py")
_kernels: dict = {}


def _kernel(sig: tirb.ConvSignature, cfg: tirb.ConvConfig, cache):
    key = (sig, cfg, id(cache), cache.root)
    kernel = _kernels.get(key)
    if kernel is None:
        kernel = cache.get(FAMILY, tirb.FUNC_NAME, sig.__dict__, "float32", host_target(),
                           cfg.as_dict(), lambda: tirb.build_causal_conv1d(sig, cfg),
                           sources=SOURCES)
        _kernels[key] = kernel
    return kernel


def causal_conv1d(x, weight, bias=None, activation: str | None = "silu",
                  config: tirb.ConvConfig | None = None, cache=None):
    """y[b, t, c] = act(bias[c] + sum_j weight[c, j] x[b, t - (k - 1) + j, c]); act: 'silu' or
    None.  x (b, L, c) channels-last; weight (c, 1, k) or (c, k); bias (c,) or None."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise fail(OP, "x", "a 3-D tensor (b, L, c)", describe(x))
    b, L, c = x.shape
    check_tensor(OP, "x", x, [x.shape], f"(b, L, c)=({b}, {L}, {c})")
    k = weight.shape[-1] if isinstance(weight, torch.Tensor) and weight.dim() in (2, 3) else 0
    check_tensor(OP, "weight", weight, [(c, 1, k), (c, k)] if k else [],
                 f"(c, 1, k) or (c, k) with c={c}")
    if bias is not None:
        check_tensor(OP, "bias", bias, [(c,)], f"(c,)=({c},)")
    if activation not in tirb.ACTIVATIONS:
        raise fail(OP, "activation", f"one of {tirb.ACTIVATIONS}", repr(activation))
    if b == 0 or L == 0:
        return x.new_zeros(x.shape)
    sig = tirb.ConvSignature(channels=c, width=k, has_bias=bias is not None,
                             activation=activation)
    cfg = config or tirb.ConvConfig()
    args = {"x": x.to(torch.float32).contiguous(),
            "w": weight.reshape(c, k).t().to(torch.float32).contiguous(),
            "out": torch.empty(b, L, c)}
    if bias is not None:
        args["bias"] = bias.to(torch.float32).contiguous()
    _kernel(sig, cfg, cache or DEFAULT_CACHE)(*[args[n] for n in tirb.arg_names(sig)])
    y = args["out"]
    return y if x.dtype == torch.float32 else y.to(x.dtype)
