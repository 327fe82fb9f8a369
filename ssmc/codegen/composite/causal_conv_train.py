"""The depthwise causal conv1d (+ SiLU) for training on the CPU: the TVM forward
(ssmc.codegen.tvm.decode.causal_conv1d) and the TVM backward
(ssmc.codegen.tvm.causal_conv_bwd.causal_conv1d_bwd, which recomputes the pre-activation
instead of storing it) as the torch.library ops

    ssmc::causal_conv1d(x, weight, bias, activation, config) -> y
    ssmc::causal_conv1d_bwd(gy, x, weight, bias, activation, config, grad_x, grad_weight,
                            grad_bias) -> (dx, dweight, dbias)

with fake and autograd registrations, so torch.compile traces them (the reference's depthwise
conv is a slow aten convolution there too).  Eager inference calls the forward kernel directly
(ssmc.runtime.compiled._cpu_glue): no op dispatch (~60 us a forward + backward pair).
"""

from __future__ import annotations

import functools
import json
from typing import Optional

import torch
from torch import Tensor

from ssmc.codegen.triton.common import config_json  # any Config with as_dict(), as JSON
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


@functools.lru_cache(maxsize=None)
def _config(key: str) -> Config | None:
    return Config(**json.loads(key)) if key else None


@torch.library.custom_op("ssmc::causal_conv1d", mutates_args=())
def causal_conv1d_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str,
                     config: str) -> Tensor:
    """The TVM forward: y (b, L, c) fp32."""
    return decode.causal_conv1d(x, weight, bias, activation, config=_config(config))


@causal_conv1d_op.register_fake
def _(x, weight, bias, activation, config):
    return x.new_empty(x.shape, dtype=torch.float32)


@torch.library.custom_op("ssmc::causal_conv1d_bwd", mutates_args=())
def causal_conv1d_bwd_op(gy: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                         activation: str, config: str, grad_x: bool, grad_weight: bool,
                         grad_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The TVM backward: (dx, dweight, dbias) fp32, an empty tensor for each not asked for."""
    grads = causal_conv1d_bwd(gy, x, weight, bias, activation, _config(config), grad_x=grad_x,
                              grad_weight=grad_weight, grad_bias=grad_bias)
    # contiguous: dweight comes back as a (c, 1, k) view of a (k, c) sum
    return tuple(x.new_empty(0) if g is None else g.contiguous() for g in grads)


@causal_conv1d_bwd_op.register_fake
def _(gy, x, weight, bias, activation, config, grad_x, grad_weight, grad_bias):
    f32 = torch.float32
    return (x.new_empty(x.shape if grad_x else (0,), dtype=f32),
            x.new_empty(weight.shape if grad_weight else (0,), dtype=f32),
            x.new_empty((x.shape[-1],) if grad_bias and bias is not None else (0,), dtype=f32))


def _setup(ctx, inputs, output):
    x, weight, bias, activation, config = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.activation, ctx.config = activation, config


def _backward(ctx, gy):
    x, weight, bias = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    if not (need_x or need_w or need_b):
        return None, None, None, None, None
    dx, dw, db = torch.ops.ssmc.causal_conv1d_bwd(gy, x, weight, bias, ctx.activation,
                                                  ctx.config, need_x, need_w,
                                                  need_b and bias is not None)
    return (dx.to(x.dtype) if need_x else None, dw.to(weight.dtype) if need_w else None,
            db.to(bias.dtype) if need_b and bias is not None else None, None, None)


causal_conv1d_op.register_autograd(_backward, setup_context=_setup)


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
    return torch.ops.ssmc.causal_conv1d(x, weight, bias, activation or "identity",
                                        config_json(config))
