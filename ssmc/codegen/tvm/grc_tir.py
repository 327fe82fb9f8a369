"""TIR builders for the elementwise halves of the GRC cell (MODELS.md section 7), CPU.

The GRC cell's two matmuls run as GEMMs (torch / BLAS, batched over every pair of a tree
level); what is left between and after them is elementwise and memory-bound, and torch spends
one pass over memory per op on it.  These kernels do each part in one pass:

* ``gelu_``: h <- GELU(h) in place (exact erf form, as F.gelu): after the first GEMM (which
  adds b1 itself, addmm);
* ``grc_epilogue``: out = LayerNorm(sigmoid(f1) l + sigmoid(f2) r + sigmoid(i) p) from
  g = [f1; f2; i; p] (P, 4d) (the second GEMM's output, b2 added) and lr = [l; r] (P, 2d),
  one row per task, the LayerNorm's mean and variance in two passes over a row kept on the
  stack.

Rows (P) are symbolic: one build serves every level of every tree; d is compiled in.
`parallel`: rows over TVM's thread pool, or (default) serial on the calling thread.  The
default is serial because these kernels run between BLAS GEMMs, and TVM's pool spinning after
each call competes with the GEMMs' threads: one A/B run on 2 loaded cores (RIR L 4096, d 256)
gave 1.04 s serial against 1.26 s parallel with 1 torch thread, 1.93 s against 2.67 s with 2;
the serial kernels are a few percent of the forward.  SSMC_GRC_PARALLEL=1 builds parallel ones.
Math: tirmath's exp (2e-7 relative); erf by Abramowitz-Stegun 7.1.26 (1.5e-7 absolute), so
GELU is within 1e-7 |x| of torch's.
"""

from __future__ import annotations

import math

import tvm.tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm import tirmath as M

F32 = "float32"
IDX = "int64"
EPILOGUE = "grc_epilogue"
GELU = "gelu_inplace"

# erf(x) = 1 - t (a1 + t (a2 + ...)) e^{-x^2}, t = 1 / (1 + p x), x >= 0 (A&S 7.1.26)
ERF_P = 0.3275911
ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def vector_width(d: int, lanes: int) -> int:
    """The widest power of two <= lanes dividing d (rows need no tail loop)."""
    w = lanes
    while w > 1 and d % w:
        w //= 2
    return max(w, 1)


def _buf(shape):
    return T.buffer(shape, F32, align=4)  # torch views may start anywhere


def _sigmoid(x):
    return M.f32(1.0) / (M.f32(1.0) + M.exp(-x))


def gelu_expr(x):
    """0.5 x (1 + erf(x / sqrt 2)); for x < 0, 1 + erf(z) = erfc(|z|) is formed directly so that
    the tail keeps its relative accuracy."""
    xb = M.bind(x)
    z = M.bind(tir.Max(xb, -xb) * M.f32(1.0 / math.sqrt(2.0)))
    t = M.bind(M.f32(1.0) / (M.f32(1.0) + M.f32(ERF_P) * z))
    erfc = M.bind(t * M.horner(t, ERF_A) * M.exp(-(z * z)))
    one_plus_erf = tir.Select(xb >= M.f32(0.0), M.f32(2.0) - erfc, erfc)
    return M.f32(0.5) * xb * one_plus_erf


def _rows(P, parallel: bool):
    return T.parallel(0, P) if parallel else T.serial(0, P)


def build_gelu(width: int, lanes: int, parallel: bool = False):
    """h (P, width) <- GELU(h), rows in parallel (or serial), `lanes`-wide vectors along a row."""
    P = tir.Var("P", IDX)
    vw = vector_width(width, lanes)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(GELU)
            T.func_attr({"tirx.noalias": True, "global_symbol": GELU})
            h = T.arg("h", _buf((P, width)))
            with _rows(P, parallel) as p:
                with T.serial(0, width // vw) as j:
                    with T.vectorized(0, vw) as v:
                        c = j * vw + v
                        T.buffer_store(h, gelu_expr(h[p, c]), [p, c])
    return ib.get()


def build_grc_epilogue(d: int, eps: float, lanes: int, parallel: bool = False):
    """out (P, d) = LayerNorm(sigmoid(f1) l + sigmoid(f2) r + sigmoid(i) p) * w + b."""
    P = tir.Var("P", IDX)
    vw = vector_width(d, lanes)
    nv = d // vw
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(EPILOGUE)
            T.func_attr({"tirx.noalias": True, "global_symbol": EPILOGUE})
            g = T.arg("g", _buf((P, 4 * d)))
            lr = T.arg("lr", _buf((P, 2 * d)))
            w = T.arg("w", _buf((d,)))
            bias = T.arg("b", _buf((d,)))
            out = T.arg("out", _buf((P, d)))
            with _rows(P, parallel) as p:
                # "global" scope inside the task = the stack (see selective_scan_tir)
                mix = T.alloc_buffer((d,), F32, scope="global")
                acc = T.alloc_buffer((vw,), F32, scope="global")
                tot = T.alloc_buffer((2,), F32, scope="global")

                def row_sum(slot, term):
                    with T.vectorized(0, vw) as v:
                        T.buffer_store(acc, M.f32(0.0), [v])
                    with T.serial(0, nv) as j:
                        with T.vectorized(0, vw) as v:
                            T.buffer_store(acc, acc[v] + term(j * vw + v), [v])
                    T.buffer_store(tot, M.f32(0.0), [slot])
                    with T.serial(0, vw) as v:
                        T.buffer_store(tot, tot[slot] + acc[v], [slot])

                with T.serial(0, nv) as j:
                    with T.vectorized(0, vw) as v:
                        c = j * vw + v
                        m = (_sigmoid(g[p, c]) * lr[p, c] + _sigmoid(g[p, d + c]) * lr[p, d + c]
                             + _sigmoid(g[p, 2 * d + c]) * g[p, 3 * d + c])
                        T.buffer_store(mix, m, [c])
                row_sum(0, lambda c: mix[c])
                mean = T.Bind(tot[0] * M.f32(1.0 / d))
                row_sum(1, lambda c: (mix[c] - mean) * (mix[c] - mean))
                rstd = T.Bind(M.f32(1.0) / T.sqrt(tot[1] * M.f32(1.0 / d) + M.f32(eps)))
                with T.serial(0, nv) as j:
                    with T.vectorized(0, vw) as v:
                        c = j * vw + v
                        T.buffer_store(out, (mix[c] - mean) * rstd * w[c] + bias[c], [p, c])
    return ib.get()
