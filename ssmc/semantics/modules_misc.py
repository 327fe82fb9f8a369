"""nn.Modules around the 2-D SSM, the nested recursion and the PLRNN oracles.

Parameters are fp32 by default; inputs of any float dtype are computed in fp32 (fp64 when
the input is fp64) and returned in the input dtype.  Every module can be built on
device="meta" (or under `with torch.device("meta")`): initialisers skip meta tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmc.semantics.glue import check_positive_int
from ssmc.semantics.nested import INNER, GRCWeights, ScorerWeights, nested_ref
from ssmc.semantics.recurrence import plrnn_ref
from ssmc.semantics.ssm2d import compute_dtype, ssm2d_ref, ssm2d_wavefront


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """layer(x) with the parameters cast to x's (compute) dtype."""
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, layer.weight.to(x.dtype), bias)


def _log_uniform_(p: torch.Tensor, lo: float, hi: float) -> None:
    """p <- log of a log-uniform sample in [lo, hi] (dt's usual init)."""
    p.uniform_(math.log(lo), math.log(hi))


class SSM2D(nn.Module):
    """Chimera's 2-D SSM over a (b, T, V, d) grid (MODELS.md section 6; see semantics.ssm2d).

    Parameters: A1_log, A4_log (d, N): A1 = -exp(A1_log) (t axis), A4 = -exp(A4_log) (v axis),
    init S4D-Real -(1..N); A2, A3 (d, N): the couplings h2 -> h1 and h1 -> h2, init U(-0.1, 0.1);
    D (d,) = 1.  Time-invariant: B1, B2 (d, N) = 1, C1, C2 (d, N) ~ N(0, 1/N), log_dt_t,
    log_dt_v (d,) log-uniform in [dt_min, dt_max].  Selective: x_proj (d -> 4N, no bias) gives
    B1, B2, C1, C2 per cell (shared by the channels); dt_proj (d -> 2d) then softplus gives
    dt_t, dt_v per cell, its bias initialised to softplus^-1 of a log-uniform dt.  The A's are
    never input-dependent.
    """

    def __init__(self, d_model: int, d_state: int, selective: bool = False,
                 bidirectional: bool = True, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 device=None, dtype=None):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("d_state", d_state)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min, dt_max must satisfy 0 < dt_min <= dt_max, "
                             f"got dt_min={dt_min!r}, dt_max={dt_max!r}")
        self.d_model, self.d_state = d_model, d_state
        self.selective, self.bidirectional = bool(selective), bool(bidirectional)
        self.dt_min, self.dt_max = dt_min, dt_max
        fk = dict(device=device, dtype=dtype)
        d, N = d_model, d_state
        self.A1_log = nn.Parameter(torch.empty(d, N, **fk))
        self.A4_log = nn.Parameter(torch.empty(d, N, **fk))
        self.A2 = nn.Parameter(torch.empty(d, N, **fk))
        self.A3 = nn.Parameter(torch.empty(d, N, **fk))
        self.D = nn.Parameter(torch.empty(d, **fk))
        if self.selective:
            self.x_proj = nn.Linear(d, 4 * N, bias=False, **fk)
            self.dt_proj = nn.Linear(d, 2 * d, **fk)
        else:
            for name in ("B1", "B2", "C1", "C2"):
                setattr(self, name, nn.Parameter(torch.empty(d, N, **fk)))
            self.log_dt_t = nn.Parameter(torch.empty(d, **fk))
            self.log_dt_v = nn.Parameter(torch.empty(d, **fk))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.D.is_meta:
            return
        N = self.d_state
        with torch.no_grad():
            s4d_real = torch.log(torch.arange(1, N + 1, dtype=torch.float32))
            self.A1_log.copy_(s4d_real.expand_as(self.A1_log))
            self.A4_log.copy_(s4d_real.expand_as(self.A4_log))
            self.A2.uniform_(-0.1, 0.1)
            self.A3.uniform_(-0.1, 0.1)
            self.D.fill_(1.0)
            if self.selective:
                self.x_proj.reset_parameters()
                std = self.d_model ** -0.5 * 0.1  # dt starts close to its bias
                self.dt_proj.weight.uniform_(-std, std)
                dt = torch.empty_like(self.dt_proj.bias)
                _log_uniform_(dt, self.dt_min, self.dt_max)
                dt = dt.exp()
                self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1
            else:
                self.B1.fill_(1.0)
                self.B2.fill_(1.0)
                self.C1.normal_(0.0, N ** -0.5)
                self.C2.normal_(0.0, N ** -0.5)
                _log_uniform_(self.log_dt_t, self.dt_min, self.dt_max)
                _log_uniform_(self.log_dt_v, self.dt_min, self.dt_max)

    def forward(self, x: torch.Tensor, method: str = "wavefront") -> torch.Tensor:
        """x: (b, T, V, d) -> (b, T, V, d).  method: "wavefront" or "loop" (same values)."""
        fn = {"wavefront": ssm2d_wavefront, "loop": ssm2d_ref}.get(method)
        if fn is None:
            raise ValueError(f"method must be 'wavefront' or 'loop', got {method!r}")
        xf = x.to(compute_dtype(x))
        ct = xf.dtype
        if self.selective:
            B1, B2, C1, C2 = _linear(xf, self.x_proj).split(self.d_state, dim=-1)
            dt_t, dt_v = F.softplus(_linear(xf, self.dt_proj)).chunk(2, dim=-1)
        else:
            B1, B2, C1, C2 = self.B1, self.B2, self.C1, self.C2
            dt_t, dt_v = self.log_dt_t.exp(), self.log_dt_v.exp()
        A1 = -self.A1_log.to(ct).exp()
        A4 = -self.A4_log.to(ct).exp()
        y = fn(xf, A1, self.A2, self.A3, A4, B1, B2, C1, C2, dt_t, dt_v, D=self.D,
               bidirectional=self.bidirectional)
        return y.to(x.dtype)


