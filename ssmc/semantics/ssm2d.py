"""The 2-D SSM of Chimera in ssmc's Roesser-form convention (MODELS.md section 6).

Grid x[t, v] (time t, variate v), per channel two diagonal states of size N:

    h1[t, v] = Abar1 h1[t-1, v] + Abar2 h2[t-1, v] + Bbar1 x[t, v]     (carried along t)
    h2[t, v] = Abar3 h1[t, v-1] + Abar4 h2[t, v-1] + Bbar2 x[t, v]     (carried along v)
    y[t, v]  = <C1, h1[t, v]> + <C2, h2[t, v]> + D x[t, v]

Discretisation per axis (ssmc's convention, see `zoh_axis`): zero-order hold along t with step
dt_t for (A1, A2, B1) and along v with dt_v for (A3, A4, B2).  The *cross* state is treated as an
input held over the step, so a zero coupling (A2 = A3 = 0) gives Abar2 = Abar3 = 0 and the
model splits into two independent 1-D scans.

Two formulations that share nothing but the discretisation:
  * `ssm2d_ref`: a plain double loop over (t, v) -- the oracle;
  * `ssm2d_wavefront`: all cells of one anti-diagonal t + v = s at once (they are independent:
    each only reads cells of diagonal s - 1), T + V - 1 sequential steps.

Both compute in fp32 (fp64 stays fp64) and return the input dtype.  Shapes:
  x: (b, T, V, d);  A1..A4: (d, N) real (A1, A4 negative for stability);
  B1, B2, C1, C2: (d, N) time-invariant, (b, T, V, N) selective and shared by the channels, or
  (b, T, V, d, N);  dt_t, dt_v: (d,) or selective (b, T, V, d);  D: (d,) or None.
`bidirectional=True` also runs the v axis backward (h2 carried from v+1) with the same
parameters and sums the two outputs (D is added once), as Chimera does for the unordered
variate axis.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Coeffs(NamedTuple):
    """Discretised per-cell coefficients, each broadcastable to (b, T, V, d, N)."""

    a1: torch.Tensor  # h1[t-1, v] -> h1[t, v]
    a2: torch.Tensor  # h2[t-1, v] -> h1[t, v]
    a3: torch.Tensor  # h1[t, v-1] -> h2[t, v]
    a4: torch.Tensor  # h2[t, v-1] -> h2[t, v]
    b1: torch.Tensor
    b2: torch.Tensor
    c1: torch.Tensor
    c2: torch.Tensor


def zoh_axis(A_diag: torch.Tensor, A_cross: torch.Tensor, B: torch.Tensor, dt: torch.Tensor):
    """Zero-order hold along one axis, the cross state held constant over the step.

    For dh/ds = A_diag h + A_cross h_other + B x with h_other and x held for a step dt:
        Abar_diag = exp(dt A_diag),  G = (exp(dt A_diag) - 1) / A_diag,
        Abar_cross = G A_cross,      Bbar = G B.
    All arguments broadcast against each other (elementwise: the A's are diagonal).  A_diag must
    be nonzero (it is negative in every model); G -> dt as A_diag -> 0.
    """
    dA = dt * A_diag
    E = torch.exp(dA)
    G = torch.expm1(dA) / A_diag  # expm1: accurate when dt A is tiny
    return E, G * A_cross, G * B


def _cell_param(p: torch.Tensor, name: str) -> torch.Tensor:
    """B/C as (d, N), (b, T, V, N) or (b, T, V, d, N) -> broadcastable (b|1, T|1, V|1, d|1, N)."""
    if p.dim() == 2:
        return p[None, None, None]
    if p.dim() == 4:
        return p.unsqueeze(3)
    if p.dim() == 5:
        return p
    raise ValueError(f"{name}: expected (d, N), (b, T, V, N) or (b, T, V, d, N), "
                     f"got {tuple(p.shape)}")


def _cell_dt(dt: torch.Tensor, name: str) -> torch.Tensor:
    """dt as (d,) or (b, T, V, d) -> broadcastable (b|1, T|1, V|1, d, 1)."""
    if dt.dim() == 1:
        return dt[None, None, None, :, None]
    if dt.dim() == 4:
        return dt.unsqueeze(-1)
    raise ValueError(f"{name}: expected (d,) or (b, T, V, d), got {tuple(dt.shape)}")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for every input dtype except fp64, which gradcheck needs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def discretize(x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v) -> Coeffs:
    """Per-cell coefficients of the grid recurrence, in x's compute dtype."""
    ct = compute_dtype(x)
    f = lambda p: p.to(ct)  # noqa: E731
    dtt, dtv = _cell_dt(f(dt_t), "dt_t"), _cell_dt(f(dt_v), "dt_v")
    a1, a2, b1 = zoh_axis(f(A1), f(A2), _cell_param(f(B1), "B1"), dtt)
    a4, a3, b2 = zoh_axis(f(A4), f(A3), _cell_param(f(B2), "B2"), dtv)
    return Coeffs(a1, a2, a3, a4, b1, b2, _cell_param(f(C1), "C1"), _cell_param(f(C2), "C2"))


def _loop_one_direction(x: torch.Tensor, k: Coeffs, reverse: bool) -> torch.Tensor:
    """The double loop; reverse=True walks v from V-1 down, h2 carried from v+1."""
    b, T, V, d = x.shape
    N = k.a1.shape[-1]
    shape = (b, T, V, d, N)
    k = Coeffs(*(c.expand(shape) for c in k))  # full grid, so that cells can be indexed
    zero = x.new_zeros(b, d, N)
    v_order = range(V - 1, -1, -1) if reverse else range(V)
    step = 1 if reverse else -1  # offset of the v-neighbour a cell reads
    h1 = [[zero] * V for _ in range(T)]
    h2 = [[zero] * V for _ in range(T)]
    y = [[None] * V for _ in range(T)]
    for t in range(T):
        for v in v_order:
            xv = x[:, t, v, :, None]
            up1, up2 = (h1[t - 1][v], h2[t - 1][v]) if t > 0 else (zero, zero)
            vn = v + step
            left1, left2 = (h1[t][vn], h2[t][vn]) if 0 <= vn < V else (zero, zero)
            h1[t][v] = k.a1[:, t, v] * up1 + k.a2[:, t, v] * up2 + k.b1[:, t, v] * xv
            h2[t][v] = k.a3[:, t, v] * left1 + k.a4[:, t, v] * left2 + k.b2[:, t, v] * xv
            y[t][v] = (k.c1[:, t, v] * h1[t][v] + k.c2[:, t, v] * h2[t][v]).sum(-1)
    return torch.stack([torch.stack(row, dim=1) for row in y], dim=1)


def _wavefront_forward(x: torch.Tensor, k: Coeffs) -> torch.Tensor:
    """Forward-v sweep by anti-diagonals.  Diagonal buffers are indexed by t: cell (t, s - t)."""
    b, T, V, d = x.shape
    N = k.a1.shape[-1]
    shape = (b, T, V, d, N)
    k = Coeffs(*(c.expand(shape) for c in k))  # full grid, so that cells can be indexed
    tt = torch.arange(T, device=x.device)
    h1 = x.new_zeros(b, T, d, N)  # diagonal s - 1; entries of cells off the grid stay zero
    h2 = x.new_zeros(b, T, d, N)
    ys = []
    for s in range(T + V - 1):
        vv = s - tt
        valid = ((vv >= 0) & (vv < V))[None, :, None, None]
        vc = vv.clamp(0, V - 1)
        g = lambda c: c[:, tt, vc]  # noqa: E731  (b, T, d, N): the cells of diagonal s
        xs = x[:, tt, vc, :, None]
        # h1 reads cell (t-1, v): index t-1 of the previous diagonal; row 0 reads zeros.
        up1 = torch.cat([h1.new_zeros(b, 1, d, N), h1[:, :-1]], dim=1)
        up2 = torch.cat([h2.new_zeros(b, 1, d, N), h2[:, :-1]], dim=1)
        # h2 reads cell (t, v-1): the same index t of the previous diagonal (zero when v = 0,
        # because that cell was off the grid and was masked to zero).
        n1 = g(k.a1) * up1 + g(k.a2) * up2 + g(k.b1) * xs
        n2 = g(k.a3) * h1 + g(k.a4) * h2 + g(k.b2) * xs
        h1, h2 = torch.where(valid, n1, 0.0), torch.where(valid, n2, 0.0)
        ys.append((g(k.c1) * h1 + g(k.c2) * h2).sum(-1))  # (b, T, d)
    Y = torch.stack(ys, dim=1)  # (b, T + V - 1, T, d): Y[:, s, t] is cell (t, s - t)
    s_idx = tt[:, None] + torch.arange(V, device=x.device)[None, :]  # (T, V)
    return Y[:, s_idx, tt[:, None].expand(T, V)]


def _finish(xf, y, D, dtype_in):
    if D is not None:
        y = y + xf * D.to(xf.dtype)
    return y.to(dtype_in)


def ssm2d_ref(x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v, D=None, bidirectional=False):
    """2-D SSM by a plain double loop over (t, v).  x: (b, T, V, d) -> (b, T, V, d).

    See the module docstring for the parameter shapes.  dt_t, dt_v are the (positive) steps
    themselves: apply softplus/exp before calling.
    """
    xf = x.to(compute_dtype(x))
    k = discretize(xf, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v)
    y = _loop_one_direction(xf, k, reverse=False)
    if bidirectional:
        y = y + _loop_one_direction(xf, k, reverse=True)
    return _finish(xf, y, D, x.dtype)


def ssm2d_wavefront(x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v, D=None, bidirectional=False):
    """2-D SSM by anti-diagonal wavefront (same arguments and result as `ssm2d_ref`).

    The backward-v direction is the forward sweep on the v-flipped grid, flipped back.
    """
    xf = x.to(compute_dtype(x))
    k = discretize(xf, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v)
    y = _wavefront_forward(xf, k)
    if bidirectional:
        kf = Coeffs(*(c.flip(2) for c in k))  # v axis; size-1 (broadcast) axes are unchanged
        y = y + _wavefront_forward(xf.flip(2), kf).flip(2)
    return _finish(xf, y, D, x.dtype)
