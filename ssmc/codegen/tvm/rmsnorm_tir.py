"""TIR builder for the rmsnorm node (the glue around every Mamba mixer), for the CPU:

    y = x / sqrt(mean(x^2) + eps) * weight                     (the block / final norm)
    y = g / sqrt(mean_group(g^2) + eps) * weight,  g = x * silu(z)   (Mamba-2's gated norm,
                                                                   `groups` slices normalised alone)

over rows of a (rows, D) view (any row stride; the last axis contiguous), the statistics in
fp32 with `vector_width`-lane partial sums.  Rows run in parallel (a prefill) or, for a single
decode token, serially.  eps, D, groups and the gate are compiled in (`NormSignature`).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm.tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm import tirmath as M

F32 = "float32"
IDX = "int64"
FUNC_NAME = "rmsnorm"


@dataclass(frozen=True)
class NormSignature:
    D: int
    eps: float
    groups: int = 1
    gated: bool = False       # multiply by silu(z) before normalising (norm_before_gate=False)
    parallel: bool = True     # rows in parallel (prefill) or serially (one decode token)
    vector_width: int = 8

    def __post_init__(self):
        if self.D < 1 or self.groups < 1 or self.D % self.groups:
            raise ValueError(f"NormSignature: groups {self.groups} must divide D={self.D}")
        if not self.eps > 0:
            raise ValueError(f"NormSignature: eps must be > 0, got {self.eps}")


@dataclass(frozen=True)
class NormConfig:
    """The tunable schedule of a prefill's norm (schedules/spaces/tvm_rmsnorm.yaml): the lanes
    of the partial sums, and whether rows run in parallel (a one-row call always runs
    serially).  Both only say how the signature's `vector_width` and `parallel` are set."""

    vector_width: int = 0  # 0 = the host's fp32 lanes
    parallel: bool = True

    def __post_init__(self):
        if self.vector_width < 0:
            raise ValueError(f"NormConfig.vector_width must be >= 0, got {self.vector_width}")

    def as_dict(self) -> dict:
        return {"vector_width": self.vector_width, "parallel": self.parallel}


def arg_names(sig: NormSignature) -> list[str]:
    return ["x"] + (["z"] if sig.gated else []) + ["weight", "out"]


def row_arg(name: str, rows, D: int, strided: bool = True):
    """A (rows, D) fp32 argument of the current PrimFunc: any row stride (the last axis
    contiguous: a slice of a wider tensor is read in place) or, strided=False, dense."""
    shape = (rows, tir.IntImm(IDX, D))
    if not strided:
        return T.arg(name, T.buffer(shape, F32, align=4))
    strides = [tir.Var(f"{name}_s0", IDX), tir.IntImm(IDX, 1)]
    return T.arg(name, T.buffer(shape, F32, strides=strides, align=4))


def build(sig: NormSignature):
    rows = tir.Var("rows", IDX)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FUNC_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": FUNC_NAME})
            x = row_arg("x", rows, sig.D)
            z = row_arg("z", rows, sig.D) if sig.gated else None
            w = T.arg("weight", T.buffer((sig.D,), F32, align=4))
            out = row_arg("out", rows, sig.D, strided=False)
            emit(sig, x, z, w, out, rows)
    return ib.get()


def emit(sig: NormSignature, x, z, w, out, rows):
    """The norm's statements in the current PrimFunc over rows of x, z (read: buffers or
    index-mapped views) into the buffer out (rows, D)."""
    D, G = sig.D, sig.groups
    S = D // G                       # elements per group
    W = max(1, min(sig.vector_width, S))
    full, tail = S // W, S % W
    loop = T.parallel if sig.parallel else T.serial
    with loop(0, rows) as r:
        acc = T.alloc_buffer((W,), F32, scope="global")
        g_in = T.alloc_buffer((D,), F32, scope="global") if sig.gated else None
        if sig.gated:  # g = x * silu(z), kept for the second pass
            with T.serial(0, D // W) as i:
                with T.vectorized(0, W) as v:
                    c = i * W + v
                    T.buffer_store(g_in, x[r, c] * M.silu(z[r, c]), [c])
            for c in range((D // W) * W, D):
                T.buffer_store(g_in, x[r, c] * M.silu(z[r, c]), [c])

        def val(c):
            return g_in[c] if sig.gated else x[r, c]

        for g in range(G):
            base = g * S
            with T.vectorized(0, W) as v:
                T.buffer_store(acc, M.f32(0.0), [v])
            with T.serial(0, full) as i:
                with T.vectorized(0, W) as v:
                    xv = val(base + i * W + v)
                    T.buffer_store(acc, acc[v] + xv * xv, [v])
            total = acc[0]
            for v in range(1, W):
                total = total + acc[v]
            for t in range(tail):
                xv = val(base + full * W + t)
                total = total + xv * xv
            inv = T.Bind(M.f32(1.0) / T.sqrt(total / M.f32(S) + M.f32(sig.eps)))
            with T.serial(0, full) as i:
                with T.vectorized(0, W) as v:
                    c = base + i * W + v
                    T.buffer_store(out, val(c) * inv * w[c], [r, c])
            for t in range(tail):
                c = base + full * W + t
                T.buffer_store(out, val(c) * inv * w[c], [r, c])
