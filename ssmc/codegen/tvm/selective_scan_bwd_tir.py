"""TIR builder for the backward of the real-A Mamba-1 selective scan (CPU, LLVM).

The reverse scan of ssmc.runtime.backward (read its docstring for the math), per channel:

    h_t = a_t h_{t-1} + dt_t u_t B_t,   a_t = exp(dt_t A)          (N states)
    G_t = gy_t C_t + a_{t+1} G_{t+1}    (the adjoint; G_{L-1} starts from grad of the last state)
    w_t = G_t a_t h_{t-1}               (the gradient reaching log a_t = dt_t A)

    gdt_t = sum_n w A + u sum_n G B     gu_t = dt sum_n G B + D gy      gA += w dt
    gB_t = G dt u                       gC_t = h gy              (summed over a group's channels)
    gh0 = a_0 G_0                       gD += gy u

with gy = grad_y * silu(z), and gz = grad_y (<C, h> + D u) silu'(z) from the same pass.  The
effective step (softplus, bias) stays in torch: the kernel sees, and differentiates w.r.t., the
effective dt.

Tasks and lanes are the forward's (selective_scan_tir: `_cpu_schedule`, `CpuLanes`): a task
carries a block of channels, vectorised, through the whole sequence, parallel over batch x
channel blocks.  Per chunk of K steps, in reverse: reload the chunk's checkpoint, recompute its
K states into `hs` (a (b, K + 1, N, d) scratch tensor the caller allocates: K is symbolic, so
one build serves every chunk length, and a task only touches its own (K + 1, N, block) slice),
then run the adjoint recurrence backwards over them.  With `recompute != 0` a forward sweep
first writes the checkpoints themselves (the forward saved none).

Layouts: 'bld' (channels innermost, what compiled models pass) is read and written in place;
'bdl' (mamba-ssm's (b, d, L) and (b, g, N, L)) goes through a per-task tile (b, blocks, K + 1,
slots, block), also caller-allocated: each chunk's u / delta / grad_y / z rows are copied in
(contiguous in L) before the chunk and its gu / gdt / gz rows copied out after it, so neither
side pays a (b, d, L) <-> (b, L, d) transpose in torch.  (Reading (b, d, L) lanes directly
would touch one cache line per lane and step, 4 KB apart for L = 1024: the same L1 set.)

Mamba-2 SSD runs on the same kernel (`BwdSignature.heads` > 0, ssmc.codegen.tvm.ssd_bwd): A and
the effective dt are read per head (no task straddles a head, as in the forward), so the decay
a_t = exp(dt_t A_h) is one exp per step and channel, not per state, and the log-decay terms
reduce to sum_n w: gdt_t = A_h sum_n w + u sum_n G B and gA += dt sum_n w per channel.
A `keep` mask (b, L) multiplies the decay (seq_idx: 0 resets the state before step t); it
works without heads too.  The checkpoints are the states before any reset: the reset of a
chunk's first step happens in its recompute, through that step's decay.

Reductions across channels never race: a task owns its channels, so the gradients of A, D and
time-invariant B/C are accumulated per lane and written as per-batch partials ((b, N, d),
(b, d)); grouped B/C gradients are summed over the task's lanes every step (`group_sums`) and
written per task block, (b, L, blocks, N).  The wrapper sums the partials in torch.

Measured (2-core Zen3 VM, shared, b2 d256 N16 L1024 fp32, K = 32, grouped B/C, D and z; one
thread): the kernel ~9-12 ms against ~2.4 ms for the forward kernel, i.e. about its op count
(two exps per state and step, recompute and reverse).  Storing exp(dt A) in the recompute for
the reverse pass to reuse was measured slower (the chunk's working set doubles and leaves L1);
the vector lane sums took ~20% off the scalar ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tvm.tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm import selective_scan_tir as fw
from ssmc.codegen.tvm import tirmath as M
from ssmc.codegen.tvm.config import Config

F32 = "float32"
IDX = "int64"
FUNC_NAME = "selective_scan_bwd"
LN2 = math.log(2.0)
# layout 'bdl': what a chunk's tile holds per step and lane (inputs, then gradients)
TILE_SLOTS = ("u", "delta", "gout", "z", "gu", "gdt", "gz")
# group_sums' vector tree (False: scalar adds only; kept to measure one against the other)
VECTOR_SUMS = True


@dataclass(frozen=True)
class BwdSignature:
    """What a backward kernel is specialised on.  b_groups / c_groups: 0 = time-invariant
    (d, N), g >= 1 = (b, L, g, N).  has_D / has_z: the skip term and the gate are given (their
    gradients come out of the kernel too)."""

    d: int
    N: int
    b_groups: int = 1
    c_groups: int = 1
    has_D: bool = False
    has_z: bool = False
    layout: str = "bld"  # of u, delta, z and their gradients (and B/C): 'bld' or 'bdl'
    # Mamba-2 SSD mode (as the forward's ScanSignature.heads): heads > 0 means A (heads,) and
    # the effective dt (b, L, heads) are shared by the d // heads channels of a head, so the
    # decay exp(dt A) is one exp per step and lane instead of one per state; gA comes out per
    # channel (b, d) (summed over the states), gdt still per channel (b, L, d) (the wrapper
    # sums a head's channels).  Layout 'bld' only.
    heads: int = 0
    # keep (b, L) fp32: the decay of step t is multiplied by keep[b, t] (0 resets the state
    # before step t: SSD's seq_idx document boundaries; any mask works in either mode)
    has_keep: bool = False

    def __post_init__(self):
        if self.heads and self.layout != "bld":
            raise ValueError("SSD mode (heads > 0) reads (b, L, d) sequences: layout 'bld'")
        self.scan()  # the forward signature's checks (groups divide d, heads, ...)

    def scan(self) -> fw.ScanSignature:
        """The forward signature with the same operands (for B/C indexing and partitions;
        in SSD mode no task straddles a head)."""
        return fw.ScanSignature(d=self.d, N=self.N, b_groups=self.b_groups,
                                c_groups=self.c_groups, heads=self.heads)


@dataclass(frozen=True)
class Blocks:
    """How `_cpu_schedule` cuts the channels: G partitions of dg channels (no task straddles a
    group), each cut into blocks of cb channels (the last one `rem` wide)."""

    G: int
    dg: int
    cb: int
    per_group: int

    @property
    def count(self) -> int:
        """Blocks per batch row: the middle axis of the grouped B/C partials."""
        return self.G * self.per_group

    def index(self, c0):
        """The block of the task whose first channel is c0."""
        return (c0 // self.dg) * self.per_group + (c0 % self.dg) // self.cb


def blocks(sig: BwdSignature, config: Config) -> Blocks:
    G = sig.scan().partition_groups
    dg = sig.d // G
    cb = min(config.channel_block, dg)
    vw = min(config.vector_width, cb)
    cb = (cb // vw) * vw  # as _cpu_schedule
    return Blocks(G, dg, cb, (dg + cb - 1) // cb)


def arg_names(sig: BwdSignature) -> list[str]:
    """The kernel's arguments in order; the wrapper passes tensors under these names."""
    names = ["u", "delta", "gout", "A2", "B", "C"]
    names += ["D"] if sig.has_D else []
    names += ["z"] if sig.has_z else []
    names += ["keep"] if sig.has_keep else []
    names += ["h0", "glast", "ckpt", "hs"]
    names += ["tile"] if sig.layout == "bdl" else []
    names += ["recompute", "gu", "gdt", "gA", "gB", "gC", "gh0"]
    names += ["gD"] if sig.has_D else []
    names += ["gz"] if sig.has_z else []
    return names


