"""TIR builder for the PLRNN latent recurrence (MODELS.md section 8), optionally fused with
the causal HRF convolution of its trajectory, on the CPU.

    z_t  = A z_{t-1} + W relu(z_{t-1}) + C s_t + h0
    zc_t = sum_{j < K} hrf[:, j] z_{t-j}                  (fused, when K > 0; z_{<1} = 0)

Oracle: ssmc.semantics.recurrence.plrnn_ref and causal_conv_direct.  The recurrence is
nonlinear, so each trajectory is sequential in t; the parallelism is across trajectories and
within a step across the latent units:

* tasks of `traj_block` trajectories run in parallel; inside a task the trajectories of the
  block are interleaved statement by statement (independent dependency chains: the ILP);
* every statement is a vector over the M latent units (`T.vectorized`), and the M x M
  mat-vec is M multiply-adds of a column of W (the wrapper passes W^T, off-diagonal) with a
  broadcast relu(z_k); the input drive C s_t + h0 is K_in more (s_t broadcast, C^T rows).

With the convolution fused, the trajectory is written with K - 1 leading zero rows (buffer
`zp` of L + K - 1 rows), so every output step reads exactly K earlier rows: a fixed-length
loop, no boundary cases.  b and L are symbolic; M, K and the flags are compiled in.
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
FUNC_NAME = "plrnn"
LOCAL_SCOPE = "global"  # stack buffers (TVM 0.27 turns "local" into workspace calls on CPU)


@dataclass(frozen=True)
class PlrnnSignature:
    """M latent units, K_in external inputs; K taps of the fused convolution (0: none);
    has_z0: an initial state (b, M) is passed (else zeros)."""

    M: int
    K_in: int
    K: int = 0
    has_z0: bool = False

    def __post_init__(self):
        if self.M < 1 or self.K_in < 1 or self.K < 0:
            raise ValueError(f"PlrnnSignature: M, K_in >= 1 and K >= 0, got M={self.M}, "
                             f"K_in={self.K_in}, K={self.K}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PlrnnConfig:
    """traj_block: trajectories one task interleaves; vector_width: lanes of one vector
    statement over the latent units; accumulators: partial sums of the mat-vec and of the
    convolution (shorter dependency chains; the sum order changes within rounding);
    threads: 0 = one parallel iteration per task."""

    traj_block: int = 4
    vector_width: int = 8
    accumulators: int = 1  # 2 and 4 measured slower (M = 16, 32 taps, AVX2): not latency-bound
    threads: int = 0

    def __post_init__(self):
        if min(self.traj_block, self.vector_width, self.accumulators) < 1 or self.threads < 0:
            raise ValueError("PlrnnConfig: traj_block, vector_width, accumulators >= 1 and "
                             "threads >= 0")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "PlrnnConfig":
        return dataclasses.replace(self, **changes)


def arg_names(sig: PlrnnSignature) -> list[str]:
    names = ["s", "CT", "h0", "A", "WT"]
    if sig.has_z0:
        names.append("z0")
    if sig.K:
        names += ["H", "zp", "zc"]
    else:
        names.append("z")
    return names


class _Task:
    """One block of `nb` trajectories (rows bi(j) of the batch) over the whole sequence."""

    def __init__(self, sig, cfg, bufs, L, rows):
        self.sig, self.cfg, self.bufs, self.L, self.rows = sig, cfg, bufs, L, rows
        self.nb = len(rows)
        Mn = sig.M
        self.width = cfg.vector_width if Mn % cfg.vector_width == 0 else Mn
        self.z = T.alloc_buffer((self.nb, Mn), F32, scope=LOCAL_SCOPE)
        self.nacc = cfg.accumulators
        self.acc = T.alloc_buffer((self.nb, self.nacc, Mn), F32, scope=LOCAL_SCOPE)

    def each(self, fn):
        """fn(m) for every latent unit, as vector statements."""
        groups = self.sig.M // self.width
        if groups == 1:
            with T.vectorized(0, self.width) as m:
                fn(m)
            return
        with T.serial(0, groups, unroll=True) as g:
            with T.vectorized(0, self.width) as w:
                fn(g * self.width + w)

    def accumulate(self, n: int, term, init):
        """acc <- init(j, m) + sum_{k < n} term(k, j, m) for every trajectory j, in
        `nacc` partial sums (k = nacc ko + a goes to partial a); returns result(j, m)."""
        acc, nacc = self.acc, self.nacc
        for j in range(self.nb):
            def start(m, j=j):
                T.buffer_store(acc, init(j, m), [j, 0, m])
                for a in range(1, nacc):
                    T.buffer_store(acc, M.f32(0.0), [j, a, m])
            self.each(start)

        def add(k, a):
            for j in range(self.nb):
                self.each(lambda m, j=j: T.buffer_store(acc, acc[j, a, m] + term(k, j, m),
                                                        [j, a, m]))
        if n // nacc:
            with T.serial(0, n // nacc, unroll=True) as ko:
                for a in range(nacc):
                    add(ko * nacc + a, a)
        for k in range(n - n % nacc, n):
            add(k, k % nacc)

        def result(j, m):
            value = acc[j, 0, m]
            for a in range(1, nacc):
                value = value + acc[j, a, m]
            return value
        return result

    def run(self):
        sig, bufs = self.sig, self.bufs
        K = sig.K
        for j, bi in enumerate(self.rows):
            if sig.has_z0:
                self.each(lambda m, j=j, bi=bi: T.buffer_store(self.z, bufs["z0"][bi, m], [j, m]))
            else:
                self.each(lambda m, j=j: T.buffer_store(self.z, M.f32(0.0), [j, m]))
            if K > 1:
                with T.serial(0, K - 1) as r:
                    self.each(lambda m, bi=bi, r=r: T.buffer_store(bufs["zp"], M.f32(0.0),
                                                                   [bi, r, m]))
        with T.serial(0, self.L) as t:
            self.step(t)
            if K:
                self.convolve(t)

    def step(self, t):
        bufs, z = self.bufs, self.z
        A, WT = bufs["A"], bufs["WT"]
        s, CT, h0 = bufs["s"], bufs["CT"], bufs["h0"]

        def drive(j, m):
            value = h0[m]
            for i in range(self.sig.K_in):
                value = value + CT[i, m] * s[self.rows[j], t, i]
            return value + A[m] * z[j, m]  # the term on the dependency chain last

        total = self.accumulate(
            self.sig.M, lambda k, j, m: WT[k, m] * tir.Max(z[j, k], M.f32(0.0)), drive)
        for j, bi in enumerate(self.rows):
            def store(m, j=j, bi=bi):
                T.buffer_store(z, total(j, m), [j, m])
                if self.sig.K:
                    T.buffer_store(bufs["zp"], z[j, m], [bi, t + (self.sig.K - 1), m])
                else:
                    T.buffer_store(bufs["z"], z[j, m], [bi, t, m])
            self.each(store)

    def convolve(self, t):
        """zc_t = sum_i H[i] zp[t + K - 1 - i] (zp row t + K - 1 is z_t)."""
        bufs, K = self.bufs, self.sig.K
        H, zp = bufs["H"], bufs["zp"]
        total = self.accumulate(
            K, lambda i, j, m: H[i, m] * zp[self.rows[j], t + (K - 1) - i, m],
            lambda j, m: M.f32(0.0))
        for j, bi in enumerate(self.rows):
            self.each(lambda m, j=j, bi=bi: T.buffer_store(bufs["zc"], total(j, m), [bi, t, m]))


class _BackwardTask(_Task):
    """The adjoint recurrence, backward in t, for one block of trajectories:

        G_t = gz_t + A * G_{t+1} + [z_t > 0] * (W_o^T G_{t+1})        G_L = 0

    (G_t = dLoss/dz_t through every later step; gz the gradient of the output z).  Same
    structure as the forward: the mat-vec is M multiply-adds of a row of W_o with a broadcast
    G_{t+1, k}; the relu derivative masks its result instead of its input."""

    def run(self):
        for j in range(self.nb):
            self.each(lambda m, j=j: T.buffer_store(self.z, M.f32(0.0), [j, m]))
        with T.serial(0, self.L) as r:
            self.step(self.L - 1 - r)

    def step(self, t):
        bufs, g, acc = self.bufs, self.z, self.acc  # g: G_{t+1}, then G_t
        A, Wo, gz, z = bufs["A"], bufs["Wo"], bufs["gz"], bufs["z"]
        matvec = self.accumulate(self.sig.M, lambda k, j, m: Wo[k, m] * g[j, k],
                                 lambda j, m: M.f32(0.0))
        for j, bi in enumerate(self.rows):
            def finish(m, j=j, bi=bi):
                masked = tir.Select(z[bi, t, m] > M.f32(0.0), matvec(j, m), M.f32(0.0))
                T.buffer_store(acc, gz[bi, t, m] + A[m] * g[j, m] + masked, [j, 0, m])
                T.buffer_store(g, acc[j, 0, m], [j, m])  # (not the expression: it reads g)
                T.buffer_store(bufs["G"], acc[j, 0, m], [bi, t, m])
            self.each(finish)


BACKWARD_NAME = "plrnn_backward"


def build_plrnn_backward(sig: PlrnnSignature, cfg: PlrnnConfig):
    """The PrimFunc `plrnn_backward`(gz, z, A, Wo, G): the adjoints G (b, L, M) of the latent
    trajectory (parameter gradients are reductions of G: the wrapper's matmuls)."""
    b, L = tir.Var("b", IDX), tir.Var("L", IDX)
    Mn, TB = sig.M, cfg.traj_block
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(BACKWARD_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": BACKWARD_NAME})
            shapes = {"gz": (b, L, Mn), "z": (b, L, Mn), "A": (Mn,), "Wo": (Mn, Mn),
                      "G": (b, L, Mn)}
            bufs = {nm: T.arg(nm, T.buffer(shp, F32, align=4)) for nm, shp in shapes.items()}
            tasks = (b + (TB - 1)) // TB
            with T.parallel(0, tasks) as k:
                rows = [M.bind(tir.Min(k * TB + j, b - 1)) for j in range(TB)]
                _BackwardTask(sig, cfg, bufs, L, rows).run()
    return ib.get()


def build_plrnn(sig: PlrnnSignature, cfg: PlrnnConfig):
    """The PrimFunc `plrnn` for one signature and schedule."""
    b, L = tir.Var("b", IDX), tir.Var("L", IDX)
    Mn, K, TB = sig.M, sig.K, cfg.traj_block
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FUNC_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": FUNC_NAME})

            def buf(shape):
                return T.buffer(shape, F32, align=4)

            shapes = {"s": (b, L, sig.K_in), "CT": (sig.K_in, Mn), "h0": (Mn,), "A": (Mn,), "WT": (Mn, Mn), "z0": (b, Mn),
                      "H": (K, Mn), "zp": (b, L + (K - 1), Mn), "zc": (b, L, Mn),
                      "z": (b, L, Mn)}
            bufs = {nm: T.arg(nm, buf(shapes[nm])) for nm in arg_names(sig)}
            tasks = (b + (TB - 1)) // TB

            def task(k):
                # rows past the batch repeat its last row: same values, same thread
                rows = [M.bind(tir.Min(k * TB + j, b - 1)) for j in range(TB)]
                _Task(sig, cfg, bufs, L, rows).run()

            M.for_tasks(tasks, cfg.threads, task)
    return ib.get()
