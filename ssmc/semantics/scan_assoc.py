"""Independent formulations of the selective scans (MODELS.md sections 2 and 3).

* ``assoc_scan``: a log-depth inclusive scan (Hillis-Steele) over the time axis with any
  associative combine; ``linear_scan_assoc`` specialises it to h_t = a_t h_{t-1} + b_t.
* ``selective_scan_assoc``: Mamba-1's scan through ``linear_scan_assoc``; same arguments as
  ``selective.selective_scan_ref``, which it cross-checks.
* ``ssd_chunked_ref``: Mamba-2's chunked matmul form; same arguments as ``selective.ssd_ref``
  plus ``chunk_size``.

Nothing here calls the sequential oracles or their helpers: the point is to agree with them by
a different route.  Computation is fp32 (complex64 for complex A), or 64-bit when the inputs
are (for float64 gradchecks); outputs take the input dtype.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ssmc.semantics.diagonal import work_dtype

__all__ = ["assoc_scan", "linear_scan_assoc", "selective_scan_assoc", "ssd_chunked_ref"]


# --- generic log-depth scan -----------------------------------------------------------------

def assoc_scan(elems: Sequence[torch.Tensor], combine: Callable) -> tuple[torch.Tensor, ...]:
    """Inclusive scan over dim 0 of every tensor in ``elems`` (Hillis-Steele, ceil(log2 L) steps).

    ``combine(later, earlier)`` takes two tuples of tensors (same structure as ``elems``, with
    the same leading length) and returns their composition "later after earlier"; it must be
    associative.  Element t of the result is e_t o e_{t-1} o ... o e_0.  O(L log L) work: this
    is the parallel formulation, not the cheap one.
    """
    elems = tuple(elems)
    L = elems[0].shape[0]
    offset = 1
    while offset < L:
        later = tuple(e[offset:] for e in elems)
        earlier = tuple(e[:-offset] for e in elems)
        merged = combine(later, earlier)
        # The first `offset` elements already hold complete prefixes.
        elems = tuple(torch.cat([e[:offset], m], dim=0) for e, m in zip(elems, merged))
        offset *= 2
    return elems


def _affine_combine(later, earlier):
    """(a2, b2) o (a1, b1) = (a2 a1, a2 b1 + b2): the elementwise affine map composition."""
    a2, b2 = later
    a1, b1 = earlier
    return a2 * a1, a2 * b1 + b2


def linear_scan_assoc(a: torch.Tensor, b: torch.Tensor, dim: int = -1, initial=None):
    """h_t = a_t h_{t-1} + b_t along ``dim`` with h_{-1} = ``initial`` (zero when None).

    a, b: same shape, real or complex; initial: the shape of a with ``dim`` removed.
    Returns h (the shape of b).
    """
    a = a.movedim(dim, 0)
    b = b.movedim(dim, 0)
    if initial is not None and a.shape[0] > 0:
        # Folding h_{-1} into the first element keeps the scan itself initial-state free.
        b = torch.cat([(b[0] + a[0] * initial)[None], b[1:]], dim=0)
    _, h = assoc_scan((a, b), _affine_combine)
    return h.movedim(0, dim)


# --- Mamba-1 selective scan -----------------------------------------------------------------

def _per_channel(M: torch.Tensor, d: int) -> torch.Tensor:
    """B or C as (b, d, N, L) from (b, N, L) shared or (b, g, N, L) grouped (channel c reads
    group c // (d // g)); (d, N) time-invariant is returned as is."""
    if M.dim() == 3:
        return M[:, None].expand(M.shape[0], d, *M.shape[1:])
    if M.dim() == 4:
        bsz, g, N, L = M.shape
        return M[:, :, None].expand(bsz, g, d // g, N, L).reshape(bsz, d, N, L)
    return M


def selective_scan_assoc(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus=False, return_last_state=False, initial_state=None,
                         conj_pair=True):
    """Mamba-1 selective scan by a parallel associative scan over (a, b) pairs.

    Arguments, shapes and conventions as ``selective.selective_scan_ref``: u, delta, z (b, d, L);
    A (d, N) real or complex; B, C (d, N), (b, N, L) or (b, g, N, L); D, delta_bias (d,);
    initial_state (b, d, N).  Returns y (b, d, L) [, last state (b, d, N)].
    """
    dtype_in = u.dtype
    real = work_dtype(u, delta, A, B, C)
    cplx = A.is_complex() or B.is_complex() or C.is_complex()
    work = (torch.complex128 if real == torch.float64 else torch.complex64) if cplx else real
    uf = u.to(real)
    dt = delta.to(real)
    if delta_bias is not None:
        dt = dt + delta_bias.to(real)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    d = uf.shape[1]
    Bd = _per_channel(B.to(work), d)
    Cd = _per_channel(C.to(work), d)
    if Bd.dim() == 2:  # time-invariant (d, N)
        Bd = Bd[None, :, :, None]
    if Cd.dim() == 2:
        Cd = Cd[None, :, :, None]

    # a_t = exp(dt_t A), b_t = dt_t B_t u_t, laid out (b, d, N, L) with time last.
    a = torch.exp(dt[:, :, None, :].to(work) * A.to(work)[None, :, :, None])
    bterm = (dt * uf)[:, :, None, :].to(work) * Bd
    init = None if initial_state is None else initial_state.to(work)
    h = linear_scan_assoc(a, bterm, dim=-1, initial=init)  # (b, d, N, L)

    y = (h * Cd).sum(dim=2)
    if y.is_complex():
        y = y.real * (2.0 if conj_pair else 1.0)
    if D is not None:
        y = y + uf * D.to(real)[:, None]
    if z is not None:
        y = y * F.silu(z.to(real))
    y = y.to(dtype_in)
    if not return_last_state:
        return y
    if h.shape[-1] > 0:
        last = h[..., -1]
    else:
        last = torch.zeros(a.shape[:3], dtype=work) if init is None else init
    return y, last


# --- Mamba-2 SSD, chunked ---------------------------------------------------------------------

def _segsum(x: torch.Tensor) -> torch.Tensor:
    """x (..., Q) -> S (..., Q, Q) with S[i, j] = sum_{k=j+1..i} x_k for i >= j, -inf above.

    Built from a cumulative sum of masked copies rather than cumsum_i - cumsum_j, so no
    large numbers cancel (the stable segsum of the Mamba-2 paper)."""
    Q = x.shape[-1]
    xx = x[..., None].expand(*x.shape, Q)  # xx[..., i, j] = x_i
    strict = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=x.device), diagonal=-1)
    S = torch.cumsum(xx.masked_fill(~strict, 0), dim=-2)
    incl = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=x.device))
    return S.masked_fill(~incl, -math.inf)


