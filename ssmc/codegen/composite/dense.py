"""The dense / block-diagonal selective SSM (MODELS.md section 4) assembled for speed.

The meaning is ``ssmc.semantics.dense.dense_ssm`` (the oracle, with the same arguments).

    u = x W_B^T  (GEMM)  ->  h_t = A(x_t) h_{t-1} + u_t  ->  y = h W_C^T + D x  (GEMM)

Two ways to run the scan in the middle:

* "sequential": the TVM CPU kernel (ssmc.codegen.tvm.dense_scan), O(N bs L) per row, with
  A(x_t) = I + A_0 + sum_k x_t^k A_k built blockwise inside the kernel (never (b, L, nb, bs, bs)
  in memory); the "expm" transition is materialised (torch.linalg.matrix_exp) and passed in.
  Differentiable: the adjoint scan is a second TVM kernel (dense_scan_bwd).
* "chunked": chunks of the sequence as independent rows of the same TVM kernel, their
  transition products from bs more rows, carries between chunks, a second pass from the
  carries (`chunked_scan`): more work, more parallel rows -- for tiny states and batches.
* "associative": torch, any device: the transitions materialised with one GEMM, then a
  Hillis-Steele scan with the matrix combine (A2, b2) o (A1, b1) = (A2 A1, A2 b1 + b2):
  ceil(log2 L) rounds of batched bs x bs products, O(L bs^3 log L) work but only log L
  dependent steps -- what a wide machine wants for long L and small blocks; on a 2-core CPU
  the sequential kernel wins (the cost model knows).
"""

from __future__ import annotations

import torch

from ssmc.semantics.dense import dense_transitions
from ssmc.semantics.diagonal import as_work

ALGORITHMS = ("sequential", "associative", "chunked")
MODES = ("linear", "expm")


def _check(x, A_k, W_B, W_C, D, mode, algorithm, initial_state, A_0):
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a (b, L, d) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    b, L, d = x.shape
    if not isinstance(A_k, torch.Tensor) or A_k.dim() != 4 or A_k.shape[0] != d \
            or A_k.shape[2] != A_k.shape[3]:
        raise ValueError(f"A_k must be (d, nb, bs, bs) with d={d}, got "
                         f"{tuple(A_k.shape) if isinstance(A_k, torch.Tensor) else A_k!r}")
    nb, bs = A_k.shape[1], A_k.shape[2]
    N = nb * bs
    for name, t, shape in (("W_B", W_B, (N, d)), ("W_C", W_C, (d, N)), ("D", D, (d,)),
                           ("initial_state", initial_state, (b, N)),
                           ("A_0", A_0, (nb, bs, bs))):
        if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != shape):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must have shape {shape}, got {got}")
    if W_B is None or W_C is None:
        raise ValueError(f"{'W_B' if W_B is None else 'W_C'} is required")
    return b, L, d, nb, bs


