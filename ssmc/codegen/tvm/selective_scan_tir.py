"""TIR builder for the Mamba-1 selective scan (MODELS.md section 2), for CPU and CUDA.

The algorithm is written once, per channel ("lane"), in `_ScanAlgorithm`:

    dt_t  = softplus(delta_t + delta_bias)  (or without softplus)
    h_t   = exp(dt_t A) * h_{t-1} + dt_t B_t u_t       (N states, unrolled)
    y_t   = <C_t, h_t> + D u_t ;  y_t *= silu(z_t)     (complex A: 2 Re<C, h>)

and only the mapping of lanes onto the machine differs (`CpuLanes`, `CudaLanes`):

* CPU: tasks of `channel_block` channels (parallel over batch x channel blocks); inside a
  task every statement runs over the block as `T.vectorized` loops of `vector_width` lanes,
  the sequence loop is serial, the N states sit in a local (N, block) buffer that LLVM keeps
  in registers / fixed stack slots because all its indices are constants after unrolling.
* CUDA: one channel per thread, `channel_block` threads per CUDA block, states in registers.

Layouts: 'bld' (channels innermost: u/delta/z/y (b, L, d), B/C (b, L, g, N)) is what the
compiled models use; 'bdl' reads mamba-ssm's (b, d, L) and (b, g, N, L) directly, staging
`time_tile` steps of u/delta/z through a local tile so that global loads stay contiguous.
b and L are symbolic (one build serves every batch and length), d, N, groups and the
feature flags are compiled in (`ScanSignature`).

Exps use tirmath.exp2 on A pre-scaled by log2(e) (the wrapper passes A2 = A * log2 e,
transposed to (N, d) so that a block of channels loads it as one vector).  Temporaries of the
math live in a per-block scratch buffer (tirmath.Scratch), not in let-bindings, which TVM 0.27's
simplifier would inline exponentially.

The same builder covers Mamba-2 SSD (`heads` > 0: scalar A and dt per head, exp once per step)
and an optional fused causal-conv1d + SiLU prologue on u (`conv_width` > 0).

Measured (Zen3 VM, 2 cores, b2 d256 L1024 N16 fp32, the default config): 2.5 ms of one core's
CPU time for 'bld', about 1.3 ms wall on 2 threads when the machine is quiet; 'bdl' costs
~1.4x 'bld' (the in-register transposes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tvm.tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm import tirmath as M
from ssmc.codegen.tvm.config import Config

F32 = "float32"
IDX = "int64"  # b, L and flat offsets: b * L * d may pass 2**31
FUNC_NAME = "selective_scan"


@dataclass(frozen=True)
class ScanSignature:
    """What a kernel is specialised on.  b_groups / c_groups: 0 = time-invariant (d, N),
    g >= 1 = input-dependent with g groups ((b, g, N, L) in mamba-ssm's layout; shared B/C is
    g = 1)."""

    d: int
    N: int
    b_groups: int = 1
    c_groups: int = 1
    complex_a: bool = False
    complex_b: bool = False
    complex_c: bool = False
    has_D: bool = False
    has_z: bool = False
    has_delta_bias: bool = False
    delta_softplus: bool = False
    has_initial_state: bool = False
    return_last_state: bool = False
    conj_pair: bool = True  # complex A: y = 2 Re<C, h> (mamba-ssm), else Re<C, h>
    # Mamba-2 SSD mode (MODELS.md section 3): heads > 0 means A (heads,) and dt (b, L, heads)
    # are shared by the d // heads channels (headdim p) of a head: exp(dt A) is computed once
    # per step instead of once per state.  Channels are (head, p) flattened: x (b, L, h, p)
    # is u (b, L, d) and states (b, h, p, n) are (b, d, N) without a copy.
    heads: int = 0
    has_seq_idx: bool = False  # reset the state where seq_idx[b, t] != seq_idx[b, t - 1]
    dt_min: float = 0.0        # dt clamp (ssd's dt_limit), applied when min > 0 or max < inf
    dt_max: float = math.inf
    # Fused prologue: u = silu(causal depthwise conv1d of the input, width conv_width) computed
    # in the kernel from the conv's input rows (layout 'bld'), so u never goes to memory.
    conv_width: int = 0
    has_conv_bias: bool = False

    def __post_init__(self):
        for g in (self.b_groups, self.c_groups):
            if g < 0 or (g and self.d % g):
                raise ValueError(f"groups {g} must divide d={self.d}")
        if (self.complex_b or self.complex_c) and not self.complex_a:
            raise ValueError("complex B/C need complex A")
        if self.heads:
            if self.d % self.heads or self.complex_a:
                raise ValueError("SSD mode: heads must divide d, and A is real")
            if any(g == 0 or self.heads % g for g in (self.b_groups, self.c_groups)):
                raise ValueError("SSD mode: B/C are (b, L, g, n) with g dividing heads")
        elif self.has_seq_idx or self.clamps_dt:
            raise ValueError("seq_idx and dt limits exist in SSD mode (heads > 0) only")

    @property
    def clamps_dt(self) -> bool:
        return self.dt_min > 0.0 or self.dt_max != math.inf

    @property
    def headdim(self) -> int:
        return self.d // self.heads if self.heads else 1

    @property
    def partition_groups(self) -> int:
        """Channel groups no task may straddle, so that B/C (and dt, A in SSD mode) of one
        step are the same scalar for every lane of a block (a broadcast, not a gather)."""
        gs = [g for g in (self.b_groups, self.c_groups, self.heads) if g > 0] or [1]
        return math.lcm(*gs)


def arg_names(sig: ScanSignature) -> list[str]:
    """The kernel's arguments in order; the torch wrapper passes tensors under these names."""
    names = ["u", "delta"]
    names += ["A2_re", "A_im"] if sig.complex_a else ["A2"]
    names += ["B_re", "B_im"] if sig.complex_b else ["B"]
    names += ["C_re", "C_im"] if sig.complex_c else ["C"]
    if sig.has_D:
        names.append("D")
    if sig.has_z:
        names.append("z")
    if sig.has_delta_bias:
        names.append("delta_bias")
    if sig.has_seq_idx:
        names.append("seq_idx")
    if sig.conv_width:
        names.append("conv_w")
        if sig.has_conv_bias:
            names.append("conv_b")
    if sig.has_initial_state:
        names.append("h0")
    names.append("out")
    if sig.return_last_state:
        names.append("h_last")
    return names


