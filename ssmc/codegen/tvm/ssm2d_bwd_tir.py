"""TIR builder for the backward (adjoint) of Chimera's 2-D SSM kernel (ssm2d_tir) on the CPU.

The kernel differentiates exactly what the forward kernel computes from its own arguments
(`ssm2d_tir.arg_names`): per channel c, state n and cell (t, v), axis k = 0 (h1, along t,
"own" = h1[t-1, v], "cross" = h2[t-1, v]) and k = 1 (h2, along v, own = h2[t, v-1], cross =
h1[t, v-1]):

    per-cell step (dt_cell):   h = e own + g (Ac cross + B x),  e = exp(dt A),
                               g = expm1(dt A) Ainv,  dt = softplus(raw) with dt_softplus
    per-channel step:          h = E own + AG cross + G B x  (B x when B is (d, N): G folded)
    y = sum_n C1 h1 + C2 h2 + D x

Everything before that (the per-channel discretisation E, G, A G, G B, A = -exp(A_log), the
transposes) stays in torch, where autograd chains the kernel's gradients through it.

The adjoint (reverse mode): with g1, g2 the total gradients reaching h1[t, v], h2[t, v],

    g1[t, v] = gy C1 + e1[t+1, v] g1[t+1, v] + (g Ac)_v[t, v+1] g2[t, v+1]
    g2[t, v] = gy C2 + (g Ac)_t[t+1, v] g1[t+1, v] + e4[t, v+1] g2[t, v+1]

i.e. the forward recurrence transposed and run backwards (t and v descending).  A cell does
not read its successors' coefficients: once it has its g1, g2 it *sends* the terms its
predecessors need -- e1 g1 and g Ac g1 up (to cell (t-1, v)), e4 g2 and g Ac g2 left (to
(t, v-1)) -- into two slot arrays of messages, `U[v]` (from the cell below in column v) and
`Lm[v + 1]` (from the cell right of column v; Lm[V] stays zero).  Then every exp is computed
once per cell, as in the forward.  Cells with t + v constant are independent again: the
reverse wavefront walks the diagonals downwards and a diagonal's cells in *increasing* v
(cell (t, v) overwrites Lm[v] after (t+1, v-1), on the same diagonal, has read it); 'rows'
walks t then v downwards.  The local gradients of a cell need the forward states of itself
and of its two predecessors.

Forward states: stored per chunk of K rows, recomputed.  A task (batch row x channel block,
as in the forward) keeps `H` (K + 1 rows, V + 1 columns, 2 states, N, lanes): row 0 the states
of the row before the chunk (its checkpoint), column 0 a zero guard.  For a chunk it reloads
the checkpoint, recomputes the chunk's K rows of states (the forward cell, same order), then
runs the adjoint over them.  With more than one chunk, a first forward sweep writes the
checkpoints (the states of every K-th row, `ckpt`).  K = T (one chunk) stores every state of
the task: one forward recompute plus the adjoint, (b, T, V, d, N) x 2 floats of H; chunks of
about sqrt(T) rows cost a second forward sweep but keep H and ckpt at O(sqrt(T) V d N) (and H
in cache); the wrapper (ssm2d_bwd.chunk_rows) picks.  Why
recompute and not states saved by the forward: the forward kernel keeps one diagonal of
states only, and (b, T, V, d, N) x 2 (x 2 bidirectional) is 1 GB at Chimera's 64 variates x
1024 steps with d 64, N 16, b 2 -- too much to keep between forward and backward; the
recompute is ~1/3 of the backward's work.

Gradients: per cell and channel (x, per-cell dt) and per-cell B/C of shape (b, T, V, d, N)
are accumulated (+=) into zeroed outputs (bidirectional: the two sweeps add); per-channel
operands ((N, d) arguments and D) are accumulated per lane into per-batch-row partials
(b, N, d) / (b, d); B/C shared by the channels ((b, T, V, N)) are summed over the task's lanes
each cell (a transposing tree of vector adds, as selective_scan_bwd_tir's grouped B/C) into
(b, T, V, blocks, N) partials.  The wrapper sums partials in torch.  fp32 only (as the forward).
"""