def _resets(seq_idx: torch.Tensor) -> torch.Tensor:
    """(b, L) int -> (b, L) running count of positions t > 0 where seq_idx changes.  Two
    positions s <= t are in the same segment iff their counts are equal (the state is reset
    wherever seq_idx changes, as in ssd_ref)."""
    change = torch.zeros_like(seq_idx, dtype=torch.long)
    change[:, 1:] = (seq_idx[:, 1:] != seq_idx[:, :-1]).long()
    return torch.cumsum(change, dim=1)


def ssd_chunked_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None,
                    seq_idx=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
                    return_final_states=False, chunk_size=64):
    """Mamba-2 SSD in the chunked matmul form (MODELS.md section 3).

    Shapes as ``selective.ssd_ref``: x (b, L, h, p); dt (b, L, h); A (h,); B, C (b, L, g, n);
    D (h,) or (h, p); z (b, L, h, p); dt_bias (h,); initial_states (b, h, p, n); seq_idx (b, L).
    The sequence is padded to a multiple of ``chunk_size`` (padding has dt = 0: decay 1 and no
    input, so states pass through).  Per chunk:
      intra: y = (Lmask o C B^T)(dt x), Lmask[i, j] = exp(sum_{k=j+1..i} dt_k A) for i >= j;
      chunk state: S_c = sum_j exp(sum_{k>j} dt_k A) dt_j x_j B_j^T (to the chunk end);
      inter: the chunk-start state H_{c-1} is carried sequentially, H_c = exp(sum dt A) H_{c-1}
      + S_c, and read out as y_i += exp(sum_{k<=i} dt_k A) C_i H_{c-1}.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dtype_in = x.dtype
    bsz, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    Q = chunk_size
    real = work_dtype(x, dt, A, B, C)
    xf, dtf = x.to(real), dt.to(real)
    if dt_bias is not None:
        dtf = dtf + dt_bias.to(real)
    if dt_softplus:
        dtf = F.softplus(dtf)
    lo, hi = dt_limit
    if lo > 0.0 or hi != math.inf:
        dtf = dtf.clamp(min=lo, max=hi)
    # Heads of one group share B, C: view heads as (g, h // g) instead of repeating B, C.
    Bf = B.to(real)[:, :, :, None, :].expand(bsz, L, g, h // g, n).reshape(bsz, L, h, n)
    Cf = C.to(real)[:, :, :, None, :].expand(bsz, L, g, h // g, n).reshape(bsz, L, h, n)

    nc = -(-L // Q)
    pad = nc * Q - L
    seg = _resets(seq_idx) if seq_idx is not None else torch.zeros(bsz, L, dtype=torch.long,
                                                                     device=x.device)

    def chunks(t):  # (b, L, ...) -> (b, nc, Q, ...), zero-padded in time
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(bsz, nc, Q, *t.shape[2:])

    xdt = chunks(xf * dtf[..., None])           # (b, c, Q, h, p)
    Bc, Cc = chunks(Bf), chunks(Cf)             # (b, c, Q, h, n)
    dA = chunks(dtf * A.to(real))                # (b, c, Q, h)
    if pad and L:  # padding continues the last segment
        seg = torch.cat([seg, seg[:, -1:].expand(bsz, pad)], dim=1)
    segc = seg.reshape(bsz, nc, Q)

    dA = dA.permute(0, 1, 3, 2)                 # (b, c, h, Q)
    cum = torch.cumsum(dA, dim=-1)              # sum_{k<=i} within the chunk
    same = segc[..., :, None] == segc[..., None, :]           # (b, c, Q, Q)

    # Intra-chunk: Lmask o (C B^T), applied to dt x.
    Lmask = torch.exp(_segsum(dA))                            # (b, c, h, Q, Q)
    Lmask = Lmask.masked_fill(~same[:, :, None], 0.0)
    scores = torch.einsum("bcihn,bcjhn->bchij", Cc, Bc) * Lmask
    y = torch.einsum("bchij,bcjhp->bcihp", scores, xdt)

    # Each chunk's own contribution to the state at its end (position Q-1).
    to_end = torch.exp(cum[..., -1:] - cum)                   # (b, c, h, Q)
    to_end = to_end * (segc[..., -1:] == segc)[:, :, None]
    S = torch.einsum("bcjhn,bchj,bcjhp->bchpn", Bc, to_end, xdt)

    # Inter-chunk: carry the state sequentially (nc steps) and read it out inside each chunk.
    H = torch.zeros(bsz, h, p, n, dtype=real, device=x.device)
    if initial_states is not None:
        H = H + initial_states.to(real)
    seg_prev = torch.zeros(bsz, dtype=torch.long, device=x.device)  # segment of H
    chunk_total = torch.exp(cum[..., -1])                    # (b, c, h)
    from_start = torch.exp(cum)                              # (b, c, h, Q)
    y_off = []
    for c in range(nc):
        keep = (segc[:, c] == seg_prev[:, None]).to(real)   # (b, Q): H reaches position i
        y_off.append(torch.einsum("bihn,bhpn,bhi->bihp", Cc[:, c], H,
                                  from_start[:, c] * keep[:, None]))
        carry = (segc[:, c, -1] == seg_prev).to(real)[:, None, None, None]
        H = chunk_total[:, c, :, None, None] * H * carry + S[:, c]
        seg_prev = segc[:, c, -1]
    if nc:
        y = y + torch.stack(y_off, dim=1)
    y = y.reshape(bsz, nc * Q, h, p)[:, :L]

    if D is not None:
        Df = D.to(real)
        y = y + xf * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.to(real))
    y = y.to(dtype_in)
    return (y, H) if return_final_states else y
