"""torch-facing Mamba-2 SSD scan on the TVM CPU kernels (MODELS.md section 3).

Same kernel builder as the Mamba-1 scan, in its scalar-A-per-head mode: the state of head h is
p x n, channels are (head, p) pairs, exp(dt A) is computed once per step and head.  The
arguments follow mamba_ssm's `mamba_chunk_scan_combined` (x (b, L, h, p), dt (b, L, h), A (h,),
B/C (b, L, g, n)); it is a sequential scan, so `chunk_size` is accepted and ignored: on a CPU the
sequential form does O(L n p) work against the chunked form's O(L Q (n + p)) matmuls.
"""

from __future__ import annotations

import functools
import math

import torch

from ssmc.codegen.tvm import selective_scan_tir as tirb
from ssmc.codegen.tvm.checks import check_tensor, describe, fail
from ssmc.codegen.tvm.config import Config, default_ssd_config, legalize
from ssmc.codegen.tvm.selective_scan import LOG2E, get_kernel

OP = "ssd_scan"
_ssd_default = functools.lru_cache(maxsize=None)(lambda: legalize(default_ssd_config(), "llvm"))
INT_DTYPES = (torch.int32, torch.int64)


def ssd_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None,
             seq_idx=None, dt_softplus=False, dt_limit=(0.0, math.inf),
             return_final_states=False, chunk_size=None, config: Config | None = None,
             cache=None):
    """Mamba-2 SSD: the meaning of ssmc.semantics.selective.ssd_ref.

    x (b, L, h, p); dt (b, L, h); A (h,); B, C (b, L, g, n) with g dividing h; D (h,) or
    (h, p); z (b, L, h, p); dt_bias (h,); initial_states (b, h, p, n); seq_idx (b, L) integer
    (the state restarts where it changes).  Returns y (b, L, h, p) in x's dtype
    [, final_states (b, h, p, n) fp32].
    """
    del chunk_size  # sequential kernel: nothing to chunk
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise fail(OP, "x", "a 4-D tensor (b, L, h, p)", describe(x))
    b, L, h, p = x.shape
    check_tensor(OP, "x", x, [x.shape], f"(b, L, h, p)=({b}, {L}, {h}, {p})")
    check_tensor(OP, "dt", dt, [(b, L, h)], f"(b, L, h)=({b}, {L}, {h})")
    check_tensor(OP, "A", A, [(h,)], f"(h,)=({h},)")
    for name, t in (("B", B), ("C", C)):
        g = t.shape[2] if isinstance(t, torch.Tensor) and t.dim() == 4 else -1
        n = t.shape[3] if g > 0 else 0
        ok = g > 0 and h % g == 0
        check_tensor(OP, name, t, [(b, L, g, n)] if ok else [],
                     f"(b, L, g, n) with b={b} L={L} and g dividing h={h}")
    g, n = B.shape[2], B.shape[3]
    check_tensor(OP, "C", C, [(b, L, C.shape[2], n)], f"(b, L, g, n) with n={n} (as B)")
    if D is not None:
        check_tensor(OP, "D", D, [(h,), (h, p)], f"(h,)=({h},) or (h, p)=({h}, {p})")
    if z is not None:
        check_tensor(OP, "z", z, [(b, L, h, p)], f"(b, L, h, p)=({b}, {L}, {h}, {p})")
    if dt_bias is not None:
        check_tensor(OP, "dt_bias", dt_bias, [(h,)], f"(h,)=({h},)")
    if initial_states is not None:
        check_tensor(OP, "initial_states", initial_states, [(b, h, p, n)],
                     f"(b, h, p, n)=({b}, {h}, {p}, {n})")
    if seq_idx is not None:
        check_tensor(OP, "seq_idx", seq_idx, [(b, L)], f"(b, L)=({b}, {L})", INT_DTYPES)
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise fail(OP, "dt_limit", "a pair (lo, hi) of floats", repr(dt_limit)) from None

    d = h * p
    sig = tirb.ScanSignature(
        d=d, N=n, b_groups=g, c_groups=C.shape[2], heads=h, has_D=D is not None,
        has_z=z is not None, has_delta_bias=dt_bias is not None,
        delta_softplus=bool(dt_softplus), has_initial_state=initial_states is not None,
        return_last_state=bool(return_final_states), has_seq_idx=seq_idx is not None,
        dt_min=lo, dt_max=hi)
    config = _ssd_default() if config is None else legalize(config, "llvm")

    if b == 0 or L == 0:
        y = x.new_zeros(x.shape)
        if not return_final_states:
            return y
        final = torch.zeros(b, h, p, n)
        return y, final if initial_states is None else final + initial_states.float()

    def f32(t):
        return t.to(torch.float32).contiguous()

    args = {"u": f32(x).view(b, L, d), "delta": f32(dt), "A2": f32(A.float() * LOG2E),
            "B": f32(B), "C": f32(C)}
    if D is not None:
        args["D"] = f32(D.float().repeat_interleave(p) if D.dim() == 1 else D.reshape(d))
    if z is not None:
        args["z"] = f32(z).view(b, L, d)
    if dt_bias is not None:
        args["delta_bias"] = f32(dt_bias)
    if seq_idx is not None:
        args["seq_idx"] = seq_idx.to(torch.int32).contiguous()
    if initial_states is not None:
        args["h0"] = f32(initial_states).view(b, d, n)
    args["out"] = torch.empty(b, L, d)
    final = None
    if return_final_states:
        final = torch.empty(b, h, p, n)
        args["h_last"] = final.view(b, d, n)
    get_kernel(sig, config, cache=cache)(*[args[nm] for nm in tirb.arg_names(sig)])
    y = args["out"].view(b, L, h, p)
    if x.dtype != torch.float32:
        y = y.to(x.dtype)
    return (y, final) if return_final_states else y


__all__ = ["ssd_scan"]