def _declare_args(sig: BwdSignature, blk: Blocks, b, L, KP, nc) -> dict:
    d, N, nb = sig.d, sig.N, blk.count
    bdl = sig.layout == "bdl"
    seq = (b, d, L) if bdl else (b, L, d)

    def bc(groups):
        if groups == 0:
            return (N, d)
        return (b, groups, N, L) if bdl else (b, L, groups, N)

    def partial(groups):  # gradient partials of B or C
        return (b, N, d) if groups == 0 else (b, L, nb, N)

    h = sig.heads
    shapes = {"u": seq, "delta": (b, L, h) if h else seq, "gout": seq, "z": seq, "D": (d,),
              "gD": (b, d), "gz": seq, "A2": (h,) if h else (N, d), "keep": (b, L),
              "B": bc(sig.b_groups),
              "C": bc(sig.c_groups), "h0": (b, d, N), "glast": (b, d, N),
              "ckpt": (b, nc, d, N), "hs": (b, KP, N, d), "gu": seq, "gdt": seq,
              "tile": (b, nb, KP, len(TILE_SLOTS), blk.cb),
              "gA": (b, d) if h else (b, N, d), "gB": partial(sig.b_groups),
              "gC": partial(sig.c_groups),
              "gh0": (b, d, N)}
    out = {}
    for nm in arg_names(sig):
        if nm == "recompute":
            out[nm] = T.arg(nm, tir.Var(nm, "int32"))
        else:  # align=4: torch views may start anywhere (see selective_scan_tir)
            out[nm] = T.arg(nm, T.buffer(shapes[nm], F32, align=4))
    return out


