"""ssmc's kernels as PyTorch operators (torch.library), with shapes for fake tensors and gradients.

Operators (namespace ``ssmc``):

  ssmc::selective_scan      Mamba-1 selective scan, layout 'bld' (channels last: u, delta, z
                            (b, L, d); B, C (d, N) or (b, L, g, N); what compiled models pass)
                            or 'bdl' (mamba-ssm's: (b, d, L); B, C (d, N) or (b, g, N, L)).
                            -> (y, last_state, checkpoints)
  ssmc::selective_scan_bwd  its backward (the reverse scan of ssmc.runtime.backward)
  ssmc::ssd                 Mamba-2 SSD (mamba_chunk_scan_combined's layout)
                            -> (y, final_states, checkpoints)
  ssmc::ssd_bwd             its backward
  ssmc::selective_scan_triton, ssmc::ssd_triton
                            the Triton forward as `torch.library.triton_op`s (GPU): torch.compile
                            sees their kernels.  Registered when CUDA is available (or by
                            `register_triton_ops()`, e.g. under TRITON_INTERPRET=1 in tests).

Every forward op has a fake implementation (meta tensors, FakeTensor, torch.compile) and an
autograd formula.  The forward dispatches on the device and dtype: TVM on the CPU, Triton on
CUDA, the vectorised torch engine (`backend="torch"`, ssmc.runtime.backward) for float64 /
complex128 (gradchecks) and devices without kernels, or the eager oracle (`backend="reference"`).

**Checkpoints.**  When gradients are wanted the Python wrappers below pass
``checkpoint_every=K > 0``: the forward then runs the kernel chunk by chunk (K steps each,
chaining the state) and also returns the state at the start of every chunk, (b, ceil(L/K), d, N).
That is all the backward keeps besides the inputs; it never stores (b, L, d, N) states.  With
``checkpoint_every=0`` (inference) the kernel runs in one call and the checkpoints are empty; a
backward then recomputes them with one forward sweep.

**Backward dispatch point.**  ``ssmc::selective_scan_bwd`` / ``ssmc::ssd_bwd`` run the function
registered for (family, device type) with :func:`register_backward`, else the portable torch
reverse scan.  A TVM (CPU) or Triton (CUDA) backward kernel plugs in with::

    from ssmc.runtime.library import register_backward
    register_backward("selective_scan", "cpu", my_tvm_backward)

where ``my_tvm_backward`` takes the op's arguments (see `selective_scan_bwd`'s signature, by
keyword) and returns the same 9-tuple (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias,
dinitial_state; an empty tensor for an absent input), or NotImplemented to decline (e.g. a
shape it does not handle).  A Triton backward that torch.compile should see is a `triton_op`;
register a Python function that calls it.  Registered here (lazily: importing this module does
not import tvm): the TVM CPU backward kernels of both families ("selective_scan", "cpu") and
("ssd", "cpu"), and the Triton ones ("selective_scan", "cuda") and ("ssd", "cuda"), which decline
float64 (gradchecks run the torch engine).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import warnings
from typing import Callable, Optional

import torch
from torch import Tensor

from ssmc.runtime import backward as bw

FAMILIES = ("selective_scan", "ssd")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BACKWARD: dict = {}  # (family, device type) -> fn
_warned: set = set()


def register_backward(family: str, device_type: str, fn: Callable | None) -> None:
    """Route the backward op of `family` ('selective_scan' or 'ssd') on `device_type` ('cpu',
    'cuda', ...) to `fn` (None restores the torch reverse scan)."""
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    if fn is None:
        _BACKWARD.pop((family, device_type), None)
    else:
        _BACKWARD[(family, device_type)] = fn


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, stacklevel=3)


# --------------------------------------------------------------------------- layouts

def _seq_c(t, layout):  # (b, d, L) | (b, L, d) -> (b, L, d) view
    return t if t is None or layout == "bld" else t.transpose(1, 2)


def _seq_u(t, layout):  # canonical -> layout, contiguous
    return (t if layout == "bld" else t.transpose(1, 2)).contiguous()


def _bc_c(M, layout):  # (b, g, N, L) | (b, L, g, N) -> (b, L, g, N); (d, N) stays
    if M.dim() == 2 or layout == "bld":
        return M
    return M.permute(0, 3, 1, 2)


def _bc_u(M, layout):
    if M.dim() == 2 or layout == "bld":
        return M.contiguous()
    return M.permute(0, 2, 3, 1).contiguous()


def _dims(u, layout):
    if layout == "bdl":
        b, d, L = u.shape
    else:
        b, L, d = u.shape
    return b, d, L


def _wide(*ts) -> bool:
    return any(t is not None and t.dtype in (torch.float64, torch.complex128) for t in ts)


def _empty(like):
    return like.new_empty((0,))


# --------------------------------------------------------------------------- backends

OP_BACKENDS = ("auto", "tvm", "triton", "torch", "reference")
LAYOUTS = ("bld", "bdl")


def check_op_strings(backend: str, layout: str | None = None) -> None:
    """The ops' string arguments (torch.library checks only their types): an unknown backend
    would quietly run the torch engine, an unknown layout read the tensors transposed."""
    from ssmc.runtime.checks import ArgumentError

    if backend not in OP_BACKENDS:
        raise ArgumentError(f"backend: expected one of {', '.join(OP_BACKENDS)}, got {backend!r}")
    if layout is not None and layout not in LAYOUTS:
        raise ArgumentError(f"layout: expected 'bld' or 'bdl', got {layout!r}")


def _kernel_backend(family: str, backend: str, device, tensors) -> str:
    """'tvm' | 'triton' | 'reference' | 'torch' for this call."""
    if backend == "torch" or backend == "reference":
        return backend
    if _wide(*tensors) or any(t is not None and not t.is_complex() and t.dtype not in KERNEL_DTYPES
                              for t in tensors):
        return "torch"
    if backend == "auto":
        if device.type == "cuda":
            backend = "triton"
        elif device.type == "cpu":
            backend = "tvm"
        else:
            return "torch"
    if family == "ssd" and backend == "tvm" and not _registered("selective_ssm/ssd", "tvm"):
        return "torch"  # no TVM SSD kernel registered: the vectorised engine beats the oracle
    return backend


def _registered(fam: str, backend: str) -> list:
    """The algorithms dispatch.KERNELS has a `backend` kernel for."""
    from ssmc.runtime.dispatch import algorithms_with_kernel

    return list(algorithms_with_kernel(fam, backend))


def _load_kernel(family: str, backend: str, algorithm: str):
    from ssmc.runtime import dispatch

    fam = "selective_ssm/mamba1" if family == "selective_scan" else "selective_ssm/ssd"
    if backend == "reference":
        return dispatch.kernel(fam, None, "reference")
    try:
        return dispatch.kernel(fam, algorithm or None, backend, strict=True)
    except Exception as e:  # noqa: BLE001 - a backend that does not import here
        _warn_once(f"ssmc: {backend} kernel for {family} unavailable ({e}); running the torch "
                   "engine instead")
        return None


def _tvm_config(config: str):
    """JSON knobs (a node's schedule config) -> the TVM kernel's Config, the same way the
    compiled models' eager path converts them (so both paths share one cached kernel)."""
    if not config:
        return None
    raw = json.loads(config)
    try:
        from ssmc.runtime.executors import tvm_config
    except ImportError:
        tvm_config = None
    if tvm_config is not None:
        return tvm_config(raw)
    from dataclasses import fields

    from ssmc.codegen.tvm.config import Config, default_config

    names = {f.name for f in fields(Config)}
    return default_config("llvm").replace(**{k: v for k, v in raw.items() if k in names})


def _triton_config(family: str, algorithm: str, config: str):
    """JSON knobs -> the Triton family's Config (upper-case schedule names accepted)."""
    if not config:
        return None
    raw = json.loads(config)
    fam = "selective_ssm/mamba1" if family == "selective_scan" else "selective_ssm/ssd"
    try:
        from ssmc.runtime.executors import triton_config
    except ImportError:
        triton_config = None
    if triton_config is not None:
        return triton_config(fam, algorithm or ("chunked" if family == "ssd" else "sequential"),
                             raw)
    from dataclasses import fields

    if family == "ssd":
        from ssmc.codegen.triton.ssd import SsdChunkedConfig as cls
    else:
        from ssmc.codegen.triton import selective_scan as ss

        cls = {"sequential": ss.SequentialScanConfig, "associative": ss.AssociativeScanConfig,
               "chunked": ss.ChunkedScanConfig}[algorithm or "sequential"]
    names = {f.name for f in fields(cls)}
    knobs = {k.lower(): v for k, v in raw.items() if k.lower() in names}
    return cls(**knobs) if knobs else None


# --------------------------------------------------------------------------- Mamba-1: engine

def _mamba1_problem(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, conj_pair, layout):
    cplx = A.is_complex()
    rdt, sdt = bw.compute_dtypes(u, delta, A, B, C, D, z, delta_bias, h0, cplx=cplx)
    dc = _seq_c(delta, layout).to(rdt)
    bias = None if delta_bias is None else delta_bias.to(rdt)
    dt, pre = bw.effective_dt(dc, bias, delta_softplus)

    def bc(M):
        M = _bc_c(M, layout)
        return M.to(sdt if M.is_complex() else rdt)

    p = bw.ScanProblem(
        u=_seq_c(u, layout).to(rdt), dt=dt, A=A.to(sdt), B=bc(B), C=bc(C),
        D=None if D is None else D.to(rdt), z=None if z is None else _seq_c(z, layout).to(rdt),
        h0=None if h0 is None else h0.to(sdt),
        scale=(2.0 if conj_pair else 1.0) if cplx else 1.0)
    return p, pre


def _slice_seq(t, layout, s, e):
    if t is None:
        return None
    return t[:, s:e] if layout == "bld" else t[..., s:e]


def _slice_bc(M, layout, s, e):
    if M.dim() == 2:
        return M
    return M[:, s:e] if layout == "bld" else M[..., s:e]


def _mamba1_call(kind, fn, algorithm, config, u, delta, A, B, C, D, z, bias, h0, softplus,
                 conj_pair, layout, want_last):
    """One kernel call in `layout`: (y, last or None)."""
    if kind == "tvm":
        out = fn(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=softplus,
                 return_last_state=want_last, initial_state=h0, layout=layout,
                 config=_tvm_config(config), conj_pair=conj_pair)
        return (out[0], out[1]) if want_last else (out, None)
    # Triton launchers and the oracle take mamba-ssm's (b, d, L) layout
    if layout == "bld":
        u, delta = u.transpose(1, 2), delta.transpose(1, 2)
        z = None if z is None else z.transpose(1, 2)
        B = B if B.dim() == 2 else B.permute(0, 2, 3, 1)
        C = C if C.dim() == 2 else C.permute(0, 2, 3, 1)
    if kind == "reference":
        B = B[:, 0] if B.dim() == 4 and B.shape[1] == 1 else B
        C = C[:, 0] if C.dim() == 4 and C.shape[1] == 1 else C
        out = fn(u, delta, A, B, C, D, z, bias, softplus, want_last, h0, conj_pair)
    else:
        out = fn(u, delta, A, B, C, D, z, bias, softplus, want_last, h0, conj_pair,
                 config=_triton_config("selective_scan", algorithm, config))
    y, last = (out[0], out[1]) if want_last else (out, None)
    if layout == "bld":
        y = y.transpose(1, 2)
    return y, last


def _selective_scan_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                            conj_pair, layout, return_last_state, checkpoint_every, backend,
                            algorithm, config):
    check_op_strings(backend, layout)
    b, d, L = _dims(u, layout)
    N = A.shape[1]
    _, sdt = bw.compute_dtypes(u, delta, A, B, C, D, z, delta_bias, initial_state,
                               cplx=A.is_complex())
    K = int(checkpoint_every)
    kind = _kernel_backend("selective_scan", backend, u.device,
                           (u, delta, A, B, C, D, z, delta_bias, initial_state))
    fn = None
    if kind != "torch":
        fn = _load_kernel("selective_scan", kind, algorithm)
        if fn is None:
            kind = "torch"
    if kind == "torch":
        p, _ = _mamba1_problem(u, delta, A, B, C, D, z, delta_bias, initial_state,
                               delta_softplus, conj_pair, layout)
        y, last, ck = bw.scan_forward(p, K if K > 0 else bw.chunk_length(b, d, N, L), K > 0)
        y = _seq_u(y.to(u.dtype), layout)
        ck = ck if K > 0 else last.new_empty(b, 0, d, N)
        return y, (last.contiguous() if return_last_state else _empty(last)), ck.contiguous()
    if K <= 0 or L == 0:
        y, last = _mamba1_call(kind, fn, algorithm, config, u, delta, A, B, C, D, z, delta_bias,
                               initial_state, delta_softplus, conj_pair, layout,
                               return_last_state)
        last = last.to(sdt).contiguous() if return_last_state else u.new_empty((0,), dtype=sdt)
        return y.contiguous(), last, u.new_empty((b, 0, d, N), dtype=sdt)
    ys, ckpts = [], []
    h = initial_state.to(sdt) if initial_state is not None else \
        torch.zeros(b, d, N, dtype=sdt, device=u.device)
    for s in range(0, L, K):
        e = min(s + K, L)
        ckpts.append(h)
        y, h = _mamba1_call(kind, fn, algorithm, config, _slice_seq(u, layout, s, e),
                            _slice_seq(delta, layout, s, e), A, _slice_bc(B, layout, s, e),
                            _slice_bc(C, layout, s, e), D, _slice_seq(z, layout, s, e),
                            delta_bias, h, delta_softplus, conj_pair, layout, True)
        h = h.to(sdt)
        ys.append(y)
    y = torch.cat(ys, dim=1 if layout == "bld" else 2).contiguous()
    last = h.contiguous() if return_last_state else u.new_empty((0,), dtype=sdt)
    return y, last, torch.stack(ckpts, 1)


