"""Dense / block-diagonal input-dependent transitions (MODELS.md section 4, the linear-CDE view).

h_t = A(x_t) h_{t-1} + B(x_t), with A(x) = I + sum_k x^k A_k ("linear") or
A(x) = expm(sum_k x^k A_k) ("expm").  A is block-diagonal: nb blocks of size bs (N = nb * bs);
nb = 1 is the fully dense case.  The sequential scan (O(N^2 L) per block) is the oracle; the
associative scan with the matrix combine (A2, b2) o (A1, b1) = (A2 A1, A2 b1 + b2)
(O(N^3 log L)) is its cross-check.

Layouts are channel-last: x (b, L, K); transitions A (b, L, nb, bs, bs); inputs and states
(b, L, nb, bs).  Computation is fp32 (float64 when an input is, for gradchecks); outputs take
the dtype of the input.
"""

from __future__ import annotations

import torch

from ssmc.semantics.diagonal import as_work
from ssmc.semantics.scan_assoc import assoc_scan

__all__ = ["dense_transitions", "dense_scan_ref", "dense_scan_assoc", "dense_ssm"]

_MODES = ("linear", "expm")


def dense_transitions(x, A_k, mode: str = "linear", A_0=None) -> torch.Tensor:
    """A(x_t) per token.  x: (b, L, K); A_k: (K, nb, bs, bs); A_0: (nb, bs, bs) or None, an
    input-independent drift (the CDE's time channel).
    Returns (b, L, nb, bs, bs) in the computation dtype.

    "linear": I + A_0 + sum_k x^k A_k (one Euler step of dh = A_0 h dt + sum_k A_k h dx^k);
    "expm": expm(A_0 + sum_k x^k A_k) (the exact flow over a step with constant x).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    x, A_k, A_0 = as_work(x, A_k, A_0)
    M = torch.einsum("blk,knij->blnij", x, A_k)
    if A_0 is not None:
        M = M + A_0
    if mode == "expm":
        return torch.linalg.matrix_exp(M)
    return M + torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)


def dense_scan_ref(A, b, initial_state=None, return_final_state: bool = False):
    """Sequential h_t = A_t h_{t-1} + b_t (a matvec per step and block).

    A: (b, L, nb, bs, bs); b: (b, L, nb, bs); initial_state: (b, nb, bs).
    Returns h (b, L, nb, bs) in b's dtype [, final state (b, nb, bs) in the computation dtype].
    """
    dtype_in = b.dtype
    Af, bf, h0 = as_work(A, b, initial_state)
    h = torch.zeros(bf.shape[0], *bf.shape[2:], dtype=bf.dtype, device=bf.device)
    if h0 is not None:
        h = h + h0
    hs = []
    for t in range(bf.shape[1]):
        h = torch.einsum("bnij,bnj->bni", Af[:, t], h) + bf[:, t]
        hs.append(h)
    out = torch.stack(hs, dim=1) if hs else bf.clone()
    out = out.to(dtype_in)
    return (out, h) if return_final_state else out


def _matrix_combine(later, earlier):
    """(A2, b2) o (A1, b1) = (A2 A1, A2 b1 + b2): composition of affine maps h -> A h + b."""
    A2, b2 = later
    A1, b1 = earlier
    return A2 @ A1, (A2 @ b1[..., None])[..., 0] + b2


def dense_scan_assoc(A, b, initial_state=None, return_final_state: bool = False):
    """The same scan as ``dense_scan_ref`` by a log-depth associative scan with the matrix
    combine.  Shapes and return values as ``dense_scan_ref``."""
    dtype_in = b.dtype
    Af, bf, h0 = as_work(A, b, initial_state)
    Af, bf = Af.movedim(1, 0), bf.movedim(1, 0)  # time first for assoc_scan
    L = bf.shape[0]
    if h0 is not None and L > 0:
        # h_{-1} folded into the first input: b_0 <- b_0 + A_0 h_{-1}.
        b0 = bf[0] + (Af[0] @ h0[..., None])[..., 0]
        bf = torch.cat([b0[None], bf[1:]], dim=0)
    _, h = assoc_scan((Af, bf), _matrix_combine)
    h = h.movedim(0, 1)
    if L > 0:
        last = h[:, -1]
    else:
        last = torch.zeros(bf.shape[1:], dtype=bf.dtype, device=bf.device)
        if h0 is not None:
            last = last + h0
    out = h.to(dtype_in)
    return (out, last) if return_final_state else out


def dense_ssm(x, A_k, W_B, W_C, D=None, mode: str = "linear", scan: str = "sequential",
              initial_state=None, return_final_state: bool = False, A_0=None):
    """The whole dense selective SSM: h_t = A(x_t) h_{t-1} + W_B x_t, y_t = W_C h_t + D x_t.

    x: (b, L, d); A_k: (d, nb, bs, bs); A_0: (nb, bs, bs) drift or None; W_B: (N, d);
    W_C: (d, N) with N = nb * bs; D: (d,); initial_state: (b, N).
    ``scan`` picks "sequential" (the oracle) or "assoc".
    Returns y (b, L, d) in x's dtype [, final state (b, N) in the computation dtype].
    """
    scans = {"sequential": dense_scan_ref, "assoc": dense_scan_assoc}
    if scan not in scans:
        raise ValueError(f"scan must be one of {sorted(scans)}, got {scan!r}")
    dtype_in = x.dtype
    xf, A_k, W_B, W_C, D, h0, A_0 = as_work(x, A_k, W_B, W_C, D, initial_state, A_0)
    bsz, L, _ = xf.shape
    nb, bs = A_k.shape[1], A_k.shape[2]
    A = dense_transitions(xf, A_k, mode, A_0)
    u = (xf @ W_B.t()).reshape(bsz, L, nb, bs)
    if h0 is not None:
        h0 = h0.reshape(bsz, nb, bs)
    h, last = scans[scan](A, u, h0, return_final_state=True)
    y = h.reshape(bsz, L, nb * bs) @ W_C.t()
    if D is not None:
        y = y + xf * D
    y = y.to(dtype_in)
    return (y, last.reshape(bsz, nb * bs)) if return_final_state else y
