"""The reverse scan: gradients of a diagonal selective scan without storing its states.

One engine serves Mamba-1 (S6) and Mamba-2 (SSD; scalar A per head, mapped onto channels
d = heads * head_dim, with a reset mask for seq_idx).  In the canonical channels-last form:

    a_t = exp(dt_t A) * keep_t          (b, d, N)   A (d, N), or (d, 1) for SSD
    x_t = dt_t u_t B_t                  (b, d, N)   B (d, N) or grouped (b, L, g, N)
    h_t = a_t h_{t-1} + x_t,  h_{-1} = h0
    y_t = scale * Re(sum_n C_t h_t) + D u_t          scale = 2 for complex conj-pair states
    out_t = y_t * silu(z_t)

dt is the effective step (bias, softplus and clamp applied by the caller: they are elementwise
and their derivatives are applied outside the engine).

**Memory.**  The forward keeps only *checkpoints*, the state at the start of every chunk of K
steps: (b, ceil(L / K), d, N), never (b, L, d, N).  The backward walks the chunks in reverse;
for each it recomputes the chunk's states from its checkpoint (K steps of one fused
multiply-add on (b, d, N)), runs the adjoint recurrence

    g_t = q_t + conj(a_{t+1}) g_{t+1},     q_t = scale * dy_t * conj(C_t)

from the carry the later chunk handed over, and turns (g, h) into every input's gradient with
vectorised reductions.  Peak extra memory is a few (K, b, d, N) tensors, and K is picked so
that one of them stays around `CHUNK_BUDGET` elements.  Python runs 2 L small steps; every
other operation is vectorised over a chunk.

Complex A (S4D-Lin style) is supported; gradients follow PyTorch's convention for complex
tensors (conjugate Wirtinger), so `torch.autograd.gradcheck` holds for complex inputs.

This is the portable implementation behind the `ssmc::selective_scan_bwd` and `ssmc::ssd_bwd`
ops (ssmc.runtime.library); a TVM or Triton backward kernel replaces it per device through
`ssmc.runtime.library.register_backward`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CHUNK_BUDGET = 1 << 18  # elements of one (K, b, d, N) chunk tensor (1 MB fp32: stays in L2)
_WIDE = (torch.float64, torch.complex128)


def compute_dtypes(*ts, cplx: bool):
    """(real dtype, state dtype): float64 when any input is 64-bit (so float64 gradchecks mean
    something), else float32; the state is complex when A is."""
    wide = any(t is not None and t.dtype in _WIDE for t in ts)
    rdt = torch.float64 if wide else torch.float32
    sdt = (torch.complex128 if wide else torch.complex64) if cplx else rdt
    return rdt, sdt


def chunk_length(b: int, d: int, N: int, L: int, budget: int = CHUNK_BUDGET) -> int:
    """Steps per checkpoint: a power of two in [16, 256] with K * b * d * N <= budget (when it
    can be), and no longer than L rounded up to a power of two."""
    per_step = max(1, int(b) * int(d) * int(N))
    k = 16
    while k < 256 and 2 * k * per_step <= budget:
        k *= 2
    lim = 1
    while lim < max(int(L), 1):
        lim *= 2
    return max(1, min(k, lim))


@dataclass
class ScanProblem:
    """The engine's canonical, channels-last inputs (already in the computing dtypes)."""

    u: torch.Tensor  # (b, L, d) real
    dt: torch.Tensor  # (b, L, d) real, effective step
    A: torch.Tensor  # (d, N) or (d, 1); complex when the state is
    B: torch.Tensor  # (d, N) or (b, L, g, N)
    C: torch.Tensor  # (d, N) or (b, L, g, N)
    D: torch.Tensor | None = None  # (d,)
    z: torch.Tensor | None = None  # (b, L, d)
    h0: torch.Tensor | None = None  # (b, d, N), state dtype
    keep: torch.Tensor | None = None  # (b, L) real: 0 where the state resets before step t
    scale: float = 1.0  # y = scale * Re(C . h) for complex states

    @property
    def shape(self):
        b, L, d = self.u.shape
        return b, L, d, self.B.shape[-1]

    @property
    def complex(self) -> bool:
        return self.A.is_complex()

    @property
    def state_dtype(self):
        if self.A.is_complex():
            return self.A.dtype
        return self.u.dtype


