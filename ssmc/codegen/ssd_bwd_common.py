"""The torch side of the Mamba-2 SSD backward kernels, shared by both backends.

The TVM CPU backward (ssmc.codegen.tvm.ssd_bwd) and the Triton backward
(ssmc.codegen.triton.ssd.backward) both run SSD on their Mamba-1 backward kernel in its SSD
mode: channels d = heads * headdim (x (b, L, h, p) is u (b, L, d), the states (b, h, p, n) are
(b, d, n)), dt (b, L, h) and A (h,) read per head, B/C shared by a group's heads, and a keep
mask (b, L) from seq_idx (0 where the state resets before step t).  What is not the kernel is
here, backend-independent:

* `applies`: the dtypes and shapes the kernels take (the device check is the caller's);
* `keep_mask`, `channel_D`: seq_idx and D in the kernels' per-channel terms;
* `reduce_channels`: the kernels' per-channel results -> SSD's shapes

      dA (h,)       per-channel (b, d) sums over the states, summed over b and p
      ddt (b, L, h) per-channel (b, L, d) gradient of the effective step, summed over p
      dD            (b, d) summed over b (and over p for D (h,))

  (B/C partials are reduced by each backend: their layouts differ);
* `run_backward`: ssmc::ssd_bwd's arguments -> its 9-tuple around a backend's reverse scan:
  the effective step (bias, softplus, clamp) and its derivative in torch, as the torch engine
  (ssmc.runtime.library.ssd_backward_torch) does, and the checkpoint interval rule.
"""

from __future__ import annotations

from typing import Callable

import torch

from ssmc.runtime import backward as bw

F32 = torch.float32
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def applies(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None, grad_y=None,
            grad_final=None, **_) -> bool:
    """Whether an SSD backward kernel covers these inputs: fp32/fp16/bf16 (float64 runs the
    torch engine: gradchecks), x (b, L, h, p) and B/C (b, L, g, n) with g dividing h, and a
    non-empty problem.  Devices are for the caller to check."""
    ts = (x, dt, A, B, C, D, z, dt_bias, initial_states, grad_y, grad_final)
    if any(t is not None and t.dtype not in KERNEL_DTYPES for t in ts):
        return False
    if x.dim() != 4 or B.dim() != 4 or C.dim() != 4 or x.numel() == 0 or B.shape[-1] == 0:
        return False
    h = x.shape[2]
    return all(M.shape[2] > 0 and h % M.shape[2] == 0 for M in (B, C))


def keep_mask(seq_idx: torch.Tensor) -> torch.Tensor:
    """(b, L) fp32: 0 where seq_idx changes (the state resets before that step), else 1."""
    same = (seq_idx[:, 1:] == seq_idx[:, :-1]).to(F32)
    return torch.cat([torch.ones_like(same[:, :1]), same], dim=1).contiguous()


def channel_D(D: torch.Tensor | None, p: int) -> torch.Tensor | None:
    """D (h,) or (h, p) -> one per channel (d,) fp32."""
    if D is None:
        return None
    return (D.to(F32).repeat_interleave(p) if D.dim() == 1 else D.reshape(-1).to(F32))


def reduce_channels(shape: tuple, *, gu, gdt, gA, gB, gC, gD=None, gz=None, gh0=None,
                    D=None) -> dict:
    """Per-channel kernel results -> {"x", "dt" (w.r.t. the effective step), "A", "B", "C",
    "D", "z", "h0"} in SSD's shapes (fp32; None for absent inputs).  shape (b, L, h, p, n);
    gu, gdt, gz (b, L, d); gA, gD (b, d); gh0 (b, d, n); gB, gC already (b, L, g, n)."""
    b, L, h, p, n = shape
    rgD = None
    if gD is not None:
        rgD = gD.sum(0).view(h, p)
        rgD = rgD.sum(-1) if D.dim() == 1 else rgD
    return {
        "x": gu.view(b, L, h, p),
        "dt": gdt.view(b, L, h, p).sum(-1),
        "A": gA.view(b, h, p).sum((0, 2)),
        "B": gB, "C": gC, "D": rgD,
        "z": None if gz is None else gz.view(b, L, h, p),
        "h0": None if gh0 is None else gh0.view(b, h, p, n),
    }


def run_backward(scan_backward: Callable, grad_y, grad_final, x, dt, A, B, C, D, z, dt_bias,
                 initial_states, seq_idx, checkpoints, dt_softplus, dt_lo, dt_hi,
                 checkpoint_every) -> tuple:
    """ssmc::ssd_bwd's arguments -> its 9-tuple (dx, ddt, dA, dB, dC, dD, dz, ddt_bias,
    dinitial_states; empty for an absent input), in the inputs' dtypes.  scan_backward(grad_y,
    grad_final, x, dt_eff, A, B, C, D, z, initial_states, seq_idx, checkpoints, K) is a
    backend's reverse scan for the effective step, returning `reduce_channels`' dict."""
    b, L, h, p = x.shape
    n = B.shape[-1]
    bias = None if dt_bias is None else dt_bias.to(F32)
    dt_eff, pre = bw.effective_dt(dt.to(F32), bias, dt_softplus, dt_lo, dt_hi)
    # the same interval as the forward's checkpoints (ssd_backward_torch's rule)
    K = checkpoint_every if checkpoint_every > 0 else bw.chunk_length(b, h * p, n, L)
    gf = grad_final if grad_final is not None and grad_final.numel() else None
    ck = checkpoints if checkpoints is not None and checkpoints.numel() else None
    g = scan_backward(grad_y, gf, x, dt_eff, A, B, C, D, z, initial_states, seq_idx, ck, K)
    g_pre = bw.effective_dt_backward(g["dt"], pre, dt_softplus, dt_lo, dt_hi)

    def empty():
        return x.new_empty((0,))

    return (
        g["x"].to(x.dtype).contiguous(),
        g_pre.to(dt.dtype).contiguous(),
        g["A"].to(A.dtype),
        g["B"].to(B.dtype).contiguous(),
        g["C"].to(C.dtype).contiguous(),
        empty() if D is None else g["D"].to(D.dtype).contiguous(),
        empty() if z is None else g["z"].to(z.dtype).contiguous(),
        empty() if dt_bias is None else g_pre.sum((0, 1)).to(dt_bias.dtype),
        empty() if initial_states is None else g["h0"].to(initial_states.dtype).contiguous(),
    )


__all__ = ["KERNEL_DTYPES", "applies", "channel_D", "keep_mask", "reduce_channels",
           "run_backward"]
