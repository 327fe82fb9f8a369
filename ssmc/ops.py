"""Drop-in functional ops with the signatures users know (mamba-ssm, Mamba-2's ssd).

backend: "auto" (Triton on a CUDA/ROCm device, TVM on the CPU, ssmc's vectorised torch engine
where a kernel is missing or for float64), "triton", "tvm" or "reference" (the eager oracle,
differentiated by autograd).  Arguments are checked here, once, for every backend.  Every backend
but "reference" runs through the ``ssmc::`` torch.library ops (ssmc.runtime.library): they are
differentiable (the chunked reverse scan), work on meta / fake tensors and under torch.compile.
"""

from __future__ import annotations

import math

import torch

from ssmc.runtime import checks as chk
from ssmc.runtime.dispatch import kernel, pick_backend, selective_scan_impl, ssd_impl
from ssmc.semantics.selective import check_cu_seqlens

BACKENDS = ("auto", "triton", "tvm", "reference")


def _check_backend(backend):
    if backend not in BACKENDS:
        raise chk.ArgumentError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")


def _op_backend(family: str, backend: str, like) -> str:
    """The backend the op gets: an explicit one must exist here (an error names what does)."""
    chosen = pick_backend(backend, like)
    if backend != "auto" and like.device.type != "meta":
        kernel(family, None, chosen, strict=True)
    return backend


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, cu_seqlens=None, backend="auto"):
    """Mamba-1 selective scan.  u, delta, z: (b, d, L); A: (d, N) real or complex;
    B, C: (d, N), (b, N, L) or (b, g, N, L); D, delta_bias: (d,).  Returns y (b, d, L)
    [, last_state (b, d, N)].

    cu_seqlens: (num_seqs + 1,) int offsets of sequences packed in one row (b = 1); the state
    restarts at each sequence start and last_state is (num_seqs, d, N), one per sequence.
    Only the Triton kernels and the reference take it (see `_varlen_engine`)."""
    _check_backend(backend)
    chk.tensor("u", u, 3)
    dev = u.device
    b, d, L = u.shape
    chk.tensor("delta", delta, 3, device=dev)
    chk.shape("delta", delta, (b, d, L), "(b, d, L)")
    chk.tensor("A", A, 2, chk.FLOATS_OR_COMPLEX, dev)
    chk.shape("A", A, (d, None), "(d, N)")
    N = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        chk.tensor(name, M, (2, 3, 4), chk.FLOATS_OR_COMPLEX, dev)
        if M.dim() == 2:
            chk.shape(name, M, (d, N), "(d, N)")
        elif M.dim() == 3:
            chk.shape(name, M, (b, N, L), "(b, N, L)")
        else:
            chk.shape(name, M, (b, None, N, L), "(b, g, N, L)")
            if d % M.shape[1]:
                raise chk.ArgumentError(f"{name}: groups g = {M.shape[1]} must divide d = {d}")
    chk.tensor("D", D, 1, device=dev, optional=True)
    chk.shape("D", D, (d,), "(d,)")
    chk.tensor("z", z, 3, device=dev, optional=True)
    chk.shape("z", z, (b, d, L), "(b, d, L)")
    chk.tensor("delta_bias", delta_bias, 1, device=dev, optional=True)
    chk.shape("delta_bias", delta_bias, (d,), "(d,)")
    if cu_seqlens is not None:
        _check_cu_seqlens(cu_seqlens, b, L, dev)
        engine = _varlen_engine(backend, u, (u, delta, A, B, C, D, z, delta_bias))
        impl = selective_scan_impl(engine, backend)
        return impl(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                    delta_softplus=delta_softplus, return_last_state=return_last_state,
                    cu_seqlens=cu_seqlens)
    if backend == "reference":
        impl = selective_scan_impl("reference", backend)
        return impl(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                    delta_softplus=delta_softplus, return_last_state=return_last_state)
    from ssmc.runtime import library

    be = _op_backend("selective_ssm/mamba1", backend, u)
    Bo = B.unsqueeze(1) if B.dim() == 3 else B  # (b, N, L) -> one group (b, 1, N, L)
    Co = C.unsqueeze(1) if C.dim() == 3 else C
    return library.selective_scan(u, delta, A, Bo, Co, D=D, z=z, delta_bias=delta_bias,
                                  delta_softplus=bool(delta_softplus), layout="bdl",
                                  return_last_state=bool(return_last_state), backend=be)


def _check_cu_seqlens(cu_seqlens, b, L, device):
    chk.tensor("cu_seqlens", cu_seqlens, 1, (torch.int32, torch.int64), device)
    try:
        check_cu_seqlens(cu_seqlens, b, L)
    except ValueError as e:  # the same message, as the ops' error type
        raise chk.ArgumentError(str(e)) from None


_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.complex64)