@torch.library.custom_op("ssmc::selective_scan", mutates_args=())
def selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                      D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                      initial_state: Optional[Tensor], delta_softplus: bool, conj_pair: bool,
                      layout: str, return_last_state: bool, checkpoint_every: int,
                      backend: str, algorithm: str, config: str
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Mamba-1 selective scan -> (y in u's layout and dtype, last state (b, d, N) or empty,
    checkpoints (b, nc, d, N))."""
    return _selective_scan_forward(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                   delta_softplus, conj_pair, layout, return_last_state,
                                   checkpoint_every, backend, algorithm, config)


def _selective_scan_fake(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                         conj_pair, layout, return_last_state, checkpoint_every, backend,
                         algorithm, config):
    check_op_strings(backend, layout)
    b, d, L = _dims(u, layout)
    N = A.shape[1]
    _, sdt = bw.compute_dtypes(u, delta, A, B, C, D, z, delta_bias, initial_state,
                               cplx=A.is_complex())
    K = checkpoint_every
    nc = (L + K - 1) // K if K > 0 else 0
    last = u.new_empty((b, d, N), dtype=sdt) if return_last_state else u.new_empty((0,), dtype=sdt)
    return u.new_empty(u.shape), last, u.new_empty((b, nc, d, N), dtype=sdt)


selective_scan_op.register_fake(_selective_scan_fake)


@torch.library.custom_op("ssmc::selective_scan_bwd", mutates_args=())
def selective_scan_bwd_op(grad_y: Tensor, grad_last: Optional[Tensor], u: Tensor, delta: Tensor,
                          A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                          z: Optional[Tensor], delta_bias: Optional[Tensor],
                          initial_state: Optional[Tensor], checkpoints: Optional[Tensor],
                          delta_softplus: bool, conj_pair: bool, layout: str,
                          checkpoint_every: int
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                     Tensor, Tensor]:
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state); an empty tensor
    for an input that was None."""
    kw = dict(grad_y=grad_y, grad_last=grad_last, u=u, delta=delta, A=A, B=B, C=C, D=D, z=z,
              delta_bias=delta_bias, initial_state=initial_state, checkpoints=checkpoints,
              delta_softplus=delta_softplus, conj_pair=conj_pair, layout=layout,
              checkpoint_every=checkpoint_every)
    impl = _BACKWARD.get(("selective_scan", u.device.type))
    if impl is not None:
        out = impl(**kw)
        if out is not NotImplemented:
            return tuple(out)
    return selective_scan_backward_torch(**kw)


