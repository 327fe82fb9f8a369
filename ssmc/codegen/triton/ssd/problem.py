"""The Mamba-2 SSD's arguments, checked once and normalised (mamba-ssm's
`mamba_chunk_scan_combined` interface, DESIGN.md; oracle `ssmc.semantics.selective.ssd_ref`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ssmc.codegen.triton.common import FLOAT_DTYPES, check_flag, check_same_device, check_tensor


@dataclass
class SsdProblem:
    x: torch.Tensor  # (batch, seqlen, heads, headdim), contiguous
    dt: torch.Tensor  # (batch, seqlen, heads), contiguous
    A: torch.Tensor  # (heads,) fp32
    B: torch.Tensor  # (batch, seqlen, groups, dstate), contiguous
    C: torch.Tensor  # (batch, seqlen, groups, dstate), contiguous
    D: torch.Tensor | None  # (heads, headdim) fp32
    z: torch.Tensor | None  # (batch, seqlen, heads, headdim), contiguous
    dt_bias: torch.Tensor | None  # (heads,) fp32
    initial_states: torch.Tensor | None  # (batch, heads, headdim, dstate) fp32, contiguous
    seq_idx: torch.Tensor | None  # (batch, seqlen) int32, contiguous
    dt_softplus: bool
    dt_limit: tuple
    return_final_states: bool
    batch: int
    seqlen: int
    heads: int
    headdim: int
    groups: int
    dstate: int

    @property
    def has_dt_limit(self) -> bool:
        lo, hi = self.dt_limit
        return lo > 0.0 or hi != math.inf


def ssd_problem(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                initial_states=None, seq_idx=None, dt_softplus=False,
                dt_limit=(0.0, float("inf")), return_final_states=False) -> SsdProblem:
    check_tensor("x", x, dims=(("batch", None), ("seqlen", None), ("heads", None),
                               ("headdim", None)), dtypes=FLOAT_DTYPES)
    batch, seqlen, heads, headdim = x.shape
    check_tensor("dt", dt, dims=(("batch", batch), ("seqlen", seqlen), ("heads", heads)),
                 dtypes=FLOAT_DTYPES)
    check_tensor("A", A, dims=(("heads", heads),), dtypes=FLOAT_DTYPES)
    check_tensor("B", B, dims=(("batch", batch), ("seqlen", seqlen), ("groups", None),
                               ("dstate", None)), dtypes=FLOAT_DTYPES)
    groups, dstate = B.shape[2], B.shape[3]
    if groups < 1 or heads % groups:
        raise ValueError(f"B: {groups} groups do not divide heads={heads}")
    check_tensor("C", C, dims=(("batch", batch), ("seqlen", seqlen), ("groups", groups),
                               ("dstate", dstate)), dtypes=FLOAT_DTYPES)
    if not isinstance(chunk_size, int) or chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size: must be a power of two >= 16, got {chunk_size!r}")
    if D is not None:
        check_tensor("D", D, dtypes=FLOAT_DTYPES)
        if tuple(D.shape) not in ((heads,), (heads, headdim)):
            raise ValueError(f"D: expected shape (heads={heads}) or (heads={heads}, "
                             f"headdim={headdim}), got {tuple(D.shape)}")
        D = (D[:, None] if D.dim() == 1 else D).float().expand(heads, headdim).contiguous()
    check_tensor("z", z, dims=(("batch", batch), ("seqlen", seqlen), ("heads", heads),
                               ("headdim", headdim)), dtypes=FLOAT_DTYPES, optional=True)
    check_tensor("dt_bias", dt_bias, dims=(("heads", heads),), dtypes=FLOAT_DTYPES,
                 optional=True)
    check_tensor("initial_states", initial_states,
                 dims=(("batch", batch), ("heads", heads), ("headdim", headdim),
                       ("dstate", dstate)), dtypes=FLOAT_DTYPES, optional=True)
    check_tensor("seq_idx", seq_idx, dims=(("batch", batch), ("seqlen", seqlen)),
                 dtypes=(torch.int32, torch.int64), optional=True)
    check_flag("dt_softplus", dt_softplus)
    check_flag("return_final_states", return_final_states)
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise ValueError(f"dt_limit: expected (low, high), got {dt_limit!r}") from None
    if not lo <= hi:
        raise ValueError(f"dt_limit: low {lo} is above high {hi}")
    check_same_device("x", x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                      initial_states=initial_states, seq_idx=seq_idx)
    return SsdProblem(
        x=x.contiguous(), dt=dt.contiguous(), A=A.float().contiguous(),
        B=B.contiguous(), C=C.contiguous(), D=D,
        z=None if z is None else z.contiguous(),
        dt_bias=None if dt_bias is None else dt_bias.float().contiguous(),
        initial_states=None if initial_states is None else
        initial_states.float().contiguous(),
        seq_idx=None if seq_idx is None else seq_idx.to(torch.int32).contiguous(),
        dt_softplus=dt_softplus, dt_limit=(lo, hi), return_final_states=return_final_states,
        batch=batch, seqlen=seqlen, heads=heads, headdim=headdim, groups=groups,
        dstate=dstate)
