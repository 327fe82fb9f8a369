"""Selective scans (MODELS.md sections 2 and 3): the plain sequential loops.

These are the oracles.  They compute in fp32 (complex64 for complex A) whatever the input
dtype and return the input dtype, like mamba-ssm's selective_scan_ref and ssd's reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _expand_groups(M: torch.Tensor, dim: int) -> torch.Tensor:
    """(b, g, N, L) -> (b, dim, N, L) by repeating each group over dim // g channels."""
    g = M.shape[1]
    return M.repeat_interleave(dim // g, dim=1)


def check_cu_seqlens(cu_seqlens, batch: int, seqlen: int) -> list:
    """cu_seqlens (num_seqs + 1,) int offsets of sequences packed in one batch row -> the offsets
    as a list.  ValueError naming cu_seqlens when they cannot describe that row."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise ValueError(f"cu_seqlens: expected a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64) or cu_seqlens.dim() != 1:
        raise ValueError("cu_seqlens: expected a 1-D int32/int64 tensor (num_seqs + 1,), got "
                         f"{str(cu_seqlens.dtype).replace('torch.', '')} of shape "
                         f"{tuple(cu_seqlens.shape)}")
    if cu_seqlens.device.type == "meta":
        raise ValueError("cu_seqlens: a meta tensor has no offsets to check")
    if batch != 1:
        raise ValueError(f"cu_seqlens: needs a packed batch of one row, got batch {batch}")
    cu = cu_seqlens.tolist()  # one host sync; the offsets decide shapes and launch work
    if len(cu) < 2 or cu[0] != 0 or cu[-1] != seqlen or any(e < s for s, e in zip(cu, cu[1:])):
        raise ValueError(f"cu_seqlens: expected non-decreasing offsets from 0 to seqlen "
                         f"{seqlen}, got {cu}")
    return cu


def _check_per_sequence(initial_state, num_seqs: int) -> None:
    if initial_state is not None and initial_state.shape[0] != num_seqs:
        raise ValueError(f"initial_state: with cu_seqlens, one state per sequence "
                         f"({num_seqs}, d, N), got shape {tuple(initial_state.shape)}")


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, return_last_state=False, initial_state=None,
                       conj_pair=True, cu_seqlens=None):
    """Mamba-1 selective scan, sequential over L.

    u, delta, z: (b, d, L); A: (d, N) real or complex; B, C: (d, N) time-invariant, (b, N, L)
    shared, or (b, g, N, L) grouped; D: (d,); delta_bias: (d,); initial_state: (b, d, N).
    Complex A: y = 2 Re(<C, h>) with conj_pair (mamba-ssm's convention: the state stands for a
    conjugate pair), else Re(<C, h>).
    cu_seqlens: (num_seqs + 1,) int offsets of sequences packed in one row (b = 1), like
    mamba-ssm's varlen ops: the state restarts at each sequence start, as if each ran alone.
    initial_state is then (num_seqs, d, N), one per sequence, and the last state
    (num_seqs, d, N), each sequence's own (an empty sequence ends with its initial state).
    """
    dtype_in = u.dtype
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, L = u.shape
    N = A.shape[1]
    spans = [(0, L)]
    if cu_seqlens is not None:
        cu = check_cu_seqlens(cu_seqlens, b, L)
        spans = list(zip(cu[:-1], cu[1:]))
        _check_per_sequence(initial_state, len(spans))
    cplx = A.is_complex()
    A = A.to(torch.complex64 if cplx else torch.float32)
    st = torch.complex64 if cplx else torch.float32
    B = B.to(st) if B.is_complex() or cplx else B.float()
    C = C.to(st) if C.is_complex() or cplx else C.float()

    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta.to(A.dtype), A))
    if B.dim() == 2:
        deltaB_u = torch.einsum("bdl,dn,bdl->bdln", delta, B, u) if not cplx else \
            torch.einsum("bdl,dn,bdl->bdln", delta.to(st), B, u.to(st))
    else:
        Bx = B if B.dim() == 3 else _expand_groups(B, d)
        eq = "bdl,bnl,bdl->bdln" if Bx.dim() == 3 else "bdl,bdnl,bdl->bdln"
        deltaB_u = torch.einsum(eq, delta.to(Bx.dtype), Bx, u.to(Bx.dtype))
    if C.dim() == 4:
        C = _expand_groups(C, d)

    ys, lasts = [], []
    for s, (start, end) in enumerate(spans):
        x = torch.zeros(b, d, N, dtype=deltaA.dtype, device=u.device)
        if initial_state is not None:  # (b, d, N), or sequence s's own with cu_seqlens
            x = x + (initial_state if cu_seqlens is None else initial_state[s:s + 1]).to(x.dtype)
        for i in range(start, end):
            x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
            ys.append(_readout(x, C, i, conj_pair))
        lasts.append(x)
    y = torch.stack(ys, dim=2) if ys else u.new_zeros(b, d, 0)
    out = y if D is None else y + u * D.float()[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    out = out.to(dtype_in)
    last = lasts[0] if cu_seqlens is None else torch.cat(lasts)
    return (out, last) if return_last_state else out


def _readout(x, C, i: int, conj_pair: bool):
    """y_i = <C_i, h_i> for C (d, N), (b, N, L) or (b, d, N, L); the real part (x2 for a
    conjugate pair) for a complex state."""
    if C.dim() == 2:
        y = torch.einsum("bdn,dn->bd", x, C.to(x.dtype))
    elif C.dim() == 3:
        y = torch.einsum("bdn,bn->bd", x, C[:, :, i].to(x.dtype))
    else:
        y = torch.einsum("bdn,bdn->bd", x, C[:, :, :, i].to(x.dtype))
    if y.is_complex():
        y = y.real * (2 if conj_pair else 1)
    return y


def ssd_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
            dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False):
    """Mamba-2 SSD, sequential over L (MODELS.md section 3).

    x: (b, L, h, p); dt: (b, L, h); A: (h,); B, C: (b, L, g, n); D: (h,) or (h, p);
    z: (b, L, h, p); dt_bias: (h,); initial_states: (b, h, p, n); seq_idx: (b, L) int, the state
    is reset where it changes.  Returns y (b, L, h, p) [, final_states (b, h, p, n)].
    """
    dtype_in = x.dtype
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    xf = x.float()
    dtf = dt.float()
    if dt_bias is not None:
        dtf = dtf + dt_bias.float()
    if dt_softplus:
        dtf = F.softplus(dtf)
    lo, hi = dt_limit
    if lo > 0.0 or hi != math.inf:
        dtf = dtf.clamp(min=lo, max=hi)
    rep = h // g
    Bh = B.float().repeat_interleave(rep, dim=2)  # (b, L, h, n)
    Ch = C.float().repeat_interleave(rep, dim=2)
    dA = torch.exp(dtf * A.float())  # (b, L, h)
    H = torch.zeros(b, h, p, n, dtype=torch.float32, device=x.device)
    if initial_states is not None:
        H = H + initial_states.float()
    ys = []
    for t in range(L):
        if seq_idx is not None and t > 0:
            keep = (seq_idx[:, t] == seq_idx[:, t - 1]).float()[:, None, None, None]
            H = H * keep
        H = dA[:, t, :, None, None] * H + torch.einsum(
            "bh,bhp,bhn->bhpn", dtf[:, t], xf[:, t], Bh[:, t])
        ys.append(torch.einsum("bhpn,bhn->bhp", H, Ch[:, t]))
    y = torch.stack(ys, dim=1) if ys else xf.new_zeros(b, 0, h, p)
    if D is not None:
        Df = D.float()
        y = y + xf * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype_in)
    return (y, H) if return_final_states else y