def selective_scan_backward_torch(grad_y, grad_last, u, delta, A, B, C, D, z, delta_bias,
                                  initial_state, checkpoints, delta_softplus, conj_pair, layout,
                                  checkpoint_every, scan_backward=None):
    """The portable backward: the chunked reverse scan of ssmc.runtime.backward.
    scan_backward: a kernel with bw.scan_backward's arguments and result that replaces it
    (everything around the reverse scan, e.g. the step size's derivatives, stays shared)."""
    b, d, L = _dims(u, layout)
    N = A.shape[1]
    p, pre = _mamba1_problem(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                             conj_pair, layout)
    K = checkpoint_every if checkpoint_every > 0 else bw.chunk_length(b, d, N, L)
    ck = checkpoints if checkpoints is not None and checkpoints.numel() else None
    gl = grad_last if grad_last is not None and grad_last.numel() else None
    g = (scan_backward or bw.scan_backward)(p, _seq_c(grad_y, layout), gl, ck, K)
    g_pre = bw.effective_dt_backward(g["dt"], pre, delta_softplus)
    out = [
        _seq_u(g["u"], layout).to(u.dtype),
        _seq_u(g_pre, layout).to(delta.dtype),
        g["A"].to(A.dtype).contiguous(),
        _bc_u(g["B"], layout).to(B.dtype),
        _bc_u(g["C"], layout).to(C.dtype),
        _empty(u) if D is None else g["D"].to(D.dtype).contiguous(),
        _empty(u) if z is None else _seq_u(g["z"], layout).to(z.dtype),
        _empty(u) if delta_bias is None else g_pre.sum((0, 1)).to(delta_bias.dtype),
        _empty(u) if initial_state is None else g["h0"].to(initial_state.dtype).contiguous(),
    ]
    return tuple(out)


