"""TIR builder for the matrix-vector product of a decode step, for the CPU:

    out[n] = sum_k weight[n, k] x[k] (+ bias[n])          weight (N, K) as nn.Linear keeps it

A decode token of a small model is a handful of these (in_proj, x_proj, dt_proj, out_proj, the
head) and little else; MKL's sgemv runs them at ~12 GB/s on this project's AMD CPUs, a fifth of
what the caches deliver.  Here `rows` output rows are produced together, each with a
`vector_width`-lane accumulator over K (independent FMA chains hide the FMA latency), the weight
read row by row as it lies (no transposed copy: the model's own parameter is read, so an edit
to it is seen by the next call), then each accumulator is summed across its lanes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm import tirmath as M

F32 = "float32"
FUNC_NAME = "gemv"


@dataclass(frozen=True)
class GemvSignature:
    K: int                    # input features
    N: int                    # output features
    has_bias: bool = False
    vector_width: int = 16    # lanes of one accumulator (16 = one AVX-512 register of fp32)
    rows: int = 4             # output rows whose FMA chains are interleaved

    def __post_init__(self):
        if self.K < 1 or self.N < 1:
            raise ValueError(f"GemvSignature: K and N must be >= 1, got K={self.K} N={self.N}")
        if self.vector_width < 1 or self.rows < 1:
            raise ValueError("GemvSignature: vector_width and rows must be >= 1")


def arg_names(sig: GemvSignature) -> list[str]:
    return ["x", "weight"] + (["bias"] if sig.has_bias else []) + ["out"]


def build(sig: GemvSignature):
    K, N = sig.K, sig.N
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FUNC_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": FUNC_NAME})
            x = T.arg("x", T.buffer((K,), F32, align=4))
            w = T.arg("weight", T.buffer((N, K), F32, align=4))
            bias = T.arg("bias", T.buffer((N,), F32, align=4)) if sig.has_bias else None
            out = T.arg("out", T.buffer((N,), F32, align=4))
            emit(sig, x, w, bias, lambda n, value: T.buffer_store(out, value, [n]))
    return ib.get()


def emit(sig: GemvSignature, x, w, bias, store):
    """The product's statements in the current PrimFunc: reads x[k], w[n, k], bias[n] (buffers
    or index-mapped views of them), hands each finished out[n] to `store(n, value)` (an
    epilogue: a residual add, a store into a slice of a larger buffer)."""
    K, N = sig.K, sig.N
    W = max(1, min(sig.vector_width, K))
    full, tail = K // W, K % W
    R = max(1, min(sig.rows, N))

    def block(n0, nrows):
        """Rows n0 .. n0 + nrows - 1 (nrows a Python int: the chains are unrolled)."""
        acc = T.alloc_buffer((nrows, W), F32, scope="local")
        for r in range(nrows):
            with T.vectorized(0, W) as v:
                T.buffer_store(acc, M.f32(0.0), [r, v])
        with T.serial(0, full) as i:
            for r in range(nrows):
                with T.vectorized(0, W) as v:
                    k = i * W + v
                    T.buffer_store(acc, acc[r, v] + w[n0 + r, k] * x[k], [r, v])
        for r in range(nrows):
            total = _lane_sum([acc[r, v] for v in range(W)])
            for t in range(tail):
                k = full * W + t
                total = total + w[n0 + r, k] * x[k]
            if bias is not None:
                total = total + bias[n0 + r]
            store(n0 + r, total)

    with T.serial(0, N // R) as nb:
        block(nb * R, R)
    for n in range((N // R) * R, N):
        block(n, 1)


def _lane_sum(terms: list):
    """A pairwise sum (log depth, and what LLVM turns into shuffles of one register)."""
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0]
