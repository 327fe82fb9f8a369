"""TIR builder for the depthwise causal conv1d node (+ optional SiLU), channels-last, for the CPU:
the sequence form (prefill) and the one-token step that updates a decoder's conv state in place.

The algorithm, per channel, is a sliding window of the last k inputs:

    win = initial state (or zeros);  for each step t:  win <- (win[1:], x_t)
    y_t = act(bias + sum_j w[j] win[j])

which is nn.Conv1d's cross-correlation with k - 1 zeros of left padding (mamba's
causal_conv1d_fn), and, with the window kept in the caller's (b, c, k) buffer, exactly
transformers' / causal-conv1d's `causal_conv1d_update` (the state holds the last k inputs, the
oldest first).  Tasks: batch x blocks of `channel_block` channels (config.threads > 0: cut
into that many parallel tasks of consecutive blocks); inside a task, vector statements over
the block (as the selective scan).  x's outer strides are symbolic, so the
x half of in_proj's output (a strided view) is read in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm.tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm import selective_scan_tir as _scan
from ssmc.codegen.tvm import tirmath as M
from ssmc.codegen.tvm.config import Config
from ssmc.codegen.tvm.selective_scan_tir import _unrolled

F32 = "float32"
IDX = "int64"
FUNC_NAME = "causal_conv1d"
ACTIVATIONS = ("identity", "silu")


@dataclass(frozen=True)
class ConvSignature:
    """c: channels, k: kernel width; step: one token (x, out (b, c)), state (b, c, k) updated
    in place; else a sequence (x, out (b, L, c), b and L symbolic) with an optional read-only
    initial state.  weight is nn.Conv1d's (c, 1, k)."""

    c: int
    k: int
    has_bias: bool = True
    activation: str = "silu"
    step: bool = False
    has_initial_state: bool = False

    def __post_init__(self):
        if self.c < 1 or self.k < 1:
            raise ValueError(f"ConvSignature: c and k must be >= 1, got c={self.c} k={self.k}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"ConvSignature: activation must be one of {ACTIVATIONS}, "
                             f"got {self.activation!r}")

    @property
    def reads_state(self) -> bool:
        return self.step or self.has_initial_state


def arg_names(sig: ConvSignature) -> list[str]:
    names = ["x", "weight"]
    if sig.has_bias:
        names.append("bias")
    if sig.reads_state:
        names.append("state")
    names.append("out")
    return names


def build(sig: ConvSignature, config: Config):
    b = tir.Var("b", IDX)
    L = tir.IntImm(IDX, 1) if sig.step else tir.Var("L", IDX)
    c, k = sig.c, sig.k
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FUNC_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": FUNC_NAME})
            # a step reads x (b, c) and writes out (b, c): the token axis is not there at all
            seq = (b, c) if sig.step else (b, L, c)
            c64 = tir.IntImm(IDX, c)
            sx = [tir.Var(f"x_s{i}", IDX) for i in range(len(seq) - 1)] + [tir.IntImm(IDX, 1)]
            shapes = {"weight": (c, 1, k), "bias": (c,), "state": (b, c, k), "out": seq}
            bufs = {}
            for nm in arg_names(sig):
                if nm == "x":
                    shape = (b, c64) if sig.step else (b, L, c64)
                    bufs[nm] = T.arg(nm, T.buffer(shape, F32, strides=sx, align=4))
                else:
                    bufs[nm] = T.arg(nm, T.buffer(shapes[nm], F32, align=4))
            emit(sig, config, bufs, b, L)
    return ib.get()


def _run_block(sig: ConvSignature, cfg: Config, bufs, lanes: _scan.CpuLanes, bi, c0, L):
    k = sig.k
    win = lanes.alloc((k, lanes.count))
    wt = lanes.alloc((k, lanes.count))

    def init(j, i):
        cc = c0 + i
        T.buffer_store(wt, bufs["weight"][cc, 0, j], [j, i])
        T.buffer_store(win, bufs["state"][bi, cc, j] if sig.reads_state else M.f32(0.0), [j, i])

    with _unrolled(k) as j:
        lanes.each(lambda i: init(j, i))

    def body(l, i):
        cc = c0 + i
        for j in range(k - 1):
            T.buffer_store(win, win[j + 1, i], [j, i])
        xv = M.bind(bufs["x"][bi, cc] if sig.step else bufs["x"][bi, l, cc])
        T.buffer_store(win, xv, [k - 1, i])
        acc = bufs["bias"][cc] if sig.has_bias else M.f32(0.0)
        for j in range(k):
            acc = acc + wt[j, i] * win[j, i]
        if sig.activation == "silu":
            acc = M.silu(M.bind(acc), cfg.exp_degree)
        T.buffer_store(bufs["out"], acc, [bi, cc] if sig.step else [bi, l, cc])

    with T.serial(0, L) as l:
        lanes.each(lambda i: body(l, i))

    if sig.step:
        def save(j, i):
            T.buffer_store(bufs["state"], win[j, i], [bi, c0 + i, j])

        with _unrolled(k) as j:
            lanes.each(lambda i: save(j, i))


def emit(sig: ConvSignature, cfg: Config, bufs, b, L):
    """The conv's statements in the current PrimFunc over `bufs` (named as arg_names(sig); x may
    be an index-mapped view)."""
    channel_tasks(sig.c, cfg, b, lambda lanes, bi, c0: _run_block(sig, cfg, bufs, lanes, bi, c0, L),
                  serial=sig.step and cfg.threads == 1)  # one token: no pool launch pays


def channel_tasks(c: int, cfg: Config, b, run_block, serial: bool = False):
    """Tasks over batch rows x blocks of `cfg.channel_block` channels (the last one partial),
    each `run_block(lanes, bi, c0)` with vector lanes over its block: in parallel, one task per
    block (cfg.threads <= 0: TVM's pool shares them out) or `threads` tasks of consecutive
    blocks, or serially.  Shared by the conv's forward and backward."""
    total, task = _scan.block_tasks(cfg, b, 1, c, run_block)
    M.for_tasks(total, cfg.threads, task, serial)