class _LazyBackward:
    """A registered backward whose module is imported on its first call: importing tvm (or a
    Triton kernel module) costs seconds, which importing this module must not.  Where the
    module does not import it declines (NotImplemented: the torch engine runs), once warned."""

    def __init__(self, module: str, attr: str, what: str, doc: str):
        self.module, self.attr, self.what, self.fn = module, attr, what, None
        self.__doc__ = doc

    def __call__(self, **kw):
        if self.fn is None:
            try:
                self.fn = getattr(importlib.import_module(self.module), self.attr)
            except ImportError as e:
                _warn_once(f"ssmc: {self.what} unavailable ({e}); running the torch engine")
                self.fn = _decline
        return self.fn(**kw)


def _decline(**_kw):
    return NotImplemented


selective_scan_backward_tvm = _LazyBackward(
    "ssmc.codegen.tvm.selective_scan_bwd", "selective_scan_backward", "TVM backward",
    "The TVM CPU backward kernel (ssmc.codegen.tvm.selective_scan_bwd).")
register_backward("selective_scan", "cpu", selective_scan_backward_tvm)
selective_scan_backward_triton = _LazyBackward(
    "ssmc.codegen.triton.selective_scan.backward", "selective_scan_backward", "Triton backward",
    "The Triton backward kernel (ssmc.codegen.triton.selective_scan.backward: the reverse scan "
    "per channel block, states recomputed from the checkpoints); declines complex A/B/C and "
    "float64.")
register_backward("selective_scan", "cuda", selective_scan_backward_triton)


def _like(t):
    return t.new_empty(t.shape)


@selective_scan_bwd_op.register_fake
def _(grad_y, grad_last, u, delta, A, B, C, D, z, delta_bias, initial_state, checkpoints,
      delta_softplus, conj_pair, layout, checkpoint_every):
    opt = [_empty(u) if t is None else _like(t) for t in (D, z, delta_bias, initial_state)]
    return (_like(u), _like(delta), _like(A), _like(B), _like(C), *opt)


def _ss_setup(ctx, inputs, output):
    (u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, conj_pair, layout,
     return_last_state, checkpoint_every, *_rest) = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h0, output[2])
    ctx.flags = (delta_softplus, conj_pair, layout, return_last_state, checkpoint_every)


def _ss_backward(ctx, grad_y, grad_last, _grad_ckpt):
    u, delta, A, B, C, D, z, delta_bias, h0, ck = ctx.saved_tensors
    softplus, conj_pair, layout, rls, K = ctx.flags
    if grad_y is None:
        grad_y = torch.zeros_like(u)
    if not rls or grad_last is None or grad_last.numel() == 0:
        grad_last = None
    grads = torch.ops.ssmc.selective_scan_bwd(
        grad_y, grad_last, u, delta, A, B, C, D, z, delta_bias, h0,
        ck if ck.numel() else None, softplus, conj_pair, layout, K)
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = grads
    return (du, ddelta, dA, dB, dC, None if D is None else dD, None if z is None else dz,
            None if delta_bias is None else dbias, None if h0 is None else dh0,
            None, None, None, None, None, None, None, None)


selective_scan_op.register_autograd(_ss_backward, setup_context=_ss_setup)


# --------------------------------------------------------------------------- Mamba-2 SSD

def _ssd_problem(x, dt, A, B, C, D, z, dt_bias, h0, seq_idx, softplus, lo, hi):
    b, L, h, p = x.shape
    n = B.shape[-1]
    d = h * p
    rdt, _ = bw.compute_dtypes(x, dt, A, B, C, D, z, dt_bias, h0, cplx=False)
    bias = None if dt_bias is None else dt_bias.to(rdt)
    dtv, pre = bw.effective_dt(dt.to(rdt), bias, softplus, lo, hi)
    Dd = None
    if D is not None:
        Dd = (D.repeat_interleave(p) if D.dim() == 1 else D.reshape(d)).to(rdt)
    keep = None
    if seq_idx is not None:
        same = (seq_idx[:, 1:] == seq_idx[:, :-1]).to(rdt)
        keep = torch.cat([torch.ones_like(same[:, :1]), same], dim=1)
    prob = bw.ScanProblem(
        u=x.reshape(b, L, d).to(rdt), dt=dtv.repeat_interleave(p, dim=-1),
        A=A.to(rdt).repeat_interleave(p)[:, None], B=B.to(rdt), C=C.to(rdt), D=Dd,
        z=None if z is None else z.reshape(b, L, d).to(rdt),
        h0=None if h0 is None else h0.reshape(b, d, n).to(rdt), keep=keep)
    return prob, pre


def _ssd_call(kind, fn, config, x, dt, A, B, C, chunk_size, D, z, dt_bias, h0, seq_idx,
              softplus, lo, hi, want_final):
    if kind == "reference":
        out = fn(x, dt, A, B, C, D, z, dt_bias, h0, seq_idx, softplus, (lo, hi), want_final)
    elif kind == "tvm":  # ssmc.codegen.tvm.ssd: the oracle's argument order, plus knobs
        out = fn(x, dt, A, B, C, D, z, dt_bias, h0, seq_idx, softplus, (lo, hi), want_final,
                 config=_tvm_config(config))
    else:
        out = fn(x, dt, A, B, C, chunk_size, D, z, dt_bias, h0, seq_idx, softplus, (lo, hi),
                 want_final, config=_triton_config("ssd", "chunked", config))
    return (out[0], out[1]) if want_final else (out, None)