from __future__ import annotations

import tvm.tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm import ssm2d_tir as fw
from ssmc.codegen.tvm.selective_scan_bwd_tir import _ramp, _transpose_sum, _tree_sum  # lane sums
from ssmc.codegen.tvm import tirmath as M
from ssmc.codegen.tvm.ssm2d_tir import (BC_FULL, BC_NAMES, BC_PARAM, BC_SHARED, F32, IDX,
                                        LOCAL_SCOPE, Ssm2dConfig, Ssm2dSignature, blocks)

FUNC_NAME = "ssm2d_bwd"
SCRATCH_SLOTS = 96  # fp32 temporaries per lane body (two exp_expm1 and the adjoint terms)
VECTOR_SUMS = True  # shared B/C: transposing vector tree (False: scalar adds)

# names of each axis's per-channel operands: (dt, A, Ainv, A_cross) per cell, (E, G, AG) else
AXIS_CELL = (("dt_t", "A1", "A1inv", "A2"), ("dt_v", "A4", "A4inv", "A3"))
AXIS_CHAN = (("E1", "G1", "A2G"), ("E4", "G4", "A3G"))


def input_names(sig: Ssm2dSignature) -> list[str]:
    """The forward kernel's inputs (its arguments less out / ws)."""
    return [n for n in fw.arg_names(sig) if n not in ("out", "ws")]


def grad_names(sig: Ssm2dSignature) -> list[str]:
    """'g' + every input the forward's value depends on (G of a per-channel step with a (d, N)
    B is not read: G B arrives folded in B)."""
    unused = {AXIS_CHAN[k][1] for k in (0, 1)
              if not sig.dt_cell[k] and sig.bc[k] == BC_PARAM}
    return ["g" + n for n in input_names(sig) if n not in unused]


def arg_names(sig: Ssm2dSignature) -> list[str]:
    """The backward kernel's arguments in order: the forward's inputs, the output gradient
    gy, the workspaces H / ckpt / msg, then the gradients (outputs, zeroed by the caller)."""
    return input_names(sig) + ["gy", "H", "ckpt", "msg"] + grad_names(sig)


def workspace_shapes(sig: Ssm2dSignature, cfg: Ssm2dConfig, b: int, V: int, K: int,
                     nc: int) -> dict:
    """Shapes of the caller-allocated workspaces for chunks of K rows (nc = ceil(T / K))."""
    bl = blocks(sig.d, cfg)
    nb, N, cb = bl.per_batch, sig.N, bl.cb
    return {"H": (b, nb, K + 1, V + 1, 2, N, cb), "ckpt": (b, nb, nc, V, 2, N, cb),
            "msg": (b, nb, 2, V + 1, 2, N, cb)}


def grad_shape(sig: Ssm2dSignature, cfg: Ssm2dConfig, name: str, b: int, T_: int, V: int):
    """The shape of gradient output `name` ('g' + input): per cell as the input, per-channel
    inputs as per-batch-row partials, shared B/C as per-block partials."""
    d, N = sig.d, sig.N
    base = name[1:]
    if base in ("x", "dt_t", "dt_v"):
        return (b, T_, V, d)
    if base == "D":
        return (b, d)
    if base in BC_NAMES:
        form = sig.bc[BC_NAMES.index(base)]
        if form == BC_SHARED:
            return (b, T_, V, blocks(d, cfg).per_batch, N)
        if form == BC_FULL:
            return (b, T_, V, d, N)
    return (b, N, d)


