"""The depthwise causal conv1d (+ SiLU) for eager training on the CPU: the TVM forward
(ssmc.codegen.tvm.decode.causal_conv1d) and the TVM backward
(ssmc.codegen.tvm.causal_conv_bwd.causal_conv1d_bwd, which recomputes the pre-activation
instead of storing it) as one torch.autograd.Function.

An autograd.Function, not a torch.library custom op, on purpose: this path only runs in eager
training.  Under torch.compile the glue traces the reference (semantics.glue.causal_conv1d),
which inductor compiles on its own.
"""

from __future__ import annotations

import torch

from ssmc.codegen.tvm import decode
from ssmc.codegen.tvm.causal_conv_bwd import causal_conv1d_bwd
from ssmc.codegen.tvm.config import Config

ACTIVATIONS = ("silu", "identity", None)


def _check(name: str, t) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"causal_conv1d_train: {name} must be a torch.Tensor, got "
                         f"{type(t).__name__}")
    if t.dtype != torch.float32 or t.device.type != "cpu":
        raise ValueError(f"causal_conv1d_train: {name} must be a float32 CPU tensor (the TVM "
                         f"kernels' path), got {t.dtype} on {t.device}")


class _CausalConv1dTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, activation, config):
        ctx.save_for_backward(x, weight, bias)
        ctx.activation, ctx.config = activation, config
        return decode.causal_conv1d(x, weight, bias, activation, config=config)

    @staticmethod
    @torch.autograd.function.once_differentiable  # the kernel's gradients are not differentiable
    def backward(ctx, gy):
        x, weight, bias = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if not (need_x or need_w or need_b):
            return None, None, None, None, None
        dx, dw, db = causal_conv1d_bwd(gy, x, weight, bias, ctx.activation, ctx.config,
                                       grad_x=need_x, grad_weight=need_w,
                                       grad_bias=need_b and bias is not None)
        return (None if dx is None else dx.to(x.dtype), None if dw is None else dw.to(weight.dtype),
                None if db is None else db.to(bias.dtype), None, None)


def causal_conv1d_train(x, weight, bias=None, activation: str | None = "silu",
                        config: Config | None = None) -> torch.Tensor:
    """y[t] = act(bias + sum_j w[j] x[t - (k - 1) + j]) (zeros before t = 0), differentiable:
    x (b, L, c) channels-last (strided views with a contiguous last axis are read in place),
    weight (c, 1, k) or (c, k), bias (c,) or None; activation 'silu' or 'identity' / None.
    float32 CPU tensors only (ValueError naming the argument otherwise).  config: the kernels'
    schedule (a tuned Config; None = the defaults), shared by the forward and the backward."""
    _check("x", x)
    _check("weight", weight)
    _check("bias", bias)
    if activation not in ACTIVATIONS:
        raise ValueError(f"causal_conv1d_train: activation must be one of {ACTIVATIONS}, "
                         f"got {activation!r}")
    return _CausalConv1dTrain.apply(x, weight, bias, activation or "identity", config)