def _ssd_forward(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, chunk_size,
                 dt_softplus, dt_lo, dt_hi, return_final_states, checkpoint_every, backend,
                 config):
    check_op_strings(backend)
    b, L, h, p = x.shape
    n = B.shape[-1]
    rdt, _ = bw.compute_dtypes(x, dt, A, B, C, D, z, dt_bias, initial_states, cplx=False)
    K = int(checkpoint_every)
    kind = _kernel_backend("ssd", backend, x.device, (x, dt, A, B, C, D, z, dt_bias,
                                                       initial_states))
    fn = None
    if kind != "torch":
        algs = _registered("selective_ssm/ssd", kind) if kind != "reference" else ["chunked"]
        fn = _load_kernel("ssd", kind, "chunked" if "chunked" in algs else algs[0])
        if fn is None:
            kind = "torch"
    if kind == "torch":
        prob, _ = _ssd_problem(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx,
                               dt_softplus, dt_lo, dt_hi)
        y, last, ck = bw.scan_forward(prob, K if K > 0 else bw.chunk_length(b, h * p, n, L),
                                      K > 0)
        y = y.reshape(b, L, h, p).to(x.dtype).contiguous()
        last = last.reshape(b, h, p, n).contiguous() if return_final_states else _empty(last)
        ck = ck.reshape(b, -1, h, p, n).contiguous() if K > 0 else \
            y.new_empty((b, 0, h, p, n), dtype=rdt)
        return y, last, ck
    if K <= 0 or L == 0:
        y, last = _ssd_call(kind, fn, config, x, dt, A, B, C, chunk_size, D, z, dt_bias,
                            initial_states, seq_idx, dt_softplus, dt_lo, dt_hi,
                            return_final_states)
        last = last.to(rdt).contiguous() if return_final_states else x.new_empty((0,), dtype=rdt)
        return y.contiguous(), last, x.new_empty((b, 0, h, p, n), dtype=rdt)
    ys, ckpts = [], []
    hst = initial_states.to(rdt) if initial_states is not None else \
        torch.zeros(b, h, p, n, dtype=rdt, device=x.device)
    for s in range(0, L, K):
        e = min(s + K, L)
        ckpts.append(hst)
        h_in = hst
        if seq_idx is not None and s > 0:  # a sequence starting at s: the state resets
            keep = (seq_idx[:, s] == seq_idx[:, s - 1]).to(rdt)
            h_in = hst * keep[:, None, None, None]
        y, hst = _ssd_call(kind, fn, config, x[:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e],
                           chunk_size, D, None if z is None else z[:, s:e], dt_bias, h_in,
                           None if seq_idx is None else seq_idx[:, s:e], dt_softplus, dt_lo,
                           dt_hi, True)
        hst = hst.to(rdt)
        ys.append(y)
    y = torch.cat(ys, dim=1).contiguous()
    last = hst.contiguous() if return_final_states else x.new_empty((0,), dtype=rdt)
    return y, last, torch.stack(ckpts, 1)


@torch.library.custom_op("ssmc::ssd", mutates_args=())
def ssd_op(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
           z: Optional[Tensor], dt_bias: Optional[Tensor], initial_states: Optional[Tensor],
           seq_idx: Optional[Tensor], chunk_size: int, dt_softplus: bool, dt_lo: float,
           dt_hi: float, return_final_states: bool, checkpoint_every: int, backend: str,
           config: str) -> tuple[Tensor, Tensor, Tensor]:
    """Mamba-2 SSD -> (y (b, L, h, p), final states (b, h, p, n) or empty, checkpoints
    (b, nc, h, p, n))."""
    return _ssd_forward(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, chunk_size,
                        dt_softplus, dt_lo, dt_hi, return_final_states, checkpoint_every,
                        backend, config)


def _ssd_fake(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, chunk_size, dt_softplus,
              dt_lo, dt_hi, return_final_states, checkpoint_every, backend, config):
    check_op_strings(backend)
    b, L, h, p = x.shape
    n = B.shape[-1]
    rdt, _ = bw.compute_dtypes(x, dt, A, B, C, D, z, dt_bias, initial_states, cplx=False)
    K = checkpoint_every
    nc = (L + K - 1) // K if K > 0 else 0
    last = x.new_empty((b, h, p, n), dtype=rdt) if return_final_states else \
        x.new_empty((0,), dtype=rdt)
    return x.new_empty(x.shape), last, x.new_empty((b, nc, h, p, n), dtype=rdt)


ssd_op.register_fake(_ssd_fake)


@torch.library.custom_op("ssmc::ssd_bwd", mutates_args=())
def ssd_bwd_op(grad_y: Tensor, grad_final: Optional[Tensor], x: Tensor, dt: Tensor, A: Tensor,
               B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
               dt_bias: Optional[Tensor], initial_states: Optional[Tensor],
               seq_idx: Optional[Tensor], checkpoints: Optional[Tensor], dt_softplus: bool,
               dt_lo: float, dt_hi: float, checkpoint_every: int
               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                          Tensor]:
    """Gradients (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states); an empty tensor for
    an input that was None."""
    kw = dict(grad_y=grad_y, grad_final=grad_final, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z,
              dt_bias=dt_bias, initial_states=initial_states, seq_idx=seq_idx,
              checkpoints=checkpoints, dt_softplus=dt_softplus, dt_lo=dt_lo, dt_hi=dt_hi,
              checkpoint_every=checkpoint_every)
    impl = _BACKWARD.get(("ssd", x.device.type))
    if impl is not None:
        out = impl(**kw)
        if out is not NotImplemented:
            return tuple(out)
    return ssd_backward_torch(**kw)


