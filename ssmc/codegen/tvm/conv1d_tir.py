"""TIR builder for the depthwise causal conv1d (+ SiLU) in front of a Mamba scan, channels-last.

    y[b, t, c] = act(bias[c] + sum_j w[c, j] x[b, t - (k - 1) + j, c])     (zeros before t = 0)

Each task owns a block of channels over a chunk of `l_chunk` steps (parallel over batch x
chunks x channel blocks: the conv has no recurrence, so chunks of the sequence run in
parallel too); every statement is vectorised over the block's channels as in the scan kernels
(selective_scan_tir.CpuLanes).  The weight is passed transposed (k, c) so that one tap of a
block is one vector load.  The reads before t = 0 are clamped to row 0 and masked, so the loop
has no branch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import tvm.tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm import tirmath as M
from ssmc.codegen.tvm.selective_scan_tir import CpuLanes

F32 = "float32"
IDX = "int64"
FUNC_NAME = "causal_conv1d"
ACTIVATIONS = (None, "silu")


@dataclass(frozen=True)
class ConvSignature:
    channels: int
    width: int          # k, the kernel size
    has_bias: bool = True
    activation: str | None = "silu"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}")


@dataclass(frozen=True)
class ConvConfig:
    channel_block: int = 16
    vector_width: int = 8
    l_chunk: int = 256

    def as_dict(self) -> dict:
        return asdict(self)


def arg_names(sig: ConvSignature) -> list[str]:
    return ["x", "w"] + (["bias"] if sig.has_bias else []) + ["out"]


def build_causal_conv1d(sig: ConvSignature, cfg: ConvConfig):
    b = tir.Var("b", IDX)
    L = tir.Var("L", IDX)
    c, k = sig.channels, sig.width
    cb = min(cfg.channel_block, c)
    vw = min(cfg.vector_width, cb)
    cb = (cb // vw) * vw
    nfull, rem = c // cb, c % cb
    nblk = nfull + (1 if rem else 0)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FUNC_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": FUNC_NAME})
            bufs = {
                "x": T.arg("x", T.buffer((b, L, c), F32, align=4)),
                "w": T.arg("w", T.buffer((k, c), F32, align=4)),
            }
            if sig.has_bias:
                bufs["bias"] = T.arg("bias", T.buffer((c,), F32, align=4))
            bufs["out"] = T.arg("out", T.buffer((b, L, c), F32, align=4))
            nchunks = (L + (cfg.l_chunk - 1)) // cfg.l_chunk
            with T.parallel(0, b * nchunks * nblk) as task:
                bi = M.bind(task // (nchunks * nblk))
                r = M.bind(task % (nchunks * nblk))
                l0 = M.bind(r // nblk * cfg.l_chunk)
                j = M.bind(r % nblk)
                c0 = M.bind(j * cb)
                l1 = M.bind(tir.Min(l0 + cfg.l_chunk, L))

                # the first k - 1 steps of the sequence need the zero padding; the rest of
                # the loop runs without any select or clamp
                pad_end = M.bind(tir.Min(tir.Max(l0, tir.IntImm(IDX, k - 1)), l1))

                def block(lanes):
                    with T.serial(l0, pad_end) as t:
                        lanes.each(lambda i: _output(sig, bufs, bi, t, c0 + i, padded=True))
                    with T.serial(pad_end, l1) as t:
                        lanes.each(lambda i: _output(sig, bufs, bi, t, c0 + i, padded=False))

                if not rem:
                    block(CpuLanes(cb, vw))
                elif not nfull:
                    block(CpuLanes(rem, rem))
                else:
                    with T.If(j < nfull):
                        with T.Then():
                            block(CpuLanes(cb, vw))
                        with T.Else():
                            block(CpuLanes(rem, rem))
    return ib.get()


def _output(sig: ConvSignature, bufs, bi, t, ch, padded: bool):
    k = sig.width
    x, w = bufs["x"], bufs["w"]
    acc = bufs["bias"][ch] if sig.has_bias else M.f32(0.0)
    zero = tir.IntImm(IDX, 0)
    for tap in range(k):
        back = k - 1 - tap
        src = t - back
        if back == 0 or not padded:
            acc = acc + w[tap, ch] * x[bi, src, ch]
            continue
        # Before the sequence start the input is zero: read row 0 instead, then drop the term.
        # The load is bound (a scratch store) *outside* the Select on purpose: inside it, TVM's
        # simplifier uses the condition src >= 0 to drop the clamp, LLVM then hoists the
        # load out of the select, and t < k - 1 reads before x (a segfault when x starts a
        # page).
        xv = M.bind(x[bi, tir.Max(src, zero), ch])
        acc = acc + tir.Select(src >= zero, w[tap, ch] * xv, M.f32(0.0))
    y = M.bind(acc)
    if sig.activation == "silu":
        y = M.silu(y)
    T.buffer_store(bufs["out"], y, [bi, t, ch])