class _BackwardAlgorithm(fw._ScanAlgorithm):
    """The per-channel reverse scan; B/C indexing and lane mapping are the forward's."""

    def __init__(self, sig: BwdSignature, config: Config, bufs: dict, b, L, KP, nc):
        super().__init__(sig.scan(), config.replace(layout=sig.layout), bufs, b, L)
        self.bsig = sig
        self.blocks = blocks(sig, config)
        self.K = KP - tir.IntImm(IDX, 1)
        self.nc = nc
        self.N = sig.N

    # --- per-task buffers ---------------------------------------------------------------
    def alloc(self, lanes) -> dict:
        sig, N = self.bsig, self.N
        names = ["h", "carry"] + ([] if sig.heads else ["gA"])
        names += ["gB"] if sig.b_groups == 0 else ["tB"]
        names += ["gC"] if sig.c_groups == 0 else ["tC"]
        st = {nm: lanes.alloc((N, lanes.count)) for nm in names}
        W = getattr(lanes, "width", 1)
        st["red"] = lanes.alloc((W, W))  # group_sums' transposing tree
        lane_bufs = ["dt", "u", "du", "gy", "go", "z", "sig", "acc_dt", "acc_gb", "acc_y", "gD"]
        # SSD mode: the step's decay and gA per lane; a keep mask without heads: keep[b, t]
        lane_bufs += ["a", "gAl"] if sig.heads else (["kp"] if sig.has_keep else [])
        for nm in lane_bufs:
            st[nm] = lanes.alloc((lanes.count,))
        return st

    def states(self, lanes, fn):
        """fn(n, i) for every state and lane (states unrolled, lanes vectorised)."""
        with fw._unrolled(self.N) as n:
            lanes.each(lambda i: fn(n, i))

    def chunk_span(self, ci):
        """(first step, steps) of chunk ci."""
        s = M.bind(ci * self.K)
        return s, M.bind(tir.Min(self.K, self.L - s))

    # --- sequences: direct ('bld') or through the chunk's tile ('bdl') ----------------------
    def load(self, name, bi, l, t, i, c):
        """u / delta / gout / z at step l (chunk-local t) of lane i (channel c)."""
        if self.layout == "bdl":
            return self.bufs["tile"][bi, self.blk, t, TILE_SLOTS.index(name), i]
        if name == "delta" and self.bsig.heads:  # dt (b, L, heads)
            return self.bufs[name][bi, l, self.head(c)]
        return self.bufs[name][bi, l, c]

    def store(self, name, value, bi, l, t, i, c):
        if self.layout == "bdl":
            T.buffer_store(self.bufs["tile"], value, [bi, self.blk, t, TILE_SLOTS.index(name), i])
        else:
            T.buffer_store(self.bufs[name], value, [bi, l, c])

    def stage(self, lanes, bi, chan, s, kc, names, out: bool):
        """'bdl': copy the chunk's steps of `names` between the (b, d, L) tensors and the
        task's (steps, slot, lane) tile: rows contiguous in L on one side, lanes on the other,
        instead of strided (b, d, L) accesses in every step (lanes 4 KB apart alias in L1)."""
        if self.layout != "bdl":
            return
        tile = self.bufs["tile"]
        for name in names:
            k = TILE_SLOTS.index(name)
            with fw._unrolled(lanes.count) as i:
                with T.serial(tir.IntImm(IDX, 0), kc) as t:
                    if out:
                        T.buffer_store(self.bufs[name], tile[bi, self.blk, t, k, i],
                                       [bi, chan(i), s + t])
                    else:
                        T.buffer_store(tile, self.bufs[name][bi, chan(i), s + t],
                                       [bi, self.blk, t, k, i])

    def load_step(self, lanes, st, bi, l, t, chan, grads: bool):
        def body(i):
            c = chan(i)
            dt = M.bind(self.load("delta", bi, l, t, i, c))
            u = M.bind(self.load("u", bi, l, t, i, c))
            T.buffer_store(st["dt"], dt, [i])
            T.buffer_store(st["du"], dt * u, [i])
            keep = self.bufs["keep"][bi, l] if self.bsig.has_keep else None
            if self.bsig.heads:  # one decay per step and lane
                a = M.exp2(dt * self.bufs["A2"][self.head(c)], self.deg)
                T.buffer_store(st["a"], a if keep is None else a * keep, [i])
            elif keep is not None:
                T.buffer_store(st["kp"], keep, [i])
            if grads:
                T.buffer_store(st["u"], u, [i])
                self.gate(st, bi, l, t, c, i)
                for nm in ("acc_dt", "acc_gb", "acc_y"):
                    T.buffer_store(st[nm], M.f32(0.0), [i])

        lanes.each(body)

    def gate(self, st, bi, l, t, c, i):
        """gy = grad_y * silu(z), keeping grad_y, z and sigmoid(z) for the gate's gradient."""
        go = M.bind(self.load("gout", bi, l, t, i, c))
        if not self.bsig.has_z:
            T.buffer_store(st["gy"], go, [i])
            return
        z = M.bind(self.load("z", bi, l, t, i, c))
        sg = M.bind(M.f32(1.0) / (M.f32(1.0) + M.exp(-z, self.deg)))
        T.buffer_store(st["go"], go, [i])
        T.buffer_store(st["z"], z, [i])
        T.buffer_store(st["sig"], sg, [i])
        T.buffer_store(st["gy"], go * z * sg, [i])

    def decay(self, st, n, i, c):
        """a_t of state n, lane i (keep mask applied)."""
        if self.bsig.heads:
            return st["a"][i]
        a = M.exp2(st["dt"][i] * self.bufs["A2"][n, c], self.deg)
        return a * st["kp"][i] if self.bsig.has_keep else a

    def advance(self, lanes, st, bi, l, chan, store=None):
        """h = a h + dt u B for every state (store(n, i, c, h): where a state also goes)."""
        def body(n, i):
            c = chan(i)
            b_n = self.bc("B", "re", bi, l, c, n)
            h = M.bind(self.decay(st, n, i, c) * st["h"][n, i] + st["du"][i] * b_n)
            T.buffer_store(st["h"], h, [n, i])
            if store is not None:
                store(n, i, c, h)

        self.states(lanes, body)

    # --- the passes -----------------------------------------------------------------------
    def sweep(self, lanes, st, bi, chan):
        """The forward without readout: the state at every chunk start into ckpt."""
        ck, h0 = self.bufs["ckpt"], self.bufs["h0"]
        self.states(lanes, lambda n, i: T.buffer_store(st["h"], h0[bi, chan(i), n], [n, i]))
        with T.serial(tir.IntImm(IDX, 0), self.nc) as ci:
            self.states(lanes, lambda n, i: T.buffer_store(ck, st["h"][n, i],
                                                           [bi, ci, chan(i), n]))
            s, kc = self.chunk_span(ci)
            self.stage(lanes, bi, chan, s, kc, ("u", "delta"), out=False)
            with T.serial(tir.IntImm(IDX, 0), kc) as t:
                self.load_step(lanes, st, bi, s + t, t, chan, grads=False)
                self.advance(lanes, st, bi, s + t, chan)

    def recompute_chunk(self, lanes, st, bi, chan, ci, s, kc):
        """hs[t + 1] = h_{s + t} for the chunk's steps, hs[0] = its checkpoint."""
        ck, hs = self.bufs["ckpt"], self.bufs["hs"]

        def first(n, i):
            h = M.bind(ck[bi, ci, chan(i), n])
            T.buffer_store(st["h"], h, [n, i])
            T.buffer_store(hs, h, [bi, 0, n, chan(i)])

        self.states(lanes, first)
        # (storing exp(dt A) here too, for the reverse pass to read back instead of a second
        # exp, was measured slower: 2x the chunk's working set, which then leaves L1)
        with T.serial(tir.IntImm(IDX, 0), kc) as t:
            self.load_step(lanes, st, bi, s + t, t, chan, grads=False)
            self.advance(lanes, st, bi, s + t, chan,
                         store=lambda n, i, c, h: T.buffer_store(hs, h, [bi, t + 1, n, c]))

    def reverse_chunk(self, lanes, st, bi, chan, s, kc, blk):
        with T.serial(tir.IntImm(IDX, 0), kc) as tt:
            t = M.bind(kc - tir.IntImm(IDX, 1) - tt)
            l = M.bind(s + t)
            self.load_step(lanes, st, bi, l, t, chan, grads=True)
            self.states(lanes, lambda n, i: self.adjoint(st, bi, l, t, n, i, chan(i)))
            self.step_outputs(lanes, st, bi, l, t, chan)
            self.group_sums(lanes, st, bi, l, blk)

    def adjoint(self, st, bi, l, t, n, i, c):
        """One state of one channel at step l (chunk-local t): G, its gradients, the carry."""
        sig, hs = self.bsig, self.bufs["hs"]
        dt, gy, du = st["dt"][i], st["gy"][i], st["du"][i]
        a = M.bind(self.decay(st, n, i, c))
        b_n = self.bc("B", "re", bi, l, c, n)
        c_n = self.bc("C", "re", bi, l, c, n)
        h = M.bind(hs[bi, t + 1, n, c])
        G = M.bind(gy * c_n + st["carry"][n, i])
        w = M.bind(G * a * hs[bi, t, n, c])
        if sig.heads:  # A is the head's scalar: acc_dt holds sum_n w (see step_outputs)
            T.buffer_store(st["acc_dt"], st["acc_dt"][i] + w, [i])
        else:
            a2 = self.bufs["A2"][n, c]
            T.buffer_store(st["acc_dt"], st["acc_dt"][i] + w * a2, [i])
            T.buffer_store(st["gA"], st["gA"][n, i] + w * dt, [n, i])
        T.buffer_store(st["acc_gb"], st["acc_gb"][i] + G * b_n, [i])
        if sig.b_groups == 0:
            T.buffer_store(st["gB"], st["gB"][n, i] + G * du, [n, i])
        else:
            T.buffer_store(st["tB"], G * du, [n, i])
        if sig.c_groups == 0:
            T.buffer_store(st["gC"], st["gC"][n, i] + h * gy, [n, i])
        else:
            T.buffer_store(st["tC"], h * gy, [n, i])
        if sig.has_z:
            T.buffer_store(st["acc_y"], st["acc_y"][i] + c_n * h, [i])
        T.buffer_store(st["carry"], a * G, [n, i])

    def step_outputs(self, lanes, st, bi, l, t, chan):
        sig = self.bsig

        def body(i):
            c = chan(i)
            gb, u, gy = st["acc_gb"][i], st["u"][i], st["gy"][i]
            if sig.heads:
                # acc_dt holds sum_n w: gdt gets (sum_n w) A, gA (sum_n w) dt
                wsum = st["acc_dt"][i]
                T.buffer_store(st["gAl"], st["gAl"][i] + wsum * st["dt"][i], [i])
                ln_a = wsum * (self.bufs["A2"][self.head(c)] * M.f32(LN2))
            else:  # acc_dt holds sum_n w A2 = sum_n w A log2(e)
                ln_a = st["acc_dt"][i] * M.f32(LN2)
            self.store("gdt", ln_a + gb * u, bi, l, t, i, c)
            gu = gb * st["dt"][i]
            y = st["acc_y"][i]
            if sig.has_D:
                D = self.bufs["D"][c]
                gu = gu + gy * D
                y = y + D * u
                T.buffer_store(st["gD"], st["gD"][i] + gy * u, [i])
            self.store("gu", gu, bi, l, t, i, c)
            if sig.has_z:
                z, sg = st["z"][i], st["sig"][i]
                # silu'(z) = s (1 + z (1 - s)), s = sigmoid(z)
                dsilu = sg * (M.f32(1.0) + z * (M.f32(1.0) - sg))
                self.store("gz", st["go"][i] * y * dsilu, bi, l, t, i, c)

        lanes.each(body)

    def group_sums(self, lanes, st, bi, l, blk):
        """Grouped B/C: this step's per-lane terms summed over the block's lanes, one partial
        per block.  TIR does not vectorise a reduction over lanes, so W states at a time go
        through a transposing tree of pairwise adds (`_hadd`, W vectors -> one vector of their
        W sums); states left over (and odd-width tail blocks) are summed with scalar adds."""
        W = getattr(lanes, "width", 1)
        vec = VECTOR_SUMS and W in (4, 8, 16) and lanes.count % W == 0 and self.N >= W
        nv = self.N - self.N % W if vec else 0
        for name, groups in (("B", self.bsig.b_groups), ("C", self.bsig.c_groups)):
            if groups == 0:
                continue
            tmp, out = st[f"t{name}"], self.bufs[f"g{name}"]
            for n0 in range(0, nv, W):
                _transpose_sum(tmp, st["red"], n0, lanes.count, W,
                               lambda v: T.buffer_store(out, v, [bi, l, blk, _ramp(n0, W)]))
            for n in range(nv, self.N):
                T.buffer_store(out, _tree_sum([tmp[n, i] for i in range(lanes.count)]),
                               [bi, l, blk, n])

    def write_task(self, lanes, st, bi, chan):
        """The gradients a task accumulated over the whole sequence."""
        sig = self.bsig
        if sig.has_D:
            lanes.each(lambda i: T.buffer_store(self.bufs["gD"], st["gD"][i], [bi, chan(i)]))
        if sig.heads:
            lanes.each(lambda i: T.buffer_store(self.bufs["gA"], st["gAl"][i], [bi, chan(i)]))

        def body(n, i):
            c = chan(i)
            T.buffer_store(self.bufs["gh0"], st["carry"][n, i], [bi, c, n])
            if not sig.heads:
                T.buffer_store(self.bufs["gA"], st["gA"][n, i], [bi, n, c])
            if sig.b_groups == 0:
                T.buffer_store(self.bufs["gB"], st["gB"][n, i], [bi, n, c])
            if sig.c_groups == 0:
                T.buffer_store(self.bufs["gC"], st["gC"][n, i], [bi, n, c])

        self.states(lanes, body)

    def run_block(self, lanes, bi, chan, tiled):
        """A task: the whole backward for one batch row and one block of channels."""
        st = self.alloc(lanes)
        blk = M.bind(self.blocks.index(chan(0)))
        self.blk = blk
        with T.If(self.bufs["recompute"] != 0):
            with T.Then():
                self.sweep(lanes, st, bi, chan)
        glast = self.bufs["glast"]
        zero = M.f32(0.0)

        def init(n, i):
            T.buffer_store(st["carry"], glast[bi, chan(i), n], [n, i])
            for nm in ("gA", "gB", "gC"):
                if nm in st:
                    T.buffer_store(st[nm], zero, [n, i])

        self.states(lanes, init)
        lanes.each(lambda i: T.buffer_store(st["gD"], zero, [i]))
        if self.bsig.heads:
            lanes.each(lambda i: T.buffer_store(st["gAl"], zero, [i]))
        with T.serial(tir.IntImm(IDX, 0), self.nc) as cc:
            ci = M.bind(self.nc - tir.IntImm(IDX, 1) - cc)
            s, kc = self.chunk_span(ci)
            z = ("z",) if self.bsig.has_z else ()
            self.stage(lanes, bi, chan, s, kc, ("u", "delta", "gout") + z, out=False)
            self.recompute_chunk(lanes, st, bi, chan, ci, s, kc)
            self.reverse_chunk(lanes, st, bi, chan, s, kc, blk)
            self.stage(lanes, bi, chan, s, kc, ("gu", "gdt") + (("gz",) if z else ()), out=True)
        self.write_task(lanes, st, bi, chan)