UNROLL_IN = "tir"


def _unrolled(extent):
    """A loop to be fully unrolled.  'tir' unrolls it in TVM (T.unroll); 'llvm' would leave
    one body to LLVM's unroller (TVM's LLVM backend ignores pragma_unroll, LLVM decides):
    faster to compile but measured 15% slower (2.9 vs 2.5 ms single-thread, d256 L1024)."""
    if UNROLL_IN == "tir":
        return T.unroll(0, extent)
    return T.serial(0, extent)


# ----------------------------------------------------------------------------- lane mappings
USE_SCRATCH = True
SCRATCH_SLOTS = 48  # fp32 temporaries per lane body (softplus needs ~20, complex update ~16)
# Local buffers live on the stack ("global" scope inside the task): TVM 0.27 turns "local"
# ones into TVMBackendAllocWorkspace calls on CPU, which LLVM cannot promote to registers.
CPU_LOCAL_SCOPE = "global"


class Lanes:
    """How the channels of one block map onto the machine: `count` lanes in the block's
    local buffers, and `each(fn)` emitting fn(lane) for all of them."""

    count: int
    scope: str

    def alloc(self, shape):
        return T.alloc_buffer(tuple(shape), F32, scope=self.scope)

    def alloc_scratch(self):
        self.scratch = (M.Scratch(self.alloc((SCRATCH_SLOTS, self.count)), SCRATCH_SLOTS)
                        if USE_SCRATCH else None)


