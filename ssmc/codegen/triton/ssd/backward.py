"""Mamba-2 SSD backward in Triton: the Mamba-1 backward kernel in its SSD mode.

What ssmc.runtime.library registers for ("ssd", "cuda"): ssmc::ssd_bwd's arguments in, its
9-tuple (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states) out.  As on the CPU
(ssmc.codegen.tvm.ssd_bwd), SSD is the real-A selective scan with channels d = heads * headdim:
x (b, L, h, p) is u (b, L, d) and the states (b, h, p, n) are (b, d, n), both without a copy;
the kernel of ssmc.codegen.triton.selective_scan.backward runs with HEADS (dt (b, L, h) and
A (h,) read per channel's head, one exp per step and channel instead of one per state) and
HAS_KEEP (a keep mask (b, L) from seq_idx multiplies the decay: the state resets before a step
whose seq_idx differs from the previous one).  It walks the chunks of K steps (the forward's
checkpoint interval) in reverse from the forward's checkpoints (b, nc, h, p, n) (the states
before any reset) or recomputes them, and writes per-channel partials that torch reduces to
SSD's shapes (ssmc.codegen.ssd_bwd_common, shared with the TVM backward): dA and ddt summed
over each head's channels, dB/dC over each group's channel blocks, dD over the batch.  The
effective step (bias, softplus, dt_limit clamp) and its derivative are torch's, around the
kernel, as in the torch engine.

Declines (NotImplemented: the library runs the torch engine) float64 (gradchecks), tensors on
a device Triton does not run on, and empty problems.  Wrapped as the
``torch.library.triton_op`` ``ssmc::ssd_bwd_triton`` (kernels through ``wrap_triton``).
"""

from __future__ import annotations

import functools
from typing import Optional

from torch import Tensor

from ssmc.codegen import ssd_bwd_common as common
from ssmc.codegen.triton.common import interpreting, library_op, run_traceable
from ssmc.codegen.triton.selective_scan import backward as sbw
from ssmc.codegen.triton.selective_scan.problem import _operand

SsdBwdConfig = sbw.SelectiveScanBwdConfig  # the same kernel, the same knobs


def ssd_backward_problem(grad_y, grad_final, x, dt_eff, A, B, C, D=None, z=None,
                         initial_states=None, seq_idx=None, checkpoints=None,
                         chunk: int = 64) -> sbw.BwdProblem:
    """The kernel's problem in SSD mode, for the effective step dt_eff (b, L, h) (bias,
    softplus and clamp applied).  checkpoints (b, nc, h, p, n): taken when there are
    ceil(L / K) of them, else recomputed in the kernel."""
    b, L, h, p = x.shape
    n = B.shape[-1]
    d = h * p
    K = max(1, min(int(chunk), max(L, 1)))  # one chunk no longer than L (the scratch holds K)
    nc = (L + K - 1) // K
    ck = None
    if checkpoints is not None and checkpoints.numel() and checkpoints.dim() == 5 \
            and checkpoints.shape[1] == nc:
        ck = checkpoints.reshape(b, nc, d, n).float().contiguous()

    def f32(t):
        return None if t is None else t.float().contiguous()

    def seq(t):
        return None if t is None else t.reshape(b, L, d).contiguous()

    Dd = common.channel_D(D, p)
    return sbw.BwdProblem(
        grad_y=seq(grad_y), u=seq(x), delta=f32(dt_eff), z=seq(z), A=f32(A),
        B=_operand("B", sbw._bc_view(B, "bld"), b, d, L, n, False),
        C=_operand("C", sbw._bc_view(C, "bld"), b, d, L, n, False),
        B_shape=tuple(B.shape), C_shape=tuple(C.shape),
        D=None if Dd is None else Dd.contiguous(), delta_bias=None,
        h0=None if initial_states is None else f32(initial_states.reshape(b, d, n)),
        glast=None if grad_final is None else f32(grad_final.reshape(b, d, n)),
        checkpoints=ck, chunk=K, layout="bld", delta_softplus=False,
        batch=b, dim=d, seqlen=L, dstate=n, head_dim=p,
        keep=None if seq_idx is None else common.keep_mask(seq_idx))


def plan_ssd_backward(p: sbw.BwdProblem, config: SsdBwdConfig | None = None):
    """One launch of the kernel in SSD mode (ssmc.codegen.triton.selective_scan.backward)."""
    return sbw.plan_backward(p, config)