def _ramp(base: int, lanes: int):
    return tir.Ramp(tir.IntImm("int32", base), tir.IntImm("int32", 1), lanes)


def _hadd(a, b, W: int):
    """Pairwise sums of adjacent lanes of a, then of b: (a0+a1, a2+a3, ..., b0+b1, ...)."""
    even = [tir.IntImm("int32", 2 * k) for k in range(W)]
    odd = [tir.IntImm("int32", 2 * k + 1) for k in range(W)]
    return tir.Shuffle([a, b], even) + tir.Shuffle([a, b], odd)


def _transpose_sum(tmp, red, n0: int, count: int, W: int, store):
    """store(v) with v[j] = sum_i tmp[n0 + j, i] (W states, count lanes): rows of W lanes are
    added vertically, then log2(W) levels of `_hadd` leave row j's total in lane j.  Levels go
    through the (W, W) buffer `red` (registers after LLVM's SROA) rather than nested
    expressions, which would repeat every operand twice per level."""
    for j in range(W):
        row = _tree_sum([tmp[n0 + j, _ramp(k * W, W)] for k in range(count // W)])
        T.buffer_store(red, row, [j, _ramp(0, W)])
    m = W
    while m > 1:
        for k in range(m // 2):
            T.buffer_store(red, _hadd(red[2 * k, _ramp(0, W)], red[2 * k + 1, _ramp(0, W)], W),
                           [k, _ramp(0, W)])
        m //= 2
    store(red[0, _ramp(0, W)])


def _tree_sum(terms):
    while len(terms) > 1:
        pairs = [terms[k] + terms[k + 1] for k in range(0, len(terms) - 1, 2)]
        terms = pairs + ([terms[-1]] if len(terms) % 2 else [])
    return terms[0]


def build_selective_scan_bwd(sig: BwdSignature, config: Config):
    """The PrimFunc `selective_scan_bwd` for one signature and (CPU) schedule."""
    b = tir.Var("b", IDX)
    L = tir.Var("L", IDX)
    KP = tir.Var("KP", IDX)  # K + 1 rows of hs: the chunk's steps and its checkpoint
    nc = tir.Var("nc", IDX)
    blk = blocks(sig, config)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FUNC_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": FUNC_NAME})
            bufs = _declare_args(sig, blk, b, L, KP, nc)
            alg = _BackwardAlgorithm(sig, config, bufs, b, L, KP, nc)
            fw._cpu_schedule(alg, config, b, blk.G, blk.dg)
    return ib.get()