def assoc_scan(A: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inclusive scan h_t = A_t h_{t-1} + u_t from h_{-1} = 0 by recursive doubling.
    A: (b, L, nb, bs, bs); u: (b, L, nb, bs) -> h (b, L, nb, bs)."""
    L = u.shape[1]
    h = u
    s = 1
    while s < L:  # out of place, so autograd can differentiate it
        h = torch.cat([h[:, :s], (A[:, s:] @ h[:, :-s, ..., None])[..., 0] + h[:, s:]], dim=1)
        if 2 * s < L:  # the products are needed by a later round only
            A = torch.cat([A[:, :s], A[:, s:] @ A[:, :-s]], dim=1)
        s *= 2
    return h


def chunked_scan(scan, u, drive: dict, h0, nb: int, bs: int, chunk: int):
    """The chunked two-pass scan on a sequential scan kernel `scan` (dense_scan's signature).

    The sequence is cut into chunks of `chunk` steps that run as independent rows of one kernel
    call (zero-padded at the end: padded steps come after every real one).  Pass 1 (one call):
    each chunk's end state from zero, and its transition product Phi_c (block-diagonal, so its
    bs columns come from bs runs with u = 0 and the j-th unit vector in every block as the
    initial state).  Carries s_c = Phi_c s_{c-1} + end_c: one small matmul per chunk.  Pass 2
    (one call): every chunk again from its carry.  (bs + 2) times the sequential work, in
    chunks-way parallel rows."""
    b, L, N = u.shape
    T = max(1, min(int(chunk), L))
    nch = -(-L // T)
    pad = nch * T - L

    def rows(t, reps=1):  # (b, L, ...) -> (reps * b * nch, T, ...)
        if pad:
            t = torch.cat([t, t.new_zeros(b, pad, *t.shape[2:])], dim=1)
        t = t.reshape(b * nch, T, *t.shape[2:])
        return t.repeat(reps, *([1] * (t.dim() - 1))) if reps > 1 else t

    drive_rows = {k: rows(v, bs + 1) for k, v in drive.items() if k in ("x", "A")}
    fixed = {k: v for k, v in drive.items() if k not in ("x", "A")}
    R = b * nch
    unit = torch.eye(bs, dtype=u.dtype, device=u.device)  # (j, i)
    starts = torch.cat([u.new_zeros(R, N)]
                       + [unit[j].repeat(nb).expand(R, N) for j in range(bs)])
    u_rows = torch.cat([rows(u), u.new_zeros(bs * R, T, N)])
    ends = scan(u_rows, initial_state=starts, **drive_rows, **fixed)[:, -1]  # ((bs+1) R, N)
    end_loc = ends[:R].reshape(b, nch, nb, bs)
    phi = ends[R:].reshape(bs, b, nch, nb, bs).permute(1, 2, 3, 4, 0)  # (b, nch, nb, i, j)
    s = h0.reshape(b, nb, bs) if h0 is not None else u.new_zeros(b, nb, bs)
    carries = []
    for c in range(nch):
        carries.append(s)
        s = (phi[:, c] @ s[..., None])[..., 0] + end_loc[:, c]
    carry = torch.stack(carries, dim=1).reshape(R, N)
    drive_1 = {k: rows(v) for k, v in drive.items() if k in ("x", "A")}
    h = scan(rows(u), initial_state=carry, **drive_1, **fixed)
    return h.reshape(b, nch * T, N)[:, :L]


def dense_ssm_fast(x, A_k, W_B, W_C, D=None, mode: str = "linear",
                   algorithm: str = "sequential", initial_state=None,
                   return_final_state: bool = False, A_0=None, chunk: int = 64):
    """dense_ssm's meaning (semantics.dense.dense_ssm, same arguments; `algorithm` instead of
    `scan`).  "sequential" and "chunked" (`chunk` steps per chunk) need CPU tensors (the TVM
    kernel); elsewhere, and for float64, the associative path runs."""
    if algorithm == "chunked" and (not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    b, L, d, nb, bs = _check(x, A_k, W_B, W_C, D, mode, algorithm, initial_state, A_0)
    dtype_in = x.dtype
    xf, A_k, W_B, W_C, D, h0, A_0 = as_work(x, A_k, W_B, W_C, D, initial_state, A_0)
    N = nb * bs
    u = xf @ W_B.t()  # (b, L, N)
    seq_ok = xf.dtype == torch.float32 and xf.device.type == "cpu"
    if algorithm in ("sequential", "chunked") and seq_ok and L > 0:
        from ssmc.codegen.tvm.dense_scan import dense_scan

        if mode == "linear":
            eye = torch.eye(bs, dtype=xf.dtype, device=xf.device)
            A0 = eye.expand(nb, bs, bs) + (A_0 if A_0 is not None else 0)
            drive = dict(x=xf, A_k=A_k, A0=A0)
        else:
            drive = dict(A=dense_transitions(xf, A_k, mode, A_0))
        if algorithm == "chunked":
            h = chunked_scan(dense_scan, u, drive, h0, nb, bs, chunk)
        else:
            h = dense_scan(u, initial_state=h0, **drive)
    elif L > 0:
        A = dense_transitions(xf, A_k, mode, A_0)
        uu = u.reshape(b, L, nb, bs)
        if h0 is not None:  # h_{-1} folded into the first input
            uu = uu.clone()
            uu[:, 0] += (A[:, 0] @ h0.reshape(b, nb, bs, 1))[..., 0]
        h = assoc_scan(A, uu).reshape(b, L, N)
    else:
        h = u.new_zeros(b, 0, N)
    y = h @ W_C.t()
    if D is not None:
        y = y + xf * D
    y = y.to(dtype_in)
    if not return_final_state:
        return y
    if L > 0:
        last = h[:, -1]
    else:
        last = h0.clone() if h0 is not None else u.new_zeros(b, N)
    return y, last


def dense_ssm_sequential(x, A_k, W_B, W_C, D=None, mode="linear", initial_state=None,
                         return_final_state=False, A_0=None):
    """dense_ssm_fast with the sequential TVM scan (dispatch entry; differentiable: the TVM
    adjoint kernel, ssmc.codegen.tvm.dense_scan_bwd)."""
    return dense_ssm_fast(x, A_k, W_B, W_C, D, mode, "sequential", initial_state,
                          return_final_state, A_0)


def dense_ssm_chunked(x, A_k, W_B, W_C, D=None, mode="linear", initial_state=None,
                      return_final_state=False, A_0=None, chunk=64):
    """dense_ssm_fast with the chunked two-pass scan on the TVM kernel (dispatch entry)."""
    return dense_ssm_fast(x, A_k, W_B, W_C, D, mode, "chunked", initial_state,
                          return_final_state, A_0, chunk)


def dense_ssm_associative(x, A_k, W_B, W_C, D=None, mode="linear", initial_state=None,
                          return_final_state=False, A_0=None):
    """dense_ssm_fast with the torch matrix-combine scan (dispatch entry; differentiable)."""
    return dense_ssm_fast(x, A_k, W_B, W_C, D, mode, "associative", initial_state,
                          return_final_state, A_0)
