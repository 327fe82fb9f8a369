"""TIR builder for the backward of the depthwise causal conv1d (+ optional SiLU), channels-last,
for the CPU (the forward is causal_conv_tir.py).

With pre[t] = bias + sum_j w[j] x[t - (k - 1) + j] (zeros before t = 0), y = act(pre) and the
output's gradient gy, per channel:

    gpre[t] = gy[t] act'(pre[t])                 silu'(p) = s (1 + p (1 - s)), s = sigmoid(p)
    dx[s]   = sum_j w[j] gpre[s + (k - 1) - j]   (gpre = 0 beyond the sequence's end)
    dw[j]   = sum_t gpre[t] x[t - (k - 1) + j]   dbias = sum_t gpre[t]

One task per (batch row, block of `channel_block` channels), as the forward: it walks t from
the end of the sequence backwards with two sliding windows, the last k inputs (x[t - k + 1 ..
t], to recompute pre[t]: nothing of the forward is stored) and the last k gpre (gpre[t .. t +
k - 1], so dx[t] comes out in the same pass).  dw / dbias are summed over the task's steps in
registers and written as one partial per batch row ((b, k, c) and (b, c)); the torch wrapper
sums them over the batch (deterministic, no atomics).  x's and gy's outer strides are
symbolic (x is a slice of in_proj's output, read in place).  All fp32.  The steps t < k - 1,
whose window reaches before t = 0, run in a loop of their own that loads zeros, so the main
loop has no mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm.tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm import tirmath as M
from ssmc.codegen.tvm.causal_conv_tir import ACTIVATIONS, channel_tasks
from ssmc.codegen.tvm.config import Config
from ssmc.codegen.tvm.selective_scan_tir import _unrolled

F32 = "float32"
IDX = "int64"
FUNC_NAME = "causal_conv1d_bwd"


@dataclass(frozen=True)
class ConvBwdSignature:
    """c: channels, k: kernel width; has_bias: the forward had a bias (pre needs it, and dbias
    is a gradient); grad_x: write dx; grad_params: write the dw (and dbias) partials.  b and L
    are symbolic; weight is nn.Conv1d's (c, 1, k)."""

    c: int
    k: int
    has_bias: bool = True
    activation: str = "silu"
    grad_x: bool = True
    grad_params: bool = True

    def __post_init__(self):
        if self.c < 1 or self.k < 1:
            raise ValueError(f"ConvBwdSignature: c and k must be >= 1, got c={self.c} k={self.k}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"ConvBwdSignature: activation must be one of {ACTIVATIONS}, "
                             f"got {self.activation!r}")
        if not (self.grad_x or self.grad_params):
            raise ValueError("ConvBwdSignature: nothing to compute (grad_x and grad_params "
                             "both False)")

    @property
    def needs_pre(self) -> bool:
        """Whether pre is recomputed (the identity's derivative is 1: gpre = gy)."""
        return self.activation == "silu"

    @property
    def grad_bias(self) -> bool:
        return self.grad_params and self.has_bias


def arg_names(sig: ConvBwdSignature) -> list[str]:
    """x (b, L, c), gy (b, L, c), weight (c, 1, k)[, bias (c,)] in; dx (b, L, c), dw partials
    (b, k, c), dbias partials (b, c) out (each only when the signature computes it)."""
    names = ["x", "gy", "weight"]
    if sig.has_bias and sig.needs_pre:
        names.append("bias")
    if sig.grad_x:
        names.append("dx")
    if sig.grad_params:
        names.append("dw")
        if sig.has_bias:
            names.append("db")
    return names


def build(sig: ConvBwdSignature, config: Config):
    b = tir.Var("b", IDX)
    L = tir.Var("L", IDX)
    c, k = sig.c, sig.k
    c64 = tir.IntImm(IDX, c)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FUNC_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": FUNC_NAME})
            shapes = {"weight": (c, 1, k), "bias": (c,), "dx": (b, L, c64), "dw": (b, k, c64),
                      "db": (b, c64)}
            bufs = {}
            for nm in arg_names(sig):
                if nm in ("x", "gy"):  # strided views: symbolic outer strides
                    st = [tir.Var(f"{nm}_s{i}", IDX) for i in range(2)] + [tir.IntImm(IDX, 1)]
                    bufs[nm] = T.arg(nm, T.buffer((b, L, c64), F32, strides=st, align=4))
                else:
                    bufs[nm] = T.arg(nm, T.buffer(shapes[nm], F32, align=4))
            emit(sig, config, bufs, b, L)
    return ib.get()


