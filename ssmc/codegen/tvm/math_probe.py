"""Measure tirmath's functions where they run: a vectorised elementwise kernel per function,
compared with float64 torch on a grid.  Used by the tests and by
`python -m ssmc.codegen.tvm.math_probe` (prints the error table of tirmath's docstring)."""

from __future__ import annotations

import torch
import tvm
import tvm.tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ssmc.codegen.tvm import tirmath as M
from ssmc.codegen.tvm.target import host_target

# name -> (TIR function of one fp32 expr, float64 torch reference, domain (lo, hi))
FUNCTIONS = {
    "exp2": (lambda x: M.exp2(x), lambda x: torch.exp2(x), (-126.0, 127.0)),
    "exp2_deg4": (lambda x: M.exp2(x, 4), lambda x: torch.exp2(x), (-126.0, 127.0)),
    "exp2_deg6": (lambda x: M.exp2(x, 6), lambda x: torch.exp2(x), (-126.0, 127.0)),
    "exp": (lambda x: M.exp(x), torch.exp, (-87.0, 88.0)),
    "log": (lambda x: M.log(x), torch.log, (1e-30, 1e30)),
    "softplus": (lambda x: M.softplus(x), torch.nn.functional.softplus, (-80.0, 80.0)),
    "silu": (lambda x: M.silu(x), torch.nn.functional.silu, (-80.0, 80.0)),
    "sin": (lambda x: M.sincos(x)[0], torch.sin, (-8192.0, 8192.0)),
    "cos": (lambda x: M.sincos(x)[1], torch.cos, (-8192.0, 8192.0)),
}
ABSOLUTE = {"sin", "cos"}  # error measured absolutely (relative error is meaningless at zeros)

_compiled: dict = {}


def probe_kernel(name: str, lanes: int = 8):
    """Compiled `y[i] = f(x[i])` for n a multiple of `lanes`."""
    if name in _compiled:
        return _compiled[name]
    fn = FUNCTIONS[name][0]
    n = tir.Var("n", "int64")
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("probe")
            x = T.arg("x", T.buffer((n, lanes), "float32", align=4))
            y = T.arg("y", T.buffer((n, lanes), "float32", align=4))
            with T.serial(0, n) as i:
                with T.vectorized(0, lanes) as v:
                    T.buffer_store(y, fn(x[i, v]), [i, v])
    ex = tvm.compile(tvm.IRModule({"probe": ib.get()}), target=host_target())
    _compiled[name] = ex["probe"]
    return _compiled[name]


def grid(name: str, count: int = 1 << 16) -> torch.Tensor:
    lo, hi = FUNCTIONS[name][2]
    if name == "log":  # log-spaced over the positive floats
        return torch.logspace(-30, 30, count, dtype=torch.float32)
    return torch.linspace(lo, hi, count, dtype=torch.float32)


def evaluate(name: str, x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous().float()
    pad = (-x.numel()) % 8
    xp = torch.cat([x, x.new_ones(pad)]) if pad else x
    xp = xp.view(-1, 8)
    y = torch.empty_like(xp)
    probe_kernel(name)(xp, y)
    return y.view(-1)[: x.numel()]


def max_error(name: str, x: torch.Tensor | None = None) -> float:
    """Max relative error (absolute for sin/cos) of tirmath's fp32 result against float64."""
    x = grid(name) if x is None else x
    got = evaluate(name, x).double()
    want = FUNCTIONS[name][1](x.double())
    err = (got - want).abs()
    if name not in ABSOLUTE:
        err = err / want.abs().clamp_min(1e-300)
    return float(err.max())


if __name__ == "__main__":
    for fname in FUNCTIONS:
        kind = "abs" if fname in ABSOLUTE else "rel"
        lo, hi = FUNCTIONS[fname][2]
        print(f"{fname:10s} [{lo:g}, {hi:g}]  max {kind} error {max_error(fname):.3g}")
