"""TIR builders for one whole Mamba-1 / Mamba-2 layer of a decode step (one token of one
sequence), for the CPU.  Mamba-1:

    hn  = rmsnorm(h) * norm_w
    xz  = in_proj(hn)                         x = xz[:d], z = xz[d:]
    xc  = silu(causal_conv1d_update(x, conv_state))
    xdb = x_proj(xc)                          dt_in = xdb[:R], B = xdb[R:R+N], C = xdb[R+N:]
    dt  = dt_proj.weight @ dt_in              (the bias is added in the step, with softplus)
    y   = selective_state_update(state, xc, dt, A, B, C, D, z, dt_bias)
    out = h + out_proj(y)

Mamba-2: proj = in_proj(rmsnorm(h)) = [z | xBC | dt]; xc = silu(conv(xBC)) = [x | B | C]; the
per-head step (dt, A, D, dt_bias per head, B/C per group, no z); yn = gated_rmsnorm(y, z);
out = h + out_proj(yn).

A decode token of a small model is a handful of small products per layer: run as separate
kernels, each is a Python call, an FFI call and a fresh output tensor (microseconds each: the
same order as the arithmetic), so the layer is one PrimFunc here.  The stages are the *same*
statement emitters the separate kernels are built from (rmsnorm_tir.emit, gemv_tir.emit,
causal_conv_tir.emit, selective_step_tir.emit); only the buffers differ: the intermediates
live in small scratch buffers of this function and are read through index maps (z is the
second half of xz, B and C columns of xdb), never copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm.tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm import causal_conv_tir as convb
from ssmc.codegen.tvm import gemv_tir as gemvb
from ssmc.codegen.tvm import rmsnorm_tir as normb
from ssmc.codegen.tvm import selective_step_tir as stepb
from ssmc.codegen.tvm.config import Config
from ssmc.codegen.tvm.selective_step_tir import _Remap

F32 = "float32"
IDX = "int64"
FUNC_NAME = "mamba1_decode_layer"
FUNC_NAME2 = "mamba2_decode_layer"


@dataclass(frozen=True)
class Mamba1LayerSignature:
    """Dm: hidden size; d: inner channels; N: state size; R: dt rank; k: conv width."""

    Dm: int
    d: int
    N: int
    R: int
    k: int
    eps: float
    in_bias: bool = False
    conv_bias: bool = True
    x_bias: bool = False
    out_bias: bool = False
    vector_width: int = 16

    def __post_init__(self):
        if min(self.Dm, self.d, self.N, self.R, self.k) < 1:
            raise ValueError(f"Mamba1LayerSignature: every size must be >= 1, got {self}")
        if not self.eps > 0:
            raise ValueError(f"Mamba1LayerSignature: eps must be > 0, got {self.eps}")


def arg_names(sig: Mamba1LayerSignature) -> list[str]:
    names = ["h", "norm_w", "in_w"] + (["in_b"] if sig.in_bias else [])
    names += ["conv_w"] + (["conv_b"] if sig.conv_bias else []) + ["conv_state"]
    names += ["x_w"] + (["x_b"] if sig.x_bias else [])
    names += ["dt_w", "A2", "D", "dt_b", "state", "out_w"] + (["out_b"] if sig.out_bias else [])
    return names + ["out"]


def _shapes(sig: Mamba1LayerSignature) -> dict:
    Dm, d, N, R, k = sig.Dm, sig.d, sig.N, sig.R, sig.k
    X = R + 2 * N
    return {"h": (1, Dm), "norm_w": (Dm,), "in_w": (2 * d, Dm), "in_b": (2 * d,),
            "conv_w": (d, 1, k), "conv_b": (d,), "conv_state": (1, d, k),
            "x_w": (X, d), "x_b": (X,), "dt_w": (d, R), "A2": (N, d), "D": (d,), "dt_b": (d,),
            "state": (1, d, N), "out_w": (Dm, d), "out_b": (Dm,), "out": (1, Dm)}


class _Stages:
    """The shared pieces of a fused layer: its argument and scratch buffers, and the first and
    last stages (the block's norm, the residual out-projection)."""

    def __init__(self, sig, names, shapes, scratch):
        self.sig = sig
        self.one = tir.IntImm(IDX, 1)
        self.a = {nm: T.arg(nm, T.buffer(shapes[nm], F32, align=4)) for nm in names}
        self.s = {nm: T.alloc_buffer((1, n), F32, scope="global") for nm, n in scratch}

    @staticmethod
    def row(buf, offset=0):  # a (1, n) buffer as the vector gemv reads
        return _Remap(buf, lambda i: (0, offset + i))

    @staticmethod
    def into(buf):
        return lambda n, value: T.buffer_store(buf, value, [0, n])

    def norm(self, out):
        sig = self.sig
        normb.emit(normb.NormSignature(D=sig.Dm, eps=sig.eps, parallel=False,
                                       vector_width=sig.vector_width),
                   self.a["h"], None, self.a["norm_w"], out, self.one)

    def gemv(self, x, w, bias, out, K, N, store=None):
        gemvb.emit(gemvb.GemvSignature(K=K, N=N, has_bias=bias is not None,
                                       vector_width=self.sig.vector_width),
                   self.row(x), w, bias, store or self.into(out))

    def residual_out(self, y, K):
        h, out, sig = self.a["h"], self.a["out"], self.sig
        self.gemv(y, self.a["out_w"], self.a.get("out_b"), None, K, sig.Dm,
                  store=lambda n, value: T.buffer_store(out, h[0, n] + value, [0, n]))


def _func(name):
    T.func_name(name)
    T.func_attr({"tirx.noalias": True, "global_symbol": name})


def build(sig: Mamba1LayerSignature, config: Config):
    Dm, d, N, R, k = sig.Dm, sig.d, sig.N, sig.R, sig.k
    cfg = config.replace(threads=1)  # one token: no thread-pool launch pays for itself
    with IRBuilder() as ib:
        with T.prim_func():
            _func(FUNC_NAME)
            st = _Stages(sig, arg_names(sig), _shapes(sig),
                         (("hn", Dm), ("xz", 2 * d), ("xc", d), ("xdb", R + 2 * N), ("dt", d),
                          ("y", d)))
            a, one = st.a, st.one
            hn, xz, xc, xdb, dt, y = (st.s[nm] for nm in ("hn", "xz", "xc", "xdb", "dt", "y"))
            st.norm(hn)
            st.gemv(hn, a["in_w"], a.get("in_b"), xz, Dm, 2 * d)
            convb.emit(convb.ConvSignature(c=d, k=k, has_bias=sig.conv_bias, step=True), cfg,
                       {"x": xz, "weight": a["conv_w"], "bias": a.get("conv_b"),
                        "state": a["conv_state"], "out": xc}, one, one)
            st.gemv(xc, a["x_w"], a.get("x_b"), xdb, d, R + 2 * N)
            st.gemv(xdb, a["dt_w"], None, dt, R, d)
            stepb.emit(stepb.StepSignature(d=d, N=N), cfg,
                       {"u": xc, "delta": dt, "A2": a["A2"],
                        "B": _Remap(xdb, lambda bi, g, n: (bi, R + n)),
                        "C": _Remap(xdb, lambda bi, g, n: (bi, R + N + n)),
                        "D": a["D"], "z": _Remap(xz, lambda bi, c: (bi, d + c)),
                        "delta_bias": a["dt_b"], "state": a["state"], "out": y}, one, one)
            st.residual_out(y, d)
    return ib.get()


@dataclass(frozen=True)
class Mamba2LayerSignature:
    """Dm: hidden size; d: inner channels = heads * head_dim; N: state size; groups: B/C groups;
    k: conv width; norm_groups: slices of the gated norm (d // its group_size)."""

    Dm: int
    d: int
    N: int
    head_dim: int
    groups: int
    k: int
    eps: float
    norm_eps: float
    norm_groups: int = 1
    in_bias: bool = False
    conv_bias: bool = True
    out_bias: bool = False
    vector_width: int = 16

    def __post_init__(self):
        if min(self.Dm, self.d, self.N, self.head_dim, self.groups, self.k, self.norm_groups) < 1:
            raise ValueError(f"Mamba2LayerSignature: every size must be >= 1, got {self}")
        if self.d % self.head_dim or self.d % self.norm_groups:
            raise ValueError(f"Mamba2LayerSignature: head_dim and norm_groups must divide d: {self}")

    @property
    def heads(self) -> int:
        return self.d // self.head_dim

    @property
    def conv_dim(self) -> int:
        return self.d + 2 * self.groups * self.N


def arg_names2(sig: Mamba2LayerSignature) -> list[str]:
    names = ["h", "norm_w", "in_w"] + (["in_b"] if sig.in_bias else [])
    names += ["conv_w"] + (["conv_b"] if sig.conv_bias else []) + ["conv_state"]
    names += ["A2", "D", "dt_b", "state", "gnorm_w", "out_w"] + (["out_b"] if sig.out_bias else [])
    return names + ["out"]


def build2(sig: Mamba2LayerSignature, config: Config):
    Dm, d, N, H, g, k, cd = sig.Dm, sig.d, sig.N, sig.heads, sig.groups, sig.k, sig.conv_dim
    nproj = d + cd + H
    shapes = {"h": (1, Dm), "norm_w": (Dm,), "in_w": (nproj, Dm), "in_b": (nproj,),
              "conv_w": (cd, 1, k), "conv_b": (cd,), "conv_state": (1, cd, k), "A2": (H,),
              "D": (H,), "dt_b": (H,), "state": (1, d, N), "gnorm_w": (d,), "out_w": (Dm, d),
              "out_b": (Dm,), "out": (1, Dm)}
    cfg = config.replace(threads=1)
    with IRBuilder() as ib:
        with T.prim_func():
            _func(FUNC_NAME2)
            st = _Stages(sig, arg_names2(sig), shapes,
                         (("hn", Dm), ("proj", nproj), ("xc", cd), ("y", d), ("yn", d)))
            a, one = st.a, st.one
            hn, proj, xc, y, yn = (st.s[nm] for nm in ("hn", "proj", "xc", "y", "yn"))
            st.norm(hn)
            st.gemv(hn, a["in_w"], a.get("in_b"), proj, Dm, nproj)
            convb.emit(convb.ConvSignature(c=cd, k=k, has_bias=sig.conv_bias, step=True), cfg,
                       {"x": _Remap(proj, lambda bi, c: (bi, d + c)), "weight": a["conv_w"],
                        "bias": a.get("conv_b"), "state": a["conv_state"], "out": xc}, one, one)
            stepb.emit(stepb.StepSignature(d=d, N=N, groups=g, head_dim=sig.head_dim,
                                           has_z=False), cfg,
                       {"u": xc, "delta": _Remap(proj, lambda bi, h: (bi, d + cd + h)),
                        "A2": a["A2"],
                        "B": _Remap(xc, lambda bi, gi, n: (bi, d + gi * N + n)),
                        "C": _Remap(xc, lambda bi, gi, n: (bi, d + g * N + gi * N + n)),
                        "D": a["D"], "delta_bias": a["dt_b"], "state": a["state"], "out": y},
                       one, one)
            normb.emit(normb.NormSignature(D=d, eps=sig.norm_eps, groups=sig.norm_groups,
                                           gated=True, parallel=False,
                                           vector_width=sig.vector_width),
                       y, proj, a["gnorm_w"], yn, one)
            st.residual_out(yn, d)
    return ib.get()
