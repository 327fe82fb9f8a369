"""TIR builder for the diagonal time-invariant recurrence (S4D / polar, MODELS.md sections 1, 5),
CPU, channels-last.

    s_{t,n} = Abar_n s_{t-1,n} + (C_n Bbar_n) u_t,    y_t = scale * Re(sum_n s_{t,n}) + D u_t

The read-out C is folded into the input (s = C x is again a diagonal recurrence with the same
Abar), so a step costs one complex multiply-add per mode and the sum.  scale is 2 for
conjugate pairs, else 1; a real state drops the imaginary parts.  Tasks: (batch row, block of
`vw` channels); every statement is a `vw`-lane vector over the block's channels; the modes'
states sit in an (n, vw) stack buffer.  Abar and C Bbar come transposed (n, d) so a block loads
them as vectors.  b and L are symbolic; d, n and the flags are compiled in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import tvm.tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm import tirmath as M
from ssmc.codegen.tvm.grc_tir import vector_width

F32 = "float32"
IDX = "int64"
FUNC_NAME = "diagonal_scan"
UNROLL_MODES = 16  # modes unrolled per group


@dataclass(frozen=True)
class DiagonalSignature:
    d: int
    n: int
    complex_state: bool = True
    scale: float = 2.0
    has_D: bool = False
    lanes: int = 8

    def __post_init__(self):
        if self.d < 1 or self.n < 1 or self.lanes < 1:
            raise ValueError("DiagonalSignature: d, n and lanes must be >= 1")


@dataclass(frozen=True)
class DiagonalScanConfig:
    """Schedule knobs (they never change the values; space: tvm_diagonal_scan.yaml).

    vector_width: channels of one task, as one vector statement (0 = the host's fp32 lanes;
        a d it does not divide takes the widest that does); mode_unroll: modes unrolled per
        group (independent complex multiply-adds in flight)."""

    vector_width: int = 0
    mode_unroll: int = UNROLL_MODES

    def __post_init__(self):
        if self.vector_width < 0 or self.mode_unroll < 1:
            raise ValueError("DiagonalScanConfig: vector_width >= 0 and mode_unroll >= 1")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "DiagonalScanConfig":
        return dataclasses.replace(self, **changes)


def arg_names(sig: DiagonalSignature) -> list[str]:
    names = ["u"]
    names += ["a_re", "a_im", "cb_re", "cb_im"] if sig.complex_state else ["a_re", "cb_re"]
    if sig.has_D:
        names.append("D")
    names.append("out")
    return names


def build_diagonal_scan(sig: DiagonalSignature, mode_unroll: int = UNROLL_MODES):
    b = tir.Var("b", IDX)
    L = tir.Var("L", IDX)
    d, n = sig.d, sig.n
    vw = vector_width(d, sig.lanes)
    nblk = d // vw
    cplx = sig.complex_state

    def buf(shape):
        return T.buffer(shape, F32, align=4)

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(FUNC_NAME)
            T.func_attr({"tirx.noalias": True, "global_symbol": FUNC_NAME})
            shapes = {"u": (b, L, d), "a_re": (n, d), "a_im": (n, d), "cb_re": (n, d),
                      "cb_im": (n, d), "D": (d,), "out": (b, L, d)}
            a = {nm: T.arg(nm, buf(shapes[nm])) for nm in arg_names(sig)}
            with T.parallel(0, b * nblk) as task:
                bi = T.Bind(task // nblk)
                c0 = T.Bind(tir.Cast(IDX, task % nblk) * vw)
                sr = T.alloc_buffer((n, vw), F32, scope="global")
                si = T.alloc_buffer((n, vw), F32, scope="global") if cplx else None
                y = T.alloc_buffer((vw,), F32, scope="global")
                tmp = T.alloc_buffer((vw,), F32, scope="global")
                with T.serial(0, n) as m:
                    with T.vectorized(0, vw) as v:
                        T.buffer_store(sr, M.f32(0.0), [m, v])
                        if cplx:
                            T.buffer_store(si, M.f32(0.0), [m, v])
                with T.serial(0, L) as t:
                    with T.vectorized(0, vw) as v:
                        T.buffer_store(y, M.f32(0.0), [v])

                    def mode(m):
                        with T.vectorized(0, vw) as v:
                            c = c0 + v
                            u = a["u"][bi, t, c]
                            ar, cbr = a["a_re"][m, c], a["cb_re"][m, c]
                            if cplx:
                                ai, cbi = a["a_im"][m, c], a["cb_im"][m, c]
                                xr, xi = sr[m, v], si[m, v]  # loads, read when stored:
                                # the new real part waits in tmp until si is updated
                                T.buffer_store(tmp, ar * xr - ai * xi + cbr * u, [v])
                                T.buffer_store(si, ar * xi + ai * xr + cbi * u, [m, v])
                                T.buffer_store(sr, tmp[v], [m, v])
                            else:
                                T.buffer_store(sr, ar * sr[m, v] + cbr * u, [m, v])
                            T.buffer_store(y, y[v] + sr[m, v], [v])

                    U = min(n, mode_unroll)
                    if n // U:
                        with T.serial(0, n // U) as g:
                            for k in range(U):
                                mode(g * U + k)
                    for k in range(n // U * U, n):
                        mode(k)
                    with T.vectorized(0, vw) as v:
                        c = c0 + v
                        val = y[v] if sig.scale == 1.0 else y[v] * M.f32(sig.scale)
                        if sig.has_D:
                            val = val + a["D"][c] * a["u"][bi, t, c]
                        T.buffer_store(a["out"], val, [bi, t, c])
    return ib.get()
