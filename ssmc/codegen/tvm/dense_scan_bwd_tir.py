"""TIR builder for the backward of the dense / block-diagonal scan (dense_scan_tir.py), CPU.

Forward h_t = M_t h_{t-1} + u_t (M_t = A0 + sum_k x_t^k A_k, or given).  With q_t = dLoss/dh_t
the adjoint runs backward in t:

    g_t = q_t + M_{t+1}^T g_{t+1}          (g_L = 0; du_t = g_t)
    P_t = g_t h_{t-1}^T                     (per block; h_{-1} = initial state or 0)
    dM_t = P_t:  dA_t = P_t (given),  dA0 += P_t,  dA_k += x_t^k P_t,  dx_t^k = <A_k, P_t>
    d initial_state = M_0^T g_0

States: the forward's output *is* the trajectory h (b, L, N), and autograd keeps it anyway
(the read-out y = W_C h saves it for dW_C), so the kernel reads h_{t-1} from it: no
checkpoints, no recomputation, nothing stored beyond what the forward already returns.
M_t is rebuilt per step from x_t and A_k with the forward's emitter (never (b, L, nb, bs, bs)).

One task per batch row, the blocks in a loop inside each step: dx_t sums <A_k, P_t> over the
blocks, and summing them in the task keeps that reduction deterministic without (b, L, nb, K)
partials in memory.  dA_k and dA0 are accumulated per row, serially in t, into (b, ...)
partials that the wrapper sums over the batch (fixed order: deterministic).  The parameter
terms (dA0, dA_k, dx) are reduced per chunk of CHUNK steps (reduce_chunk): vectors along k
(A_k passed a second time as (nb, bs*bs, K)), the chunk's P entries broadcast.  The price of
row tasks: a batch of one runs on one core (the forward splits rows by block as well).
Given transitions (expm) get dA_t = P_t written per step: the size of the A they came with.
b and L are symbolic; K, nb, bs and the flags are compiled in (DenseSignature).
"""

from __future__ import annotations

import tvm.tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm import tirmath as M
from ssmc.codegen.tvm.dense_scan_tir import (F32, IDX, DenseSignature, buf, emit_build,
                                             emit_matvec, rows)
from ssmc.codegen.tvm.grc_tir import vector_width

FUNC_NAME = "dense_scan_backward"
# steps whose parameter terms are reduced together (reduce_chunk)
CHUNK = 8


def arg_names(sig: DenseSignature) -> list[str]:
    """Inputs, then outputs.  Blocks are row-major here (the forward takes them transposed)."""
    names = ["A"] if sig.given else ["x", "Ak", "AkE", "A0"]
    names += ["gh", "h"]
    if sig.has_h0:
        names.append("h0")
    names.append("du")
    names += ["dA"] if sig.given else ["dx", "dAk", "dA0"]
    if sig.has_h0:
        names.append("dh0")
    return names


def step(a, sig: DenseSignature, bi, t, tt, g, gc, hp, mt, pc):
    """One adjoint step: g_t, du_t, P_t (into the chunk's row tt, or dA_t when given) and
    gc = M_t^T g_t for the step before."""
    K, nb, bs = sig.K, sig.nb, sig.bs
    N, bb = nb * bs, bs * bs
    vm, vh = vector_width(bb, sig.lanes), vector_width(bs, sig.lanes)
    zero = M.f32(0.0)

    def start(i):
        T.buffer_store(g, a["gh"][bi, t, i] + gc[i], [i])
        T.buffer_store(a["du"], g[i], [bi, t, i])
        T.buffer_store(gc, zero, [i])
    rows(N, vh, start)
    # h_{t-1}: the trajectory's previous row, at t = 0 the initial state
    with T.If(t > 0):
        with T.Then():
            rows(N, vh, lambda i: T.buffer_store(hp, a["h"][bi, t - 1, i], [i]))
        with T.Else():
            rows(N, vh, lambda i: T.buffer_store(
                hp, a["h0"][bi, i] if sig.has_h0 else zero, [i]))
    with T.serial(0, nb) as n:
        base = n * bb if not sig.given else 0
        with T.serial(0, bs) as i:
            gi = g[n * bs + i]

            def outer(j):
                if sig.given:
                    T.buffer_store(pc, gi * hp[n * bs + j], [i * bs + j])
                else:
                    T.buffer_store(pc, gi * hp[n * bs + j], [tt, base + i * bs + j])
            rows(bs, vh, outer)
        if sig.given:
            def m_at(e):
                return a["A"][bi, t, n, e]
            rows(bb, vm, lambda e: T.buffer_store(a["dA"], pc[e], [bi, t, n, e]))
        else:
            emit_build(mt, a["A0"], a["Ak"], lambda k: a["x"][bi, t, k], n, K, bb, vm)

            def m_at(e):
                return mt[e]
        # gc[j] += sum_i M_t[i, j] g_t[i]: the forward's mat-vec on the untransposed block
        emit_matvec(gc, g, m_at, bs, vh, off=n * bs)


