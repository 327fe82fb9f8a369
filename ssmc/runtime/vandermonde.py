"""S4D's training path: the Vandermonde kernel K with a dedicated backward, then the FFT
convolution (torch; autograd differentiates it: its backward is again an FFT correlation).

K[l] = scale Re sum_n W_n Abar_n^l with W = C Bbar (MODELS.md section 1; scale 2 for conjugate
pairs, 1 otherwise; a plain sum for a real state).  For a real output gradient g = dLoss/dK the
backward needs only two transposed-Vandermonde sums per mode,

    V0_n = sum_l g_l Abar_n^l,          V1_n = sum_l l g_l Abar_n^(l-1),

which the backends' kernels compute without forming the (d, N, L) powers
(ssmc.codegen.tvm.vandermonde on the CPU, ssmc.codegen.triton.s4d.vandermonde_bwd on GPUs, a
blocked torch version everywhere else).  With PyTorch's convention for complex gradients
(grad = dLoss/dRe + i dLoss/dIm, the conjugate Wirtinger derivative times 2, which gradcheck
checks): Re(W Abar^l) has gradient conj(Abar^l) in W and conj(l W Abar^(l-1)) in Abar, so

    gW = scale conj(V0),   gAbar = scale conj(W V1),   gBbar = gW conj(C),   gC = gW conj(Bbar)

(real state: the same without conj and scale).  A real argument of a complex computation gets
the real part of its gradient.

Two entry points share the forward / backward kernels and that algebra:

* ``VandermondeFn.apply(Abar, Bbar, C, L, conj_pair, fwd, bwd)``: an autograd Function over any
  pair of kernel functions (tests pair a float64 torch forward with a kernel's backward);
* the operator ``ssmc::s4d_vandermonde(Abar, Bbar, C, L, conj_pair, backend)`` with its
  backward op ``ssmc::s4d_vandermonde_bwd``: fake tensors and an autograd formula registered,
  so torch.compile traces a model through it (the kernels stay opaque calls).  backend: 'tvm'
  (CPU), 'triton' (CUDA, or CPU tensors under TRITON_INTERPRET=1), 'torch'; one that cannot run
  on the tensors' device falls back to 'torch'.  Where the Triton kernels take the tensors
  (fp32 work), `vandermonde` calls ``ssmc::s4d_vandermonde_triton`` / ``_bwd_triton`` instead:
  triton_ops on a device, so inductor sees the kernels.

`diagonal_conv` is what the diagonal executor runs with gradients: K by the op, then the FFT
convolution of ssmc.codegen.composite.diagonal.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch import Tensor

from ssmc.codegen.composite.vandermonde import torch_vandermonde_bwd
from ssmc.codegen.triton.common import run_traceable, trainable_ops
from ssmc.semantics.diagonal import as_work, work_dtype

BACKENDS = ("tvm", "triton", "torch")


# --------------------------------------------------------------------------- backends

def _torch_fwd(Abar, Bbar, C, L, conj_pair):
    from ssmc.codegen.composite.diagonal import vandermonde_kernel

    return vandermonde_kernel(Abar, Bbar, C, L, conj_pair)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _wide(*ts) -> bool:
    return work_dtype(*ts) == torch.float64


def _triton_fwd(Abar, Bbar, C, L, conj_pair):
    # the Triton forward computes in fp32 only: 64-bit parameters take the torch forward
    if _wide(Abar, Bbar, C):
        return _torch_fwd(Abar, Bbar, C, L, conj_pair)
    from ssmc.codegen.triton.s4d.vandermonde import s4d_kernel_vandermonde

    return s4d_kernel_vandermonde(Abar, Bbar, C, L, conj_pair)


def _triton_bwd(Abar, gK):
    from ssmc.codegen.triton.s4d.vandermonde_bwd import s4d_vandermonde_bwd

    return s4d_vandermonde_bwd(Abar, gK)


def _tvm_fwd(Abar, Bbar, C, L, conj_pair):
    from ssmc.codegen.tvm.vandermonde import vandermonde_fwd

    return vandermonde_fwd(Abar, Bbar, C, L, conj_pair)


def _tvm_bwd(Abar, gK):
    from ssmc.codegen.tvm.vandermonde import vandermonde_bwd

    return vandermonde_bwd(Abar, gK)


KERNELS: dict[str, tuple[Callable, Callable]] = {
    "tvm": (_tvm_fwd, _tvm_bwd),
    "triton": (_triton_fwd, _triton_bwd),
    "torch": (_torch_fwd, torch_vandermonde_bwd),
}


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that runs on `device`: 'tvm' on the CPU, 'triton' on CUDA (or the CPU under
    TRITON_INTERPRET=1), else 'torch'."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "tvm" and device.type != "cpu":
        return "torch"
    if backend == "triton" and not (device.type == "cuda"
                                    or (device.type == "cpu" and _interpreting())):
        return "torch"
    return backend


# --------------------------------------------------------------------------- the gradients

def _scale(Abar, Bbar, C, conj_pair) -> float:
    return 2.0 if conj_pair and any(t.is_complex() for t in (Abar, Bbar, C)) else 1.0


def work_params(Abar, Bbar, C):
    """The parameters as the kernels compute with them: all complex when any is (complex64 /
    complex128), else all real (float32 / float64)."""
    Abar, Bbar, C = as_work(Abar, Bbar, C)
    if any(t.is_complex() for t in (Abar, Bbar, C)):
        cplx = torch.complex128 if work_dtype(Abar, Bbar, C) == torch.float64 else torch.complex64
        Abar, Bbar, C = (t.to(cplx) for t in (Abar, Bbar, C))
    return Abar, Bbar, C


def vandermonde_grads(Abar, Bbar, C, V0, V1, conj_pair: bool):
    """(gAbar, gBbar, gC), each in its argument's dtype, from the transposed sums of the work
    parameters (see the module docstring)."""
    Aw, Bw, Cw = work_params(Abar, Bbar, C)
    W = Cw * Bw
    if Aw.is_complex():
        s = _scale(Abar, Bbar, C, conj_pair)
        gW = s * V0.conj()
        gA = s * (W * V1).conj()
        gB, gC = gW * Cw.conj(), gW * Bw.conj()
    else:
        gW, gA = V0, W * V1
        gB, gC = gW * Cw, gW * Bw

    def like(gr, t):  # a real argument of a complex computation: the real part
        return (gr if t.is_complex() else gr.real).to(t.dtype)

    return like(gA, Abar), like(gB, Bbar), like(gC, C)


class VandermondeFn(torch.autograd.Function):
    """K = fwd(Abar, Bbar, C, L, conj_pair) with the backward from bwd(Abar_work, gK) ->
    (V0, V1).  Not traceable by torch.compile (it calls the kernels directly): the op is."""

    @staticmethod
    def forward(ctx, Abar, Bbar, C, L: int, conj_pair: bool, fwd: Callable, bwd: Callable):
        ctx.save_for_backward(Abar, Bbar, C)
        ctx.conj_pair, ctx.bwd = conj_pair, bwd
        return fwd(Abar, Bbar, C, L, conj_pair)

    @staticmethod
    def backward(ctx, gK):
        Abar, Bbar, C = ctx.saved_tensors
        V0, V1 = ctx.bwd(work_params(Abar, Bbar, C)[0], gK.contiguous())
        return (*vandermonde_grads(Abar, Bbar, C, V0, V1, ctx.conj_pair), None, None, None, None)


# --------------------------------------------------------------------------- the ops

@torch.library.custom_op("ssmc::s4d_vandermonde", mutates_args=())
def vandermonde_op(Abar: Tensor, Bbar: Tensor, C: Tensor, L: int, conj_pair: bool,
                   backend: str) -> Tensor:
    fwd, _ = KERNELS[resolve_backend(backend, Abar.device)]
    # contiguous, as the fake says (the torch forward returns a slice of its blocks)
    return fwd(Abar, Bbar, C, L, conj_pair).contiguous()


@vandermonde_op.register_fake
def _(Abar, Bbar, C, L, conj_pair, backend):
    return Abar.new_empty((Abar.shape[0], L), dtype=work_dtype(Abar, Bbar, C))


@torch.library.custom_op("ssmc::s4d_vandermonde_bwd", mutates_args=())
def vandermonde_bwd_op(Abar: Tensor, gK: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    _, bwd = KERNELS[resolve_backend(backend, Abar.device)]
    V0, V1 = bwd(Abar, gK.contiguous())
    return V0.contiguous(), V1.contiguous()


@vandermonde_bwd_op.register_fake
def _(Abar, gK, backend):
    return Abar.new_empty(Abar.shape), Abar.new_empty(Abar.shape)


def _setup(ctx, inputs, output):
    Abar, Bbar, C, _, conj_pair, *backend = inputs  # the Triton pair has no backend argument
    ctx.save_for_backward(Abar, Bbar, C)
    ctx.conj_pair, ctx.backend = conj_pair, backend


def _grads(ctx, gK, bwd_op) -> tuple:
    Abar, Bbar, C = ctx.saved_tensors
    V0, V1 = bwd_op(work_params(Abar, Bbar, C)[0], gK, *ctx.backend)
    return vandermonde_grads(Abar, Bbar, C, V0, V1, ctx.conj_pair)


def _backward(ctx, gK):
    return (*_grads(ctx, gK, torch.ops.ssmc.s4d_vandermonde_bwd), None, None, None)


vandermonde_op.register_autograd(_backward, setup_context=_setup)


# The Triton pair as triton_ops on a device (torch.compile sees the kernels; common.library_op),
# what `vandermonde` calls whenever the Triton kernels run the tensors.

def _triton_vandermonde(Abar: Tensor, Bbar: Tensor, C: Tensor, L: int, conj_pair: bool
                        ) -> Tensor:
    from ssmc.codegen.triton.s4d.vandermonde import plan_vandermonde

    (K,) = run_traceable(plan_vandermonde(Abar, Bbar, C, L, conj_pair))
    return K


def _triton_vandermonde_bwd(Abar: Tensor, gK: Tensor) -> tuple[Tensor, Tensor]:
    from ssmc.codegen.triton.s4d.vandermonde_bwd import s4d_vandermonde_bwd

    return s4d_vandermonde_bwd(Abar, gK.contiguous(), traceable=True)


def _triton_backward(ctx, gK):
    return (*_grads(ctx, gK, torch.ops.ssmc.s4d_vandermonde_bwd_triton), None, None)


trainable_ops("s4d_vandermonde", _triton_vandermonde, _triton_vandermonde_bwd, _triton_backward,
              _setup)


def vandermonde(Abar, Bbar, C, L: int, conj_pair: bool = True, backend: str = "torch"):
    """K (d, L) through ssmc::s4d_vandermonde (differentiable, traceable)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if not isinstance(L, int) or L < 0:
        raise ValueError(f"L must be an int >= 0, got {L!r}")
    if resolve_backend(backend, Abar.device) == "triton" and not _wide(Abar, Bbar, C) and L > 0:
        return torch.ops.ssmc.s4d_vandermonde_triton(Abar, Bbar, C, L, bool(conj_pair))
    return torch.ops.ssmc.s4d_vandermonde(Abar, Bbar, C, L, bool(conj_pair), backend)


def diagonal_conv(u, Abar, Bbar, C, D=None, conj_pair: bool = True, backend: str = "torch"):
    """y (b, L, d) = K * u + D u for a channels-last u, K from ssmc::s4d_vandermonde on
    `backend`, the convolution by torch's FFT (composite.diagonal.fft_conv_bld)."""
    from ssmc.codegen.composite.diagonal import fft_conv_bld

    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"u must be a (b, L, d) tensor, got "
                         f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}")
    K = vandermonde(Abar, Bbar, C, u.shape[1], conj_pair, backend)
    return fft_conv_bld(u, K, None if D is None else D.to(K.dtype))


__all__ = ["BACKENDS", "KERNELS", "VandermondeFn", "diagonal_conv", "resolve_backend",
           "vandermonde", "vandermonde_grads", "work_params"]
