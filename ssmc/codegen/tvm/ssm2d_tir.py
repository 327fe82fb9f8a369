"""TIR builder for Chimera's 2-D SSM (MODELS.md section 6) on the CPU.

Per channel c and state n, over the grid (t, v) (oracle: ssmc.semantics.ssm2d):

    h1[t, v] = E1 h1[t-1, v] + G1 (A2 h2[t-1, v] + B1 x[t, v])      E1 = exp(dt_t A1)
    h2[t, v] = E4 h2[t, v-1] + G4 (A3 h1[t, v-1] + B2 x[t, v])      G1 = expm1(dt_t A1) / A1
    y[t, v]  = sum_n C1 h1 + C2 h2  (+ D x once)                    (same along v with dt_v, A4)

which is `zoh_axis` with the common factor G pulled out.  Time-invariant steps (dt of shape
(d,)) get E and G precomputed by the wrapper; selective ones (dt per cell) compute them per
cell by one range reduction and polynomial for both exp and expm1 (`exp_expm1`: accurate for
tiny dt A, where exp(x) - 1 would cancel).

The states live in a per-task workspace of V + 1 "slots" (one per variate, slot 0 a guard
that stays zero): slot v + 1 holds (h1, h2) of the last cell computed in column v, for the
task's block of channels.  Cell (t, v) reads slot v + 1 (cell (t-1, v): the "up" states) and
slot v (cell (t, v-1): the "left" states) and overwrites slot v + 1.  Two loop orders walk the
grid with exactly that cell body:

* ``wavefront``: anti-diagonals s = t + v in order, the cells of one diagonal in decreasing v
  (they are independent; decreasing v makes the in-place slot update read old values only).
  The slots are the states of the current diagonal.
* ``rows``: t outer, v inner increasing (the double loop of the oracle).

Inside a cell every statement is a vector over the task's channels (`T.vectorized`), the N
states are an LLVM-unrolled loop (independent chains: the ILP).  Tasks = batch x channel
blocks, in parallel; each task sweeps both v directions when bidirectional (the second sweep
adds into the output, which the first one wrote), so no two tasks write the same output.
b, T and V are symbolic: one build per (d, N, operand forms, flags, schedule).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import tvm.tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm import tirmath as M

F32 = "float32"
IDX = "int64"
FUNC_NAME = "ssm2d"
ORDERS = ("wavefront", "rows")
SCRATCH_SLOTS = 48  # fp32 temporaries per lane body (two softplus need ~40)
# Stack buffers: TVM 0.27 turns "local" scope into workspace calls on CPU (no registers).
LOCAL_SCOPE = "global"

# exp and expm1 together (`exp_expm1`): x log2(e) = k + f with k = round, |f| <= 1/2, and
# 2**f - 1 = f Q(f), Q a relative-minimax fit of (2**f - 1) / f (degree 5, Lawson; fp32 error
# 1.2e-7 relative on f Q(f), 8.9e-8 on 1 + f Q(f)).  expm1 = f Q(f) when k = 0 (no
# cancellation), else 2**k (1 + f Q(f)) - 1, which is then >= 0.29 in magnitude.
EXPM1_Q = (0.6931471879266459, 0.24022649794950174, 0.055503574334995615,
           0.009618237495623853, 0.0013390735588849415, 0.00015403512387723167)
# Partial sums of y over the states: independent accumulators break the add chain.
Y_ACCUMULATORS = 4

# Forms of B1/B2/C1/C2: (d, N) parameters, (b, T, V, N) shared by the channels (Chimera's
# selective variant), or (b, T, V, d, N) per channel.
BC_PARAM, BC_SHARED, BC_FULL = 0, 1, 2
BC_NAMES = ("B1", "B2", "C1", "C2")


@dataclass(frozen=True)
class Ssm2dSignature:
    """What one kernel is specialised on.  bc: the form of (B1, B2, C1, C2) (BC_*);
    dt_cell: (dt_t, dt_v) per cell (b, T, V, d) rather than per channel (d,);
    dt_softplus: per-cell steps arrive before softplus (the dt_proj output), applied here."""

    d: int
    N: int
    bc: tuple = (BC_PARAM,) * 4
    dt_cell: tuple = (False, False)
    has_D: bool = False
    bidirectional: bool = False
    dt_softplus: bool = False

    def __post_init__(self):
        if self.d < 1 or self.N < 1:
            raise ValueError(f"Ssm2dSignature: d and N must be >= 1, got {self.d}, {self.N}")
        if len(self.bc) != 4 or any(m not in (BC_PARAM, BC_SHARED, BC_FULL) for m in self.bc):
            raise ValueError(f"Ssm2dSignature.bc: four of 0/1/2, got {self.bc}")
        object.__setattr__(self, "bc", tuple(int(m) for m in self.bc))
        object.__setattr__(self, "dt_cell", tuple(bool(x) for x in self.dt_cell))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Ssm2dConfig:
    """Schedule knobs (they never change the values).

    channel_block: channels of one task (a multiple of vector_width; the rest of d goes to a
        narrower tail task).  vector_width: lanes of one vector statement (8 = AVX2 fp32).
    order: 'wavefront' or 'rows' (see the module docstring).
    threads: 0 = one parallel iteration per task, else tasks cut into this many chunks.
    """

    channel_block: int = 8
    vector_width: int = 8
    order: str = "wavefront"
    threads: int = 0

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f"Ssm2dConfig.order must be one of {ORDERS}, got {self.order!r}")
        if self.channel_block < 1 or self.vector_width < 1 or self.threads < 0:
            raise ValueError("Ssm2dConfig: channel_block, vector_width >= 1 and threads >= 0")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "Ssm2dConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Blocks:
    """How d channels are cut into tasks: `full` blocks of `cb` channels then a tail of
    `rem` channels (one narrower task), vectors of `vw` lanes."""

    cb: int
    vw: int
    full: int
    rem: int

    @property
    def per_batch(self) -> int:
        return self.full + (1 if self.rem else 0)


def blocks(d: int, cfg: Ssm2dConfig) -> Blocks:
    vw = max(1, min(cfg.vector_width, cfg.channel_block, d))
    cb = max(vw, (min(cfg.channel_block, d) // vw) * vw)
    return Blocks(cb, vw, d // cb, d % cb)


def arg_names(sig: Ssm2dSignature) -> list[str]:
    """The kernel's arguments in order (the wrapper passes tensors under these names)."""
    names = ["x"]
    names += ["dt_t", "A1", "A1inv", "A2"] if sig.dt_cell[0] else ["E1", "G1", "A2G"]
    names += ["dt_v", "A4", "A4inv", "A3"] if sig.dt_cell[1] else ["E4", "G4", "A3G"]
    names += list(BC_NAMES)
    if sig.has_D:
        names.append("D")
    names += ["out", "ws"]
    return names