def ssd_backward_torch(grad_y, grad_final, x, dt, A, B, C, D, z, dt_bias, initial_states,
                       seq_idx, checkpoints, dt_softplus, dt_lo, dt_hi, checkpoint_every):
    b, L, h, p = x.shape
    n = B.shape[-1]
    d = h * p
    prob, pre = _ssd_problem(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx,
                             dt_softplus, dt_lo, dt_hi)
    K = checkpoint_every if checkpoint_every > 0 else bw.chunk_length(b, d, n, L)
    ck = None
    if checkpoints is not None and checkpoints.numel():
        ck = checkpoints.reshape(b, -1, d, n)
    gf = None
    if grad_final is not None and grad_final.numel():
        gf = grad_final.reshape(b, d, n)
    g = bw.scan_backward(prob, grad_y.reshape(b, L, d), gf, ck, K)
    g_dt = g["dt"].reshape(b, L, h, p).sum(-1)
    g_pre = bw.effective_dt_backward(g_dt, pre, dt_softplus, dt_lo, dt_hi)
    dD = _empty(x)
    if D is not None:
        gD = g["D"].reshape(h, p)
        dD = (gD.sum(-1) if D.dim() == 1 else gD).to(D.dtype).contiguous()
    return (
        g["u"].reshape(b, L, h, p).to(x.dtype).contiguous(),
        g_pre.to(dt.dtype).contiguous(),
        g["A"].reshape(h, p).sum(-1).to(A.dtype),
        g["B"].to(B.dtype).contiguous(),
        g["C"].to(C.dtype).contiguous(),
        dD,
        _empty(x) if z is None else g["z"].reshape(b, L, h, p).to(z.dtype).contiguous(),
        _empty(x) if dt_bias is None else g_pre.sum((0, 1)).to(dt_bias.dtype),
        _empty(x) if initial_states is None else
        g["h0"].reshape(b, h, p, n).to(initial_states.dtype).contiguous(),
    )


ssd_backward_tvm = _LazyBackward(
    "ssmc.codegen.tvm.ssd_bwd", "ssd_backward", "TVM SSD backward",
    "The TVM CPU backward of SSD (ssmc.codegen.tvm.ssd_bwd: the Mamba-1 backward kernel in its "
    "scalar-A-per-head mode, with a keep mask for seq_idx); declines float64, so gradchecks use "
    "the engine.")
register_backward("ssd", "cpu", ssd_backward_tvm)
ssd_backward_triton = _LazyBackward(
    "ssmc.codegen.triton.ssd.backward", "ssd_backward", "Triton SSD backward",
    "The Triton backward of SSD (ssmc.codegen.triton.ssd.backward: the Mamba-1 backward kernel "
    "in its SSD mode, with a keep mask for seq_idx); declines float64.")
register_backward("ssd", "cuda", ssd_backward_triton)


@ssd_bwd_op.register_fake
def _(grad_y, grad_final, x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, checkpoints,
      dt_softplus, dt_lo, dt_hi, checkpoint_every):
    opt = [_empty(x) if t is None else _like(t) for t in (D, z, dt_bias, initial_states)]
    return (_like(x), _like(dt), _like(A), _like(B), _like(C), *opt)


def _ssd_setup(ctx, inputs, output):
    (x, dt, A, B, C, D, z, dt_bias, h0, seq_idx, chunk_size, softplus, lo, hi, rfs, K,
     *_rest) = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, h0, seq_idx, output[2])
    ctx.flags = (softplus, lo, hi, rfs, K)


def _ssd_backward(ctx, grad_y, grad_final, _grad_ckpt):
    x, dt, A, B, C, D, z, dt_bias, h0, seq_idx, ck = ctx.saved_tensors
    softplus, lo, hi, rfs, K = ctx.flags
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    if not rfs or grad_final is None or grad_final.numel() == 0:
        grad_final = None
    g = torch.ops.ssmc.ssd_bwd(grad_y, grad_final, x, dt, A, B, C, D, z, dt_bias, h0, seq_idx,
                               ck if ck.numel() else None, softplus, lo, hi, K)
    dx, ddt, dA, dB, dC, dD, dz, dbias, dh0 = g
    return (dx, ddt, dA, dB, dC, None if D is None else dD, None if z is None else dz,
            None if dt_bias is None else dbias, None if h0 is None else dh0,
            None, None, None, None, None, None, None, None, None)


ssd_op.register_autograd(_ssd_backward, setup_context=_ssd_setup)


# --------------------------------------------------------------------------- Triton ops (GPU)

_TRITON_OPS: dict = {}


def _triton_scan_chunk(u, delta, A, B, C, D, z, delta_bias, h0, softplus, conj_pair, algorithm,
                       config):
    """One sequential-scan plan on (b, d, L) inputs -> (y, last)."""
    from ssmc.codegen.triton.common import run_traceable
    from ssmc.codegen.triton.selective_scan.problem import selective_scan_problem
    from ssmc.codegen.triton.selective_scan.sequential import plan_sequential

    prob = selective_scan_problem(u, delta, A, B, C, D, z, delta_bias, softplus, True, h0,
                                  conj_pair)
    plan = plan_sequential(prob, _triton_config("selective_scan", "sequential", config))
    out, h_out = run_traceable(plan)
    return out, prob.last_state_view(h_out)