def reduce_chunk(a, sig: DenseSignature, bi, t_end, pc, dxc):
    """The parameter terms of a chunk's CHUNK steps at once (rows of steps before the sequence
    hold P = 0):  dA0 += sum P,  dA_k += x^k P,  dx^k = <A_k, P>.  Each dA_k / A_k vector is
    loaded once per chunk, not per step, and the chunk's dx rows and x rows are invariant in
    the entry loop (LLVM keeps them in registers): the per-step rank-1 update was bound by
    moving the (K, bs^2) accumulator through the cache."""
    K, nb, bs = sig.K, sig.nb, sig.bs
    bb = bs * bs
    vm, vk = vector_width(bb, sig.lanes), vector_width(K, sig.lanes)
    zero = M.f32(0.0)

    def t_of(tt):  # the step of row tt, clamped into the sequence (its P row is 0 there)
        return tir.Max(t_end - 1 - tt, tir.IntImm(IDX, 0))

    with T.serial(0, CHUNK) as tt:
        rows(K, vk, lambda k: T.buffer_store(dxc, zero, [tt, k]))
    with T.serial(0, nb) as n:
        def dA0(e):
            acc = a["dA0"][bi, n, e]
            for tt in range(CHUNK):
                acc = acc + pc[tt, n * bb + e]
            T.buffer_store(a["dA0"], acc, [bi, n, e])
        rows(bb, vm, dA0)
        with T.serial(0, K // vk) as kc:
            with T.serial(0, bb) as e:
                with T.vectorized(0, vk) as v:
                    k = kc * vk + v
                    acc = a["dAk"][bi, n, e, k]
                    for tt in range(CHUNK):
                        pe = pc[tt, n * bb + e]
                        acc = acc + pe * a["x"][bi, t_of(tt), k]
                        T.buffer_store(dxc, dxc[tt, k] + pe * a["AkE"][n, e, k], [tt, k])
                    T.buffer_store(a["dAk"], acc, [bi, n, e, k])
    with T.serial(0, CHUNK) as tt:
        with T.If(t_end - 1 - tt >= 0):
            with T.Then():
                rows(K, vk, lambda k: T.buffer_store(a["dx"], dxc[tt, k],
                                                     [bi, t_end - 1 - tt, k]))


def build_dense_scan_backward(sig: DenseSignature):
    b = tir.Var("b", IDX)
    L = tir.Var("L", IDX)
    K, nb, bs = sig.K, sig.nb, sig.bs
    N, bb = nb * bs, bs * bs
    vm = vector_width(bb, sig.lanes)  # lanes along a block's entries
    vh = vector_width(bs, sig.lanes)  # lanes along a block's rows
    vk = vector_width(K, sig.lanes)  # lanes along the driving channels
    zero = M.f32(0.0)

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FUNC_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": FUNC_NAME})
            shapes = {"A": (b, L, nb, bb), "x": (b, L, K), "Ak": (K, nb, bb),
                      "AkE": (nb, bb, K), "A0": (nb, bb), "gh": (b, L, N), "h": (b, L, N),
                      "h0": (b, N), "du": (b, L, N), "dA": (b, L, nb, bb), "dx": (b, L, K),
                      "dAk": (b, nb, bb, K), "dA0": (b, nb, bb), "dh0": (b, N)}
            a = {nm: T.arg(nm, buf(shapes[nm])) for nm in arg_names(sig)}
            with T.parallel(0, b) as bi:
                g = T.alloc_buffer((N,), F32, scope="global")  # g_t
                gc = T.alloc_buffer((N,), F32, scope="global")  # M_{t+1}^T g_{t+1}
                hp = T.alloc_buffer((N,), F32, scope="global")  # h_{t-1}
                mt = T.alloc_buffer((bb,), F32, scope="global")
                # P of the chunk's steps (built), of one block (given)
                pc = T.alloc_buffer((CHUNK, nb * bb) if not sig.given else (bb,), F32,
                                    scope="global")
                dxc = None if sig.given else T.alloc_buffer((CHUNK, K), F32, scope="global")
                rows(N, vh, lambda i: T.buffer_store(gc, zero, [i]))
                if not sig.given:
                    with T.serial(0, nb) as n:
                        rows(bb, vm, lambda e: T.buffer_store(a["dA0"], zero, [bi, n, e]))
                        with T.serial(0, bb) as e:
                            rows(K, vk, lambda k: T.buffer_store(a["dAk"], zero, [bi, n, e, k]))
                with T.serial(0, (L + CHUNK - 1) // CHUNK) as c:
                    t_end = L - c * CHUNK  # the chunk: steps t_end - 1 down to t_end - CHUNK
                    with T.serial(0, CHUNK) as tt:
                        t = T.Bind(t_end - 1 - tt)
                        with T.If(t >= 0):
                            with T.Then():
                                step(a, sig, bi, t, tt, g, gc, hp, mt, pc)
                            if not sig.given:  # a step before the sequence adds nothing
                                with T.Else():
                                    rows(nb * bb, vm,
                                         lambda e: T.buffer_store(pc, zero, [tt, e]))
                    if not sig.given:
                        reduce_chunk(a, sig, bi, t_end, pc, dxc)
                if sig.has_h0:
                    rows(N, vh, lambda i: T.buffer_store(a["dh0"], gc[i], [bi, i]))
    return ib.get()
