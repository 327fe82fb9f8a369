"""TIR builders for decoding: the one-token step of the selective scan (Mamba-1 and Mamba-2), and
the per-head sequence scan that runs Mamba-2's SSD on the CPU.

Both are the *same* algorithm as the sequence kernel: `selective_scan_tir._ScanAlgorithm`, the
per-channel description of the selective SSM node (softplus(dt + bias), h = exp(dt A) h +
dt B x, y = <C, h> + D x, y *= silu(z)), driven here with other buffers:

* step (`StepSignature.step=True`): L = 1, and the initial state and the final state are one
  buffer, `state` (b, d, N), updated in place: the recurrent cache of a decoder
  (transformers' `recurrent_states`, mamba-ssm's `ssm_state`).  d = heads * head_dim for
  Mamba-2, whose cache (b, heads, head_dim, N) has the same memory layout.
* sequence (`step=False`): b and L symbolic, optional initial / final state, used for SSD when
  head_dim > 1 (Mamba-2 on the CPU: a scan per channel is the SSD recurrence with a scalar A per
  head, the same numbers as the chunked form).

Mamba-2's per-head parameters (dt, A, D, dt_bias) are read through index maps that send channel
c to head c // head_dim, so the algorithm itself is unchanged.  Every buffer's inner stride is 1
and its outer strides are symbolic: slices of a projection output (z = xz[..., d:], B and C
columns of x_proj's output) reach the kernel without copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm.tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm import selective_scan_tir as _scan
from ssmc.codegen.tvm import tirmath as M
from ssmc.codegen.tvm.config import Config
from ssmc.codegen.tvm.selective_scan_tir import ScanSignature, _ScanAlgorithm

F32 = "float32"
IDX = "int64"
STEP_FUNC = "selective_step"
SEQ_FUNC = "selective_scan_heads"


@dataclass(frozen=True)
class StepSignature:
    """What a step / per-head kernel is specialised on.

    d: channels (Mamba-1 d_inner; Mamba-2 heads * head_dim); N: states per channel;
    groups: B/C groups (channel c reads group c // (d // groups));
    head_dim: channels sharing one dt, A, D, dt_bias (1 = Mamba-1, per channel);
    step: one token with the state updated in place, else a sequence."""

    d: int
    N: int
    groups: int = 1
    head_dim: int = 1
    has_D: bool = True
    has_z: bool = True
    has_delta_bias: bool = True
    delta_softplus: bool = True
    step: bool = True
    has_initial_state: bool = True  # sequence kernels only (a step always has its state)
    return_last_state: bool = True  # sequence kernels only

    def __post_init__(self):
        if self.d < 1 or self.N < 1 or self.groups < 1 or self.head_dim < 1:
            raise ValueError(f"StepSignature: d, N, groups, head_dim must be >= 1, got {self}")
        if self.d % self.head_dim:
            raise ValueError(f"head_dim {self.head_dim} must divide d={self.d}")
        if self.d % self.groups or (self.d // self.groups) % self.head_dim:
            raise ValueError(f"groups {self.groups} must split d={self.d} into whole heads")

    @property
    def heads(self) -> int:
        return self.d // self.head_dim

    def scan_signature(self) -> ScanSignature:
        return ScanSignature(
            d=self.d, N=self.N, b_groups=self.groups, c_groups=self.groups, has_D=self.has_D,
            has_z=self.has_z, has_delta_bias=self.has_delta_bias,
            delta_softplus=self.delta_softplus,
            has_initial_state=self.step or self.has_initial_state,
            return_last_state=self.step or self.return_last_state)

    def func_name(self) -> str:
        return STEP_FUNC if self.step else SEQ_FUNC


def arg_names(sig: StepSignature) -> list[str]:
    """The kernel's arguments in order (the torch wrapper passes tensors under these names).
    A2 is A * log2(e): (N, d) for Mamba-1, (heads,) when head_dim > 1."""
    names = ["u", "delta", "A2", "B", "C"]
    if sig.has_D:
        names.append("D")
    if sig.has_z:
        names.append("z")
    if sig.has_delta_bias:
        names.append("delta_bias")
    if sig.step:
        names.append("state")
    else:
        if sig.has_initial_state:
            names.append("h0")
    names.append("out")
    if not sig.step and sig.return_last_state:
        names.append("h_last")
    return names


class _StepAlgorithm(_ScanAlgorithm):
    """The scan's algorithm; a step stores y at (b, c) (its token tensors have no token axis)."""

    step_out = False

    def store_seq(self, name, bi, l, c, value):
        if self.step_out:
            T.buffer_store(self.bufs[name], value, [bi, c])
        else:
            super().store_seq(name, bi, l, c, value)


class _Remap:
    """A read-only view of a buffer through an index map (channel -> head)."""

    def __init__(self, buf, fn):
        self.buf, self.fn = buf, fn

    def __getitem__(self, idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        return self.buf[tuple(self.fn(*idx))]


def _strided(name: str, shape, compact: bool = False):
    """A float32 argument buffer: inner stride 1, outer strides symbolic (any torch view whose
    last axis is contiguous), unless `compact`."""
    if compact:
        return T.arg(name, T.buffer(tuple(shape), F32, align=4))
    # int64 throughout: TVM binds each stride variable against its dimension's type
    shape = tuple(tir.IntImm(IDX, s) if isinstance(s, int) else s for s in shape)
    strides = [tir.Var(f"{name}_s{i}", IDX) for i in range(len(shape) - 1)] + [tir.IntImm(IDX, 1)]
    return T.arg(name, T.buffer(shape, F32, strides=strides, align=4))


def _declare(sig: StepSignature, b, L) -> dict:
    """A step's token tensors have no token axis: u, delta, z, out (b, d); B, C (b, g, N)."""
    d, N, g, H = sig.d, sig.N, sig.groups, sig.heads
    per_head = sig.head_dim > 1
    tok = (lambda *s: (b,) + s) if sig.step else (lambda *s: (b, L) + s)
    shapes = {
        "u": tok(d), "delta": tok(H if per_head else d), "z": tok(d),
        "A2": (H,) if per_head else (N, d), "B": tok(g, N), "C": tok(g, N),
        "D": (H,) if per_head else (d,), "delta_bias": (H,) if per_head else (d,),
        "state": (b, d, N), "h0": (b, d, N), "out": tok(d), "h_last": (b, d, N),
    }
    compact = {"A2", "D", "delta_bias", "state", "h0", "out", "h_last"}
    return {nm: _strided(nm, shapes[nm], nm in compact) for nm in arg_names(sig)}


def _algorithm_buffers(sig: StepSignature, raw: dict) -> dict:
    """The buffer names `_ScanAlgorithm` reads, mapped onto this kernel's arguments."""
    bufs = dict(raw)
    if sig.step:
        bufs["h0"] = bufs["h_last"] = raw["state"]
        for nm in ("u", "delta", "z"):  # (bi, l, c) -> (bi, c)
            if nm in raw:
                bufs[nm] = _Remap(raw[nm], lambda bi, l, c: (bi, c))
        for nm in ("B", "C"):
            bufs[nm] = _Remap(raw[nm], lambda bi, l, g, n: (bi, g, n))
    P = sig.head_dim
    if P > 1:
        delta = bufs["delta"]
        bufs["delta"] = _Remap(delta, lambda bi, l, c: (bi, l, c // P))
        bufs["A2"] = _Remap(raw["A2"], lambda n, c: (c // P,))
        for nm in ("D", "delta_bias"):
            if nm in raw:
                bufs[nm] = _Remap(raw[nm], lambda c: (c // P,))
    return bufs


def build(sig: StepSignature, config: Config):
    """The PrimFunc for `sig` (CPU/LLVM): tasks of `channel_block` channels over batch x blocks,
    each running `_ScanAlgorithm` over its block (a step: one token)."""
    b = tir.Var("b", IDX)
    L = tir.IntImm(IDX, 1) if sig.step else tir.Var("L", IDX)
    cfg = config
    name = sig.func_name()
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tirx.noalias": True, "global_symbol": name})
            emit(sig, cfg, _declare(sig, b, L), b, L)
    return ib.get()


def emit(sig: StepSignature, cfg: Config, raw: dict, b, L):
    """The step's (or per-head scan's) statements in the current PrimFunc, over the buffers
    `raw` (named as arg_names(sig); reads may go through index-mapped views)."""
    ssig = sig.scan_signature()
    cfg = cfg.replace(layout="bld")
    G = ssig.partition_groups
    alg = _StepAlgorithm(ssig, cfg, _algorithm_buffers(sig, raw), b, L)
    alg.step_out = sig.step
    _schedule(alg, cfg, b, G, sig.d // G, parallel=not sig.step or cfg.threads != 1)


def _schedule(alg, cfg: Config, b, G: int, dg: int, parallel: bool):
    """selective_scan_tir's CPU mapping (tasks of whole channel blocks inside one B/C group);
    serial when `parallel` is off: a single decode step is too small to pay for a thread-pool
    launch."""
    total, task = _scan.cpu_block_tasks(alg, cfg, b, G, dg, tiled=False)
    M.for_tasks(total, 0, task, serial=not parallel)