class GRCCell(nn.Module):
    """Gated recursive cell GRC(l, r) (semantics.nested.grc): w1 2d -> 4d, w2 4d -> 4d, norm."""

    def __init__(self, d: int, device=None, dtype=None):
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.w1 = nn.Linear(2 * d, 4 * d, **fk)
        self.w2 = nn.Linear(4 * d, 4 * d, **fk)
        self.norm = nn.LayerNorm(d, **fk)

    def weights(self) -> GRCWeights:
        return GRCWeights(self.w1.weight, self.w1.bias, self.w2.weight, self.w2.bias,
                          self.norm.weight, self.norm.bias, self.norm.eps)


class PairScorer(nn.Module):
    """The beam tree's pair scorer: [l; r] (2d) -> d -> GELU -> 1 (no output bias: see
    semantics.nested.ScorerWeights)."""

    def __init__(self, d: int, device=None, dtype=None):
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.w1 = nn.Linear(2 * d, d, **fk)
        self.w2 = nn.Linear(d, 1, bias=False, **fk)

    def weights(self) -> ScorerWeights:
        return ScorerWeights(self.w1.weight, self.w1.bias, self.w2.weight)


class NestedRecursion(nn.Module):
    """Recursion-in-recursion over GRC trees (MODELS.md section 7; see semantics.nested).

    x: (b, L, d) [, lengths (b,)] -> (b, d).  inner: "bbt", "rnn" or "beam" (with `beam`
    beams and a PairScorer); chunk: the outer tree's arity k >= 2.
    """

    def __init__(self, d_model: int, chunk: int = 30, inner: str = "bbt", beam: int = 7,
                 device=None, dtype=None):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("chunk", chunk)
        if chunk < 2:
            raise ValueError(f"chunk must be >= 2 (k = 1 never shrinks the sequence), got {chunk}")
        if inner not in INNER:
            raise ValueError(f"inner must be one of {INNER}, got {inner!r}")
        check_positive_int("beam", beam)
        self.d_model, self.chunk, self.inner, self.beam = d_model, chunk, inner, beam
        self.cell = GRCCell(d_model, device=device, dtype=dtype)
        self.scorer = PairScorer(d_model, device=device, dtype=dtype) if inner == "beam" else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, L, d); lengths: (b,) ints in [1, L] or None -> (b, d)."""
        sw = self.scorer.weights() if self.scorer is not None else None
        return nested_ref(x, self.cell.weights(), self.inner, self.chunk, lengths, sw, self.beam)


class PLRNN(nn.Module):
    """Piecewise-linear RNN z_t = A z_{t-1} + W relu(z_{t-1}) + h0 + C s_t (MODELS.md section 8).

    Parameters: A (M,) ~ U(0.5, 0.9) (a stable diagonal), W (M, M) ~ N(0, 0.1^2 / M) with its
    diagonal masked in the forward (so it never trains), h0 (M,) = 0, C (M, K) ~ N(0, 1/K).
    s: (b, L, K) [, z0 (b, M) or (M,)] -> z (b, L, M).
    """

    def __init__(self, d_latent: int, d_input: int, device=None, dtype=None):
        super().__init__()
        check_positive_int("d_latent", d_latent)
        check_positive_int("d_input", d_input)
        self.d_latent, self.d_input = d_latent, d_input
        fk = dict(device=device, dtype=dtype)
        M, K = d_latent, d_input
        self.A = nn.Parameter(torch.empty(M, **fk))
        self.W = nn.Parameter(torch.empty(M, M, **fk))
        self.h0 = nn.Parameter(torch.empty(M, **fk))
        self.C = nn.Parameter(torch.empty(M, K, **fk))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.A.is_meta:
            return
        with torch.no_grad():
            self.A.uniform_(0.5, 0.9)
            self.W.normal_(0.0, 0.1 / math.sqrt(self.d_latent))
            self.h0.zero_()
            self.C.normal_(0.0, 1.0 / math.sqrt(self.d_input))

    def forward(self, s: torch.Tensor, z0: torch.Tensor | None = None) -> torch.Tensor:
        """s: (b, L, d_input); z0: (b, d_latent), (d_latent,) or None -> (b, L, d_latent)."""
        return plrnn_ref(s, self.A, self.W, self.h0, self.C, z0)
