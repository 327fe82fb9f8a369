"""The rmsnorm glue node (semantics.glue.RMSNorm, optionally on the gate's x * silu(z): Mamba-2's
gated norm, norm_before_gate=False) for training on the CPU: the forward is the TVM kernel
(codegen/tvm/decode.py::rmsnorm), the backward the TVM backward kernel
(codegen/tvm/rmsnorm_bwd.py), which recomputes the statistics from the inputs.

The reference is several elementwise passes over the whole tensor that autograd differentiates
into many more; each kernel reads a row twice while it is in cache.  Forward + backward, b2
L1024 D256, one torch thread (2-core AMD EPYC, medians): 3.2-5.9 ms reference vs 0.35-0.8 ms
here; gated (groups 1) 5.2-7.0 ms vs 0.9-1.2 ms.

Both are torch.library ops, ssmc::rmsnorm(x, weight, z, eps, groups) -> y and
ssmc::rmsnorm_bwd(gy, x, weight, z, eps, groups) -> (dx, dweight, dz), with fake and autograd
registrations, so torch.compile traces them.  Eager inference calls the forward kernel
directly (ssmc.runtime.compiled._cpu_glue): no op dispatch.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ssmc.codegen.tvm import decode
from ssmc.codegen.tvm.rmsnorm_bwd import rmsnorm_bwd


def _check(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"rmsnorm_train: {name} must be a tensor, got {type(t).__name__}")
    if t.dtype is not torch.float32 or t.device.type != "cpu":
        raise ValueError(f"rmsnorm_train: {name} must be a float32 CPU tensor, got {t.dtype} "
                         f"on {t.device}")


@torch.library.custom_op("ssmc::rmsnorm", mutates_args=())
def rmsnorm_op(x: Tensor, weight: Tensor, z: Optional[Tensor], eps: float, groups: int
               ) -> Tensor:
    """The TVM forward: y (x's shape) fp32."""
    return decode.rmsnorm(x, weight, eps, z=z, groups=groups)


@rmsnorm_op.register_fake
def _(x, weight, z, eps, groups):
    return x.new_empty(x.shape, dtype=torch.float32)


@torch.library.custom_op("ssmc::rmsnorm_bwd", mutates_args=())
def rmsnorm_bwd_op(gy: Tensor, x: Tensor, weight: Tensor, z: Optional[Tensor], eps: float,
                   groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """The TVM backward: (dx, dweight, dz) fp32 (dz empty without z)."""
    dx, dw, dz = rmsnorm_bwd(gy, x, weight, eps, z=z, groups=groups)
    return dx, dw, x.new_empty(0) if dz is None else dz


@rmsnorm_bwd_op.register_fake
def _(gy, x, weight, z, eps, groups):
    f32 = torch.float32
    return (x.new_empty(x.shape, dtype=f32), x.new_empty(weight.shape, dtype=f32),
            x.new_empty(x.shape if z is not None else (0,), dtype=f32))


def _setup(ctx, inputs, output):
    x, weight, z, eps, groups = inputs
    ctx.eps, ctx.groups = eps, groups
    ctx.save_for_backward(x, weight, z)


def _backward(ctx, gy):
    x, weight, z = ctx.saved_tensors
    need_x, need_w, need_z = ctx.needs_input_grad[:3]
    if not (need_x or need_w or need_z):
        return None, None, None, None, None
    dx, dw, dz = torch.ops.ssmc.rmsnorm_bwd(gy, x, weight, z, ctx.eps, ctx.groups)
    return (dx.to(x.dtype) if need_x else None, dw.to(weight.dtype) if need_w else None,
            dz.to(z.dtype) if need_z else None, None, None)


rmsnorm_op.register_autograd(_backward, setup_context=_setup)


def rmsnorm_train(x: torch.Tensor, weight: torch.Tensor, eps: float, z: torch.Tensor | None = None,
                  groups: int = 1) -> torch.Tensor:
    """semantics.glue.RMSNorm(D, eps, groups) with this weight applied to x, or to x * silu(z)
    (the gate node before Mamba-2's gated norm), differentiable in x, weight and z.  fp32 CPU
    tensors only; x (..., D) and z (x's shape) may be strided views whose last axis is
    contiguous, weight (D,).  Returns a new (..., D) fp32 tensor."""
    _check("x", x)
    _check("weight", weight)
    if z is not None:
        _check("z", z)
        if tuple(z.shape) != tuple(x.shape):
            raise ValueError(f"rmsnorm_train: z must have x's shape {tuple(x.shape)}, "
                             f"got {tuple(z.shape)}")
    D = x.shape[-1] if x.dim() else 0
    if x.dim() == 0 or tuple(weight.shape) != (D,):
        raise ValueError(f"rmsnorm_train: weight must have shape (D,) for x (..., D), got "
                         f"weight {tuple(weight.shape)} and x {tuple(x.shape)}")
    if groups < 1 or D % groups:
        raise ValueError(f"rmsnorm_train: groups ({groups}) must divide D ({D})")
    return torch.ops.ssmc.rmsnorm(x, weight, z, float(eps), int(groups))