def _selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Optional[Tensor], z: Optional[Tensor],
                           delta_bias: Optional[Tensor], initial_state: Optional[Tensor],
                           delta_softplus: bool, conj_pair: bool, layout: str,
                           return_last_state: bool, checkpoint_every: int, backend: str,
                           algorithm: str, config: str) -> tuple[Tensor, Tensor, Tensor]:
    b, d, L = _dims(u, layout)
    N = A.shape[1]
    sdt = torch.complex64 if A.is_complex() else torch.float32
    if layout == "bld":  # the launchers read (b, d, L); B/C of any strides
        u, delta = u.transpose(1, 2), delta.transpose(1, 2)
        z = None if z is None else z.transpose(1, 2)
        B = B if B.dim() == 2 else B.permute(0, 2, 3, 1)
        C = C if C.dim() == 2 else C.permute(0, 2, 3, 1)
    K = checkpoint_every if checkpoint_every > 0 else max(L, 1)
    h = initial_state.to(sdt) if initial_state is not None else u.new_zeros((b, d, N), dtype=sdt)
    ys, ckpts = [], []
    for s in range(0, L, K):
        e = min(s + K, L)
        ckpts.append(h)
        y, h = _triton_scan_chunk(
            u[..., s:e], delta[..., s:e], A, B if B.dim() == 2 else B[..., s:e],
            C if C.dim() == 2 else C[..., s:e], D, None if z is None else z[..., s:e],
            delta_bias, h, delta_softplus, conj_pair, algorithm, config)
        ys.append(y)
    y = torch.cat(ys, dim=2) if ys else u.new_empty(u.shape)
    y = (y.transpose(1, 2) if layout == "bld" else y).contiguous()
    last = h.contiguous() if return_last_state else u.new_empty((0,), dtype=sdt)
    ck = torch.stack(ckpts, 1) if checkpoint_every > 0 and ckpts else \
        u.new_empty((b, 0, d, N), dtype=sdt)
    return y, last, ck


def _ssd_triton(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                z: Optional[Tensor], dt_bias: Optional[Tensor],
                initial_states: Optional[Tensor], seq_idx: Optional[Tensor], chunk_size: int,
                dt_softplus: bool, dt_lo: float, dt_hi: float, return_final_states: bool,
                checkpoint_every: int, backend: str, config: str
                ) -> tuple[Tensor, Tensor, Tensor]:
    from ssmc.codegen.triton.common import run_traceable
    from ssmc.codegen.triton.ssd.chunked import plan_ssd_chunked
    from ssmc.codegen.triton.ssd.problem import ssd_problem

    b, L, h, p = x.shape
    n = B.shape[-1]
    cfg = _triton_config("ssd", "chunked", config)
    K = checkpoint_every if checkpoint_every > 0 else max(L, 1)
    hst = initial_states.float() if initial_states is not None else \
        x.new_zeros((b, h, p, n), dtype=torch.float32)
    ys, ckpts = [], []
    for s in range(0, L, K):
        e = min(s + K, L)
        ckpts.append(hst)
        h_in = hst
        if seq_idx is not None and s > 0:
            h_in = hst * (seq_idx[:, s] == seq_idx[:, s - 1]).float()[:, None, None, None]
        prob = ssd_problem(x[:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e], chunk_size, D,
                           None if z is None else z[:, s:e], dt_bias, h_in,
                           None if seq_idx is None else seq_idx[:, s:e], dt_softplus,
                           (dt_lo, dt_hi), True)
        plan = plan_ssd_chunked(prob, cfg, chunk_size) if cfg is not None else \
            plan_ssd_chunked(prob, None, chunk_size)
        y, hst = run_traceable(plan)
        ys.append(y)
    y = torch.cat(ys, dim=1) if ys else x.new_empty(x.shape)
    last = hst.contiguous() if return_final_states else x.new_empty((0,), dtype=torch.float32)
    ck = torch.stack(ckpts, 1) if checkpoint_every > 0 and ckpts else \
        x.new_empty((b, 0, h, p, n), dtype=torch.float32)
    return y.contiguous(), last, ck


def register_triton_ops() -> dict:
    """Define ssmc::selective_scan_triton and ssmc::ssd_triton (triton_op + wrap_triton), with
    the same autograd formulas as the generic ops.  Idempotent; imports triton."""
    if _TRITON_OPS:
        return _TRITON_OPS
    from ssmc.codegen.triton.common import library_op

    ss = library_op("ssmc::selective_scan_triton", _selective_scan_triton)
    ss.register_autograd(_ss_backward, setup_context=_ss_setup)
    sd = library_op("ssmc::ssd_triton", _ssd_triton)
    sd.register_autograd(_ssd_backward, setup_context=_ssd_setup)
    _TRITON_OPS.update(selective_scan=ss, ssd=sd)
    return _TRITON_OPS


def _use_triton_op(family: str, device, backend: str, tensors) -> bool:
    return (device.type == "cuda" and backend in ("auto", "triton") and not _wide(*tensors)
            and family in _TRITON_OPS)


if torch.cuda.is_available() and not _interpreting():  # GPU hosts: torch.compile sees kernels
    try:
        register_triton_ops()
    except Exception as e:  # noqa: BLE001 - no working triton: the generic ops still run
        warnings.warn(f"ssmc: Triton ops not registered ({e})")


# --------------------------------------------------------------------------- Python API