class _BwdSweep(fw._Sweep):
    """One task's backward: both directions, chunks, recompute and adjoint."""

    def __init__(self, sig, cfg, bufs, T_, V_, bi, c0, task, lanes: int, width: int, K, nc):
        self.sig, self.cfg, self.bufs = sig, cfg, bufs
        self.T, self.V, self.bi, self.c0, self.task = T_, V_, bi, c0, task
        self.lanes, self.width = lanes, width
        self.K, self.nc = K, nc
        self.scratch = M.Scratch(T.alloc_buffer((SCRATCH_SLOTS, lanes), F32, scope=LOCAL_SCOPE),
                                 SCRATCH_SLOTS)
        self.acc = fw.Y_ACCUMULATORS if sig.N % fw.Y_ACCUMULATORS == 0 else \
            2 if sig.N % 2 == 0 else 1
        self.xbuf = T.alloc_buffer((lanes,), F32, scope=LOCAL_SCOPE)
        self.gybuf = T.alloc_buffer((lanes,), F32, scope=LOCAL_SCOPE)
        self.dtbuf = T.alloc_buffer((2, lanes), F32, scope=LOCAL_SCOPE)  # steps (softplus'd)
        self.sgbuf = T.alloc_buffer((2, lanes), F32, scope=LOCAL_SCOPE)  # softplus' = sigmoid
        # per accumulator: gx, gdt_t, gdt_v partial sums over the states
        self.accbuf = T.alloc_buffer((self.acc, 3, lanes), F32, scope=LOCAL_SCOPE)
        self.shared = [k for k in range(4) if sig.bc[k] == BC_SHARED]
        self.tmp = {k: T.alloc_buffer((sig.N, lanes), F32, scope=LOCAL_SCOPE)
                    for k in self.shared}
        self.red = T.alloc_buffer((width, width), F32, scope=LOCAL_SCOPE) if self.shared \
            else None

    # --- buffers of the task ------------------------------------------------------------
    def h(self, r, col, a, n, i):
        return self.bufs["H"][self.bi, self.task, r, col, a, n, i]

    def set_h(self, value, r, col, a, n, i):
        T.buffer_store(self.bufs["H"], value, [self.bi, self.task, r, col, a, n, i])

    def msg(self, kind, col, a, n, i):  # kind 0: U (from below), 1: Lm (from the right)
        return self.bufs["msg"][self.bi, self.task, kind, col, a, n, i]

    def set_msg(self, value, kind, col, a, n, i):
        T.buffer_store(self.bufs["msg"], value, [self.bi, self.task, kind, col, a, n, i])

    def add(self, name, value, idx):
        buf = self.bufs[name]
        T.buffer_store(buf, buf[tuple(idx)] + value, idx)

    def vp_of(self, dirn, v):
        if self.sig.bidirectional:
            return M.bind(tir.Select(dirn > 0, self.V - 1 - v, v))
        return v

    def fill(self, name, extents, prefix):
        """Zero a task-owned region buf[prefix..., 0:extents..., lanes]."""
        buf = self.bufs[name]

        def rec(idx, rest):
            if not rest:
                self.each(lambda i: T.buffer_store(buf, M.f32(0.0), [*prefix, *idx, i]))
                return
            with T.serial(0, rest[0]) as k:
                rec(idx + [k], rest[1:])

        rec([], list(extents))

    # --- per-cell operands (lane bodies) ---------------------------------------------------
    def load_cell(self, t, vp, i, grads: bool):
        sig, bufs, c = self.sig, self.bufs, self.c0 + i
        T.buffer_store(self.xbuf, bufs["x"][self.bi, t, vp, c], [i])
        for k, dtn in enumerate(("dt_t", "dt_v")):
            if not sig.dt_cell[k]:
                continue
            raw = bufs[dtn][self.bi, t, vp, c]
            if not sig.dt_softplus:
                T.buffer_store(self.dtbuf, raw, [k, i])
                if grads:
                    T.buffer_store(self.sgbuf, M.f32(1.0), [k, i])
                continue
            # softplus(raw) = log1p(e), e = exp(min(raw, 20)); its derivative e / (1 + e)
            rb = M.bind(raw)
            ex = M.bind(M.exp(tir.Min(rb, M.f32(M.SOFTPLUS_THRESHOLD))))
            big = rb > M.f32(M.SOFTPLUS_THRESHOLD)
            T.buffer_store(self.dtbuf, tir.Select(big, rb, M.log1p_of(ex)), [k, i])
            if grads:
                T.buffer_store(self.sgbuf, tir.Select(big, M.f32(1.0), ex / (M.f32(1.0) + ex)),
                               [k, i])
        if grads:
            T.buffer_store(self.gybuf, bufs["gy"][self.bi, t, vp, c], [i])
            for a in range(self.acc):
                for q in range(3):
                    T.buffer_store(self.accbuf, M.f32(0.0), [a, q, i])

    # --- the forward cell (recompute into H) -----------------------------------------------
    def fcell(self, dirn, t0, r, v):
        t = t0 + r
        vp = self.vp_of(dirn, v)
        self.each(lambda i: self.load_cell(t, vp, i, grads=False))

        def state(n, i):
            c, xv = self.c0 + i, self.xbuf[i]
            up1, up2 = self.h(r, v + 1, 0, n, i), self.h(r, v + 1, 1, n, i)
            left1, left2 = self.h(r + 1, v, 0, n, i), self.h(r + 1, v, 1, n, i)
            h1 = M.bind(self.update(0, t, vp, c, i, n, up1, up2, xv))
            h2 = M.bind(self.update(1, t, vp, c, i, n, left2, left1, xv))
            self.set_h(h1, r + 1, v + 1, 0, n, i)
            self.set_h(h2, r + 1, v + 1, 1, n, i)

        with T.serial(0, self.sig.N) as n:
            self.each(lambda i: state(n, i))

    # --- the adjoint cell ------------------------------------------------------------------
    def axis_adjoint(self, k, t, vp, c, i, n, a, g, own, cross, xv):
        """Gradients of axis k's update at one cell (g: the gradient of its new state).
        Returns (message to the own state, message to the cross state) of the predecessor."""
        sig, bufs, bi = self.sig, self.bufs, self.bi
        b_n = self.bc(k, t, vp, c, n)
        if sig.dt_cell[k]:
            dtn, An, Ainvn, Acn = AXIS_CELL[k]
            A, Ainv, Ac = bufs[An][n, c], bufs[Ainvn][n, c], bufs[Acn][n, c]
            dt = self.dtbuf[k, i]
            e, em1 = fw.exp_expm1(dt * A)
            em1 = M.bind(em1)
            gg = M.bind(em1 * Ainv)
            ggg = M.bind(gg * g)
            dgg = M.bind(g * (Ac * cross + b_n * xv))
            dz = M.bind((g * own + dgg * Ainv) * e)
            T.buffer_store(self.accbuf, self.accbuf[a, 1 + k, i] + dz * A, [a, 1 + k, i])
            self.add("g" + An, dz * dt, [bi, n, c])
            self.add("g" + Ainvn, dgg * em1, [bi, n, c])
            self.add("g" + Acn, ggg * cross, [bi, n, c])
            gB, gx = ggg * xv, ggg * b_n
            msgs = (e * g, ggg * Ac)
        else:
            En, Gn, AGn = AXIS_CHAN[k]
            self.add("g" + En, g * own, [bi, n, c])
            self.add("g" + AGn, g * cross, [bi, n, c])
            if sig.bc[k] == BC_PARAM:  # B arrives as G B
                gB, gx = g * xv, g * b_n
            else:
                G = bufs[Gn][n, c]
                self.add("g" + Gn, g * b_n * xv, [bi, n, c])
                gG = M.bind(g * G)
                gB, gx = gG * xv, gG * b_n
            msgs = (bufs[En][n, c] * g, bufs[AGn][n, c] * g)
        self.grad_bc(k, gB, t, vp, c, n, i)
        T.buffer_store(self.accbuf, self.accbuf[a, 0, i] + gx, [a, 0, i])
        return msgs

    def grad_bc(self, k, value, t, vp, c, n, i):
        """The gradient term of B1/B2/C1/C2 (k = 0..3) at one cell, state and lane."""
        name, form, bi = "g" + BC_NAMES[k], self.sig.bc[k], self.bi
        if form == BC_PARAM:
            self.add(name, value, [bi, n, c])
        elif form == BC_FULL:
            self.add(name, value, [bi, t, vp, c, n])
        else:
            T.buffer_store(self.tmp[k], value, [n, i])

    def acell(self, dirn, t0, r, v):
        sig, bufs, bi = self.sig, self.bufs, self.bi
        t = t0 + r
        vp = self.vp_of(dirn, v)
        self.each(lambda i: self.load_cell(t, vp, i, grads=True))

        def state(n, a, i):
            c, xv, gy = self.c0 + i, self.xbuf[i], self.gybuf[i]
            h1, h2 = self.h(r + 1, v + 1, 0, n, i), self.h(r + 1, v + 1, 1, n, i)
            g1 = M.bind(gy * self.bc(2, t, vp, c, n) + self.msg(0, v, 0, n, i)
                        + self.msg(1, v + 1, 0, n, i))
            g2 = M.bind(gy * self.bc(3, t, vp, c, n) + self.msg(0, v, 1, n, i)
                        + self.msg(1, v + 1, 1, n, i))
            up1, up2 = self.h(r, v + 1, 0, n, i), self.h(r, v + 1, 1, n, i)
            left1, left2 = self.h(r + 1, v, 0, n, i), self.h(r + 1, v, 1, n, i)
            m_own, m_cross = self.axis_adjoint(0, t, vp, c, i, n, a, g1, up1, up2, xv)
            self.set_msg(m_own, 0, v, 0, n, i)       # to h1[t-1, v]
            self.set_msg(m_cross, 0, v, 1, n, i)     # to h2[t-1, v]
            m_own, m_cross = self.axis_adjoint(1, t, vp, c, i, n, a, g2, left2, left1, xv)
            self.set_msg(m_cross, 1, v, 0, n, i)     # to h1[t, v-1]
            self.set_msg(m_own, 1, v, 1, n, i)       # to h2[t, v-1]
            self.grad_bc(2, gy * h1, t, vp, c, n, i)
            self.grad_bc(3, gy * h2, t, vp, c, n, i)

        with T.serial(0, sig.N // self.acc) as no:
            for a in range(self.acc):
                self.each(lambda i, a=a: state(no * self.acc + a, a, i))

        def finish(i):
            c = self.c0 + i
            gx = self.accbuf[0, 0, i]
            for a in range(1, self.acc):
                gx = gx + self.accbuf[a, 0, i]
            if sig.has_D:
                gy, xv = self.gybuf[i], self.xbuf[i]
                first = dirn == 0 if sig.bidirectional else None
                dx, dD = bufs["D"][c] * gy, gy * xv
                if first is not None:
                    dx = tir.Select(first, dx, M.f32(0.0))
                    dD = tir.Select(first, dD, M.f32(0.0))
                gx = gx + dx
                self.add("gD", dD, [bi, c])
            self.add("gx", gx, [bi, t, vp, c])
            for k, dtn in enumerate(("dt_t", "dt_v")):
                if sig.dt_cell[k]:
                    s = self.accbuf[0, 1 + k, i]
                    for a in range(1, self.acc):
                        s = s + self.accbuf[a, 1 + k, i]
                    self.add("g" + dtn, s * self.sgbuf[k, i], [bi, t, vp, c])

        self.each(finish)
        self.shared_sums(t, vp)

    def shared_sums(self, t, vp):
        """B/C shared by the channels: this cell's terms summed over the task's lanes."""
        W, N = self.width, self.sig.N
        vec = VECTOR_SUMS and W in (4, 8, 16) and self.lanes % W == 0 and N >= W
        nv = N - N % W if vec else 0
        for k in self.shared:
            tmp, out = self.tmp[k], self.bufs["g" + BC_NAMES[k]]
            idx = [self.bi, t, vp, self.task]
            for n0 in range(0, nv, W):
                _transpose_sum(tmp, self.red, n0, self.lanes, W,
                               lambda v, n0=n0: T.buffer_store(
                                   out, out[(*idx, _ramp(n0, W))] + v, [*idx, _ramp(n0, W)]))
            for n in range(nv, N):
                s = _tree_sum([tmp[n, i] for i in range(self.lanes)])
                T.buffer_store(out, out[(*idx, n)] + s, [*idx, n])

    # --- the grid ----------------------------------------------------------------------------
    def forward_chunk(self, dirn, jj, kc):
        """H rows 1..kc = the states of chunk jj's rows, row 0 its checkpoint."""
        ck, V_ = self.bufs["ckpt"], self.V
        with T.serial(0, V_) as v:
            with T.serial(0, 2) as a:
                with T.serial(0, self.sig.N) as n:
                    self.each(lambda i: self.set_h(
                        ck[self.bi, self.task, jj, v, a, n, i], 0, v + 1, a, n, i))
        t0 = M.bind(jj * self.K)
        if self.cfg.order == "rows":
            with T.serial(0, kc) as r:
                with T.serial(0, V_) as v:
                    self.fcell(dirn, t0, r, v)
            return
        with T.serial(0, kc + V_ - 1) as s:
            v_lo = M.bind(tir.Max(s - (kc - 1), tir.IntImm(IDX, 0)))
            v_hi = M.bind(tir.Min(s, V_ - 1))
            with T.serial(0, v_hi - v_lo + 1) as j:
                v = M.bind(v_hi - j)
                self.fcell(dirn, t0, s - v, v)

    def adjoint_chunk(self, dirn, jj, kc):
        t0, V_ = M.bind(jj * self.K), self.V
        if self.cfg.order == "rows":
            with T.serial(0, kc) as rr:
                with T.serial(0, V_) as vv:
                    self.acell(dirn, t0, kc - 1 - rr, V_ - 1 - vv)
            return
        with T.serial(0, kc + V_ - 1) as ss:
            s = M.bind(kc + V_ - 2 - ss)
            v_lo = M.bind(tir.Max(s - (kc - 1), tir.IntImm(IDX, 0)))
            v_hi = M.bind(tir.Min(s, V_ - 1))
            with T.serial(0, v_hi - v_lo + 1) as j:  # increasing v: see the module docstring
                v = M.bind(v_lo + j)
                self.acell(dirn, t0, s - v, v)

    def direction(self, dirn):
        N, V_, K = self.sig.N, self.V, self.K
        bi, task = self.bi, self.task
        self.fill("msg", (2, V_ + 1, 2, N), [bi, task])
        self.fill("ckpt", (V_, 2, N), [bi, task, 0])
        ck = self.bufs["ckpt"]
        with T.serial(0, self.nc - 1) as jj:  # checkpoints: the last row of every chunk
            self.forward_chunk(dirn, jj, K)
            with T.serial(0, V_) as v:
                with T.serial(0, 2) as a:
                    with T.serial(0, N) as n:
                        self.each(lambda i: T.buffer_store(
                            ck, self.h(K, v + 1, a, n, i), [bi, task, jj + 1, v, a, n, i]))
        with T.serial(0, self.nc) as cc:
            jj = M.bind(self.nc - 1 - cc)
            kc = M.bind(tir.Min(K, self.T - jj * K))
            self.forward_chunk(dirn, jj, kc)
            self.adjoint_chunk(dirn, jj, kc)

    def run(self):
        self.fill_guard()
        if self.sig.bidirectional:
            with T.serial(0, 2) as dirn:
                self.direction(dirn)
        else:
            self.direction(tir.IntImm(IDX, 0))

    def fill_guard(self):
        """H's column 0 (the states left of v = 0): zero, never written."""
        H, N = self.bufs["H"], self.sig.N
        with T.serial(0, self.K + 1) as r:
            with T.serial(0, 2) as a:
                with T.serial(0, N) as n:
                    self.each(lambda i: T.buffer_store(
                        H, M.f32(0.0), [self.bi, self.task, r, 0, a, n, i]))


# ----------------------------------------------------------------------------- the PrimFunc
def _declare_args(sig: Ssm2dSignature, cfg: Ssm2dConfig, b, T_, V_, KP, nc) -> dict:
    d, N = sig.d, sig.N
    bl = blocks(d, cfg)
    nb, cb = bl.per_batch, bl.cb

    def buf(shape, strided=False):
        strides = None
        if strided:  # any strides but a unit last one (views into projection outputs)
            strides = [tir.Var(f"s{i}", IDX) for i in range(len(shape) - 1)] + [1]
        return T.buffer(shape, F32, align=4, strides=strides)

    bc_shape = {BC_PARAM: (N, d), BC_SHARED: (b, T_, V_, N), BC_FULL: (b, T_, V_, d, N)}
    grid = (b, T_, V_, d)
    shapes = {"x": grid, "gy": grid, "dt_t": grid, "dt_v": grid, "D": (d,),
              "H": (b, nb, KP, V_ + 1, 2, N, cb), "ckpt": (b, nb, nc, V_, 2, N, cb),
              "msg": (b, nb, 2, V_ + 1, 2, N, cb)}
    for nm in ("A1", "A1inv", "A2", "A3", "A4", "A4inv", "E1", "G1", "E4", "G4", "A2G", "A3G"):
        shapes[nm] = (N, d)
    for k, nm in enumerate(BC_NAMES):
        shapes[nm] = bc_shape[sig.bc[k]]
    strided = {"dt_t", "dt_v"} | {nm for k, nm in enumerate(BC_NAMES) if sig.bc[k] == BC_SHARED}
    for g in grad_names(sig):
        base = g[1:]
        if base in ("x", "dt_t", "dt_v"):
            shapes[g] = grid
        elif base == "D":
            shapes[g] = (b, d)
        elif base in BC_NAMES and sig.bc[BC_NAMES.index(base)] == BC_SHARED:
            shapes[g] = (b, T_, V_, nb, N)
        elif base in BC_NAMES and sig.bc[BC_NAMES.index(base)] == BC_FULL:
            shapes[g] = (b, T_, V_, d, N)
        else:
            shapes[g] = (b, N, d)
    return {nm: T.arg(nm, buf(shapes[nm], nm in strided)) for nm in arg_names(sig)}


def build_ssm2d_bwd(sig: Ssm2dSignature, cfg: Ssm2dConfig):
    """The PrimFunc `ssm2d_bwd` (CPU) for one signature and schedule.  b, T, V, the chunk
    length (H's third axis minus one) and the chunk count (ckpt's third axis) are symbolic."""
    b, T_, V_ = tir.Var("b", IDX), tir.Var("T", IDX), tir.Var("V", IDX)
    KP, nc = tir.Var("KP", IDX), tir.Var("nc", IDX)
    bl = blocks(sig.d, cfg)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FUNC_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": FUNC_NAME})
            bufs = _declare_args(sig, cfg, b, T_, V_, KP, nc)
            K = KP - tir.IntImm(IDX, 1)
            fw.emit_tasks(bl, b, cfg, lambda bi, c0, j, lanes, width:
                          _BwdSweep(sig, cfg, bufs, T_, V_, bi, c0, j, lanes, width, K, nc).run())
    return ib.get()