def ssd_scan_backward(grad_y, grad_final, x, dt_eff, A, B, C, D=None, z=None,
                      initial_states=None, seq_idx=None, checkpoints=None, chunk: int = 64,
                      config: str = "") -> dict:
    """The reverse scan on the kernel: gradients {"x", "dt" (w.r.t. dt_eff), "A", "B", "C",
    "D", "z", "h0"} in fp32 (x, z: x's and z's dtypes) and SSD's shapes (None for absent
    inputs); ssmc.codegen.tvm.ssd_bwd.ssd_scan_backward's contract.  config: JSON knobs of
    SsdBwdConfig ('' for the defaults)."""
    b, L, h, p = x.shape
    n = B.shape[-1]
    prob = ssd_backward_problem(grad_y, grad_final, x, dt_eff, A, B, C, D, z, initial_states,
                                seq_idx, checkpoints, chunk)
    out = run_traceable(plan_ssd_backward(prob, sbw._config(config)))[0]
    return common.reduce_channels(
        (b, L, h, p, n), gu=out["gu"], gdt=out["gdelta"], gA=out["gA"],
        gB=sbw._reduce_bc(out["gB"], prob.B_shape, "bld", b, L),
        gC=sbw._reduce_bc(out["gC"], prob.C_shape, "bld", b, L),
        gD=out["gD"], gz=out["gz"], gh0=out["gh0"], D=D)


def ssd_bwd_triton(grad_y: Tensor, grad_final: Optional[Tensor], x: Tensor, dt: Tensor,
                   A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
                   dt_bias: Optional[Tensor], initial_states: Optional[Tensor],
                   seq_idx: Optional[Tensor], checkpoints: Optional[Tensor], dt_softplus: bool,
                   dt_lo: float, dt_hi: float, checkpoint_every: int, config: str
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                              Tensor]:
    """ssmc::ssd_bwd's 9-tuple on the Triton kernel (config: JSON knobs, '' for defaults)."""
    return common.run_backward(functools.partial(ssd_scan_backward, config=config), grad_y,
                               grad_final, x, dt, A, B, C, D, z, dt_bias, initial_states,
                               seq_idx, checkpoints, dt_softplus, dt_lo, dt_hi,
                               checkpoint_every)


_OP = []


def triton_bwd_op():
    """ssmc::ssd_bwd_triton (common.library_op), defined on first use."""
    if not _OP:
        _OP.append(library_op("ssmc::ssd_bwd_triton", ssd_bwd_triton))
    return _OP[0]


def applies(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None, grad_y=None,
            grad_final=None, **_) -> bool:
    """What the kernel covers (ssd_bwd_common.applies: fp32/fp16/bf16, groups dividing the
    heads, non-empty), on a device Triton runs on (CUDA/ROCm, or the CPU under
    TRITON_INTERPRET=1)."""
    if x.device.type != "cuda" and not (x.device.type == "cpu" and interpreting()):
        return False
    ts = (x, dt, A, B, C, D, z, dt_bias, initial_states, grad_y, grad_final)
    if any(t is not None and t.device != x.device for t in ts):
        return False
    return common.applies(x, dt, A, B, C, D, z, dt_bias, initial_states, grad_y, grad_final)


def ssd_backward(grad_y, grad_final, x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx,
                 checkpoints, dt_softplus, dt_lo, dt_hi, checkpoint_every, config=""):
    """The ("ssd", "cuda") backward: ssmc::ssd_bwd's keyword arguments -> its 9-tuple, or
    NotImplemented for what the kernel does not cover (the library then runs the torch
    engine)."""
    if not applies(x, dt, A, B, C, D, z, dt_bias, initial_states, grad_y, grad_final):
        return NotImplemented
    gf = grad_final if grad_final is not None and grad_final.numel() else None
    ck = checkpoints if checkpoints is not None and checkpoints.numel() else None
    return tuple(triton_bwd_op()(grad_y, gf, x, dt, A, B, C, D, z, dt_bias, initial_states,
                                 seq_idx, ck, bool(dt_softplus), float(dt_lo), float(dt_hi),
                                 int(checkpoint_every), config or ""))


__all__ = ["SsdBwdConfig", "applies", "plan_ssd_backward", "ssd_backward",
           "ssd_backward_problem", "ssd_bwd_triton", "ssd_scan_backward", "triton_bwd_op"]