def workspace_shape(sig: Ssm2dSignature, cfg: Ssm2dConfig, b: int, V: int) -> tuple:
    """(b, tasks per batch row, 2, V + 1, N, channel_block): the slots of every task."""
    bl = blocks(sig.d, cfg)
    return (b, bl.per_batch, 2, V + 1, sig.N, bl.cb)


# ----------------------------------------------------------------------------- cell math
def exp_expm1(x):
    """(exp(x), expm1(x)) for x in [-87, 88] (clamped: tiny results saturate at ~1e-38)."""
    y = M.bind(tir.Max(tir.Min(x * M.f32(M.LOG2E), M.f32(127.0)), M.f32(-126.0)))
    k = M.bind(T.round(y))
    f = M.bind(y - k)
    fq = M.bind(f * M.horner(f, EXPM1_Q))
    e = M.bind(M._scale_by_pow2(fq + M.f32(1.0), k))
    return e, tir.Select(k == M.f32(0.0), fq, e - M.f32(1.0))


class _Sweep:
    """The cell body and the two loop orders, for one task (batch row, channel block)."""

    def __init__(self, sig, cfg, bufs, T_, V_, bi, c0, task, lanes: int, width: int):
        self.sig, self.cfg, self.bufs = sig, cfg, bufs
        self.T, self.V, self.bi, self.c0, self.task = T_, V_, bi, c0, task
        self.lanes, self.width = lanes, width
        self.scratch = M.Scratch(T.alloc_buffer((SCRATCH_SLOTS, lanes), F32, scope=LOCAL_SCOPE),
                                 SCRATCH_SLOTS)
        self.acc = Y_ACCUMULATORS if sig.N % Y_ACCUMULATORS == 0 else \
            2 if sig.N % 2 == 0 else 1
        self.ybuf = T.alloc_buffer((self.acc, lanes), F32, scope=LOCAL_SCOPE)
        self.xbuf = T.alloc_buffer((lanes,), F32, scope=LOCAL_SCOPE)
        self.dtbuf = T.alloc_buffer((2, lanes), F32, scope=LOCAL_SCOPE)  # per-cell steps

    def each(self, fn):
        """fn(lane) for every lane of the block, as vector statements of `width` lanes."""
        groups = self.lanes // self.width
        if groups == 1:
            with T.vectorized(0, self.width) as lane:
                with M.lane_scratch(self.scratch, lane):
                    fn(lane)
            return
        with T.serial(0, groups, unroll=True) as k:
            with T.vectorized(0, self.width) as w:
                lane = k * self.width + w
                with M.lane_scratch(self.scratch, lane):
                    fn(lane)

    # --- operands ---------------------------------------------------------------------
    def bc(self, which: int, t, vp, c, n):
        name = BC_NAMES[which]
        buf, mode = self.bufs[name], self.sig.bc[which]
        if mode == BC_PARAM:
            return buf[n, c]
        if mode == BC_SHARED:
            return buf[self.bi, t, vp, n]
        return buf[self.bi, t, vp, c, n]

    def update(self, k: int, t, vp, c, i, n, own, cross, xv):
        """The new state of axis k (0: h1 along t, 1: h2 along v) for one channel and state,
        from its own previous state and the other axis's one (both of the neighbour cell)."""
        bufs = self.bufs
        bx = self.bc(k, t, vp, c, n) * xv
        if self.sig.dt_cell[k]:
            dtn, An, Ainv, Ac = (("dt_t", "A1", "A1inv", "A2") if k == 0 else
                                 ("dt_v", "A4", "A4inv", "A3"))
            e, em1 = exp_expm1(self.dtbuf[k, i] * bufs[An][n, c])
            g = M.bind(em1 * bufs[Ainv][n, c])
            return e * own + g * (bufs[Ac][n, c] * cross + bx)
        # one step per channel: E, G and G * A_cross (and G * B for a (d, N) B) precomputed
        E, G, AG = ("E1", "G1", "A2G") if k == 0 else ("E4", "G4", "A3G")
        if self.sig.bc[k] != BC_PARAM:
            bx = bufs[G][n, c] * bx
        return bufs[E][n, c] * own + bufs[AG][n, c] * cross + bx

    # --- one cell -----------------------------------------------------------------------
    def cell(self, dirn, t, v):
        """Cell (t, v) of the sweep (v counted in the sweep's direction)."""
        sig, bufs, ws = self.sig, self.bufs, self.bufs["ws"]
        vp = M.bind(tir.Select(dirn > 0, self.V - 1 - v, v)) if sig.bidirectional else v
        bi, task = self.bi, self.task
        x = bufs["x"]
        out = bufs["out"]

        def start(i):
            c = self.c0 + i
            xv = x[bi, t, vp, c]
            T.buffer_store(self.xbuf, xv, [i])
            for k, dtn in enumerate(("dt_t", "dt_v")):
                if sig.dt_cell[k]:  # once per cell and channel, not per state
                    dt = bufs[dtn][bi, t, vp, c]
                    T.buffer_store(self.dtbuf, M.softplus(dt) if sig.dt_softplus else dt,
                                   [k, i])
            y0 = xv * bufs["D"][c] if sig.has_D else M.f32(0.0)
            if sig.bidirectional:  # the second sweep adds to what the first one wrote
                y0 = tir.Select(dirn > 0, out[bi, t, vp, c], y0)
            T.buffer_store(self.ybuf, y0, [0, i])
            for k in range(1, self.acc):
                T.buffer_store(self.ybuf, M.f32(0.0), [k, i])

        self.each(start)

        def state(n, k, i):
            c = self.c0 + i
            xv = self.xbuf[i]
            up1, up2 = ws[bi, task, 0, v + 1, n, i], ws[bi, task, 1, v + 1, n, i]
            left1, left2 = ws[bi, task, 0, v, n, i], ws[bi, task, 1, v, n, i]
            h1 = M.bind(self.update(0, t, vp, c, i, n, up1, up2, xv))
            h2 = M.bind(self.update(1, t, vp, c, i, n, left2, left1, xv))
            T.buffer_store(ws, h1, [bi, task, 0, v + 1, n, i])
            T.buffer_store(ws, h2, [bi, task, 1, v + 1, n, i])
            T.buffer_store(self.ybuf, self.ybuf[k, i] + self.bc(2, t, vp, c, n) * h1
                           + self.bc(3, t, vp, c, n) * h2, [k, i])

        with T.serial(0, sig.N // self.acc) as no:
            for k in range(self.acc):  # unrolled here: accumulator k is a constant slot
                self.each(lambda i, k=k: state(no * self.acc + k, k, i))

        def finish(i):
            y = self.ybuf[0, i]
            for k in range(1, self.acc):
                y = y + self.ybuf[k, i]
            T.buffer_store(out, y, [bi, t, vp, self.c0 + i])

        self.each(finish)

    # --- the grid ---------------------------------------------------------------------------
    def clear(self):
        ws = self.bufs["ws"]
        with T.serial(0, 2) as k:
            with T.serial(0, self.V + 1) as s:
                with T.serial(0, self.sig.N) as n:
                    self.each(lambda i: T.buffer_store(ws, M.f32(0.0),
                                                       [self.bi, self.task, k, s, n, i]))

    def sweep(self, dirn):
        self.clear()
        T_, V_ = self.T, self.V
        if self.cfg.order == "rows":
            with T.serial(0, T_) as t:
                with T.serial(0, V_) as v:
                    self.cell(dirn, t, v)
            return
        with T.serial(0, T_ + V_ - 1) as s:
            v_lo = M.bind(tir.Max(s - (T_ - 1), tir.IntImm(IDX, 0)))
            v_hi = M.bind(tir.Min(s, V_ - 1))
            with T.serial(0, v_hi - v_lo + 1) as j:
                v = M.bind(v_hi - j)
                self.cell(dirn, s - v, v)

    def run(self):
        if self.sig.bidirectional:
            with T.serial(0, 2) as dirn:
                self.sweep(dirn)
        else:
            self.sweep(tir.IntImm(IDX, 0))


# ----------------------------------------------------------------------------- the PrimFunc
def _declare_args(sig: Ssm2dSignature, cfg: Ssm2dConfig, b, T_, V_) -> dict:
    d, N = sig.d, sig.N
    bl = blocks(d, cfg)

    def buf(shape, strided=False):
        # align=4: torch views may start anywhere.  strided: any strides but a unit last one
        # (B1/B2/C1/C2 and dt_t/dt_v are views into one projection output in the executor)
        strides = None
        if strided:
            strides = [tir.Var(f"s{i}", IDX) for i in range(len(shape) - 1)] + [1]
        return T.buffer(shape, F32, align=4, strides=strides)

    bc_shape = {BC_PARAM: (N, d), BC_SHARED: (b, T_, V_, N), BC_FULL: (b, T_, V_, d, N)}
    grid = (b, T_, V_, d)
    shapes = {"x": grid, "out": grid, "dt_t": grid, "dt_v": grid, "D": (d,),
              "ws": (b, bl.per_batch, 2, V_ + 1, N, bl.cb)}
    for nm in ("A1", "A1inv", "A2", "A3", "A4", "A4inv", "E1", "G1", "E4", "G4", "A2G", "A3G"):
        shapes[nm] = (N, d)
    for k, nm in enumerate(BC_NAMES):
        shapes[nm] = bc_shape[sig.bc[k]]
    strided = {"dt_t", "dt_v"} | {nm for k, nm in enumerate(BC_NAMES) if sig.bc[k] == BC_SHARED}
    return {nm: T.arg(nm, buf(shapes[nm], nm in strided)) for nm in arg_names(sig)}


def emit_tasks(bl, b, cfg, sweep) -> None:
    """The CPU task loop shared by the forward and the backward kernels: batch rows x channel
    blocks (full blocks of bl.cb channels in bl.vw-wide vectors, then the remainder), in
    parallel, or in cfg.threads contiguous ranges; `sweep(bi, c0, j, lanes, width)` emits one
    task's statements."""
    total = b * bl.per_batch

    def task(k):
        bi = M.bind(k // bl.per_batch)
        j = M.bind(k % bl.per_batch)
        c0 = M.bind(j * bl.cb)
        if not bl.rem:
            sweep(bi, c0, j, bl.cb, bl.vw)
        elif not bl.full:
            sweep(bi, c0, j, bl.rem, bl.rem)
        else:
            with T.If(j < bl.full):
                with T.Then():
                    sweep(bi, c0, j, bl.cb, bl.vw)
                with T.Else():
                    sweep(bi, c0, j, bl.rem, bl.rem)

    M.for_tasks(total, cfg.threads, task)


def build_ssm2d(sig: Ssm2dSignature, cfg: Ssm2dConfig):
    """The PrimFunc `ssm2d` (CPU) for one signature and schedule."""
    b, T_, V_ = tir.Var("b", IDX), tir.Var("T", IDX), tir.Var("V", IDX)
    bl = blocks(sig.d, cfg)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FUNC_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": FUNC_NAME})
            bufs = _declare_args(sig, cfg, b, T_, V_)
            emit_tasks(bl, b, cfg, lambda bi, c0, j, lanes, width:
                       _Sweep(sig, cfg, bufs, T_, V_, bi, c0, j, lanes, width).run())
    return ib.get()
