"""TIR builders for S4D's Vandermonde kernel and its transpose (MODELS.md section 1), CPU.

Forward (the convolution kernel of the FFT path, W = scale C Bbar folded on the host):

    K[l] = Re sum_n W_n Abar_n^l

Backward (the transposed Vandermonde: what the kernel-generation step's gradients need, for an
output gradient g (d, L) real):

    V0_n = sum_l g_l Abar_n^l,        V1_n = sum_l l g_l Abar_n^(l-1) = sum_l (l+1) g_(l+1) Abar_n^l

(ssmc.runtime.vandermonde turns V0, V1 into the gradients of Abar, Bbar, C).  Neither builds
the (d, N, L) power tensor.

**Chunked powers.**  L is cut into M chunks of T steps.  A chunk starts from q_m = Abar^(mT),
kept in float64 and advanced once per chunk, q <- q Abar^T (Abar^T: from the host, in float64
by the polar form), and walks its T steps in the kernel's dtype by repeated multiplication,
p <- p Abar: one complex multiply per (mode, step) instead of an exp, cos and sin.  The float64
chain's rounding (~M 1e-16) is negligible, the fp32 one accumulates over T steps only, never
over L.  Tasks: blocks of `vw` channels (serial, or in parallel); inside a task the chunks in
order, the modes in groups of GROUP (their powers and sums sit in registers: stack buffers with
constant indices, which LLVM promotes) and the chunk's steps inner, each statement a `vw`-lane
vector over the block's channels.  The per-mode operands come transposed (n, d), so a block's
channels are one vector load; K and its gradient stay (d, L), time-contiguous as the FFT wants
them, and a chunk's (T, vw) tile of either is transposed through a stack buffer (transposing
(d, L) on the host cost 28 ms of 92 at d 1024, L 4096).  The backward adds each chunk's sums
(T terms, in the kernel's dtype) into float64 totals and writes those (n, d).

L is symbolic (M = ceil(L / T)); the last chunk's tile stores and loads are guarded; d, n, T, the dtype (float32 or float64: float64
gradchecks run the kernel itself) and real / complex are compiled in.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm.tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm.grc_tir import vector_width

IDX = "int64"
FWD_NAME = "s4d_vandermonde"
BWD_NAME = "s4d_vandermonde_bwd"
GROUP = 4  # modes whose power chains run interleaved (hides the multiply's latency)
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class VandermondeSignature:
    d: int
    n: int
    complex_state: bool = True
    chunk: int = 64  # T: steps walked by repeated multiplication from a float64 start power
    dtype: str = "float32"
    lanes: int = 16  # fp32 lanes of the host's vectors (halved for float64)
    parallel: bool = False  # tasks over TVM's thread pool, or serial on the calling thread

    def __post_init__(self):
        if self.d < 1 or self.n < 1 or self.chunk < 1 or self.lanes < 1:
            raise ValueError("VandermondeSignature: d, n, chunk and lanes must be >= 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"VandermondeSignature: dtype must be one of {DTYPES}, "
                             f"got {self.dtype!r}")

    @property
    def vw(self) -> int:
        lanes = self.lanes if self.dtype == "float32" else max(1, self.lanes // 2)
        return vector_width(self.d, lanes)


def fwd_arg_names(sig: VandermondeSignature) -> list[str]:
    """W (scale folded, float64), Abar^T (float64), Abar (the kernel's dtype), K (d, L)."""
    if sig.complex_state:
        return ["w_re", "w_im", "at_re", "at_im", "a_re", "a_im", "out"]
    return ["w_re", "at_re", "a_re", "out"]


def bwd_arg_names(sig: VandermondeSignature) -> list[str]:
    """Abar^T (float64), Abar, g (d, L), then the float64 sums (n, d)."""
    ins = ["at_re", "at_im", "a_re", "a_im"] if sig.complex_state else ["at_re", "a_re"]
    outs = ["s0_re", "s0_im", "s1_re", "s1_im"] if sig.complex_state else ["s0_re", "s1_re"]
    return ins + ["g"] + outs


F64 = "float64"
FLOAT64_ARGS = {"w_re", "w_im", "at_re", "at_im", "s0_re", "s0_im", "s1_re", "s1_im"}


def _groups(n: int):
    """(first mode, size) of each mode group after the n // GROUP full ones."""
    full = n // GROUP
    return full, [(full * GROUP, n - full * GROUP)] if n % GROUP else []


def _each_group(n, group):
    full, rest = _groups(n)
    if full:
        with T.serial(0, full) as gi:
            group(gi * GROUP, GROUP)
    for base, size in rest:
        group(base, size)


class _Modes:
    """A group's complex powers p (re, im) in (GROUP, vw) stack buffers of the kernel's dtype,
    and every mode's float64 chunk-start power q (n, vw); the steps p <- p Abar, q <- q Abar^T."""

    def __init__(self, sig, a, n, vw):
        self.sig, self.a, self.cplx = sig, a, sig.complex_state
        dt = sig.dtype

        def stack(shape, dtype):
            return T.alloc_buffer(shape, dtype, scope="global")

        self.pr = stack((GROUP, vw), dt)
        self.pi = stack((GROUP, vw), dt) if self.cplx else None
        self.tmp = stack((GROUP, vw), dt) if self.cplx else None
        self.qr = stack((n, vw), F64)
        self.qi = stack((n, vw), F64) if self.cplx else None
        self.qtmp = stack((vw,), F64) if self.cplx else None

    def start(self, k, mode, c, v, w=None):
        """p_k <- q (times W's float64 parts `w` = (re, im) when given), in the kernel's dtype."""
        qr = self.qr[mode, v]
        qi = self.qi[mode, v] if self.cplx else None
        if w is not None:
            if self.cplx:
                qr, qi = w[0] * qr - w[1] * qi, w[0] * qi + w[1] * qr
            else:
                qr = w[0] * qr
        T.buffer_store(self.pr, tir.Cast(self.sig.dtype, qr), [k, v])
        if self.cplx:
            T.buffer_store(self.pi, tir.Cast(self.sig.dtype, qi), [k, v])

    def advance_q(self, mode, c, v):
        ar = self.a["at_re"][mode, c]
        qr = self.qr[mode, v]
        if not self.cplx:
            T.buffer_store(self.qr, ar * qr, [mode, v])
            return
        ai, qi = self.a["at_im"][mode, c], self.qi[mode, v]
        T.buffer_store(self.qtmp, ar * qr - ai * qi, [v])
        T.buffer_store(self.qi, ar * qi + ai * qr, [mode, v])
        T.buffer_store(self.qr, self.qtmp[v], [mode, v])

    def step(self, k, mode, c, v):
        ar = self.a["a_re"][mode, c]
        pr = self.pr[k, v]
        if not self.cplx:
            T.buffer_store(self.pr, ar * pr, [k, v])
            return
        ai, pi = self.a["a_im"][mode, c], self.pi[k, v]
        # the new real part waits in tmp until the imaginary part has read the old one
        T.buffer_store(self.tmp, ar * pr - ai * pi, [k, v])
        T.buffer_store(self.pi, ar * pi + ai * pr, [k, v])
        T.buffer_store(self.pr, self.tmp[k, v], [k, v])


def _buf(shape, dtype):
    return T.buffer(shape, dtype, align=4)  # torch views may start anywhere


def _init_q(P, n, vw):
    with T.serial(0, n) as mode:
        with T.vectorized(0, vw) as v:
            T.buffer_store(P.qr, tir.FloatImm(F64, 1.0), [mode, v])
            if P.cplx:
                T.buffer_store(P.qi, tir.FloatImm(F64, 0.0), [mode, v])


def build_vandermonde_fwd(sig: VandermondeSignature):
    """out[c, mT + j] = Re sum_n W[n, c] q_m[n, c] Abar[n, c]^j, q_m = Abar^(mT) (float64)."""
    L = tir.Var("L", IDX)
    d, n, Tc, dt = sig.d, sig.n, sig.chunk, sig.dtype
    M = tir.floordiv(L + Tc - 1, Tc)
    vw = sig.vw
    nblk = d // vw
    zero = tir.FloatImm(dt, 0.0)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FWD_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": FWD_NAME})
            shapes = {"w_re": (n, d), "w_im": (n, d), "at_re": (n, d), "at_im": (n, d),
                      "a_re": (n, d), "a_im": (n, d), "out": (d, L)}
            a = {nm: T.arg(nm, _buf(shapes[nm], F64 if nm in FLOAT64_ARGS else dt))
                 for nm in fwd_arg_names(sig)}
            out = a["out"]
            with (T.parallel if sig.parallel else T.serial)(0, nblk) as task:
                c0 = T.Bind(tir.Cast(IDX, task) * vw)
                P = _Modes(sig, a, n, vw)
                _init_q(P, n, vw)
                tile = T.alloc_buffer((Tc, vw), dt, scope="global")  # a chunk of K, (j, channel)
                with T.serial(0, M) as m:
                    with T.serial(0, Tc) as j:
                        with T.vectorized(0, vw) as v:
                            T.buffer_store(tile, zero, [j, v])

                    def group(base, size):
                        with T.vectorized(0, vw) as v:
                            c = c0 + v
                            for k in range(size):
                                w = (a["w_re"][base + k, c],
                                     a["w_im"][base + k, c] if P.cplx else None)
                                P.start(k, base + k, c, v, w)
                                P.advance_q(base + k, c, v)
                        with T.serial(0, Tc) as j:
                            with T.vectorized(0, vw) as v:
                                c = c0 + v
                                s = P.pr[0, v]
                                for k in range(1, size):
                                    s = s + P.pr[k, v]
                                T.buffer_store(tile, tile[j, v] + s, [j, v])
                                for k in range(size):
                                    P.step(k, base + k, c, v)

                    _each_group(n, group)
                    # the tile out, transposed: K (d, L) as the FFT reads it, no host copy
                    l0 = m * Tc
                    with T.serial(0, vw) as v:
                        with T.If(l0 + Tc <= L):
                            with T.Then():
                                with T.vectorized(0, Tc) as j:
                                    T.buffer_store(out, tile[j, v], [c0 + v, l0 + j])
                            with T.Else():  # the last, short chunk
                                with T.serial(0, Tc) as j:
                                    with T.If(l0 + j < L):
                                        with T.Then():
                                            T.buffer_store(out, tile[j, v], [c0 + v, l0 + j])
    return ib.get()


def build_vandermonde_bwd(sig: VandermondeSignature):
    """s0[n, c] = sum_l g[c, l] Abar^l, s1[n, c] = sum_l (l+1) g[c, l+1] Abar^l (float64
    totals of per-chunk sums)."""
    L = tir.Var("L", IDX)
    d, n, Tc, dt = sig.d, sig.n, sig.chunk, sig.dtype
    M = tir.floordiv(L + Tc - 1, Tc)
    vw = sig.vw
    nblk = d // vw
    cplx = sig.complex_state
    zero = tir.FloatImm(dt, 0.0)
    keys = ("0r", "1r", "0i", "1i") if cplx else ("0r", "1r")
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(BWD_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": BWD_NAME})
            shapes = {"at_re": (n, d), "at_im": (n, d), "a_re": (n, d), "a_im": (n, d),
                      "g": (d, L), **{f"s{k[0]}_{'re' if k[1] == 'r' else 'im'}": (n, d)
                                      for k in ("0r", "0i", "1r", "1i")}}
            a = {nm: T.arg(nm, _buf(shapes[nm], F64 if nm in FLOAT64_ARGS else dt))
                 for nm in bwd_arg_names(sig)}
            with (T.parallel if sig.parallel else T.serial)(0, nblk) as task:
                c0 = T.Bind(tir.Cast(IDX, task) * vw)
                P = _Modes(sig, a, n, vw)
                _init_q(P, n, vw)
                # a chunk's sums [0] g p and [1] (l+1) g_(l+1) p (re, im), and their totals
                acc = {key: T.alloc_buffer((GROUP, vw), dt, scope="global") for key in keys}
                tot = {key: T.alloc_buffer((n, vw), F64, scope="global") for key in keys}
                h = T.alloc_buffer((vw,), dt, scope="global")
                with T.serial(0, n) as mode:
                    with T.vectorized(0, vw) as v:
                        for buf in tot.values():
                            T.buffer_store(buf, tir.FloatImm(F64, 0.0), [mode, v])
                # a chunk's g_l, l = mT + j for j <= T (g_(l+1) too), zero past L: (j, channel)
                gt = T.alloc_buffer((Tc + 1, vw), dt, scope="global")
                g = a["g"]
                with T.serial(0, M) as m:
                    l0 = m * Tc
                    with T.serial(0, vw) as v:
                        with T.If(l0 + Tc + 1 <= L):
                            with T.Then():
                                with T.vectorized(0, Tc) as j:
                                    T.buffer_store(gt, g[c0 + v, l0 + j], [j, v])
                                T.buffer_store(gt, g[c0 + v, l0 + Tc], [Tc, v])
                            with T.Else():  # the last chunk: reads stop at L
                                with T.serial(0, Tc + 1) as j:
                                    with T.If(l0 + j < L):
                                        with T.Then():
                                            T.buffer_store(gt, g[c0 + v, l0 + j], [j, v])
                                        with T.Else():
                                            T.buffer_store(gt, zero, [j, v])

                    def group(base, size):
                        with T.vectorized(0, vw) as v:
                            for k in range(size):
                                P.start(k, base + k, c0 + v, v)
                                P.advance_q(base + k, c0 + v, v)
                                for buf in acc.values():
                                    T.buffer_store(buf, zero, [k, v])
                        with T.serial(0, Tc) as j:
                            with T.vectorized(0, vw) as v:
                                c = c0 + v
                                gl = gt[j, v]
                                T.buffer_store(h, tir.Cast(dt, l0 + j + 1) * gt[j + 1, v], [v])
                                for k in range(size):
                                    for key, wgt in (("0", gl), ("1", h[v])):
                                        for part in ("r", "i") if cplx else ("r",):
                                            p = P.pr[k, v] if part == "r" else P.pi[k, v]
                                            buf = acc[key + part]
                                            T.buffer_store(buf, buf[k, v] + wgt * p, [k, v])
                                    P.step(k, base + k, c, v)
                        with T.vectorized(0, vw) as v:
                            for k in range(size):
                                for key in keys:
                                    T.buffer_store(tot[key], tot[key][base + k, v]
                                                   + tir.Cast(F64, acc[key][k, v]),
                                                   [base + k, v])

                    _each_group(n, group)
                with T.serial(0, n) as mode:
                    with T.vectorized(0, vw) as v:
                        for key in keys:
                            name = f"s{key[0]}_{'re' if key[1] == 'r' else 'im'}"
                            T.buffer_store(a[name], tot[key][mode, v], [mode, c0 + v])
    return ib.get()
