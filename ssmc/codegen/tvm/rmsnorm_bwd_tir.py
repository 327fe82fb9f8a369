"""TIR builder for the backward of the rmsnorm node (rmsnorm_tir.py's forward), for the CPU.

Per (row, group), with g = x (or g = x * silu(z): the gated norm), S = D / groups and
r = 1 / sqrt(mean_group(g^2) + eps) recomputed from the inputs (nothing is saved by the forward):

    a  = gy * w
    dg = r * a - g * r^3 * mean_group(a * g)
    dx = dg                       (ungated)
    dx = dg * silu(z),  dz = dg * x * silu'(z)     (gated; silu' = s (1 + z (1 - s)), s = sigmoid)
    dw = sum over rows of gy * g * r

Rows (of (rows, D) views: any row stride, the last axis contiguous) are cut into `chunks`
contiguous ranges that run in parallel; a chunk's rows run serially, each in two passes: the
statistics (sum g^2 and sum a g per group, in `vector_width`-lane partial sums), then dx (dz).
dw is accumulated per chunk into a task-local row and written to its own row of the
(chunks, D) output `dw_part`, which the wrapper sums in torch (fixed order: deterministic, no
atomics).  `chunks` is the first extent of dw_part (a runtime size: the wrapper picks it from
the row count).  With the gate, silu(z) and silu'(z) are computed once per row in the first pass
and kept in task-local rows for the second.  The signature is the forward's NormSignature
(`parallel`: chunks in parallel or serially).
"""

from __future__ import annotations

import tvm.tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm import tirmath as M
from ssmc.codegen.tvm.rmsnorm_tir import F32, IDX, NormSignature, row_arg

FUNC_NAME = "rmsnorm_bwd"


def arg_names(sig: NormSignature) -> list[str]:
    g = sig.gated
    return (["x"] + (["z"] if g else []) + ["gy", "weight", "dx"] + (["dz"] if g else [])
            + ["dw_part"])


def build(sig: NormSignature):
    rows = tir.Var("rows", IDX)
    chunks = tir.Var("chunks", IDX)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FUNC_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": FUNC_NAME})
            x = row_arg("x", rows, sig.D)
            z = row_arg("z", rows, sig.D) if sig.gated else None
            gy = row_arg("gy", rows, sig.D)
            w = T.arg("weight", T.buffer((sig.D,), F32, align=4))
            dx = row_arg("dx", rows, sig.D, strided=False)
            dz = row_arg("dz", rows, sig.D, strided=False) if sig.gated else None
            dwp = row_arg("dw_part", chunks, sig.D, strided=False)
            emit(sig, x, z, gy, w, dx, dz, dwp, rows, chunks)
    return ib.get()


def _lanes(n: int, W: int, base, body):
    """body(c) over c = base .. base + n - 1: W-lane vectors, then a scalar tail."""
    full = n // W
    if full:
        with T.serial(0, full) as i:
            with T.vectorized(0, W) as v:
                body(base + i * W + v)
    for t in range(full * W, n):
        body(base + t)


def emit(sig: NormSignature, x, z, gy, w, dx, dz, dwp, rows, chunks):
    D, G = sig.D, sig.groups
    S = D // G                       # elements per group
    W = max(1, min(sig.vector_width, S))
    full, tail = S // W, S % W
    zero = M.f32(0.0)
    loop = T.parallel if sig.parallel else T.serial
    per = T.Bind((rows + chunks - 1) // chunks)  # rows per chunk
    with loop(0, chunks) as ch:
        start = T.Bind(ch * per)
        n = T.Bind(tir.Max(tir.Min(per, rows - start), tir.IntImm(IDX, 0)))
        dw = T.alloc_buffer((D,), F32, scope="global")
        acc_gg = T.alloc_buffer((W,), F32, scope="global")
        acc_ag = T.alloc_buffer((W,), F32, scope="global")
        sz = T.alloc_buffer((D,), F32, scope="global") if sig.gated else None   # silu(z)
        dsz = T.alloc_buffer((D,), F32, scope="global") if sig.gated else None  # silu'(z)
        _lanes(D, max(1, min(sig.vector_width, D)), 0, lambda c: T.buffer_store(dw, zero, [c]))
        with T.serial(0, n) as i:
            r = T.Bind(start + i)

            def val(c):
                return x[r, c] * sz[c] if sig.gated else x[r, c]

            def stats(c, v):
                """Pass 1 at column c: the gate (stored), and g^2, a g into lane v (None: the
                values are returned for the scalar tail)."""
                if sig.gated:
                    zc = T.Bind(z[r, c])
                    e = T.Bind(M.exp(-zc))
                    s = T.Bind(M.f32(1.0) / (M.f32(1.0) + e))
                    T.buffer_store(sz, zc * s, [c])
                    T.buffer_store(dsz, s * (M.f32(1.0) + zc * (e * s)), [c])  # 1 - s = e s
                g = T.Bind(val(c))
                ag = gy[r, c] * w[c] * g
                if v is None:
                    return g * g, ag
                T.buffer_store(acc_gg, acc_gg[v] + g * g, [v])
                T.buffer_store(acc_ag, acc_ag[v] + ag, [v])
                return None

            for grp in range(G):
                base = grp * S
                with T.vectorized(0, W) as v:
                    T.buffer_store(acc_gg, zero, [v])
                    T.buffer_store(acc_ag, zero, [v])
                if full:
                    with T.serial(0, full) as j:
                        with T.vectorized(0, W) as v:
                            stats(base + j * W + v, v)
                tot_gg, tot_ag = acc_gg[0], acc_ag[0]
                for v in range(1, W):
                    tot_gg, tot_ag = tot_gg + acc_gg[v], tot_ag + acc_ag[v]
                if tail:  # the scalar tail: bound one by one (its loads follow its stores)
                    tot_gg, tot_ag = T.Bind(tot_gg), T.Bind(tot_ag)
                    for t in range(tail):
                        gg, ag = stats(base + full * W + t, None)
                        tot_gg, tot_ag = T.Bind(tot_gg + gg), T.Bind(tot_ag + ag)
                inv = T.Bind(M.f32(1.0) / T.sqrt(tot_gg / M.f32(S) + M.f32(sig.eps)))
                coef = T.Bind(inv * inv * inv * tot_ag / M.f32(S))

                def grads(c):
                    g = T.Bind(val(c))
                    gyc = T.Bind(gy[r, c])
                    dg = T.Bind(inv * (gyc * w[c]) - g * coef)
                    if sig.gated:
                        T.buffer_store(dx, dg * sz[c], [r, c])
                        T.buffer_store(dz, dg * x[r, c] * dsz[c], [r, c])
                    else:
                        T.buffer_store(dx, dg, [r, c])
                    T.buffer_store(dw, dw[c] + gyc * g * inv, [c])

                _lanes(S, W, base, grads)
        _lanes(D, max(1, min(sig.vector_width, D)), 0,
               lambda c: T.buffer_store(dwp, dw[c], [ch, c]))