def _seq(t: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """(b, L, ...) -> the chunk's time-major (K, b, ...) slice, contiguous."""
    return t[:, s:e].transpose(0, 1).contiguous()


class _Operand:
    """B or C for steps [s, e), without repeating a group over its channels: time-invariant
    (d, N), or grouped (K, b, g, N) with r = d // g channels per group.  Products with
    (K, b, d, N) state-shaped tensors broadcast over r (measured faster on CPU than einsum's
    batched matrix-vector products, which copy permuted operands)."""

    def __init__(self, M: torch.Tensor, s: int, e: int, d: int, sdt):
        self.ti = M.dim() == 2
        self.real = not M.is_complex()
        self.data = M if self.ti else M[:, s:e].transpose(0, 1).contiguous()
        self.g = d if self.ti else self.data.shape[2]
        self.r = d // self.g
        self.sdt = sdt
        self.ds = self.data.to(sdt)  # in the state dtype (complex when the state is)

    def _view(self, S: torch.Tensor) -> torch.Tensor:
        K, b, d, N = S.shape
        return S.view(K, b, self.g, self.r, N)

    def times(self, v: torch.Tensor) -> torch.Tensor:
        """v (K, b, d) real -> v * M, (K, b, d, N) in the state dtype."""
        v = v.to(self.sdt)
        if self.ti:
            return v[..., None] * self.ds
        K, b, d = v.shape
        out = v.view(K, b, self.g, self.r, 1) * self.ds[:, :, :, None, :]
        return out.view(K, b, d, -1)

    def dot(self, S: torch.Tensor, conj: bool = False) -> torch.Tensor:
        """sum_n S * M (or S * conj(M)) -> (K, b, d)."""
        M = self.ds.conj() if conj and self.ds.is_complex() else self.ds
        if self.ti:
            return (S * M).sum(-1)
        K, b, d, N = S.shape
        return (self._view(S) * M[:, :, :, None, :]).sum(-1).reshape(K, b, d)

    def grad(self, S: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """sum over the channels sharing an entry of M of S * v: M's (chunk) gradient, (d, N)
        or (K, b, g, N); real when M is."""
        if self.real and S.is_complex():
            S = S.real
        v = v.to(S.dtype)
        if self.ti:
            return (S * v[..., None]).sum((0, 1))
        K, b, d = v.shape
        return (self._view(S) * v.view(K, b, self.g, self.r, 1)).sum(3)


def _chunk_inputs(p: ScanProblem, s: int, e: int):
    b, L, d, N = p.shape
    dt = _seq(p.dt, s, e)  # (K, b, d)
    u = _seq(p.u, s, e)
    a = torch.exp(dt[..., None].to(p.A.dtype) * p.A)  # (K, b, d, N|1)
    if p.keep is not None:
        a = a * _seq(p.keep, s, e)[..., None, None].to(a.dtype)
    Bo = _Operand(p.B, s, e, d, p.state_dtype)
    Co = _Operand(p.C, s, e, d, p.state_dtype)
    dtu = dt * u
    x = Bo.times(dtu)  # (K, b, d, N)
    return dt, u, a, Bo, Co, dtu, x


def _states(a: torch.Tensor, x: torch.Tensor, h_in: torch.Tensor) -> torch.Tensor:
    """Hf (K + 1, b, d, N): Hf[0] = h_in, Hf[t + 1] = a_t Hf[t] + x_t."""
    K = x.shape[0]
    Hf = x.new_empty((K + 1,) + tuple(x.shape[1:]))
    Hf[0] = h_in
    for t in range(K):
        torch.addcmul(x[t], a[t], Hf[t], out=Hf[t + 1])
    return Hf


def _readout(H: torch.Tensor, Co: _Operand, scale: float) -> torch.Tensor:
    """y (K, b, d) = scale * Re(sum_n C h)."""
    y = Co.dot(H)
    if y.is_complex():
        y = y.real * scale
    return y


def _zeros_state(p: ScanProblem) -> torch.Tensor:
    b, L, d, N = p.shape
    return torch.zeros(b, d, N, dtype=p.state_dtype, device=p.u.device)


def scan_forward(p: ScanProblem, chunk: int, want_checkpoints: bool = True):
    """The forward in torch (chunk by chunk): (out (b, L, d), last (b, d, N), checkpoints
    (b, nc, d, N) or None).  out has D and the z gate applied."""
    b, L, d, N = p.shape
    h = p.h0.to(p.state_dtype) if p.h0 is not None else _zeros_state(p)
    y = p.u.new_empty(b, L, d)
    ckpts = []
    for s in range(0, L, chunk):
        e = min(s + chunk, L)
        if want_checkpoints:
            ckpts.append(h)
        _, _, a, _, Co, _, x = _chunk_inputs(p, s, e)
        Hf = _states(a, x, h)
        y[:, s:e] = _readout(Hf[1:], Co, p.scale).transpose(0, 1)
        h = Hf[-1].clone()
    if p.D is not None:
        y = y + p.u * p.D
    if p.z is not None:
        y = y * F.silu(p.z)
    ck = None
    if want_checkpoints:
        ck = torch.stack(ckpts, 1) if ckpts else h.new_empty(b, 0, d, N)
    return y, h, ck


def _dsilu(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def scan_backward(p: ScanProblem, gout: torch.Tensor, glast: torch.Tensor | None,
                  checkpoints: torch.Tensor | None, chunk: int) -> dict:
    """Gradients of (out, last) w.r.t. u, dt, A, B, C, D, z, h0 (a dict; None for absent
    inputs).  `checkpoints` (b, nc, d, N) from the forward with the same `chunk`; None
    recomputes them with one forward sweep."""
    b, L, d, N = p.shape
    if checkpoints is None or checkpoints.shape[1] != (L + chunk - 1) // chunk:
        _, _, checkpoints = scan_forward(p, chunk, want_checkpoints=True)
    gout = gout.to(p.u.dtype)
    if p.z is not None:
        gy = gout * F.silu(p.z)
    else:
        gy = gout
    gu = torch.zeros_like(p.u)
    gdt = torch.zeros_like(p.dt)
    gA = torch.zeros_like(p.A)
    gB = torch.zeros_like(p.B)
    gC = torch.zeros_like(p.C)
    gz = torch.zeros_like(p.z) if p.z is not None else None
    carry = glast.to(p.state_dtype) if glast is not None else _zeros_state(p)
    cplx = p.complex
    starts = list(range(0, L, chunk))
    for c in reversed(range(len(starts))):
        s = starts[c]
        e = min(s + chunk, L)
        K = e - s
        dt, u, a, Bo, Co, dtu, x = _chunk_inputs(p, s, e)
        Hf = _states(a, x, checkpoints[:, c].to(p.state_dtype))
        H = Hf[1:]
        gyc = _seq(gy, s, e)  # (K, b, d)
        gys = gyc * p.scale
        q = Co.times(gys)
        if cplx:
            q = q.conj().resolve_conj()  # scale * dy * conj(C)
        ac = a.conj().resolve_conj() if cplx else a
        G = torch.empty_like(H)
        torch.add(q[K - 1], carry, out=G[K - 1])
        for t in range(K - 2, -1, -1):
            torch.addcmul(q[t], ac[t + 1], G[t + 1], out=G[t])
        carry = ac[0] * G[0]
        # a_t h_{t-1} = h_t - x_t: w = G conj(a_t h_{t-1}) is the gradient reaching log a_t,
        # and d log a / d dt = A, d log a / d A = dt.
        w = G * (H - x).conj() if cplx else G * (H - x)
        g_dt, g_A = _log_a_grads(w, p.A, dt)
        gA += g_A
        GB = Bo.dot(G, conj=True)  # sum_n G conj(B)
        GB = GB.real if GB.is_complex() else GB
        g_dt = g_dt + GB * u
        gdt[:, s:e] = g_dt.transpose(0, 1)
        gu[:, s:e] = (GB * dt).transpose(0, 1)
        gBc = Bo.grad(G, dtu)
        Hc = H.conj() if cplx else H
        gCc = Co.grad(Hc, gys)
        if Bo.ti:
            gB += gBc
        else:
            gB[:, s:e] = gBc.transpose(0, 1)
        if Co.ti:
            gC += gCc
        else:
            gC[:, s:e] = gCc.transpose(0, 1)
        if p.z is not None:
            yc = _readout(H, Co, p.scale)  # (K, b, d)
            if p.D is not None:
                yc = yc + u * p.D
            gz[:, s:e] = (_seq(gout, s, e) * yc * _dsilu(_seq(p.z, s, e))).transpose(0, 1)
    gD = None
    if p.D is not None:
        gD = (gy * p.u).sum((0, 1))
        gu = gu + gy * p.D
    gh0 = carry if p.h0 is not None else None
    return {"u": gu, "dt": gdt, "A": gA, "B": gB, "C": gC, "D": gD, "z": gz, "h0": gh0}


def _log_a_grads(w: torch.Tensor, A: torch.Tensor, dt: torch.Tensor):
    """From w (K, b, d, N), the gradient reaching log a = dt * A: (g_dt (K, b, d) real,
    g_A in A's shape ((d, N), or (d, 1) for one A per channel))."""
    cplx = w.is_complex()
    dts = dt.to(w.dtype)
    if A.shape[-1] == 1:
        ws = w.sum(-1)  # (K, b, d)
        a0 = A[:, 0].conj() if cplx else A[:, 0]
        g_dt = ws * a0
        g_A = (ws * dts).sum((0, 1))[:, None]
    else:
        g_dt = (w * (A.conj() if cplx else A)).sum(-1)
        g_A = (w * dts[..., None]).sum((0, 1))
    if cplx:
        g_dt = g_dt.real
        if not A.is_complex():
            g_A = g_A.real
    return g_dt, g_A


# --------------------------------------------------------------------------- step size

def effective_dt(delta, bias, softplus: bool, lo: float = 0.0, hi: float = float("inf")):
    """dt = clamp(softplus(delta + bias)) and what its backward needs."""
    pre = delta if bias is None else delta + bias
    dt = F.softplus(pre) if softplus else pre
    clamp = lo > 0.0 or hi != float("inf")
    if clamp:
        dt = dt.clamp(min=lo, max=hi)
    return dt, pre


def effective_dt_backward(g_dt, pre, softplus: bool, lo: float = 0.0, hi: float = float("inf")):
    """Gradient w.r.t. delta (pre-bias) given the gradient w.r.t. the effective dt."""
    if lo > 0.0 or hi != float("inf"):
        v = F.softplus(pre) if softplus else pre
        g_dt = g_dt * ((v >= lo) & (v <= hi)).to(g_dt.dtype)
    if softplus:
        g_dt = g_dt * torch.sigmoid(pre)
    return g_dt
