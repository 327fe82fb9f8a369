"""The GEMM behind an inference-time nn.Linear on the CPU.

torch's F.linear calls MKL's sgemm, which on AMD CPUs takes a generic path; oneDNN's fp32 matmul
(`torch.ops.mkldnn._linear_pointwise`, the op Inductor's CPU backend emits for a Linear) was
measured 1.15-1.5x faster on this project's 2-core AMD EPYC for the prefill projections of a
Mamba layer (2048 rows; one thread), and slower for a handful of rows, so those stay with
F.linear (a decode step's single row has its own TVM kernel: codegen/tvm/gemv_tir.py).
Autograd, other dtypes, other devices and torch.compile take F.linear too.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

MIN_ROWS = 64  # below this oneDNN's setup costs more than MKL's gemm (measured at 8 rows)
ENV = "SSMC_ONEDNN_LINEAR"  # "0" turns the oneDNN path off


@functools.lru_cache(maxsize=None)
def _onednn():
    if os.environ.get(ENV, "1") == "0" or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):  # a torch build without the op
        return None


def _onednn_for(x, weight, bias):
    """The oneDNN op when it is the faster GEMM for these operands, else None."""
    if torch.compiler.is_compiling():  # Inductor picks its own GEMM
        return None
    fn = _onednn()
    if (fn is None or x.device.type != "cpu" or x.dtype is not torch.float32
            or weight.dtype is not torch.float32 or x.dim() < 2
            or x.numel() < MIN_ROWS * x.shape[-1]
            or (bias is not None and bias.dtype is not torch.float32)
            or (torch.is_grad_enabled() and any(
                t is not None and t.requires_grad for t in (x, weight, bias)))):
        return None
    return fn


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """F.linear(x, weight, bias), on oneDNN where that is the faster GEMM (see above)."""
    fn = _onednn_for(x, weight, bias)
    return F.linear(x, weight, bias) if fn is None else fn(x, weight, bias, "none", [], "")


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """F.gelu(F.linear(x, weight, bias)) (exact, erf GELU); on oneDNN the GELU is the GEMM's
    post-op, applied while the output tile is in registers (no second pass over it)."""
    fn = _onednn_for(x, weight, bias)
    if fn is None:
        return F.gelu(F.linear(x, weight, bias))
    return fn(x, weight, bias, "gelu", [], "none")


__all__ = ["linear", "linear_gelu", "MIN_ROWS"]
