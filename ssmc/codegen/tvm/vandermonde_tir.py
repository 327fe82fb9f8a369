"""TIR builders for S4D's Vandermonde kernel and its transpose (MODELS.md section 1), CPU.

Forward (the convolution kernel of the FFT path, W = scale C Bbar folded on the host):

    K[l] = Re sum_n W_n Abar_n^l

Backward (the transposed Vandermonde: what the kernel-generation step's gradients need, for an
output gradient g (d, L) real):

    V0_n = sum_l g_l Abar_n^l,        V1_n = sum_l l g_l Abar_n^(l-1) = sum_l (l+1) g_(l+1) Abar_n^l

(ssmc.runtime.vandermonde turns V0, V1 into the gradients of Abar, Bbar, C).  Neither builds
the (d, N, L) power tensor.

**Chunked powers.**  L is cut into M chunks of T steps.  Each chunk starts from a power the
host computed in float64 from log Abar (forward: W Abar^(mT), backward: Abar^(mT)) and walks
its T steps by repeated multiplication, p <- p Abar: one complex multiply per (mode, step)
instead of an exp, cos and sin, and the rounding of the products accumulates over T steps
only, never over L.  Tasks: (chunk, block of `vw` channels), serial or in parallel; inside a task the
modes go in groups of GROUP (their powers and sums sit in registers: stack buffers with
constant indices, which LLVM promotes), the chunk's steps inner, each statement a `vw`-lane
vector over the block's channels.  Operands come transposed, channels last ((n, d), (M, n, d),
(M T, d)), so a block's channels are one vector load.  The backward writes per-chunk partial
sums (M, n, d) that the host adds up (in float64): no cross-task reduction in the kernel, and
each partial is a sum of T terms only.

The output gradient comes zero-padded to R >= M T + 1 rows, so the shifted read g_(l+1) needs
no bounds test.  M and R are symbolic; d, n, T, the dtype (float32 or float64: float64
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
    return (["x_re", "x_im", "a_re", "a_im"] if sig.complex_state else ["x_re", "a_re"]) + ["out"]


def bwd_arg_names(sig: VandermondeSignature) -> list[str]:
    ins = ["q_re", "q_im", "a_re", "a_im"] if sig.complex_state else ["q_re", "a_re"]
    outs = ["s0_re", "s0_im", "s1_re", "s1_im"] if sig.complex_state else ["s0_re", "s1_re"]
    return ins + ["g"] + outs


def _groups(n: int):
    """(first mode, size) of each mode group: full groups of GROUP, then the rest."""
    full = n // GROUP
    return full, [(full * GROUP, n - full * GROUP)] if n % GROUP else []


class _Modes:
    """A group's complex powers p (re, im) in (GROUP, vw) stack buffers, and the step
    p <- p Abar for each of its modes."""

    def __init__(self, sig, a, vw):
        self.sig, self.a = sig, a
        self.pr = T.alloc_buffer((GROUP, vw), sig.dtype, scope="global")
        self.pi = T.alloc_buffer((GROUP, vw), sig.dtype, scope="global") \
            if sig.complex_state else None
        self.tmp = T.alloc_buffer((GROUP, vw), sig.dtype, scope="global") \
            if sig.complex_state else None

    def load(self, k, src_re, src_im, m, mode, c, v):
        T.buffer_store(self.pr, src_re[m, mode, c], [k, v])
        if self.sig.complex_state:
            T.buffer_store(self.pi, src_im[m, mode, c], [k, v])

    def step(self, k, mode, c, v):
        ar = self.a["a_re"][mode, c]
        pr = self.pr[k, v]
        if not self.sig.complex_state:
            T.buffer_store(self.pr, ar * pr, [k, v])
            return
        ai, pi = self.a["a_im"][mode, c], self.pi[k, v]
        # the new real part waits in tmp until the imaginary part has read the old one
        T.buffer_store(self.tmp, ar * pr - ai * pi, [k, v])
        T.buffer_store(self.pi, ar * pi + ai * pr, [k, v])
        T.buffer_store(self.pr, self.tmp[k, v], [k, v])


def _buf(shape, dtype):
    return T.buffer(shape, dtype, align=4)  # torch views may start anywhere


def build_vandermonde_fwd(sig: VandermondeSignature):
    """out[m T + j, c] = Re sum_n x[m, n, c] Abar[n, c]^j, x = W Abar^(mT) (scale folded in)."""
    M = tir.Var("M", IDX)
    d, n, Tc, dt = sig.d, sig.n, sig.chunk, sig.dtype
    vw = sig.vw
    nblk = d // vw
    zero = tir.FloatImm(dt, 0.0)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FWD_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": FWD_NAME})
            shapes = {"x_re": (M, n, d), "x_im": (M, n, d), "a_re": (n, d), "a_im": (n, d),
                      "out": (M, Tc, d)}
            a = {nm: T.arg(nm, _buf(shapes[nm], dt)) for nm in fwd_arg_names(sig)}
            with (T.parallel if sig.parallel else T.serial)(0, M * nblk) as task:
                m = T.Bind(task // nblk)
                c0 = T.Bind(tir.Cast(IDX, task % nblk) * vw)
                P = _Modes(sig, a, vw)
                with T.serial(0, Tc) as j:
                    with T.vectorized(0, vw) as v:
                        T.buffer_store(a["out"], zero, [m, j, c0 + v])

                def group(base, size):
                    with T.vectorized(0, vw) as v:
                        for k in range(size):
                            P.load(k, a["x_re"], a.get("x_im"), m, base + k, c0 + v, v)
                    with T.serial(0, Tc) as j:
                        with T.vectorized(0, vw) as v:
                            c = c0 + v
                            s = P.pr[0, v]
                            for k in range(1, size):
                                s = s + P.pr[k, v]
                            T.buffer_store(a["out"], a["out"][m, j, c] + s, [m, j, c])
                            for k in range(size):
                                P.step(k, base + k, c, v)

                full, rest = _groups(n)
                if full:
                    with T.serial(0, full) as gi:
                        group(gi * GROUP, GROUP)
                for base, size in rest:
                    group(base, size)
    return ib.get()


def build_vandermonde_bwd(sig: VandermondeSignature):
    """Per chunk m: s0[m, n, c] = sum_j g[mT+j, c] p_j, s1[m, n, c] = sum_j (mT+j+1)
    g[mT+j+1, c] p_j with p_j = q[m, n, c] Abar[n, c]^j (q = Abar^(mT))."""
    M = tir.Var("M", IDX)
    R = tir.Var("R", IDX)  # rows of the padded gradient: >= M T + 1 (the host's promise)
    d, n, Tc, dt = sig.d, sig.n, sig.chunk, sig.dtype
    vw = sig.vw
    nblk = d // vw
    cplx = sig.complex_state
    zero = tir.FloatImm(dt, 0.0)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(BWD_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": BWD_NAME})
            part = (M, n, d)
            shapes = {"q_re": part, "q_im": part, "a_re": (n, d), "a_im": (n, d), "g": (R, d),
                      "s0_re": part, "s0_im": part, "s1_re": part, "s1_im": part}
            a = {nm: T.arg(nm, _buf(shapes[nm], dt)) for nm in bwd_arg_names(sig)}
            with (T.parallel if sig.parallel else T.serial)(0, M * nblk) as task:
                m = T.Bind(task // nblk)
                c0 = T.Bind(tir.Cast(IDX, task % nblk) * vw)
                P = _Modes(sig, a, vw)
                # the sums: [0] g p and [1] (l+1) g_(l+1) p, real and imaginary parts
                acc = {key: T.alloc_buffer((GROUP, vw), dt, scope="global")
                       for key in (("0r", "1r", "0i", "1i") if cplx else ("0r", "1r"))}
                h = T.alloc_buffer((vw,), dt, scope="global")

                def group(base, size):
                    with T.vectorized(0, vw) as v:
                        for k in range(size):
                            P.load(k, a["q_re"], a.get("q_im"), m, base + k, c0 + v, v)
                            for buf in acc.values():
                                T.buffer_store(buf, zero, [k, v])
                    with T.serial(0, Tc) as j:
                        l = m * Tc + j
                        with T.vectorized(0, vw) as v:
                            c = c0 + v
                            gl = a["g"][l, c]
                            T.buffer_store(h, tir.Cast(dt, l + 1) * a["g"][l + 1, c], [v])
                            for k in range(size):
                                for key, w in (("0", gl), ("1", h[v])):
                                    T.buffer_store(acc[key + "r"],
                                                   acc[key + "r"][k, v] + w * P.pr[k, v], [k, v])
                                    if cplx:
                                        T.buffer_store(acc[key + "i"],
                                                       acc[key + "i"][k, v] + w * P.pi[k, v],
                                                       [k, v])
                                P.step(k, base + k, c, v)
                    with T.vectorized(0, vw) as v:
                        for k in range(size):
                            for key, buf in acc.items():
                                name = f"s{key[0]}_{'re' if key[1] == 'r' else 'im'}"
                                T.buffer_store(a[name], buf[k, v], [m, base + k, c0 + v])

                full, rest = _groups(n)
                if full:
                    with T.serial(0, full) as gi:
                        group(gi * GROUP, GROUP)
                for base, size in rest:
                    group(base, size)
    return ib.get()
