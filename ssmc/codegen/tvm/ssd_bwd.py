"""torch-facing backward of the Mamba-2 SSD scan on the TVM CPU kernel of the Mamba-1 backward.

SSD is the real-A selective scan with channels d = heads * headdim (x (b, L, h, p) is u
(b, L, d) and the states (b, h, p, n) are (b, d, N), both without a copy), A and dt shared by a
head's channels, B/C shared by a group's heads and a state reset where seq_idx changes.  The
Mamba-1 backward kernel (selective_scan_bwd_tir) runs it in its SSD mode (`heads` > 0: dt
(b, L, h) and A (h,) read per head, one exp per step and channel instead of one per state) with
a `keep` mask (b, L) for seq_idx; it walks chunks in reverse from the forward's checkpoints,
recomputes the states, fuses D and the z gate, and writes race-free partials that torch
reduces to SSD's parameter shapes (ssmc.codegen.ssd_bwd_common, shared with the Triton
backward):

    dA (h,)      the kernel's per-channel (b, d) sums over the states, summed over b and p
    ddt (b, L, h) its per-channel (b, L, d) gradient of the effective step, summed over p,
                 then through clamp / softplus / bias in torch (as the torch engine does)
    dB, dC       (b, L, blocks, n) partials summed over each group's blocks
    dD           (b, d) summed over b (and over p for D (h,))

`ssd_backward` is what ssmc.runtime.library registers for ("ssd", "cpu").  It declines
(NotImplemented: the library then runs the torch engine) for float64 (gradchecks: the kernel
computes in fp32), for non-CPU tensors and for empty problems.
"""

from __future__ import annotations

import functools

import torch

from ssmc.codegen import ssd_bwd_common as common
from ssmc.codegen.tvm import selective_scan_bwd as sb
from ssmc.codegen.tvm import selective_scan_bwd_tir as tirb
from ssmc.codegen.tvm.build import KernelCache
from ssmc.codegen.tvm.config import Config, default_ssd_config, legalize

_F32 = torch.float32


@functools.lru_cache(maxsize=None)
def default_ssd_bwd_config() -> Config:
    """The SSD forward's block (4 vectors: a whole head of 64 channels with AVX-512): measured
    on the shared 2-core Zen4, b2 L1024 h8 p64 n64 fp32, K 32-64, the kernel took ~85-95 ms
    against ~200 ms with the Mamba-1 default (2 vectors) and ~220-290 ms with 16 channels;
    its first build is slower (minutes with N = 64 under load; cached on disk after)."""
    return legalize(default_ssd_config(), "llvm")


def _applies(x, dt, A, B, C, D, z, dt_bias, initial_states, grad_y, **_) -> bool:
    ts = (x, dt, A, B, C, D, z, dt_bias, initial_states, grad_y)
    if any(t is not None and t.device.type != "cpu" for t in ts):
        return False
    return common.applies(x, dt, A, B, C, D, z, dt_bias, initial_states, grad_y)


def ssd_scan_backward(grad_y, grad_final, x, dt_eff, A, B, C, D=None, z=None,
                      initial_states=None, seq_idx=None, checkpoints=None, chunk: int = 64,
                      config: Config | None = None, cache: KernelCache | None = None) -> dict:
    """The reverse scan for the effective step dt_eff (b, L, h) (bias, softplus and clamp
    already applied): gradients {"x", "dt" (w.r.t. dt_eff), "A", "B", "C", "D", "z", "h0"}
    in fp32 and SSD's shapes (None for absent inputs).  checkpoints (b, nc, h, p, n), the
    states at the start of every `chunk` steps before any reset, as ssmc::ssd saves them;
    None (or a count that does not match) recomputes them in the kernel."""
    b, L, h, p = x.shape
    n = B.shape[-1]
    d = h * p

    def f32(t):
        return None if t is None else t.to(_F32).contiguous()

    sig = tirb.BwdSignature(d=d, N=n, b_groups=B.shape[2], c_groups=C.shape[2],
                            has_D=D is not None, has_z=z is not None, layout="bld",
                            heads=h, has_keep=seq_idx is not None)
    Dd = common.channel_D(D, p)
    ck = None
    if checkpoints is not None and checkpoints.numel():
        ck = f32(checkpoints.reshape(b, -1, d, n))
    args = sb.run_kernel(
        sig, u=f32(x.reshape(b, L, d)), delta=f32(dt_eff), gout=f32(grad_y.reshape(b, L, d)),
        A2=f32(A.to(_F32) * sb.LOG2E), B=f32(B), C=f32(C), D=f32(Dd),
        z=None if z is None else f32(z.reshape(b, L, d)),
        keep=None if seq_idx is None else common.keep_mask(seq_idx),
        h0=None if initial_states is None else f32(initial_states.reshape(b, d, n)),
        glast=None if grad_final is None else f32(grad_final.reshape(b, d, n)),
        checkpoints=ck, chunk=chunk,
        config=default_ssd_bwd_config() if config is None else config, cache=cache)
    return common.reduce_channels(
        (b, L, h, p, n), gu=args["gu"], gdt=args["gdt"], gA=args["gA"],
        gB=sb._reduce_partial(args["gB"], sig.b_groups, b, L),
        gC=sb._reduce_partial(args["gC"], sig.c_groups, b, L),
        gD=args["gD"] if D is not None else None, gz=args["gz"] if z is not None else None,
        gh0=args["gh0"] if initial_states is not None else None, D=D)


def ssd_backward(grad_y, grad_final, x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx,
                 checkpoints, dt_softplus, dt_lo, dt_hi, checkpoint_every):
    """The ("ssd", "cpu") backward: ssmc::ssd_bwd's arguments -> its 9-tuple (dx, ddt, dA, dB,
    dC, dD, dz, ddt_bias, dinitial_states; empty for an absent input), or NotImplemented."""
    if not _applies(x, dt, A, B, C, D, z, dt_bias, initial_states, grad_y):
        return NotImplemented
    # the module's ssd_scan_backward, looked up at the call (tests count its runs)
    return common.run_backward(ssd_scan_backward, grad_y, grad_final, x, dt, A, B, C, D, z,
                               dt_bias, initial_states, seq_idx, checkpoints, dt_softplus,
                               dt_lo, dt_hi, checkpoint_every)


__all__ = ["ssd_backward", "ssd_scan_backward"]