def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _recomputing_backward(family: str, backend: str, device, tensors) -> bool:
    """Whether the backward of this call is a TVM kernel that recomputes the checkpoints in one
    in-kernel sweep: then the forward runs as one kernel call and saves none.  Saving them costs
    a kernel call per K steps with torch slicing in between (measured at b2 d256 N16 L1024 on
    the CPU: fwd+bwd 60 ms with checkpoints vs 24 ms recomputing); the torch engine's
    recomputation is a full vectorised forward, so it keeps the saved ones."""
    if _kernel_backend(family, backend, device, tensors) != "tvm" or (family, "cpu") not in _BACKWARD:
        return False
    return not any(t is not None and (t.is_complex() or t.dtype == torch.float64) for t in tensors)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                   delta_softplus=False, conj_pair=True, layout="bld", return_last_state=False,
                   backend="auto", algorithm="", config="", checkpoint_every=None):
    """The Mamba-1 selective scan through the ssmc ops (differentiable, torch.compile-able).

    layout 'bld': u, delta, z (b, L, d); B, C (d, N) or (b, L, g, N).  layout 'bdl': (b, d, L);
    B, C (d, N) or (b, g, N, L).  A (d, N) real or complex; D, delta_bias (d,); initial_state
    (b, d, N).  backend: auto | tvm | triton | torch | reference; algorithm: the Triton
    algorithm (sequential by default); config: a JSON string of kernel knobs.
    checkpoint_every: steps per saved state (None: chosen from the shape when gradients are
    needed and the backward is not a TVM kernel that recomputes them, else 0).  Returns y [, last_state]."""
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    if checkpoint_every is None:
        checkpoint_every = 0
        if _needs_grad(*tensors) and not _recomputing_backward("selective_scan", backend,
                                                               u.device, tensors):
            b, d, L = _dims(u, layout)
            checkpoint_every = bw.chunk_length(b, d, A.shape[1], L)
    op = torch.ops.ssmc.selective_scan
    if _use_triton_op("selective_scan", u.device, backend, tensors):
        op = torch.ops.ssmc.selective_scan_triton
    y, last, _ = op(u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus),
                    bool(conj_pair), layout, bool(return_last_state), int(checkpoint_every),
                    backend, algorithm or "", config or "")
    return (y, last) if return_last_state else y


def ssd(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, initial_states=None,
        seq_idx=None, dt_softplus=False, dt_limit=(0.0, math.inf), return_final_states=False,
        backend="auto", config="", checkpoint_every=None):
    """Mamba-2 SSD through the ssmc ops (mamba_chunk_scan_combined's layout, differentiable).
    Returns y [, final_states]."""
    tensors = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    if checkpoint_every is None:
        checkpoint_every = 0
        if _needs_grad(*tensors) and not _recomputing_backward("ssd", backend, x.device, tensors):
            b, L, h, p = x.shape
            K = bw.chunk_length(b, h * p, B.shape[-1], L)
            checkpoint_every = max(K, chunk_size) // chunk_size * chunk_size \
                if chunk_size <= 256 else K
    lo, hi = (float(v) for v in dt_limit)
    op = torch.ops.ssmc.ssd
    if _use_triton_op("ssd", x.device, backend, tensors):
        op = torch.ops.ssmc.ssd_triton
    y, final, _ = op(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, int(chunk_size),
                     bool(dt_softplus), lo, hi, bool(return_final_states), int(checkpoint_every),
                     backend, config or "")
    return (y, final) if return_final_states else y


# --------------------------------------------------------------------------- compiled models

def _device_ok(backend: str, x: Tensor) -> bool:
    if backend == "tvm":
        return x.device.type == "cpu"
    if backend == "triton":
        return x.device.type == "cuda" or (x.device.type == "cpu" and _interpreting())
    return False


def node_wants_op(mod, ins: dict, backend: str, x: Tensor) -> bool:
    """Whether a compiled model's SSM node runs through the ops: when gradients are needed,
    under torch.compile, or when the module moved to a device its compiled backend does not run
    on, or with inputs the kernels do not take (float64).  Otherwise (eager inference) the
    executor calls the kernel function directly."""
    if not _device_ok(backend, x) or torch.compiler.is_compiling() or x.dtype not in KERNEL_DTYPES:
        return True
    if not torch.is_grad_enabled():
        return False
    return any(p.requires_grad for p in mod.parameters()) or any(
        isinstance(a, Tensor) and a.requires_grad for a in ins.values())


@torch._dynamo.assume_constant_result
def _node_config(node, config) -> str:
    """The node's kernel knobs as the ops' JSON string; a constant to torch.compile (dynamo
    cannot trace json, and the knobs are fixed per node)."""
    cfg = config if config is not None else node.meta.get("config")
    return json.dumps(cfg, sort_keys=True, default=str) if cfg else ""


def run_mamba1_node(node, mod, ins: dict, backend: str, config=None):
    """A compiled model's Mamba-1 node (module `mod`, channels-last inputs `ins`) through
    ssmc::selective_scan."""
    x, delta, B, C = ins["x"], ins["delta"], ins["B"], ins["C"]
    b, L, d = x.shape
    g, N = mod.groups, mod.d_state
    return selective_scan(
        x, delta, mod.A(), B.reshape(b, L, g, N), C.reshape(b, L, g, N), D=mod.D,
        z=ins.get("z"), delta_bias=mod.delta_bias, initial_state=ins.get("initial_state"),
        delta_softplus=mod.delta_softplus, conj_pair=mod.conj_pair, layout="bld",
        return_last_state=bool(node.final_state),
        backend=backend if _device_ok(backend, x) else "auto",
        algorithm=node.meta.get("algorithm") or "", config=_node_config(node, config))


def run_ssd_node(node, mod, ins: dict, backend: str, config=None):
    """A compiled model's SSD node through ssmc::ssd."""
    x, dt, B, C = ins["x"], ins["dt"], ins["B"], ins["C"]
    z = ins.get("z")
    b, L, d = x.shape
    h, p, g, n = mod.heads, mod.head_dim, mod.groups, mod.d_state
    cfg = config if config is not None else (node.meta.get("config") or {})
    out = ssd(x.reshape(b, L, h, p), dt, -torch.exp(mod.A_log.float()), B.reshape(b, L, g, n),
              C.reshape(b, L, g, n),
              chunk_size=node.chunk_size or cfg.get("CHUNK") or cfg.get("chunk") or 64,
              D=mod.D, z=None if z is None else z.reshape(b, L, h, p), dt_bias=mod.dt_bias,
              initial_states=ins.get("initial_state"), dt_softplus=mod.dt_softplus,
              dt_limit=mod.dt_limit, return_final_states=bool(node.final_state),
              backend=backend if _device_ok(backend, x) else "auto",
              config=_node_config(node, cfg))
    if node.final_state:
        return out[0].reshape(b, L, d), out[1]
    return out.reshape(b, L, d)
