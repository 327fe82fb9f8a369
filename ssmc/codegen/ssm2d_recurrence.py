"""Glue between the graph and the 2-D SSM / PLRNN kernels: a node's module -> kernel operands,
a schedule dict -> the kernel's config, and the TIR `ssmc compile` writes for the CPU."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch


def ssm2d_operands(mod, x: torch.Tensor) -> tuple:
    """(x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v), dt_softplus: the kernel arguments of
    an SSM2D module (semantics.modules_misc.SSM2D) for input x, in fp32, meaning what its
    forward computes.  Selective: one matmul for x_proj and dt_proj together; B/C and the
    steps are views into its output, and the steps come before softplus (dt_softplus=True:
    the kernel applies it)."""
    xf = x.float()
    A1 = -mod.A1_log.float().exp()
    A4 = -mod.A4_log.float().exp()
    if not mod.selective:
        dt_t, dt_v = mod.log_dt_t.float().exp(), mod.log_dt_v.float().exp()
        return (xf, A1, mod.A2, mod.A3, A4, mod.B1, mod.B2, mod.C1, mod.C2, dt_t, dt_v), False
    N, d = mod.d_state, mod.d_model
    w = torch.cat([mod.x_proj.weight, mod.dt_proj.weight]).float()
    bias = torch.cat([torch.zeros(4 * N, dtype=torch.float32, device=x.device),
                      mod.dt_proj.bias.float()])
    # 2-D addmm: F.linear on the 4-D input without a bias was measured 3-5x slower
    proj = torch.addmm(bias, xf.reshape(-1, d), w.t()).view(*xf.shape[:-1], 4 * N + 2 * d)
    B1, B2, C1, C2, dt_t, dt_v = proj.split([N, N, N, N, d, d], dim=-1)
    return (xf, A1, mod.A2, mod.A3, A4, B1, B2, C1, C2, dt_t, dt_v), True


def recompute_rows(T: int, row_bytes: int, budget: int) -> int:
    """Rows per recompute chunk of a 2-D SSM backward (the reverse wavefront over states
    recomputed from row checkpoints: ssmc.codegen.tvm.ssm2d_bwd_tir's docstring).  T (one
    chunk, no checkpoint sweep) when T + 1 rows of `row_bytes` fit `budget`, else
    max(ceil(sqrt(T)), the rows that fit): about sqrt(T) rows of states plus sqrt(T)
    checkpoints, for one extra forward sweep."""
    if (T + 1) * row_bytes <= budget:
        return max(T, 1)
    return min(T, max(math.isqrt(T - 1) + 1, budget // row_bytes - 1))


# a pure function of its arguments (and the host): torch.compile calls it once while tracing
# and keeps the result, instead of tracing the host queries of default_config()
@torch.compiler.assume_constant_result
def ssm2d_config(backend: str, algorithm: str | None, config: dict | None):
    """The kernel config for a node.  TVM: the host default with the loop order of the node's
    algorithm ('wavefront' -> anti-diagonals, 'sequential' -> rows); the other Ssm2dConfig
    knobs only from a dict that names an `order` (a record made for this kernel: the schedule
    pass's generic CPU defaults are the selective scan's).  Triton: the family's knobs found
    in the dict (upper or lower case)."""
    config = config or {}
    if backend == "tvm":
        from ssmc.codegen.tvm.ssm2d import default_config
        from ssmc.codegen.tvm.ssm2d_tir import Ssm2dConfig

        order = "rows" if algorithm == "sequential" else "wavefront"
        cfg = default_config().replace(order=order)
        if "order" in config:
            known = {f.name for f in dataclasses.fields(Ssm2dConfig)}
            cfg = cfg.replace(**{k: v for k, v in config.items() if k in known})
        return cfg
    from ssmc.codegen.triton.ssm2d.wavefront import Ssm2dWavefrontConfig

    known = {f.name for f in dataclasses.fields(Ssm2dWavefrontConfig)}
    knobs = {k.lower(): v for k, v in config.items() if k.lower() in known}
    return Ssm2dWavefrontConfig.from_dict(knobs) if knobs else None


def _last(graph, node, port: str) -> int:
    from ssmc.ir import dims as D

    return D.as_int(graph.types[node.inputs[port]].shape[-1], {})


def emit_tvm(node, graph, fam: str, alg: str, out: Path, write) -> dict:
    """`ssmc compile` on the CPU: the TIR of the node's kernel, written with write(path, text)."""
    if fam == "ssm2d":
        from ssmc.codegen.tvm import ssm2d_tir as tirb

        form = tirb.BC_SHARED if node.selective else tirb.BC_PARAM
        sig = tirb.Ssm2dSignature(d=_last(graph, node, "x"), N=node.d_state, bc=(form,) * 4,
                                  dt_cell=(node.selective,) * 2, has_D=True,
                                  bidirectional=node.bidirectional)
        cfg = ssm2d_config("tvm", alg, node.meta.get("config"))
        prim, name = tirb.build_ssm2d(sig, cfg), "ssm2d"
        runs = f"TVM {cfg.order} kernel; x_proj/dt_proj (selective) by torch"
    else:
        from ssmc.codegen.tvm import plrnn_tir as tirb
        from ssmc.codegen.tvm.plrnn import FUSE_MAX_TAPS, default_config
        from ssmc.runtime.executors import tvm_plrnn_config

        conv = node.meta.get("epilogue")  # a conv folded into the node (passes/fuse.py)
        taps = conv.length if conv is not None and conv.length <= FUSE_MAX_TAPS else 0
        sig = tirb.PlrnnSignature(M=node.latent, K_in=_last(graph, node, "s"), K=taps)
        cfg = tvm_plrnn_config(node.meta.get("config")) or default_config()
        prim, name = tirb.build_plrnn(sig, cfg), "plrnn"
        runs = "TVM kernel (input drive, recurrence)" + (
            "; the HRF conv node: its own node" if conv is None else
            f"; conv '{conv.name}' fused: {taps} taps in the kernel" if taps else
            f"; conv '{conv.name}' folded: by torch's FFT after the kernel ({conv.length} taps)")
    path = out / f"{name}.tir.py"
    write(path, prim.script() if hasattr(prim, "script") else str(prim))
    return {"files": {name: str(path)}, "signature": sig.as_dict(), "runs": runs}