class CpuLanes(Lanes):
    """A block of `count` channels processed by vector statements of `width` lanes."""

    scope = CPU_LOCAL_SCOPE

    def __init__(self, count: int, width: int):
        self.count = count
        self.width = min(width, count)
        self.groups = count // self.width
        assert self.groups * self.width == count
        self.alloc_scratch()

    def each(self, fn):
        """Emit fn(lane) for every lane of the block, as vector statements."""
        if self.groups == 1:
            with T.vectorized(0, self.width) as v:
                with M.lane_scratch(self.scratch, v):
                    fn(v)
            return
        with _unrolled(self.groups) as k:
            with T.vectorized(0, self.width) as v:
                lane = k * self.width + v
                with M.lane_scratch(self.scratch, lane):
                    fn(lane)


class CudaLanes(Lanes):
    """One channel per thread: the block's local buffers have a single lane (registers)."""

    count = 1
    scope = "local"

    def __init__(self):
        self.alloc_scratch()

    def each(self, fn):
        lane = tir.IntImm("int32", 0)
        with M.lane_scratch(self.scratch, lane):
            fn(lane)


# ----------------------------------------------------------------------------- the algorithm
class _ScanAlgorithm:
    """The per-channel math, independent of how lanes map onto hardware and of the layout."""

    def __init__(self, sig: ScanSignature, config: Config, bufs: dict, b, L):
        self.sig, self.cfg, self.bufs, self.b, self.L = sig, config, bufs, b, L
        self.layout = config.layout
        self.deg = config.exp_degree
        # complex A with conjugate pairs: y = 2 Re<C, h> + D u
        self._doubled = sig.complex_a and sig.conj_pair
        # u is needed again at the step's end (D u after doubling) and cannot be reloaded when
        # it is the conv's output: keep it in a local buffer then
        self._keep_u = sig.conv_width > 0 or (self._doubled and sig.has_D)

    # --- global tensor access ----------------------------------------------------------
    def seq(self, name, bi, l, c):
        """u / delta / z / out element of (batch bi, step l, channel c)."""
        buf = self.bufs[name]
        if name == "delta" and self.sig.heads:  # dt (b, L, heads)
            return buf[bi, l, self.head(c)]
        return buf[bi, l, c] if self.layout == "bld" else buf[bi, c, l]

    def head(self, c):
        return c // self.sig.headdim

    def store_seq(self, name, bi, l, c, value):
        idx = [bi, l, c] if self.layout == "bld" else [bi, c, l]
        T.buffer_store(self.bufs[name], value, idx)

    def bc(self, which, part, bi, l, c, n):
        """B or C (which) real/imag part (part) for step l, channel c, state n."""
        sig = self.sig
        groups = sig.b_groups if which == "B" else sig.c_groups
        cplx = sig.complex_b if which == "B" else sig.complex_c
        name = f"{which}_{part}" if cplx else which
        if part == "im" and not cplx:
            return None
        buf = self.bufs[name]
        if groups == 0:  # time-invariant, passed transposed (N, d)
            return buf[n, c]
        g = c // (sig.d // groups) if groups > 1 else 0
        return buf[bi, l, g, n] if self.layout == "bld" else buf[bi, g, n, l]

    # --- the recurrence -----------------------------------------------------------------
    def alloc_state(self, lanes):
        shape = (self.sig.N, lanes.count)
        st = {"re": lanes.alloc(shape)}
        if self.sig.complex_a:
            st["im"] = lanes.alloc(shape)
        extra = (("a",) if self.sig.heads else ()) + (("u",) if self._keep_u else ())
        for name in ("dt", "du", "y") + extra:
            st[name] = lanes.alloc((lanes.count,))
        return st

    def init_state(self, lanes, st, bi, chan):
        sig = self.sig

        def body(n, i):
            c = chan(i)
            if sig.has_initial_state:
                h0 = self.bufs["h0"]
                if sig.complex_a:
                    T.buffer_store(st["re"], h0[bi, c, n, 0], [n, i])
                    T.buffer_store(st["im"], h0[bi, c, n, 1], [n, i])
                else:
                    T.buffer_store(st["re"], h0[bi, c, n], [n, i])
            else:
                T.buffer_store(st["re"], M.f32(0.0), [n, i])
                if sig.complex_a:
                    T.buffer_store(st["im"], M.f32(0.0), [n, i])

        with _unrolled(sig.N) as n:
            lanes.each(lambda i: body(n, i))

    def save_state(self, lanes, st, bi, chan):
        sig = self.sig
        if not sig.return_last_state:
            return
        hl = self.bufs["h_last"]

        def body(n, i):
            c = chan(i)
            if sig.complex_a:
                T.buffer_store(hl, st["re"][n, i], [bi, c, n, 0])
                T.buffer_store(hl, st["im"][n, i], [bi, c, n, 1])
            else:
                T.buffer_store(hl, st["re"][n, i], [bi, c, n])

        with _unrolled(sig.N) as n:
            lanes.each(lambda i: body(n, i))

    def step_inputs(self, lanes, st, bi, l, chan, load):
        """dt = softplus(delta + bias), du = dt * u, y = D u: once per step and channel (and
        in SSD mode the decay a = exp(dt A), zeroed where seq_idx starts a new sequence)."""
        sig = self.sig

        def body(i):
            c = chan(i)
            x = load("delta", i)
            if sig.has_delta_bias:
                x = x + self.bufs["delta_bias"][self.head(c) if sig.heads else c]
            dt = M.bind(M.softplus(x, self.deg) if sig.delta_softplus else x)
            if sig.clamps_dt:
                dt = M.bind(tir.Min(tir.Max(dt, M.f32(sig.dt_min)), M.f32(sig.dt_max)))
            if sig.heads:
                a = M.exp2(dt * self.bufs["A2"][self.head(c)], self.deg)
                if sig.has_seq_idx:
                    a = tir.Select(self._same_sequence(bi, l), a, M.f32(0.0))
                T.buffer_store(st["a"], a, [i])
            u = M.bind(self._conv_silu(bi, l, c, load("u", i)) if sig.conv_width
                       else load("u", i))
            if self._keep_u:
                T.buffer_store(st["u"], u, [i])
            T.buffer_store(st["dt"], dt, [i])
            T.buffer_store(st["du"], dt * u, [i])
            # D u starts the output sum, except where <C, h> is doubled afterwards
            skip = sig.has_D and not self._doubled
            T.buffer_store(st["y"], u * self.bufs["D"][c] if skip else M.f32(0.0), [i])

        lanes.each(body)

    def _conv_silu(self, bi, l, c, x_now):
        """silu(conv_b + sum_j conv_w[j] x[l - (k - 1) + j]) for one channel; rows before the
        sequence start are zero (read row 0, dropped by a select; the load is bound outside
        the select so that the simplifier cannot remove the clamp, see conv1d_tir)."""
        k, w = self.sig.conv_width, self.bufs["conv_w"]
        zero = tir.IntImm(str(l.ty), 0)
        acc = self.bufs["conv_b"][c] if self.sig.has_conv_bias else M.f32(0.0)
        for tap in range(k):
            back = k - 1 - tap
            if back == 0:
                acc = acc + w[tap, c] * x_now
                continue
            src = l - tir.IntImm(str(l.ty), back)
            xv = M.bind(self.seq("u", bi, tir.Max(src, zero), c))
            acc = acc + tir.Select(src >= zero, w[tap, c] * xv, M.f32(0.0))
        return M.silu(M.bind(acc), self.deg)

    def _same_sequence(self, bi, l):
        """seq_idx[b, l] == seq_idx[b, l - 1] (true at l = 0: the initial state is kept).  The
        index l - 1 is clamped so that l = 0 reads in bounds."""
        seq = self.bufs["seq_idx"]
        zero, one = tir.IntImm(str(l.ty), 0), tir.IntImm(str(l.ty), 1)
        # bound (a scratch store) before any condition mentions l: under a condition l > 0,
        # TVM's simplifier would drop the clamp and the speculated load would read seq[-1]
        prev = M.bind(tir.Cast(F32, seq[bi, tir.Max(l - one, zero)]))
        return tir.Or(l == zero, tir.Cast(F32, seq[bi, l]) == prev)

    def update(self, st, bi, l, c, n, i):
        """One state n of one channel: h = exp(dt A) h + dt B u; y += C h."""
        sig = self.sig
        dt, du = st["dt"][i], st["du"][i]
        b_re = self.bc("B", "re", bi, l, c, n)
        c_re = self.bc("C", "re", bi, l, c, n)
        if not sig.complex_a:
            a = st["a"][i] if sig.heads else M.exp2(dt * self.bufs["A2"][n, c], self.deg)
            h = M.bind(a * st["re"][n, i] + du * b_re)
            T.buffer_store(st["re"], h, [n, i])
            T.buffer_store(st["y"], st["y"][i] + h * c_re, [i])
            return
        # exp(dt (ar + i ai)) = exp(dt ar) (cos(dt ai) + i sin(dt ai))
        mag = M.bind(M.exp2(dt * self.bufs["A2_re"][n, c], self.deg))
        sin, cos = M.sincos(dt * self.bufs["A_im"][n, c])
        a_re, a_im = M.bind(mag * cos), M.bind(mag * sin)
        h_re, h_im = st["re"][n, i], st["im"][n, i]
        b_im = self.bc("B", "im", bi, l, c, n)
        new_re = M.bind(a_re * h_re - a_im * h_im + du * b_re)
        new_im = a_re * h_im + a_im * h_re
        new_im = M.bind(new_im + du * b_im if b_im is not None else new_im)
        T.buffer_store(st["re"], new_re, [n, i])
        T.buffer_store(st["im"], new_im, [n, i])
        c_im = self.bc("C", "im", bi, l, c, n)
        contrib = new_re * c_re if c_im is None else new_re * c_re - new_im * c_im
        T.buffer_store(st["y"], st["y"][i] + contrib, [i])

    def update_all(self, lanes, st, bi, l, chan):
        N, U = self.sig.N, self.cfg.n_unroll
        if U <= 0 or U >= N:
            with _unrolled(N) as n:
                lanes.each(lambda i: self.update(st, bi, l, chan(i), n, i))
            return
        U = math.gcd(N, U)
        with T.serial(0, N // U) as no:
            with _unrolled(U) as ni:
                n = no * U + ni
                lanes.each(lambda i: self.update(st, bi, l, chan(i), n, i))

    def output(self, lanes, st, chan, load, store):
        """y = (<C, h> + D u) * silu(z)."""
        sig = self.sig

        def body(i):
            y = st["y"][i]
            if self._doubled:
                y = y * M.f32(2.0)
                if sig.has_D:
                    y = y + st["u"][i] * self.bufs["D"][chan(i)]
            if sig.has_z:
                y = y * M.silu(load("z", i), self.deg)
            store(i, y)

        lanes.each(body)

    def step(self, lanes, st, bi, l, chan, load, store):
        self.step_inputs(lanes, st, bi, l, chan, load)
        self.update_all(lanes, st, bi, l, chan)
        self.output(lanes, st, chan, load, store)

    # --- a whole block over the sequence --------------------------------------------------
    def run_block(self, lanes, bi, chan, tiled: bool):
        st = self.alloc_state(lanes)
        self.init_state(lanes, st, bi, chan)
        if self.layout == "bdl" and tiled:
            self._sequence_tiled(lanes, st, bi, chan)
        else:
            self._sequence_direct(lanes, st, bi, chan, 0, self.L)
        self.save_state(lanes, st, bi, chan)

    def _sequence_direct(self, lanes, st, bi, chan, start, stop):
        with T.serial(start, stop) as l:
            self.step(lanes, st, bi, l, chan,
                      load=lambda name, i: self.seq(name, bi, l, chan(i)),
                      store=lambda i, v: self.store_seq("out", bi, l, chan(i), v))

    def _sequence_tiled(self, lanes, st, bi, chan):
        """bdl: per tile of TL steps, copy u/delta/z rows (contiguous in L) into (TL, lanes)
        tiles, scan the tile, write y back row by row; the last L % TL steps go direct."""
        TL = self.cfg.time_tile
        names = ["u", "delta"] + (["z"] if self.sig.has_z else [])
        tiles = {nm: lanes.alloc((TL, lanes.count)) for nm in names}
        ytile = lanes.alloc((TL, lanes.count))
        ntiles = self.L // TL
        W = getattr(lanes, "width", 0)
        # in-register W x W transposes when the tile is made of whole W x W squares,
        # element-wise copies otherwise (the tail block of d % channel_block lanes)
        square = W in (4, 8, 16) and lanes.count % W == 0 and TL % W == 0
        with T.serial(0, ntiles) as tb:
            l0 = tb * TL
            for nm in names:
                if square:
                    self._rows_to_tile(nm, tiles[nm], bi, l0, chan, lanes.count, TL, W)
                    continue
                with _unrolled(lanes.count) as i:
                    with T.vectorized(0, TL) as t:
                        T.buffer_store(tiles[nm], self.seq(nm, bi, l0 + t, chan(i)), [t, i])
            with T.serial(0, TL) as t:
                self.step(lanes, st, bi, l0 + t, chan,
                          load=lambda name, i: tiles[name][t, i],
                          store=lambda i, v: T.buffer_store(ytile, v, [t, i]))
            if square:
                self._tile_to_rows(ytile, bi, l0, chan, lanes.count, TL, W)
            else:
                with _unrolled(lanes.count) as i:
                    with T.vectorized(0, TL) as t:
                        self.store_seq("out", bi, l0 + t, chan(i), ytile[t, i])
        self._sequence_direct(lanes, st, bi, chan, ntiles * TL, self.L)

    def _rows_to_tile(self, name, tile, bi, l0, chan, count, TL, W):
        """tile[t, k W + j] = X[bi, chan(k W + j), l0 + t]: W row vectors in, W column vectors
        out of a shuffle (LLVM lowers it to unpck/shuf/perm sequences)."""
        buf = self.bufs[name]
        for k in range(count // W):
            for t0 in range(0, TL, W):
                rows = [buf[bi, chan(k * W + j), _ramp(l0 + t0, W)] for j in range(W)]
                for t in range(W):
                    T.buffer_store(tile, _column(rows, t, W), [t0 + t, _ramp(k * W, W)])

    def _tile_to_rows(self, tile, bi, l0, chan, count, TL, W):
        out = self.bufs["out"]
        for k in range(count // W):
            for t0 in range(0, TL, W):
                cols = [tile[t0 + t, _ramp(k * W, W)] for t in range(W)]
                for j in range(W):
                    T.buffer_store(out, _column(cols, j, W), [bi, chan(k * W + j),
                                                              _ramp(l0 + t0, W)])


def _ramp(base, lanes: int):
    base = tir.IntImm("int32", base) if isinstance(base, int) else base
    one = tir.IntImm(str(base.ty), 1)
    return tir.Ramp(base, one, lanes)


def _column(vectors, index: int, W: int):
    """Element `index` of each of W vectors, as one vector (a transpose column)."""
    return tir.Shuffle(vectors, [tir.IntImm("int32", j * W + index) for j in range(W)])


# ----------------------------------------------------------------------------- the PrimFunc
def _declare_args(sig: ScanSignature, layout: str, b, L) -> dict:
    d, N = sig.d, sig.N
    seq = (b, L, d) if layout == "bld" else (b, d, L)

    # align=4: torch views may start anywhere; TVM would otherwise assume 64-byte
    # alignment and emit aligned loads that fault on such views.
    def bc_shape(groups):
        if groups == 0:
            return (N, d)
        return (b, L, groups, N) if layout == "bld" else (b, groups, N, L)

    state = (b, d, N, 2) if sig.complex_a else (b, d, N)
    h = sig.heads
    shapes = {"u": seq, "delta": (b, L, h) if h else seq, "A2": (h,) if h else (N, d),
              "A2_re": (N, d), "A_im": (N, d), "seq_idx": (b, L),
              "B": bc_shape(sig.b_groups), "B_re": bc_shape(sig.b_groups),
              "B_im": bc_shape(sig.b_groups), "C": bc_shape(sig.c_groups),
              "C_re": bc_shape(sig.c_groups), "C_im": bc_shape(sig.c_groups),
              "D": (d,), "z": seq, "delta_bias": (h,) if h else (d,), "h0": state,
              "conv_w": (sig.conv_width, d), "conv_b": (d,),
              "out": seq, "h_last": state}
    dtypes = {"seq_idx": "int32"}
    return {nm: T.arg(nm, T.buffer(shapes[nm], dtypes.get(nm, F32), align=4))
            for nm in arg_names(sig)}


def build_selective_scan(sig: ScanSignature, config: Config, target_kind: str = "llvm"):
    """The PrimFunc `selective_scan` for one signature and schedule."""
    if sig.heads and config.layout != "bld":
        raise ValueError("SSD mode reads (b, L, h, p) inputs: Config.layout must be 'bld'")
    if sig.conv_width and config.layout != "bld":
        raise ValueError("the fused conv prologue reads rows of (b, L, d): layout 'bld' only")
    b = tir.Var("b", IDX)
    L = tir.Var("L", IDX)
    G = sig.partition_groups
    dg = sig.d // G
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FUNC_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": FUNC_NAME})
            bufs = _declare_args(sig, config.layout, b, L)
            alg = _ScanAlgorithm(sig, config, bufs, b, L)
            if target_kind == "cuda":
                _cuda_schedule(alg, config, b, G, dg)
            else:
                _cpu_schedule(alg, config, b, G, dg)
    return ib.get()


def block_tasks(cfg: Config, b, G: int, dg: int, run):
    """The CPU mapping: tasks of whole channel blocks (cfg.channel_block channels, the last one
    of a group partial) inside one of G groups of dg channels, per batch row ->
    (count, task(blk)); a task calls run(lanes, bi, c0) for its block's first channel c0.
    Shared by the scan, the decode step (selective_step_tir) and the causal conv."""
    cb = min(cfg.channel_block, dg)
    vw = min(cfg.vector_width, cb)
    cb = (cb // vw) * vw
    nfull, rem = dg // cb, dg % cb
    per_group = nfull + (1 if rem else 0)
    per_batch = G * per_group

    def task(blk):
        bi = M.bind(blk // per_batch)
        r = M.bind(blk % per_batch)
        j = M.bind(r % per_group) if G > 1 else r
        c0 = M.bind(tir.Cast(IDX, (r // per_group) * dg + j * cb if G > 1 else j * cb))
        if not rem:
            run(CpuLanes(cb, vw), bi, c0)
        elif not nfull:
            # the channels left over when the group size is not a multiple of the block:
            # same algorithm, one vector of `rem` lanes
            run(CpuLanes(rem, rem), bi, c0)
        else:
            with T.If(j < nfull):
                with T.Then():
                    run(CpuLanes(cb, vw), bi, c0)
                with T.Else():
                    run(CpuLanes(rem, rem), bi, c0)

    return b * per_batch, task


def cpu_block_tasks(alg, cfg: Config, b, G: int, dg: int, tiled: bool):
    """block_tasks running the scan algorithm `alg` on each block."""
    return block_tasks(cfg, b, G, dg, lambda lanes, bi, c0: alg.run_block(
        lanes, bi, lambda i: c0 + i, tiled=tiled))


def _cpu_schedule(alg: _ScanAlgorithm, cfg: Config, b, G: int, dg: int):
    total, task = cpu_block_tasks(alg, cfg, b, G, dg, tiled=True)
    M.for_tasks(total, cfg.threads, task)


def _cuda_schedule(alg: _ScanAlgorithm, cfg: Config, b, G: int, dg: int):
    tpb = max(1, min(cfg.channel_block, 1024))
    per_group = (dg + tpb - 1) // tpb
    per_batch = G * per_group
    with T.thread_binding(0, b * per_batch, thread="blockIdx.x") as blk:
        with T.thread_binding(0, tpb, thread="threadIdx.x") as tid:
            bi = blk // per_batch
            r = blk % per_batch
            g = r // per_group
            j = r % per_group
            local = tir.Cast(IDX, j * tpb + tid)
            c = tir.Cast(IDX, g * dg) + local
            with T.If(local < dg):
                with T.Then():
                    alg.run_block(CudaLanes(), bi, lambda i: c, tiled=False)
