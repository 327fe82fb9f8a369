"""The Mamba-1 selective scan's arguments, checked once and normalised for every algorithm.

The interface is mamba-ssm's `selective_scan_fn` (DESIGN.md), plus `initial_state` and
`conj_pair` from the oracle `ssmc.semantics.selective.selective_scan_ref`.

B and C come in three layouts; the kernels see one: element (batch, group, state, time) with
four strides and `channels_per_group`, so that channel c reads group c // channels_per_group.
  (dim, N)            time-invariant: group = channel, batch and time strides 0
  (batch, N, L)       shared by all channels: group stride 0
  (batch, g, N, L)    grouped: dim // g channels per group
Complex tensors are legalised to (re, im) pairs (MODELS.md section 5): the kernels get the
`torch.view_as_real` view, and the imaginary part sits one element after the real part.

Variable-length batches: `cu_seqlens` (num_seqs + 1,) packs sequences into one batch row.  The
kernels get `seq_idx` (L,) int32, each step's sequence; where it changes a sequence starts, and
that step is a restart: h_t = exp(dt A) h0_s + dt B u with h0_s the sequence's initial state
(0 without one).  For the scans that is the step (a, b) = (0, exp(dt A) h0_s + dt B u), so the
sequential, associative and chunked algorithms all take it the same way.  initial_state and
the final state are then per sequence: (num_seqs, dim, N).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from ssmc.codegen.triton.common import FLOAT_DTYPES, check_flag, check_same_device, check_tensor
from ssmc.semantics.selective import check_cu_seqlens

REAL_OR_COMPLEX = FLOAT_DTYPES + (torch.complex64,)


@dataclass
class StateSpaceOperand:
    """B or C as the kernels address it (see the module docstring)."""

    data: torch.Tensor  # real view
    channels_per_group: int
    stride_batch: int
    stride_group: int
    stride_state: int
    stride_time: int
    is_complex: bool

    def kernel_args(self, prefix: str) -> dict:
        return {
            f"{prefix}_ptr": self.data,
            f"{prefix}_channels_per_group": self.channels_per_group,
            f"stride_{prefix}_batch": self.stride_batch,
            f"stride_{prefix}_group": self.stride_group,
            f"stride_{prefix}_state": self.stride_state,
            f"stride_{prefix}_time": self.stride_time,
        }


@dataclass
class SelectiveScanProblem:
    u: torch.Tensor  # (batch, dim, seqlen), contiguous
    delta: torch.Tensor  # (batch, dim, seqlen), contiguous
    z: torch.Tensor | None
    A: torch.Tensor  # (dim, N) fp32, or (dim, N, 2) fp32 for complex A
    B: StateSpaceOperand
    C: StateSpaceOperand
    D: torch.Tensor | None  # (dim,) fp32
    delta_bias: torch.Tensor | None  # (dim,) fp32
    initial_state: torch.Tensor | None  # (batch or num_seqs, dim, N[, 2]) fp32, contiguous
    delta_softplus: bool
    return_last_state: bool
    conj_pair: bool
    batch: int
    dim: int
    seqlen: int
    dstate: int
    cu_seqlens: list | None = None  # host offsets (num_seqs + 1) of a packed row
    seq_idx: torch.Tensor | None = None  # (seqlen,) int32: each step's sequence

    @property
    def varlen(self) -> bool:
        return self.cu_seqlens is not None

    @property
    def num_seqs(self) -> int:
        """Initial and final states' leading dim: sequences (varlen) or batch rows."""
        return len(self.cu_seqlens) - 1 if self.varlen else self.batch

    @property
    def is_complex(self) -> bool:
        return self.A.dim() == 3

    @property
    def values_per_channel(self) -> int:
        """fp32 state values one channel keeps in registers (padded N, x2 for complex)."""
        return triton.next_power_of_2(self.dstate) * (2 if self.is_complex else 1)

    @property
    def device(self) -> torch.device:
        return self.u.device

    def new_output(self) -> torch.Tensor:
        return torch.empty_like(self.u)

    def new_states(self, chunks: int) -> torch.Tensor:
        """fp32 states, (batch, chunks, dim, N[, 2])."""
        pair = (2,) if self.is_complex else ()
        return torch.empty((self.batch, chunks, self.dim, self.dstate) + pair,
                           dtype=torch.float32, device=self.device)

    def new_last_states(self) -> torch.Tensor:
        """Where the final states go: (batch, 1, dim, N[, 2]), or with cu_seqlens
        (num_seqs, 1, dim, N[, 2]) holding each sequence's initial state, which is what an
        empty sequence (no step for a kernel to write it) ends with."""
        if not self.varlen:
            return self.new_states(1)
        pair = (2,) if self.is_complex else ()
        states = torch.zeros((self.num_seqs, 1, self.dim, self.dstate) + pair,
                             dtype=torch.float32, device=self.device)
        if self.initial_state is not None:
            states[:, 0] = self.initial_state
        return states

    def varlen_args(self, seq_h0, seq_h_out) -> dict:
        """The varlen pointers: seq_idx, per-sequence initial and final states (placeholders
        when absent, like every optional pointer)."""
        return {"seq_idx_ptr": self.seq_idx if self.varlen else self.A,
                "seq_h0_ptr": seq_h0 if seq_h0 is not None else self.A,
                "seq_h_out_ptr": seq_h_out if seq_h_out is not None else self.A}

    def last_state_view(self, states: torch.Tensor) -> torch.Tensor:
        """(batch or num_seqs, 1, dim, N[, 2]) fp32 -> what the oracle returns:
        (batch or num_seqs, dim, N) fp32 or complex64."""
        last = states[:, -1]
        return torch.view_as_complex(last) if self.is_complex else last

    def scalar_args(self) -> dict:
        return {"dim": self.dim, "seqlen": self.seqlen, "dstate": self.dstate,
                "stride_A_dim": self.A.stride(0), "stride_A_state": self.A.stride(1)}

    def flags(self) -> dict:
        return {
            "DELTA_SOFTPLUS": self.delta_softplus,
            "HAS_D": self.D is not None,
            "HAS_Z": self.z is not None,
            "HAS_DELTA_BIAS": self.delta_bias is not None,
            "A_COMPLEX": self.is_complex,
            "B_COMPLEX": self.B.is_complex,
            "C_COMPLEX": self.C.is_complex,
            "CONJ_PAIR": self.conj_pair,
        }