def _run_block(sig: ConvBwdSignature, cfg: Config, bufs, lanes, bi, c0, L):
    k = sig.k
    zero = M.f32(0.0)
    xwin = lanes.alloc((k, lanes.count))  # x[t - k + 1 .. t]
    gwin = lanes.alloc((k, lanes.count))  # gpre[t .. t + k - 1]
    wt = lanes.alloc((k, lanes.count))
    acc_w = lanes.alloc((k, lanes.count)) if sig.grad_params else None
    acc_b = lanes.alloc((1, lanes.count)) if sig.grad_bias else None
    x, gy = bufs["x"], bufs["gy"]

    def init(j, i):
        cc = c0 + i
        T.buffer_store(wt, bufs["weight"][cc, 0, j], [j, i])
        T.buffer_store(gwin, zero, [j, i])
        if acc_w is not None:
            T.buffer_store(acc_w, zero, [j, i])

    with _unrolled(k) as j:
        lanes.each(lambda i: init(j, i))

    def init_x(i):
        # the window of step L: x[L - k + 1 .. L - 1] (slot k - 1, x[L], is shifted out first)
        cc = c0 + i
        for j in range(k - 1):
            src = L - (k - 1) + j
            clamped = tir.Max(src, tir.IntImm(IDX, 0))
            T.buffer_store(xwin, tir.Select(src >= 0, x[bi, clamped, cc], zero), [j, i])
        if acc_b is not None:
            T.buffer_store(acc_b, zero, [0, i])

    lanes.each(init_x)

    def step(t, i, head: bool):
        """Step t (head: t < k - 1, x before t = 0 is zero)."""
        cc = c0 + i
        for j in range(k - 1, 0, -1):
            T.buffer_store(xwin, xwin[j - 1, i], [j, i])
        T.buffer_store(xwin, zero if head else x[bi, t - (k - 1), cc], [0, i])
        g = gy[bi, t, cc]
        if sig.needs_pre:
            pre = bufs["bias"][cc] if sig.has_bias else None
            for j in range(k):
                term = wt[j, i] * xwin[j, i]
                pre = term if pre is None else pre + term
            p = M.bind(pre)
            s = M.bind(M.f32(1.0) / (M.f32(1.0) + M.exp(-p, cfg.exp_degree)))
            g = g * s * (M.f32(1.0) + p * (M.f32(1.0) - s))
        g = M.bind(g)
        for j in range(k - 1, 0, -1):
            T.buffer_store(gwin, gwin[j - 1, i], [j, i])
        T.buffer_store(gwin, g, [0, i])
        if sig.grad_x:
            dx = wt[k - 1, i] * g
            for m in range(1, k):
                dx = dx + wt[k - 1 - m, i] * gwin[m, i]
            T.buffer_store(bufs["dx"], dx, [bi, t, cc])
        if acc_w is not None:
            for j in range(k):
                T.buffer_store(acc_w, acc_w[j, i] + g * xwin[j, i], [j, i])
        if acc_b is not None:
            T.buffer_store(acc_b, acc_b[0, i] + g, [0, i])

    head = M.bind(tir.Min(L, tir.IntImm(IDX, k - 1)))  # steps t < k - 1
    with T.serial(0, L - head) as r:
        t = L - 1 - r
        lanes.each(lambda i: step(t, i, head=False))
    if k > 1:
        with T.serial(0, head) as r:
            t = head - 1 - r
            lanes.each(lambda i: step(t, i, head=True))

    if acc_w is not None:
        def save(j, i):
            T.buffer_store(bufs["dw"], acc_w[j, i], [bi, j, c0 + i])

        with _unrolled(k) as j:
            lanes.each(lambda i: save(j, i))
    if acc_b is not None:
        lanes.each(lambda i: T.buffer_store(bufs["db"], acc_b[0, i], [bi, c0 + i]))


def emit(sig: ConvBwdSignature, cfg: Config, bufs, b, L):
    """The backward's statements in the current PrimFunc over `bufs` (named as
    arg_names(sig)): the forward's tasks over batch x channel blocks."""
    channel_tasks(sig.c, cfg, b,
                  lambda lanes, bi, c0: _run_block(sig, cfg, bufs, lanes, bi, c0, L))
