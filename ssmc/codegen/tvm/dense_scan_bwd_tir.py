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
partials that the wrapper sums over the batch (fixed order: deterministic).  The dx / dA_k
statements are vectors along k (A_k passed a second time as (nb, bs*bs, K)), P_t entries
broadcast.  b and L are symbolic; K, nb, bs and the flags are compiled in (DenseSignature).
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
                p = T.alloc_buffer((bb,), F32, scope="global")  # P_t of one block
                mt = T.alloc_buffer((bb,), F32, scope="global")
                dxt = T.alloc_buffer((K,), F32, scope="global")
                rows(N, vh, lambda i: T.buffer_store(gc, zero, [i]))
                if not sig.given:
                    with T.serial(0, nb) as n:
                        rows(bb, vm, lambda e: T.buffer_store(a["dA0"], zero, [bi, n, e]))
                        with T.serial(0, bb) as e:
                            rows(K, vk, lambda k: T.buffer_store(a["dAk"], zero, [bi, n, e, k]))
                with T.serial(0, L) as r:
                    t = T.Bind(L - 1 - r)

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
                    if not sig.given:
                        rows(K, vk, lambda k: T.buffer_store(dxt, zero, [k]))
                    with T.serial(0, nb) as n:
                        with T.serial(0, bs) as i:
                            gi = g[n * bs + i]
                            rows(bs, vh, lambda j: T.buffer_store(p, gi * hp[n * bs + j],
                                                                  [i * bs + j]))
                        if sig.given:
                            def m_at(e):
                                return a["A"][bi, t, n, e]
                            rows(bb, vm, lambda e: T.buffer_store(a["dA"], p[e], [bi, t, n, e]))
                        else:
                            emit_build(mt, a["A0"], a["Ak"], lambda k: a["x"][bi, t, k], n, K,
                                       bb, vm)

                            def m_at(e):
                                return mt[e]
                            rows(bb, vm, lambda e: T.buffer_store(
                                a["dA0"], a["dA0"][bi, n, e] + p[e], [bi, n, e]))
                            with T.serial(0, bb) as e:
                                pe = p[e]

                                def reduce(k):
                                    T.buffer_store(dxt, dxt[k] + pe * a["AkE"][n, e, k], [k])
                                    T.buffer_store(a["dAk"], a["dAk"][bi, n, e, k]
                                                   + pe * a["x"][bi, t, k], [bi, n, e, k])
                                rows(K, vk, reduce)
                        # gc[j] += sum_i M_t[i, j] g_t[i]: the forward's mat-vec on the
                        # untransposed block
                        emit_matvec(gc, g, m_at, bs, vh, off=n * bs)
                    if not sig.given:
                        rows(K, vk, lambda k: T.buffer_store(a["dx"], dxt[k], [bi, t, k]))
                if sig.has_h0:
                    rows(N, vh, lambda i: T.buffer_store(a["dh0"], gc[i], [bi, i]))
    return ib.get()