def _real_view(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _operand(name: str, M, batch: int, dim: int, seqlen: int, dstate: int,
             a_complex: bool) -> StateSpaceOperand:
    check_tensor(name, M, dtypes=REAL_OR_COMPLEX)
    if M.is_complex() and not a_complex:
        raise ValueError(f"{name}: complex {name} needs a complex A")
    if M.dim() == 2:
        check_tensor(name, M, dims=(("dim", dim), ("dstate", dstate)))
    elif M.dim() == 3:
        check_tensor(name, M, dims=(("batch", batch), ("dstate", dstate), ("seqlen", seqlen)))
    elif M.dim() == 4:
        check_tensor(name, M, dims=(("batch", batch), ("groups", None), ("dstate", dstate),
                                    ("seqlen", seqlen)))
        if M.shape[1] < 1 or dim % M.shape[1]:
            raise ValueError(f"{name}: {M.shape[1]} groups do not divide dim={dim}")
    else:
        raise ValueError(f"{name}: expected (dim, N), (batch, N, L) or (batch, groups, N, L), "
                         f"got shape {tuple(M.shape)}")
    data = _real_view(M)
    s = data.stride()
    if M.dim() == 2:  # one "group" per channel, constant over batch and time
        return StateSpaceOperand(data, 1, 0, s[0], s[1], 0, M.is_complex())
    if M.dim() == 3:
        return StateSpaceOperand(data, 1, s[0], 0, s[1], s[2], M.is_complex())
    return StateSpaceOperand(data, dim // M.shape[1], s[0], s[1], s[2], s[3], M.is_complex())


def _per_channel(name: str, v, dim: int):
    if v is None:
        return None
    check_tensor(name, v, dims=(("dim", dim),), dtypes=FLOAT_DTYPES)
    return v.float().contiguous()


def _varlen(cu_seqlens, u):
    """cu_seqlens -> (host offsets, seq_idx (L,) int32 on u's device), or (None, None)."""
    if cu_seqlens is None:
        return None, None
    batch, _, seqlen = u.shape
    cu = check_cu_seqlens(cu_seqlens, batch, seqlen)
    if cu_seqlens.device != u.device:
        raise ValueError(f"cu_seqlens: on {cu_seqlens.device}, but u is on {u.device}")
    lengths = torch.tensor([e - s for s, e in zip(cu, cu[1:])], device=u.device)
    seq_idx = torch.repeat_interleave(torch.arange(len(cu) - 1, device=u.device), lengths)
    return cu, seq_idx.to(torch.int32)


def selective_scan_problem(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                           delta_softplus=False, return_last_state=False, initial_state=None,
                           conj_pair=True, cu_seqlens=None) -> SelectiveScanProblem:
    """Check mamba-ssm-style arguments (ValueError naming the argument) and normalise them."""
    check_tensor("u", u, dims=(("batch", None), ("dim", None), ("seqlen", None)),
                 dtypes=FLOAT_DTYPES)
    batch, dim, seqlen = u.shape
    check_tensor("delta", delta, dims=(("batch", batch), ("dim", dim), ("seqlen", seqlen)),
                 dtypes=FLOAT_DTYPES)
    check_tensor("z", z, dims=(("batch", batch), ("dim", dim), ("seqlen", seqlen)),
                 dtypes=FLOAT_DTYPES, optional=True)
    check_tensor("A", A, dims=(("dim", dim), ("dstate", None)), dtypes=REAL_OR_COMPLEX)
    dstate = A.shape[1]
    if dstate < 1:
        raise ValueError("A: needs at least one state (dstate >= 1)")
    check_flag("delta_softplus", delta_softplus)
    check_flag("return_last_state", return_last_state)
    check_flag("conj_pair", conj_pair)
    a_complex = A.is_complex()
    Bop = _operand("B", B, batch, dim, seqlen, dstate, a_complex)
    Cop = _operand("C", C, batch, dim, seqlen, dstate, a_complex)
    cu, seq_idx = _varlen(cu_seqlens, u)
    if initial_state is not None:
        lead = ("batch", batch) if cu is None else ("num_seqs", len(cu) - 1)
        check_tensor("initial_state", initial_state,
                     dims=(lead, ("dim", dim), ("dstate", dstate)), dtypes=REAL_OR_COMPLEX)
        state_dtype = torch.complex64 if a_complex else torch.float32
        if initial_state.is_complex() and not a_complex:
            raise ValueError("initial_state: complex initial_state needs a complex A")
        initial_state = _real_view(initial_state.to(state_dtype)).contiguous()
    check_same_device("u", u, delta=delta, z=z, A=A, B=B, C=C, D=D, delta_bias=delta_bias,
                      initial_state=initial_state)
    A_real = _real_view(A.to(torch.complex64) if a_complex else A.float()).contiguous()
    return SelectiveScanProblem(
        u=u.contiguous(), delta=delta.contiguous(),
        z=None if z is None else z.contiguous(),
        A=A_real, B=Bop, C=Cop,
        D=_per_channel("D", D, dim), delta_bias=_per_channel("delta_bias", delta_bias, dim),
        initial_state=initial_state, delta_softplus=delta_softplus,
        return_last_state=return_last_state, conj_pair=conj_pair,
        batch=batch, dim=dim, seqlen=seqlen, dstate=dstate, cu_seqlens=cu, seq_idx=seq_idx)


def pick(problem: SelectiveScanProblem, out: torch.Tensor, states: torch.Tensor | None):
    """What the launcher returns: out, or (out, last_state) like the oracle."""
    if problem.return_last_state:
        return out, problem.last_state_view(states)
    return out
