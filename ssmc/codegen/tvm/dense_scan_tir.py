"""TIR builder for the dense / block-diagonal selective scan (MODELS.md section 4), CPU.

    h_t = A(x_t) h_{t-1} + u_t,   A(x) = A0 + sum_k x^k A_k   (blockwise: nb blocks of bs x bs)

u = W_B x is a GEMM the wrapper does beforehand (parallel over time), and so is the read-out
y = W_C h + D x afterwards; this kernel is only the sequential part.  A(x_t) is built on the fly
per step and block from A_k and x_t, never materialised as (b, L, nb, bs, bs):

* one task per (batch row, block), the sequence loop serial inside;
* per step, M = A0 + sum_k x_t^k A_k over the bs * bs entries of the block as vector FMAs
  (A_k of one block is K * bs^2 floats: L1-resident), kept transposed (M^T[j, i]) so that
* h_new[i] = u_t[i] + sum_j M^T[j, i] h[j] runs as bs vector FMAs along i.

Variant "given" (the expm transition, or any A computed elsewhere): the wrapper passes
A (b, L, nb, bs, bs) transposed per block and the kernel only does the mat-vec.
b and L are symbolic; K, nb, bs and the flags are compiled in.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm.tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm import tirmath as M
from ssmc.codegen.tvm.grc_tir import vector_width

F32 = "float32"
IDX = "int64"
FUNC_NAME = "dense_scan"
KG = 16  # driving channels per unrolled group


@dataclass(frozen=True)
class DenseSignature:
    K: int  # driving channels (d_inner); unused when given
    nb: int  # blocks
    bs: int  # block size
    given: bool = False  # A passed per step (b, L, nb, bs, bs) instead of built from A_k
    has_h0: bool = False
    lanes: int = 8

    def __post_init__(self):
        for name in ("K", "nb", "bs", "lanes"):
            if getattr(self, name) < 1:
                raise ValueError(f"DenseSignature.{name} must be >= 1")


def arg_names(sig: DenseSignature) -> list[str]:
    names = ["At"] if sig.given else ["x", "AkT", "A0T"]
    names.append("u")
    if sig.has_h0:
        names.append("h0")
    names.append("out")
    return names


def buf(shape):
    return T.buffer(shape, F32, align=4)  # torch views may start anywhere


def rows(width: int, vec: int, fn):
    """fn(i) for i < width as vector statements of `vec` lanes (vec divides width)."""
    with T.serial(0, width // vec) as c:
        with T.vectorized(0, vec) as v:
            fn(c * vec + v)


def emit_build(mt, A0, Ak, x_at, n, K: int, bb: int, vm: int):
    """mt <- A0[n] + sum_k x_at(k) Ak[k, n] over the bb entries of block n, as vector FMAs
    along the entries (any entry order: the forward passes the blocks transposed, the
    backward as they are).  K in groups of KG terms per expression: one load / store of the
    block per group instead of per k."""
    rows(bb, vm, lambda e: T.buffer_store(mt, A0[n, e], [e]))

    def group(k0, size):
        def add(e):
            acc = mt[e]
            for kk in range(size):
                acc = acc + x_at(k0 + kk) * Ak[k0 + kk, n, e]
            T.buffer_store(mt, acc, [e])
        rows(bb, vm, add)

    if K // KG:
        with T.serial(0, K // KG) as g:
            group(g * KG, KG)
    if K % KG:
        group(K // KG * KG, K % KG)


def emit_matvec(dst, vec, m_at, bs: int, vh: int, off=0):
    """dst[off + i] += sum_j m_at(j * bs + i) * vec[off + j]: bs vector FMAs along i, vec[j]
    broadcast.  With m_at a transposed block this is M vec (the forward), with the block as it
    is M^T vec (the adjoint)."""
    with T.unroll(0, bs) as j:
        rows(bs, vh, lambda i: T.buffer_store(
            dst, dst[off + i] + m_at(j * bs + i) * vec[off + j], [off + i]))


def build_dense_scan(sig: DenseSignature):
    b = tir.Var("b", IDX)
    L = tir.Var("L", IDX)
    K, nb, bs = sig.K, sig.nb, sig.bs
    N = nb * bs
    bb = bs * bs
    vm = vector_width(bb, sig.lanes)  # lanes for building the block
    vh = vector_width(bs, sig.lanes)  # lanes for the mat-vec

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FUNC_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": FUNC_NAME})
            shapes = {"At": (b, L, nb, bb), "x": (b, L, K), "AkT": (K, nb, bb), "A0T": (nb, bb),
                      "u": (b, L, N), "h0": (b, N), "out": (b, L, N)}
            a = {nm: T.arg(nm, buf(shapes[nm])) for nm in arg_names(sig)}
            with T.parallel(0, b * nb) as task:
                bi = T.Bind(task // nb)
                n = T.Bind(task % nb)
                h = T.alloc_buffer((bs,), F32, scope="global")
                hn = T.alloc_buffer((bs,), F32, scope="global")
                mt = T.alloc_buffer((bb,), F32, scope="global")
                with T.vectorized(0, bs) as i:
                    T.buffer_store(h, a["h0"][bi, n * bs + i] if sig.has_h0 else M.f32(0.0),
                                   [i])
                with T.serial(0, L) as t:
                    if sig.given:
                        def m_at(e):
                            return a["At"][bi, t, n, e]
                    else:
                        emit_build(mt, a["A0T"], a["AkT"], lambda k: a["x"][bi, t, k], n, K,
                                   bb, vm)

                        def m_at(e):
                            return mt[e]
                    rows(bs, vh, lambda i: T.buffer_store(hn, a["u"][bi, t, n * bs + i], [i]))
                    emit_matvec(hn, h, m_at, bs, vh)

                    def keep(i):
                        T.buffer_store(h, hn[i], [i])
                        T.buffer_store(a["out"], hn[i], [bi, t, n * bs + i])
                    rows(bs, vh, keep)
    return ib.get()