def _varlen_engine(backend: str, u, tensors) -> str:
    """'triton' or 'reference' for a selective scan with cu_seqlens.  Only the Triton kernels
    and the reference take variable-length batches: TVM and the torch engine behind the ssmc::
    ops do not, and the Triton kernels have no backward.  So 'auto' runs Triton on a GPU for
    inference and the reference (differentiable by autograd) otherwise; an explicit backend
    that cannot is an error naming cu_seqlens, never a run that ignores it."""
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if backend == "tvm":
        raise chk.ArgumentError("cu_seqlens: the tvm backend has no variable-length kernel; "
                                "use backend='auto', 'triton' or 'reference'")
    if backend == "triton":
        pick_backend("triton", u)  # CPU tensors need the interpreter
        if grad:
            raise chk.ArgumentError("cu_seqlens: the Triton kernels have no backward for "
                                    "variable-length batches; use backend='reference' or "
                                    "'auto' for gradients")
        return "triton"
    kernel_dtypes = all(t is None or t.dtype in _TRITON_DTYPES for t in tensors)
    if backend == "auto" and u.device.type == "cuda" and kernel_dtypes and not grad:
        return "triton"
    return "reference"


def _seq_idx_from_cu(cu_seqlens, L, device):
    chk.tensor("cu_seqlens", cu_seqlens, 1, (torch.int32, torch.int64), device)
    cu = cu_seqlens.to(torch.int64)
    if cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != L or bool((cu[1:] < cu[:-1]).any()):
        raise chk.ArgumentError(f"cu_seqlens: expected increasing offsets from 0 to seqlen {L}, got {cu.tolist()}")
    pos = torch.arange(L, device=device)
    return (torch.searchsorted(cu[1:], pos, right=True)).to(torch.int32)[None]


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                              initial_states=None, seq_idx=None, cu_seqlens=None, dt_softplus=False,
                              dt_limit=(0.0, float("inf")), return_final_states=False, backend="auto"):
    """Mamba-2 SSD.  x: (b, L, h, p); dt: (b, L, h); A: (h,); B, C: (b, L, g, n);
    D: (h,) or (h, p); z: (b, L, h, p); dt_bias: (h,); initial_states: (b, h, p, n);
    seq_idx: (b, L); cu_seqlens: (num_seqs + 1,) offsets for a packed batch of one row.
    Returns y (b, L, h, p) [, final_states (b, h, p, n)]."""
    _check_backend(backend)
    chk.tensor("x", x, 4)
    dev = x.device
    b, L, h, p = x.shape
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise chk.ArgumentError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    chk.tensor("dt", dt, 3, device=dev)
    chk.shape("dt", dt, (b, L, h), "(b, L, h)")
    chk.tensor("A", A, 1, device=dev)
    chk.shape("A", A, (h,), "(h,)")
    for name, M in (("B", B), ("C", C)):
        chk.tensor(name, M, 4, device=dev)
        chk.shape(name, M, (b, L, None, None), "(b, L, g, n)")
    g, n = B.shape[2], B.shape[3]
    chk.shape("C", C, (b, L, g, n), "(b, L, g, n)")
    if h % g:
        raise chk.ArgumentError(f"B: groups g = {g} must divide heads h = {h}")
    chk.tensor("D", D, (1, 2), device=dev, optional=True)
    if D is not None:
        chk.shape("D", D, (h,) if D.dim() == 1 else (h, p), "(h,)" if D.dim() == 1 else "(h, p)")
    chk.tensor("z", z, 4, device=dev, optional=True)
    chk.shape("z", z, (b, L, h, p), "(b, L, h, p)")
    chk.tensor("dt_bias", dt_bias, 1, device=dev, optional=True)
    chk.shape("dt_bias", dt_bias, (h,), "(h,)")
    chk.tensor("initial_states", initial_states, 4, device=dev, optional=True)
    chk.shape("initial_states", initial_states, (b, h, p, n), "(b, h, p, n)")
    if cu_seqlens is not None:
        if b != 1:
            raise chk.ArgumentError(f"cu_seqlens: needs a packed batch of one row, got batch {b}")
        if seq_idx is not None:
            raise chk.ArgumentError("seq_idx: give seq_idx or cu_seqlens, not both")
        seq_idx = _seq_idx_from_cu(cu_seqlens, L, dev)
    chk.tensor("seq_idx", seq_idx, 2, (torch.int32, torch.int64), dev, optional=True)
    chk.shape("seq_idx", seq_idx, (b, L), "(b, L)")
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise chk.ArgumentError(f"dt_limit: expected (lo, hi), got {dt_limit!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise chk.ArgumentError(f"dt_limit: expected lo <= hi, got {dt_limit!r}")
    if backend == "reference":
        impl = ssd_impl("reference", backend)
        return impl(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
                    initial_states=initial_states, seq_idx=seq_idx, dt_softplus=dt_softplus,
                    dt_limit=(lo, hi), return_final_states=return_final_states)
    from ssmc.runtime import library

    be = _op_backend("selective_ssm/ssd", backend, x)
    return library.ssd(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
                       initial_states=initial_states, seq_idx=seq_idx,
                       dt_softplus=bool(dt_softplus), dt_limit=(lo, hi),
                       return_final_states=bool(return_final_states), backend=be)
